"""Issue 9 on the in-process sample app (real PostgreSQL and Redis): unbounded and wide results,
connection churn, slow queries with plans, repeated query groups, unused eager loading.

Each positive case has its negative twin; findings are read from the server span's events, and
the same spans analyzed offline (`hms-otel analyze`'s code path) give the same findings.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan

from hms_otel_agent import config
from hms_otel_agent.instrument import eager_loads
from hms_otel_agent.instrument.explain import EXPLAINER
from hms_otel_agent.report.build import build_report
from hms_otel_agent.report.otlp import EventData, SpanData

VIEWS = "hms_otel_agent/sample/hms/views.py"


@pytest.fixture
def clean_cache(traced: Traced) -> Iterator[None]:
    """The sample's Redis database is shared with the other tests of this worker (and with the
    sample app they run as a process): leave nothing behind."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def kinds(traced: Traced, server: ReadableSpan) -> dict[str, dict[str, Any]]:
    """Finding events by kind (one per kind expected)."""
    found: dict[str, dict[str, Any]] = {}
    for event in traced.events(server):
        kind = event.get("hms.finding.kind")
        if kind:
            assert kind not in found or kind in ("n_plus_one",), f"two {kind} findings"
            found[kind] = event
    return found


def offline(traced: Traced, settings: config.Settings, drop: str = "") -> dict[str, dict[str, Any]]:
    """The findings `hms-otel analyze` detects from the exported spans, by kind (`drop`: an
    attribute left out of every span, as an agent that does not write it would)."""
    spans = []
    for span in traced.spans():
        parent = span.parent
        spans.append(
            SpanData(
                trace_id=format(span.context.trace_id, "032x"),
                span_id=format(span.context.span_id, "016x"),
                parent_span_id=format(parent.span_id, "016x") if parent is not None else "",
                name=span.name,
                kind={"SERVER": 2, "CLIENT": 3}.get(span.kind.name, 1),
                scope=span.instrumentation_scope.name if span.instrumentation_scope else "",
                start_ns=span.start_time or 0,
                end_ns=span.end_time or 0,
                attributes={k: v for k, v in (span.attributes or {}).items() if k != drop},
                events=[EventData(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
            )
        )
    report = build_report(spans, settings, analyze=True)
    return {g.about.kind: g.to_dict() for g in report.findings}


# -- unbounded / wide results ---------------------------------------------------------------------


def test_an_export_of_every_row_is_an_unbounded_and_wide_result(traced: Traced) -> None:
    with traced.use_settings(large_result_rows=30) as settings:
        response, server = traced.request("/patients/export/")
        assert response.status_code == 200 and len(response.json()["results"]) == 40
        finding = kinds(traced, server)["unbounded_result"]
        again = offline(traced, settings)["unbounded_result"]
    assert finding["hms.finding.rows"] == 40
    assert finding["hms.orm.model"] == "hms.Patient"
    assert finding["hms.finding.table"] == "hms_patient"
    assert finding["code.file.path"] == VIEWS and finding["code.function.name"] == "patient_export_naive"
    assert finding["hms.hint.fix"] == (
        "paginate: Patient.objects.order_by('pk').filter(pk__gt=last_pk)[:page_size] (keyset), or "
        "django.core.paginator.Paginator; and .only('field', ...) or .values('field', ...) with just "
        "the fields the code reads"
    )
    assert "an unbounded Patient query (40 rows, no LIMIT, 10 columns) run 1x" in finding["hms.hint"]
    (select,) = [s for s in traced.spans() if str(s.attributes.get("db.statement", "")).startswith("SELECT")]
    assert select.attributes["db.response.returned_rows"] == 40
    assert (
        again["fingerprint"] == finding["hms.finding.fingerprint"] and again["fix"] == finding["hms.hint.fix"]
    )


def test_the_keyset_page_twin_and_a_small_result_are_clean(traced: Traced) -> None:
    with traced.use_settings(large_result_rows=30):
        response, server = traced.request("/patients/export/optimized/?limit=35")
        assert len(response.json()["results"]) == 35 and response.json()["next"] == 35
        assert not {"unbounded_result", "wide_result"} & set(kinds(traced, server))
    _, server = traced.request("/patients/export/")  # 40 rows < the default 1000
    assert not {"unbounded_result", "wide_result"} & set(kinds(traced, server))


def test_a_large_page_of_many_columns_is_a_wide_result(traced: Traced, clean_cache: None) -> None:
    with traced.use_settings(large_result_rows=30, wide_result_columns=10):
        _, server = traced.request("/patients/cached/optimized/?limit=40")  # select_related: 14 columns
        finding = kinds(traced, server)["wide_result"]
    assert finding["hms.finding.rows"] == 40
    assert finding["hms.hint.fix"].startswith(".only('field', ...) or .values('field', ...)")
    with traced.use_settings(large_result_rows=30, wide_result_columns=20):
        _, server = traced.request("/patients/cached/optimized/?limit=40")
        assert "wide_result" not in kinds(traced, server)


def test_returned_rows_only_for_selects(traced: Traced, clean_cache: None) -> None:
    response, _ = traced.request("/patients/1/touch/", method="post")
    assert response.status_code == 200
    sql = [s for s in traced.spans() if s.attributes.get("db.system") == "postgresql"]
    assert sql and all(
        "db.response.returned_rows" in s.attributes for s in sql if s.name.startswith("SELECT ")
    )
    assert not [
        s for s in sql if s.name.split()[0] != "SELECT" and "db.response.returned_rows" in s.attributes
    ]


# -- connection churn -----------------------------------------------------------------------------


@contextlib.contextmanager
def conn_max_age(seconds: int | None) -> Iterator[None]:
    from django.db import connections

    connection = connections["default"]
    saved = connection.settings_dict["CONN_MAX_AGE"]
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = seconds
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = saved


def wsgi_request(traced: Traced, path: str) -> ReadableSpan:
    """A request through Django's WSGI handler as a server runs it: request_started /
    request_finished close connections as CONN_MAX_AGE says (the test client does not)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.client import RequestFactory

    traced.clear()
    environ = RequestFactory()._base_environ(PATH_INFO=path, REQUEST_METHOD="GET")
    response = WSGIHandler()(environ, lambda status, headers: None)
    b"".join(response)
    response.close()
    (server,) = traced.server_spans()
    return server


def test_conn_max_age_0_opens_a_connection_per_request(traced: Traced, clean_cache: None) -> None:
    with conn_max_age(0):
        wsgi_request(traced, "/stats/")
        server = wsgi_request(traced, "/stats/")
        settings = traced.pipeline.signal_processor.settings
        again = offline(traced, settings)["connection_churn"]
    finding = kinds(traced, server)["connection_churn"]
    assert finding["hms.finding.subject"] == "database 'default'"
    assert finding["hms.finding.repetitions"] == 1
    assert finding["hms.hint.fix"] == (
        "DATABASES['default']: 'CONN_MAX_AGE': 60, 'CONN_HEALTH_CHECKS': True (persistent connections), "
        "or a pool (Django 5.1+, psycopg 3): 'OPTIONS': {'pool': True}"
    )
    assert "CONN_MAX_AGE=0 closes it at the end of every request" in finding["hms.hint"]
    (connect,) = traced.events(server, "hms.db.connect")
    assert connect["hms.db.alias"] == "default" and connect["hms.db.conn_max_age"] == 0
    assert connect["hms.db.pooled"] is False and connect["hms.db.connect_ms"] > 0
    assert server.attributes["hms.db.connections_opened"] == 1
    # /stats/ still has exactly its 3 SQL children and 2 Redis ones: no extra span
    assert len(traced.children_of(server)) == 5
    assert again["fingerprint"] == finding["hms.finding.fingerprint"]


def test_persistent_connections_are_reused_and_counted(traced: Traced, clean_cache: None) -> None:
    uses = metric_sum(traced, "hms.db.connection.uses", {"hms.db.connection.reused": True})
    opened = metric_sum(traced, "hms.db.connections.opened", {"hms.db.alias": "default"})
    with conn_max_age(60):
        first = wsgi_request(traced, "/stats/")  # opens the connection: fine with persistence
        assert "connection_churn" not in kinds(traced, first)
        assert first.attributes["hms.db.connections_opened"] == 1
        second = wsgi_request(traced, "/stats/")
        assert "hms.db.connections_opened" not in second.attributes
        assert not traced.events(second, "hms.db.connect")
    assert metric_sum(traced, "hms.db.connection.uses", {"hms.db.connection.reused": True}) == uses + 1
    assert metric_sum(traced, "hms.db.connections.opened", {"hms.db.alias": "default"}) == opened + 1
    created = [p for p in traced.metric_points("db.client.connection.create_time") if p.count]
    assert created and created[0].attributes["db.client.connection.pool.name"] == "default"


def test_reopening_connections_inside_one_request_is_churn_whatever_the_settings(traced: Traced) -> None:
    from django.db import connection

    with conn_max_age(60):
        with traced.tracer.start_as_current_span("nightly-job") as job:
            for _ in range(3):
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                connection.close()
        events = traced.events(job, "hms.connection_churn")
    assert len(events) == 1 and events[0]["hms.finding.repetitions"] == 3
    assert events[0]["hms.hint.fix"].startswith("keep one connection to 'default' for the whole request")


def metric_sum(traced: Traced, name: str, attributes: dict[str, Any]) -> float:
    total = 0.0
    for point in traced.metric_points(name):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            total += getattr(point, "value", getattr(point, "sum", 0))
    return total


# -- slow queries and EXPLAIN ---------------------------------------------------------------------

FILLER = "Filler (bulk)"


@pytest.fixture
def large_encounters(django_app: Any) -> Iterator[None]:
    """30 000 more encounters, all with one reason (deleted again): a table worth an index."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO hms_encounter"
            " (patient_id, facility_id, practitioner_id, started_at, reason, status)"
            " SELECT 1, 1, 1, now() - make_interval(secs => g), %s, 'finished'"
            " FROM generate_series(1, 30000) g",
            [FILLER],
        )
        cursor.execute("ANALYZE hms_encounter")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM hms_encounter WHERE reason = %s", [FILLER])
            cursor.execute("ANALYZE hms_encounter")


@pytest.fixture
def explainer() -> Iterator[Any]:
    EXPLAINER.forget()
    yield EXPLAINER
    assert EXPLAINER.wait_idle(30)
    EXPLAINER.forget()


def test_a_slow_search_gets_its_plan_and_the_index_to_add(
    traced: Traced, large_encounters: None, explainer: Any
) -> None:
    path = "/encounters/search/?reason=Chest%20pain"
    with traced.use_settings(slow_query_ms=0.0, explain=True) as settings:
        _, first = traced.request(path)
        slow = kinds(traced, first)["slow_query"]
        assert slow["hms.hint.fix"].startswith("EXPLAIN it (HMS_OTEL_EXPLAIN=true attaches the plan)")
        assert not traced.events(first, "hms.explain")
        assert explainer.wait_idle(30)
        _, second = traced.request(path)
        finding = kinds(traced, second)["slow_query"]
        (plan,) = traced.events(second, "hms.explain")
        again = offline(traced, settings)["slow_query"]
    assert finding["hms.finding.fingerprint"] == slow["hms.finding.fingerprint"]
    assert finding["hms.finding.table"] == "hms_encounter"
    assert finding["hms.finding.columns"] == ("reason",)
    assert finding["hms.hint.fix"] == (
        "CREATE INDEX CONCURRENTLY hms_encounter_reason_idx ON hms_encounter (reason)"
        "  # Django: Meta.indexes = [models.Index(fields=['reason'])] on Encounter"
    )
    assert plan["hms.explain.index_table"] == "hms_encounter"
    assert plan["hms.explain.index_columns"] == ("reason",)
    assert any(n.startswith("Seq Scan on hms_encounter filter (reason)") for n in plan["hms.explain.nodes"])
    assert plan["hms.db.fingerprint"] == next(
        s.attributes["hms.db.fingerprint"]
        for s in traced.spans()
        if "hms_encounter" in str(s.attributes.get("db.statement"))
    )
    # the reason searched for is nowhere in the telemetry
    assert "Chest pain" not in repr(
        [(s.attributes, [e.attributes for e in s.events]) for s in traced.spans()]
    )
    assert again["fix"] == finding["hms.hint.fix"]


def test_explain_is_opt_in_and_never_runs_on_writes(traced: Traced, explainer: Any) -> None:
    before = explainer.submitted
    with traced.use_settings(slow_query_ms=0.0):  # explain off (the default)
        _, server = traced.request("/encounters/search/?reason=Fever")
        assert "slow_query" in kinds(traced, server)
    assert explainer.submitted == before
    with traced.use_settings(slow_query_ms=0.0, explain=True):
        traced.request("/patients/duplicate/?pk=1", method="post")  # SELECT the source, INSERT: fails
        statements = {
            s.attributes["hms.db.fingerprint"]: s.name.split()[0]  # "SELECT hms_patient"
            for s in traced.spans()
            if "hms.db.fingerprint" in s.attributes
        }
    names = sorted(statements.values())
    assert set(names) == {"INSERT", "SELECT"}  # Django 4.2 runs one SELECT more than 5.x
    assert explainer.wait_idle(30)
    explained = {fp for fp in statements if explainer.plan_for(fp) is not None}
    assert {statements[fp] for fp in explained} == {"SELECT"}  # SELECTs only, never the INSERT
    assert explainer.submitted == before + names.count("SELECT")


def test_fast_queries_are_not_slow(traced: Traced) -> None:
    _, server = traced.request("/encounters/search/?reason=Fever")
    assert "slow_query" not in kinds(traced, server)


# -- repeated query groups (MN+1) -----------------------------------------------------------------


def test_cache_get_select_cache_set_per_patient_is_one_group(traced: Traced, clean_cache: None) -> None:
    path = "/patients/cached/lookup/?ids=" + ",".join(map(str, range(31, 39)))
    settings = traced.pipeline.signal_processor.settings
    response, server = traced.request(path)
    assert response.status_code == 200 and len(response.json()["results"]) == 8
    found = kinds(traced, server)
    group = found["repeated_group"]
    assert group["hms.finding.repetitions"] == 8
    assert group["hms.finding.members"] == (
        "cache.get patient:{id}:summary",
        "Patient select",
        "cache.set patient:{id}:summary",
    )
    assert group["hms.hint.fix"] == (
        "cache.get_many(keys); Patient.objects.filter(id__in=values) once, outside the loop; "
        "cache.set_many({...}, timeout=...)"
    )
    assert group["code.function.name"] == "cached_lookup_naive"
    # one cause, one finding: the group takes in the cache N+1 of its reads and the query's N+1
    # (and says so: pytest --hms-otel fails on it as on the N+1)
    assert "cache_n_plus_one" not in found and "n_plus_one" not in found
    assert group["hms.finding.includes"] == ("cache_n_plus_one", "n_plus_one")
    assert offline(traced, settings)["repeated_group"]["fingerprint"] == group["hms.finding.fingerprint"]
    # warm now: cache reads only, which is a cache N+1, not a group
    _, warm = traced.request(path)
    assert set(kinds(traced, warm)) == {"cache_n_plus_one"}


def test_the_batched_twin_and_lazy_loads_alone_are_not_groups(traced: Traced, clean_cache: None) -> None:
    _, server = traced.request("/patients/cached/lookup/optimized/?ids=" + ",".join(map(str, range(31, 39))))
    assert not kinds(traced, server)
    _, server = traced.request("/encounters/?limit=10")  # patient, facility, insurance per row: N+1s
    found = kinds(traced, server)
    assert "repeated_group" not in found and "n_plus_one" in found
    _, server = traced.request("/patients/cached/?limit=8")  # cold: cache.get -> cache.set, no SQL
    assert set(kinds(traced, server)) == {"cache_n_plus_one"}


# -- unused eager loading -------------------------------------------------------------------------


@pytest.fixture
def eager() -> Iterator[None]:
    gc.collect()
    eager_loads.reset()
    eager_loads.configure(True)
    yield
    eager_loads.configure(False)
    gc.collect()
    eager_loads.reset()


def unused_eager_spans(traced: Traced) -> list[ReadableSpan]:
    return [s for s in traced.spans() if s.instrumentation_scope.name == eager_loads.SCOPE]


def test_a_select_related_never_read_is_reported_after_enough_requests(traced: Traced, eager: None) -> None:
    with traced.use_settings(unused_eager_min_loads=3) as settings:
        for _ in range(2):
            _, server = traced.request("/appointments/upcoming/?limit=5")
            assert not unused_eager_spans(traced)  # one request says nothing
        _, server = traced.request("/appointments/upcoming/?limit=5")
        (span,) = unused_eager_spans(traced)
        report = offline(traced, settings)
    (event,) = traced.events(span, "hms.unused_eager_load")
    assert event["hms.finding.kind"] == "unused_eager_load"
    assert event["hms.orm.relation"] == "hms.Appointment.practitioner"
    assert event["hms.hint.fix"] == "drop 'practitioner' from .select_related(...)"
    assert event["hms.finding.repetitions"] == 3
    assert event["code.function.name"] == "upcoming_appointments_naive"
    assert span.attributes["hms.hints"] == (event["hms.hint"],)
    assert "unused_eager_load" not in kinds(traced, server)  # not on the request span
    assert report["unused_eager_load"]["subject"] == "hms.Appointment.practitioner (select_related)"
    points = [
        p
        for p in traced.metric_points("hms.orm.eager_loads")
        if p.attributes["hms.orm.path"] == "practitioner" and p.attributes["hms.orm.eager_used"] is False
    ]
    assert sum(p.value for p in points) >= 3


def test_read_relations_and_the_twin_are_never_reported(traced: Traced, eager: None) -> None:
    with traced.use_settings(unused_eager_min_loads=2):
        for _ in range(3):
            traced.request("/appointments/upcoming/optimized/?limit=5")  # patient: read
            traced.request("/patients/optimized/?limit=5")  # insurance and contacts: read
            assert not unused_eager_spans(traced)


def test_tracking_off_records_nothing(traced: Traced, eager: None) -> None:
    eager_loads.configure(False)
    with traced.use_settings(unused_eager_min_loads=1):
        traced.request("/appointments/upcoming/?limit=5")
        traced.request("/appointments/upcoming/?limit=5")
        assert not unused_eager_spans(traced)


# -- LIMIT/OFFSET slices: offline analysis agrees with the live agent ----------------------------


def test_limit_offset_slices_are_neither_live_nor_offline(traced: Traced) -> None:
    settings = traced.pipeline.signal_processor.settings
    response, server = traced.request("/clinic/visits/export/")
    assert response.status_code == 200
    assert not kinds(traced, server)
    [paged] = server.attributes["hms.db.paged"]
    slices = [s for s in traced.spans() if (s.attributes or {}).get("hms.db.fingerprint") == paged]
    assert len(slices) >= settings.n_plus_one_threshold  # the page did read its list in slices
    assert offline(traced, settings) == {}  # analyze: no parameters, the owner span's verdict
    # Negative: spans without the verdict (another agent) cannot be told apart: an N+1 then.
    assert set(offline(traced, settings, drop="hms.db.paged")) == {"n_plus_one"}
