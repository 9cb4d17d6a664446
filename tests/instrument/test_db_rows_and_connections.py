"""``db.response.returned_rows`` on DB spans and ``hms.db.connect`` events (instrument/db.py,
instrument/db_connections.py) on real PostgreSQL, through Django and through raw drivers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanProcessor

from hms_otel_agent.instrument import db_connections
from hms_otel_agent.instrument.db import SPAN_RECORD


def sql_spans(traced: Any) -> list[Any]:
    return [s for s in traced.spans() if (s.attributes or {}).get("db.system") == "postgresql"]


def test_orm_selects_get_their_row_count(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    with traced.tracer.start_as_current_span("job"):
        assert len(list(Patient.objects.order_by("id")[:7])) == 7
        assert list(Patient.objects.filter(pk=-1)) == []
        assert Patient.objects.count() == 40
    rows = [s.attributes.get("db.response.returned_rows") for s in sql_spans(traced)]
    assert rows == [7, 0, 1]


def test_writes_and_server_side_cursors_get_none(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Insurance, Patient

    with traced.tracer.start_as_current_span("job"):
        Insurance.objects.filter(pk=-1).update(plan_code="x")
        assert len(list(Patient.objects.order_by("id").iterator(chunk_size=10))) == 40  # a named cursor
    for span in sql_spans(traced):
        assert "db.response.returned_rows" not in span.attributes, (span.name, span.attributes)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_raw_driver_selects_get_their_row_count(traced: Any, pg_url: str, driver: str) -> None:
    module = pytest.importorskip(driver)
    with traced.tracer.start_as_current_span("job"):
        conn = module.connect(pg_url)
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT g FROM generate_series(1, %s) g", [12])
            assert len(cursor.fetchall()) == 12
            with pytest.raises(module.Error):
                cursor.execute("SELECT * FROM no_such_table")
        finally:
            conn.close()
    spans = sql_spans(traced)
    assert [s.attributes.get("db.response.returned_rows") for s in spans] == [12, None]


def test_a_new_connection_is_an_event_on_the_current_span(traced: Any) -> None:
    from django.db import connection

    connection.close()
    with traced.tracer.start_as_current_span("job") as job:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        with connection.cursor() as cursor:  # reused: no second event
            cursor.execute("SELECT 1")
    (event,) = traced.events(job, "hms.db.connect")
    assert event["hms.db.alias"] == "default"
    assert event["db.system"] == "postgresql"
    assert event["hms.db.conn_max_age"] == connection.settings_dict["CONN_MAX_AGE"]
    assert event["hms.db.pooled"] is False and event["hms.db.health_checks"] is False
    assert event["hms.db.connect_ms"] > 0
    assert job.attributes["hms.db.connections_opened"] == 1
    assert [s.name for s in traced.children_of(job)] == ["SELECT", "SELECT"]


def test_a_connection_outside_any_span_is_counted_only(traced: Any) -> None:
    from django.db import connection

    def opened() -> float:
        return sum(p.value for p in traced.metric_points("hms.db.connections.opened"))

    before = opened()
    connection.close()
    connection.ensure_connection()
    assert opened() == before + 1
    assert not [s for s in traced.spans() if s.events]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"CONN_MAX_AGE": 0, "OPTIONS": {}}, ("default", 0, False, False, "postgresql")),
        ({"CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": True}, ("default", None, False, True, "postgresql")),
        (
            {"CONN_MAX_AGE": 0, "OPTIONS": {"pool": {"min_size": 2}}},
            ("default", 0, True, False, "postgresql"),
        ),
        ({"CONN_MAX_AGE": "60"}, ("default", 60, False, False, "postgresql")),
        ({"CONN_MAX_AGE": "soon"}, ("default", -2, False, False, "postgresql")),
    ],
)
def test_lifecycle_settings(settings: dict[str, Any], expected: tuple[Any, ...]) -> None:
    wrapper = SimpleNamespace(alias="default", vendor="postgresql", settings_dict=settings)
    assert db_connections._lifecycle(wrapper) == expected


class _RecordSpy(SpanProcessor):
    """A span processor that looks at the live span right after the agent's processor did."""

    def __init__(self) -> None:
        self.executions: list[Any] = []

    def before_end(self, span: Any, end_ns: int) -> None:
        record = getattr(span, SPAN_RECORD, None)
        if record is not None:
            self.executions.append(record.execution)


def test_statement_and_parameters_leave_the_span_record_when_the_span_ends(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    spy = _RecordSpy()
    processors = traced.tracer_provider._active_span_processor
    processors.add_span_processor(spy)
    try:
        with traced.tracer.start_as_current_span("job"):
            list(Patient.objects.filter(mrn="MRN-1")[:1])
    finally:
        processors._span_processors = tuple(p for p in processors._span_processors if p is not spy)
    assert spy.executions == [None]
