"""Span compression (HMS_OTEL_COMPRESS_SPANS, export/compress.py) on SDK spans, no database: which
runs become one summary span, what the summary carries, that every exported span's parent is
exported too, that memory stays bounded, and that the local file is never compressed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from hms_otel_agent import config, pipeline
from hms_otel_agent.export.compress import COUNT, DURATION_MS, SpanCompressor
from hms_otel_agent.instrument import sdk_internals
from hms_otel_agent.instrument.db import SPAN_RECORD, DbSpanRecord, orm_attributes
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.records import CodeLocation, OrmContext

PATIENT_SQL = 'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."id" = %s LIMIT 21'
FACILITY_SQL = 'SELECT "hms_facility"."id" FROM "hms_facility" WHERE "hms_facility"."id" = %s LIMIT 21'
LIST_SQL = 'SELECT "hms_encounter"."id" FROM "hms_encounter" LIMIT 50'
VIEW = CodeLocation("app/views.py", 10, "encounter_list")
PATIENT = OrmContext(
    "hms.Encounter", "forward", "hms.Encounter.patient", True, "patient", "hms.Encounter", False, VIEW
)
FACILITY = OrmContext(
    "hms.Encounter", "forward", "hms.Encounter.facility", True, "facility", "hms.Encounter", False, VIEW
)
APPOINTMENT_PATIENT = OrmContext(
    "hms.Appointment", "forward", "hms.Appointment.patient", True, "patient", "hms.Appointment", False, VIEW
)
LIST = OrmContext("hms.Encounter", "query", location=VIEW)
DB_SCOPE = "opentelemetry.instrumentation.psycopg"


class Memory(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["fast", "stock"])
def fast_paths(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each compression test with the fast paths (span members read directly) and without."""
    yield request.param
    sdk_internals.configure(True)


@pytest.fixture
def built(
    request: pytest.FixtureRequest, fast_paths: bool
) -> Iterator[tuple[pipeline.Pipeline, Memory, Memory]]:
    """A pipeline with compression on: (pipeline, an OTLP-like exporter, the local file's)."""
    changes = getattr(request, "param", {})
    settings = dataclasses.replace(
        config.load({}).settings,
        fast_paths=fast_paths,
        live_log=False,
        compress_spans=True,
        bsp_schedule_delay_ms=600_000,
        **changes,
    )
    exported, local = Memory(), Memory()
    built = pipeline.build(
        settings,
        span_exporters=[("OTLP test", exported), ("file", local)],
        metric_readers=[InMemoryMetricReader()],
    ).install()
    try:
        yield built, exported, local
    finally:
        built.shutdown(2000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def tick(self, ns: int = 1_000_000) -> int:
        self.now += ns
        return self.now


def db_span(
    tracer, clock: Clock, sql: str, orm: OrmContext | None, duration_ns: int = 1_000_000, **kw
) -> Span:  # type: ignore[no-untyped-def]
    span = tracer.start_span("SELECT", kind=SpanKind.CLIENT, start_time=clock.tick())
    fingerprint = fingerprint_sql(sql)
    span.set_attributes(
        {
            "db.statement": sql,
            "hms.db.fingerprint": fingerprint.digest,
            **(orm_attributes(orm) if orm else {}),
        }
    )
    setattr(span, SPAN_RECORD, DbSpanRecord(fingerprint, hash(clock.now), orm))  # what the SQL hook leaves
    if kw.get("error"):
        span.set_status(Status(StatusCode.ERROR))
    if kw.get("event"):
        span.add_event("exception", {"exception.type": "X"})
    span.end(end_time=clock.tick(duration_ns))
    return span


def request(built: pipeline.Pipeline, clock: Clock, calls: list[tuple[str, OrmContext | None]], **kw) -> Span:  # type: ignore[no-untyped-def]
    from opentelemetry import trace

    tracer = built.tracer_provider.get_tracer("tests")
    db = built.tracer_provider.get_tracer(DB_SCOPE)
    server = tracer.start_span("GET /encounters/", kind=SpanKind.SERVER, start_time=clock.tick())
    with trace.use_span(server, end_on_exit=False):
        for sql, orm in calls:
            db_span(db, clock, sql, orm, **kw)
    server.end(end_time=clock.tick())
    return server


def n_plus_one_calls(n: int) -> list[tuple[str, OrmContext | None]]:
    calls: list[tuple[str, OrmContext | None]] = [(LIST_SQL, LIST)]
    for _ in range(n):
        calls += [(PATIENT_SQL, PATIENT), (FACILITY_SQL, FACILITY)]
    return calls


def check_tree(spans: Sequence[ReadableSpan]) -> None:
    """Every exported span's parent is exported too (or it is a root); ids are unique; the
    payload encodes and decodes as OTLP."""
    ids = [s.context.span_id for s in spans]
    assert len(ids) == len(set(ids))
    for span in spans:
        if span.parent is not None:
            assert span.parent.span_id in ids, span.name
    payload = encode_spans(spans).SerializeToString()
    decoded = ExportTraceServiceRequest.FromString(payload)
    assert sum(len(ss.spans) for rs in decoded.resource_spans for ss in rs.scope_spans) == len(spans)


def test_each_run_of_one_statement_and_orm_context_becomes_one_summary_span(built) -> None:  # type: ignore[no-untyped-def]
    pipe, exported, local = built
    clock = Clock()
    server = request(pipe, clock, n_plus_one_calls(8) + [(PATIENT_SQL, APPOINTMENT_PATIENT)] * 3)
    pipe.force_flush()
    # server + list query + one summary per relation + 3 loads of another relation (below the threshold)
    assert len(exported.spans) == 1 + 1 + 2 + 3
    assert len(local.spans) == 1 + 1 + 16 + 3  # the local file keeps every span
    check_tree(exported.spans)
    summaries = {s.attributes["hms.orm.relation"]: s for s in exported.spans if COUNT in (s.attributes or {})}
    assert sorted(summaries) == ["hms.Encounter.facility", "hms.Encounter.patient"]
    originals = [
        s for s in local.spans if (s.attributes or {}).get("hms.orm.relation") == "hms.Encounter.patient"
    ]
    summary = summaries["hms.Encounter.patient"]
    first, last = originals[0], originals[-1]
    assert summary.context.span_id == first.context.span_id
    assert summary.parent is not None and summary.parent.span_id == server.context.span_id
    assert summary.name == first.name and summary.kind is SpanKind.CLIENT
    assert summary.start_time == first.start_time and summary.end_time == last.end_time
    assert summary.attributes[COUNT] == 8
    assert summary.attributes[DURATION_MS] == pytest.approx(
        sum((s.end_time - s.start_time) for s in originals) / 1e6
    )
    for key, value in (first.attributes or {}).items():
        assert summary.attributes[key] == value  # the first statement, its fingerprint, ORM, code.*
    assert not [
        s
        for s in exported.spans
        if (s.attributes or {}).get("hms.orm.relation") == "hms.Appointment.patient"
        and COUNT in (s.attributes or {})
    ]
    # Every statement is accounted for.
    db_spans = [s for s in exported.spans if s.kind is SpanKind.CLIENT]
    assert sum((s.attributes or {}).get(COUNT, 1) for s in db_spans) == 1 + 16 + 3
    assert pipe.batch_processors[0].compressor is not None
    assert pipe.batch_processors[1].compressor is None


def test_errors_events_and_slow_statements_are_never_compressed(built) -> None:  # type: ignore[no-untyped-def]
    pipe, exported, _ = built
    clock = Clock()
    request(pipe, clock, [(PATIENT_SQL, PATIENT)] * 6, error=True)
    request(pipe, clock, [(PATIENT_SQL, PATIENT)] * 6, event=True)
    request(pipe, clock, [(PATIENT_SQL, PATIENT)] * 6, duration_ns=600_000_000)  # >= HMS_OTEL_SLOW_QUERY_MS
    pipe.force_flush()
    assert len(exported.spans) == 3 * 7
    assert not [s for s in exported.spans if COUNT in (s.attributes or {})]


def test_the_findings_and_owner_attributes_do_not_depend_on_compression(built) -> None:  # type: ignore[no-untyped-def]
    pipe, exported, local = built
    request(pipe, Clock(), n_plus_one_calls(6))
    pipe.force_flush()
    [server] = [s for s in exported.spans if s.kind is SpanKind.SERVER]
    [server_in_file] = [s for s in local.spans if s.kind is SpanKind.SERVER]
    assert server is server_in_file  # the owner span is exported as it ended, findings included


@pytest.mark.parametrize("built", [{"n_plus_one_threshold": 3}], indirect=True)
def test_the_threshold_is_the_n_plus_one_threshold(built) -> None:  # type: ignore[no-untyped-def]
    pipe, exported, _ = built
    request(pipe, Clock(), [(PATIENT_SQL, PATIENT)] * 3 + [(FACILITY_SQL, FACILITY)] * 2)
    pipe.force_flush()
    counts = sorted((s.attributes or {}).get(COUNT, 1) for s in exported.spans if s.kind is SpanKind.CLIENT)
    assert counts == [1, 1, 3]


def test_off_by_default() -> None:
    assert config.load({}).settings.compress_spans is False
    assert config.load({"HMS_OTEL_COMPRESS_SPANS": "true"}).settings.compress_spans is True
    exported = Memory()
    settings = dataclasses.replace(config.load({}).settings, live_log=False)
    built = pipeline.build(
        settings, span_exporters=[("OTLP test", exported)], metric_readers=[InMemoryMetricReader()]
    ).install()
    try:
        request(built, Clock(), n_plus_one_calls(6))
        built.force_flush()
        assert len(exported.spans) == 1 + 1 + 12
    finally:
        built.shutdown(2000)


# --- the compressor alone: bounded memory ----------------------------------------------------------


def offer(compressor: SpanCompressor, span: Span) -> object:
    """What the batch processor does: mark from the Span.end hook, then offer on_end's copy."""
    assert span.end_time is not None
    compressor.mark(span, span.end_time)
    return compressor.offer(span._readable_span())


def test_parents_that_never_end_hold_a_bounded_number_of_spans() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracer = provider.get_tracer(DB_SCOPE)
    open_ids: set[int] = set()
    compressor = SpanCompressor(threshold=5, max_duration_ms=500, open_spans=open_ids, max_held=10)
    clock = Clock()
    out: list[ReadableSpan] = []
    parents = []
    for p in range(20):  # 20 leaked request spans, 3 distinct statements under each, 4 times
        parent = tracer.start_span(f"leaked {p}")
        parents.append(parent)
        open_ids.add(parent.context.span_id)
        with trace.use_span(parent, end_on_exit=False):
            for _ in range(4):
                for sql, orm in ((PATIENT_SQL, PATIENT), (FACILITY_SQL, FACILITY), (LIST_SQL, LIST)):
                    span = db_span(tracer, clock, sql, orm)
                    result = offer(compressor, span)
                    if result is not None:
                        out.extend(result if isinstance(result, list) else [result])
                    assert compressor.held_spans <= 10
    out.extend(compressor.release_all())
    assert compressor.held_spans == 0
    assert len(out) == 20 * 12  # runs of 4 < 5: released as they were, none lost
    assert not [s for s in out if COUNT in (s.attributes or {})]


def test_a_long_run_keeps_only_its_first_span() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracer = provider.get_tracer(DB_SCOPE)
    parent = tracer.start_span("request")
    compressor = SpanCompressor(
        threshold=5, max_duration_ms=500, open_spans={parent.context.span_id}, max_held=100
    )
    clock = Clock()
    with trace.use_span(parent, end_on_exit=False):
        for _ in range(10_000):
            assert offer(compressor, db_span(tracer, clock, PATIENT_SQL, PATIENT)) is None
    assert compressor.held_spans == 1
    parent.end()
    released = offer(compressor, parent)
    assert isinstance(released, list) and len(released) == 2
    assert released[0].attributes[COUNT] == 10_000
    assert released[1].context.span_id == parent.context.span_id


def test_runs_of_a_parent_that_ended_elsewhere_leave_on_the_timer() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracer = provider.get_tracer(DB_SCOPE)
    parent = tracer.start_span("request")
    open_ids = {parent.context.span_id}
    compressor = SpanCompressor(threshold=5, max_duration_ms=500, open_spans=open_ids, max_held=100)
    clock = Clock()
    with trace.use_span(parent, end_on_exit=False):
        for _ in range(6):
            offer(compressor, db_span(tracer, clock, PATIENT_SQL, PATIENT))
    assert compressor.release_closed() == []  # still open
    open_ids.clear()  # ended, but its on_end never reached the batch processor (not sampled)
    [summary] = compressor.release_closed()
    assert summary.attributes[COUNT] == 6
    assert compressor.held_spans == 0
