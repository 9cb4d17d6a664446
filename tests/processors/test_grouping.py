"""The signal processor and its guards, on real PostgreSQL and Django (in-process), exporting to memory."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from harness.traced import Traced

from hms_otel_agent import guard
from hms_otel_agent.instrument import db as db_instrumentation
from hms_otel_agent.signals.records import Finding, OwnerActivity


def test_request_span_gets_query_count_and_children_their_fingerprint(traced: Traced) -> None:
    response, server = traced.request("/stats/")
    assert response.status_code == 200
    assert server.attributes["hms.db.query_count"] == 3
    assert server.attributes["hms.db.duration_ms"] > 0
    sql = [c for c in traced.children_of(server) if c.attributes.get("db.system") == "postgresql"]
    assert len({c.attributes["hms.db.fingerprint"] for c in sql}) == 3


def test_an_exception_in_a_detector_does_not_reach_the_app(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_detector(activity: OwnerActivity, settings: Any) -> list[Finding]:
        raise ZeroDivisionError("detector bug")

    processor = traced.pipeline.signal_processor
    saved = processor.detectors
    processor.detectors = (*saved, broken_detector)
    guard.reset_for_tests()
    try:
        with caplog.at_level(logging.WARNING, logger="hms_otel"):
            for _ in range(3):
                response, server = traced.request("/stats/")
                assert response.status_code == 200
                assert response.json()["patients"] == 40
    finally:
        processor.detectors = saved
    assert any(k.startswith("detector") for k in guard.error_counts())
    assert sum(guard.error_counts().values()) == 3
    warnings = [r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]
    assert len(warnings) == 1  # logged once, counted thrice
    assert server.attributes["hms.db.query_count"] == 3  # the rest of the processing still happened


def test_an_exception_in_the_sql_hook_does_not_reach_the_app_nor_leak_the_statement(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(sql: object) -> object:
        raise RuntimeError("fingerprint bug")

    monkeypatch.setattr(db_instrumentation, "fingerprint_sql", broken)
    guard.reset_for_tests()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM hms_patient WHERE mrn <> 'MRN-999999'")
        assert cursor.fetchone()[0] == 40
    assert guard.error_counts() == {"SQL span hook": 1}
    [span] = [s for s in traced.spans() if s.attributes.get("db.system") == "postgresql"]
    assert "MRN-999999" not in str(span.attributes.get("db.statement"))


def test_an_exception_in_on_start_does_not_reach_the_app(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = traced.pipeline.signal_processor
    monkeypatch.setattr(processor, "_open", None)  # any access now raises TypeError
    guard.reset_for_tests()
    response, _ = traced.request("/health/")
    assert response.status_code == 200
    assert "span processor (on_start)" in guard.error_counts()


def test_state_for_spans_that_never_end_is_bounded(traced: Traced) -> None:
    processor = traced.pipeline.signal_processor
    limit = processor._max_open
    before = processor.evicted
    leaked = [traced.tracer.start_span(f"leak-{i}") for i in range(limit + 50)]
    assert len(processor._open) <= limit
    assert processor.evicted - before >= 50
    for span in leaked:
        span.end()  # ending an evicted span is harmless
    assert len(processor._open) == 0


def test_request_records_are_freed_when_the_request_ends(traced: Traced) -> None:
    """Reference counting alone frees an owner's activity (no cycle between the owner's state
    and the state its DB and cache spans share): with the collector off, nothing accumulates."""
    import gc

    traced.request("/stats/")  # warm-up: lazily created objects
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            response, _server = traced.request("/stats/")
            assert response.status_code == 200
        alive = sum(1 for o in gc.get_objects() if isinstance(o, OwnerActivity))
    finally:
        gc.enable()
    assert alive == 0
