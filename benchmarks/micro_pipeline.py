"""Micro-benchmarks of the agent's per-span work.

``python benchmarks/micro_pipeline.py [--quick] [--json F]``

No server, no database: the spans come from real SDK tracers and the contrib DB-API
``CursorTracer`` driving a fake cursor, so what is timed is the telemetry path only.

* ``processor`` — `SignalProcessor.on_start` + `before_end` called directly on real SDK spans: a DB
  span under an owner (with the record the SQL hook leaves), a cache span (with its ``CacheCall``),
  an owner span with no children (``/health/``), and the end of an owner with 50 N+1 DB children
  (detectors run, findings written as attributes, events and metrics).
* ``detectors`` — every registered detector (``signals/registry.py``) on plain ``OwnerActivity``
  records: microseconds per call and per DB span / cache call. Target (issue 7): <= 3 us per DB span.
* ``pipeline`` — one request = a Django-like SERVER span + N queries through
  ``dbapi.CursorTracer.traced_execution``, the queries issued from N library frames below the
  "view" (as under Django's ORM, so the hook's walk to the user's frame costs what it costs), in
  three variants with the same no-op exporter behind a batch processor: ``none`` (the fake
  execute called directly), ``sdk`` (plain ``TracerProvider`` + SDK ``BatchSpanProcessor``: what
  ``opentelemetry-instrument`` builds) and ``agent`` (``pipeline.build`` + the SQL hook + the
  ``Span.end`` hook). Blocks of requests alternate between variants; the median block is reported.
* ``calls`` — function calls per request that differ between ``sdk`` and ``agent`` (cProfile).
* ``encode`` — OTLP protobuf encoding per span of what ``sdk`` and ``agent`` export.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace
from opentelemetry.instrumentation import dbapi
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from hms_otel_agent import config
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.records import CacheCall, CodeLocation, DbCall, OrmContext, OwnerActivity

_ROOT_PREFIX = str(Path(__file__).resolve().parent.parent) + "/"
LIST_SQL = (
    'SELECT "hms_encounter"."id", "hms_encounter"."patient_id", "hms_encounter"."facility_id", '
    '"hms_encounter"."started_at", "hms_encounter"."reason", "hms_encounter"."status" '
    'FROM "hms_encounter" ORDER BY "hms_encounter"."id" ASC LIMIT 50'
)
LAZY_SQL = (
    'SELECT "hms_patient"."id", "hms_patient"."mrn", "hms_patient"."given_name", '
    '"hms_patient"."family_name", "hms_patient"."date_of_birth", "hms_patient"."insurance_id" '
    'FROM "hms_patient" WHERE "hms_patient"."id" = %s LIMIT 21'
)
SERVER_ATTRIBUTES: dict[str, Any] = {
    "http.method": "GET",
    "http.server_name": "127.0.0.1",
    "http.scheme": "http",
    "net.host.port": 8000,
    "http.host": "127.0.0.1:8000",
    "http.target": "/encounters/",
    "net.peer.ip": "127.0.0.1",
    "net.peer.port": 51234,
    "http.user_agent": "bench",
    "http.flavor": "1.1",
}
DB_SPAN_ATTRIBUTES = {"net.peer.name": "127.0.0.1", "net.peer.port": 5432, "db.user": "postgres"}
VIEW_LOCATION = CodeLocation("hms_otel_agent/sample/hms/views.py", 233, "encounter_list_naive")
DB_SCOPE = "opentelemetry.instrumentation.psycopg"
DJANGO_SCOPE = "opentelemetry.instrumentation.django"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"
# Frames between a Django view and CursorTracer.traced_execution for a lazy FK load
# (__get__, get_object, QuerySet.get, __len__, _fetch_all, ModelIterable.__iter__,
# execute_sql, CursorWrapper.execute, _execute_with_wrappers, _execute, TracedCursor.execute).
LIBRARY_DEPTH = 11


class NullExporter(SpanExporter):
    """Counts (and optionally keeps) what it is given; exports nothing."""

    def __init__(self, keep: bool = False) -> None:
        self.count = 0
        self.keep = keep
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        if self.keep:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _settings(**env: str) -> config.Settings:
    return config.load({"OTEL_BSP_MAX_QUEUE_SIZE": "1000000", **env}).settings


def _library_frames(depth: int) -> Callable[..., Any]:
    """``call(fn, *args)`` -> ``fn(*args)`` through `depth` frames whose file is in site-packages
    (under ``django/``), so the agent's user-code frame walk sees them as library code."""
    filename = os.path.join(sysconfig.get_paths()["purelib"], "django", "_hms_bench_frames.py")
    source = "def f0(fn, *args):\n    return fn(*args)\n" + "".join(
        f"def f{i}(fn, *args):\n    return f{i - 1}(fn, *args)\n" for i in range(1, depth)
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[f"f{depth - 1}"]  # type: ignore[no-any-return]


def _fake_execute(sql: str, params: Any = None) -> None:
    return None


class _FakeCursor:
    rowcount = 1
    connection = None


# --- processor ------------------------------------------------------------------------------


def bench_processor(quick: bool) -> dict[str, Any]:
    from hms_otel_agent.instrument import django_server, eager_loads
    from hms_otel_agent.instrument.db import SPAN_RECORD, DbSpanRecord
    from hms_otel_agent.instrument.explain import EXPLAINER
    from hms_otel_agent.processors import SignalMetrics, SignalProcessor
    from hms_otel_agent.signals import registry
    from hms_otel_agent.signals.vocabulary import CACHE_RECORD

    settings = _settings()
    processor = SignalProcessor(
        settings,
        registry.DETECTORS,
        SignalMetrics(MeterProvider().get_meter("hms_otel_agent")),
        plans=EXPLAINER,
        eager_loads=eager_loads,
        route_literals=django_server.route_literals,
    )
    provider = TracerProvider()  # no processors: the benchmark calls ours directly
    django = provider.get_tracer(DJANGO_SCOPE)
    db = provider.get_tracer(DB_SCOPE)
    redis = provider.get_tracer(REDIS_SCOPE)
    fp = fingerprint_sql(LAZY_SQL)
    orm = OrmContext(
        model="hms.Patient",
        kind="forward",
        relation="hms.Encounter.patient",
        lazy=True,
        path="patient",
        root_model="hms.Encounter",
        location=VIEW_LOCATION,
    )
    owners = 60 if quick else 200
    children = 50

    def owner_span() -> Any:
        span = django.start_span("GET encounters/", kind=SpanKind.SERVER, attributes=SERVER_ATTRIBUTES)
        span.set_attribute("http.route", "encounters/")
        return span

    def db_children(owner: Any) -> list[Any]:
        ctx = trace.set_span_in_context(owner)
        spans = []
        for i in range(children):
            span = db.start_span("SELECT", context=ctx, kind=SpanKind.CLIENT, attributes=DB_SPAN_ATTRIBUTES)
            setattr(span, SPAN_RECORD, DbSpanRecord(fp, hash(repr((i,))), orm))
            spans.append(span)
        return spans

    def cache_children(owner: Any) -> list[Any]:
        ctx = trace.set_span_in_context(owner)
        spans = []
        for i in range(children):
            span = redis.start_span("GET", context=ctx, kind=SpanKind.CLIENT)
            call = CacheCall(
                operation="GET",
                key_pattern="patient:{id}:summary",
                start_ns=0,
                duration_ns=0,
                backend="redis",
                reads=1,
                hits=1,
                key_hash=i,
                location=VIEW_LOCATION,
            )
            setattr(span, CACHE_RECORD, call)
            spans.append(span)
        return spans

    now = time.time_ns()
    results: dict[str, Any] = {}

    # A DB span: on_start + before_end (the owner is started, then dropped untimed).
    samples = []
    for _ in range(owners):
        owner = owner_span()
        spans = db_children(owner)
        processor.on_start(owner)
        start = time.perf_counter_ns()
        for span in spans:
            processor.on_start(span)
            processor.before_end(span, now)
        samples.append((time.perf_counter_ns() - start) / children)
        processor.before_end(owner, now)
    results["db_span_us"] = round(statistics.median(samples) / 1e3, 3)

    samples = []
    for _ in range(owners):
        owner = owner_span()
        spans = cache_children(owner)
        processor.on_start(owner)
        start = time.perf_counter_ns()
        for span in spans:
            processor.on_start(span)
            processor.before_end(span, now)
        samples.append((time.perf_counter_ns() - start) / children)
        processor.before_end(owner, now)
    results["cache_span_us"] = round(statistics.median(samples) / 1e3, 3)

    # An owner with no children (a /health/ request): on_start + before_end.
    spans = [owner_span() for _ in range(owners * 10)]
    samples = []
    for chunk in range(0, len(spans), 50):
        start = time.perf_counter_ns()
        for span in spans[chunk : chunk + 50]:
            processor.on_start(span)
            processor.before_end(span, now)
        samples.append((time.perf_counter_ns() - start) / 50)
    results["owner_span_no_children_us"] = round(statistics.median(samples) / 1e3, 3)

    # The end of an owner with 50 N+1 DB children: detectors, findings, metrics.
    samples = []
    for _ in range(owners):
        owner = owner_span()
        processor.on_start(owner)
        for span in db_children(owner):
            processor.on_start(span)
            processor.before_end(span, now)
        start = time.perf_counter_ns()
        processor.before_end(owner, now)
        samples.append(time.perf_counter_ns() - start)
    results["owner_end_with_50_n_plus_one_us"] = round(statistics.median(samples) / 1e3, 3)

    samples = []
    for _ in range(owners):
        owner = owner_span()
        processor.on_start(owner)
        for span in cache_children(owner):
            processor.on_start(span)
            processor.before_end(span, now)
        start = time.perf_counter_ns()
        processor.before_end(owner, now)
        samples.append(time.perf_counter_ns() - start)
    results["owner_end_with_50_cache_reads_us"] = round(statistics.median(samples) / 1e3, 3)
    return results


# --- detectors --------------------------------------------------------------------------------


def _db_call(sql: str, i: int, orm: OrmContext | None) -> DbCall:
    fp = fingerprint_sql(sql)
    return DbCall(
        fingerprint=fp.digest,
        statement=fp.normalized,
        start_ns=i * 1000,
        duration_ns=200_000,
        table=fp.table,
        filter_columns=fp.filter_columns,
        params_hash=hash(repr((i,))),
        orm=orm,
    )


_interned_orm: dict[tuple[str, str, str], OrmContext] = {}


def _relation_orm(model: str, relation: str, path: str) -> OrmContext:
    """One object per relation and code location, as the live agent interns them
    (instrument/django_orm._context): a loop's lazy loads share one OrmContext."""
    key = (model, relation, path)
    orm = _interned_orm.get(key)
    if orm is None:
        orm = _interned_orm[key] = OrmContext(
            model=model,
            kind="forward",
            relation=relation,
            lazy=True,
            path=path,
            root_model="hms.Encounter",
            location=VIEW_LOCATION,
        )
    return orm


def _activities() -> dict[str, tuple[OwnerActivity, int]]:
    """name -> (activity, number of calls it holds)."""
    list_orm = OrmContext(model="hms.Encounter", kind="query", location=VIEW_LOCATION)
    out: dict[str, tuple[OwnerActivity, int]] = {}

    def db_activity(calls: list[DbCall]) -> OwnerActivity:
        activity = OwnerActivity(name="GET encounters/", route="encounters/")
        activity.db_calls.extend(calls)
        activity.db_count = len(calls)
        return activity

    for n in (50, 1000):
        calls = [_db_call(LIST_SQL, 0, list_orm)]
        calls += [
            _db_call(LAZY_SQL, i, _relation_orm("hms.Patient", "hms.Encounter.patient", "patient"))
            for i in range(n)
        ]
        out[f"db: 1 list + {n} lazy loads (one relation)"] = (db_activity(calls), len(calls))
    facility_sql = LAZY_SQL.replace("hms_patient", "hms_facility")
    insurance_sql = LAZY_SQL.replace("hms_patient", "hms_insurance")
    calls = [_db_call(LIST_SQL, 0, list_orm)]
    for i in range(50):
        calls.append(_db_call(LAZY_SQL, i, _relation_orm("hms.Patient", "hms.Encounter.patient", "patient")))
        calls.append(
            _db_call(facility_sql, i, _relation_orm("hms.Facility", "hms.Encounter.facility", "facility"))
        )
        if i % 2:
            calls.append(
                _db_call(
                    insurance_sql,
                    i,
                    _relation_orm("hms.Insurance", "hms.Patient.insurance", "patient__insurance"),
                )
            )
    out["db: /encounters/ shape (1 + 50 + 50 + 25, three relations)"] = (db_activity(calls), len(calls))
    raw_orm = OrmContext(
        model="", kind="raw", location=VIEW_LOCATION
    )  # interned per location (instrument/db.py)
    raw = [_db_call(LAZY_SQL, i, raw_orm) for i in range(50)]
    out["db: 50 repeats, no ORM context (raw SQL)"] = (db_activity(raw), len(raw))
    distinct = [_db_call(f"SELECT * FROM t{i} WHERE id = %s", i, None) for i in range(50)]
    out["db: 50 distinct statements (no finding)"] = (db_activity(distinct), len(distinct))
    activity = OwnerActivity(name="GET patients/cached/", route="patients/cached/")
    activity.db_calls.append(_db_call(LIST_SQL, 0, list_orm))
    activity.db_count = 1
    for i in range(50):
        activity.cache_calls.append(
            CacheCall(
                operation="get",
                key_pattern="patient:{id}:summary",
                start_ns=10_000 + i * 1000,
                duration_ns=150_000,
                backend="RedisCache",
                reads=1,
                hits=1,
                key_hash=i,
                location=VIEW_LOCATION,
                django_api=True,
            )
        )
    out["cache: 50 single-key reads of one pattern"] = (activity, 50)
    return out


def bench_detectors(quick: bool) -> dict[str, Any]:
    from hms_otel_agent.signals import registry

    settings = _settings()
    rows: dict[str, Any] = {}
    for name, (activity, calls) in _activities().items():
        for detector in registry.DETECTORS:
            label = f"{detector.__module__.rsplit('.', 1)[-1]}.{detector.__name__}"
            number = max(1, (2_000 if quick else 10_000) // calls)
            best = []
            for _ in range(3 if quick else 7):
                start = time.perf_counter_ns()
                for _ in range(number):
                    findings = detector(activity, settings)
                best.append((time.perf_counter_ns() - start) / number)
            per_call = min(best)
            rows.setdefault(name, {})[label] = {
                "us_per_owner": round(per_call / 1e3, 2),
                "us_per_call": round(per_call / 1e3 / calls, 3),
                "findings": len(findings),
            }
    return rows


# --- pipeline ---------------------------------------------------------------------------------


class _Variant:
    def __init__(self, name: str, keep: bool = False) -> None:
        self.name = name
        self.exporter = NullExporter(keep)
        self.provider: TracerProvider | None = None
        self.agent: Any = None
        self._flush: Callable[[], Any] = lambda: None

    def activate(self) -> None:
        """Install what this variant needs and undo what the others installed (class patches)."""
        from hms_otel_agent import pipeline
        from hms_otel_agent.instrument import db as db_hook

        if self.name == "agent":
            if self.agent is None:
                from hms_otel_agent.signals import registry

                settings = _settings()
                self.agent = pipeline.build(
                    settings, registry.DETECTORS, span_exporters=[("null", self.exporter)], metric_readers=[]
                ).install()
                self.provider = self.agent.tracer_provider
                self._flush = lambda: self.agent.force_flush()
            pipeline.install_end_hook()
            db_hook.install(self.agent.signal_processor.settings)
        else:
            pipeline.uninstall_end_hook()
            db_hook.uninstall()
            if self.name == "sdk" and self.provider is None:
                self.provider = TracerProvider()
                batch = BatchSpanProcessor(self.exporter, max_queue_size=1_000_000)
                self.provider.add_span_processor(batch)
                self._flush = batch.force_flush

    def request_fn(self, queries: int) -> Callable[[], None]:
        frames = _library_frames(LIBRARY_DEPTH)
        cursor = _FakeCursor()
        if self.name == "none":

            def plain() -> None:
                frames(_fake_execute, LIST_SQL, ())
                for i in range(queries):
                    frames(_fake_execute, LAZY_SQL, (i,))

            return plain
        assert self.provider is not None
        tracer = self.provider.get_tracer(DJANGO_SCOPE)
        integration = dbapi.DatabaseApiIntegration(DB_SCOPE, "postgresql", tracer_provider=self.provider)
        integration.database = "hms"
        integration.span_attributes = dict(DB_SPAN_ATTRIBUTES)
        traced = dbapi.CursorTracer(integration).traced_execution

        def request() -> None:
            with tracer.start_as_current_span(
                "GET", kind=SpanKind.SERVER, attributes=SERVER_ATTRIBUTES
            ) as span:
                frames(traced, cursor, _fake_execute, LIST_SQL, ())
                for i in range(queries):
                    frames(traced, cursor, _fake_execute, LAZY_SQL, (i,))
                span.update_name("GET encounters/")
                span.set_attribute("http.route", "encounters/")
                span.set_attribute("http.status_code", 200)

        return request

    def flush(self) -> None:
        self._flush()


def bench_pipeline(quick: bool) -> dict[str, Any]:
    variants = [_Variant("none"), _Variant("sdk"), _Variant("agent")]
    blocks = 5 if quick else 11
    out: dict[str, Any] = {}
    for queries in (50, 1):
        per_block = max(3, 1000 // (queries + 1))
        fns: dict[str, Callable[[], None]] = {}
        for variant in variants:
            variant.activate()
            fns[variant.name] = variant.request_fn(queries)
            for _ in range(per_block):  # warm-up: caches, lazy imports
                fns[variant.name]()
            variant.flush()
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        for block in range(blocks):
            order = variants[block % 3 :] + variants[: block % 3]
            for variant in order:
                variant.activate()
                gc.collect()
                fn = fns[variant.name]
                start = time.perf_counter_ns()
                for _ in range(per_block):
                    fn()
                times[variant.name].append((time.perf_counter_ns() - start) / per_block)
                variant.flush()
        spans = queries + 2  # the server span, the list query and N queries
        med = {name: statistics.median(values) for name, values in times.items()}
        out[f"{queries} queries"] = {
            "spans_per_request": spans,
            "request_us": {name: round(value / 1e3, 1) for name, value in med.items()},
            "per_span_us": {name: round(value / 1e3 / spans, 2) for name, value in med.items()},
            "sdk_overhead_per_span_us": round((med["sdk"] - med["none"]) / 1e3 / spans, 2),
            "agent_overhead_per_span_us": round((med["agent"] - med["none"]) / 1e3 / spans, 2),
            "agent_minus_sdk_per_span_us": round((med["agent"] - med["sdk"]) / 1e3 / spans, 2),
            "agent_over_sdk_telemetry_cost": round(
                (med["agent"] - med["none"]) / max(med["sdk"] - med["none"], 1e-9), 2
            ),
            "block_spread_us": {
                name: [round(min(v) / 1e3, 1), round(max(v) / 1e3, 1)] for name, v in times.items()
            },
        }
    # Leave the process as it was found (the end hook and SQL hook are class patches).
    from hms_otel_agent import pipeline
    from hms_otel_agent.instrument import db as db_hook

    pipeline.uninstall_end_hook()
    db_hook.uninstall()
    return out


def bench_calls(queries: int = 50, requests: int = 20) -> dict[str, Any]:
    """Calls per request that differ between the sdk and agent variants (cProfile counts)."""
    counts: dict[str, dict[str, float]] = {}
    agent_cum: dict[str, tuple[float, float]] = {}
    for name in ("sdk", "agent"):
        variant = _Variant(name)
        variant.activate()
        fn = variant.request_fn(queries)
        fn()
        variant.flush()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            fn()
        profiler.disable()
        variant.flush()
        stats = pstats.Stats(profiler)
        for (filename, _line, func), (_cc, ncalls, _tt, cumtime, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
            short = filename.split("site-packages/")[-1].split(_ROOT_PREFIX)[-1]
            counts.setdefault(f"{func} ({short})", {})[name] = ncalls / requests
            if name == "agent" and "hms_otel_agent/" in filename:
                agent_cum[f"{func} ({short})"] = (ncalls / requests, cumtime / requests * 1e6)
    from hms_otel_agent import pipeline
    from hms_otel_agent.instrument import db as db_hook

    pipeline.uninstall_end_hook()
    db_hook.uninstall()
    rows = []
    for func, by in counts.items():
        sdk, agent = by.get("sdk", 0.0), by.get("agent", 0.0)
        if agent != sdk and "_hms_bench_frames" not in func and "micro_pipeline" not in func:
            rows.append({"function": func, "sdk": round(sdk, 1), "agent": round(agent, 1)})
    rows.sort(key=lambda r: -abs(r["agent"] - r["sdk"]))
    agent_rows = [
        {"function": func, "calls": round(n, 1), "cumulative_us_under_cprofile": round(us, 1)}
        for func, (n, us) in sorted(agent_cum.items(), key=lambda item: -item[1][1])
    ]
    return {"queries": queries, "calls_per_request": rows[:60], "agent_functions": agent_rows[:25]}


def bench_encode(quick: bool) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    out: dict[str, Any] = {}
    for name in ("sdk", "agent"):
        variant = _Variant(name, keep=True)
        variant.activate()
        fn = variant.request_fn(50)
        for _ in range(10):
            fn()
        variant.flush()
        spans = variant.exporter.spans[:510]
        number = 3 if quick else 10
        best = min(
            _timed(lambda spans=spans: encode_spans(spans).SerializeToString(), number) for _ in range(3)
        )
        size = len(encode_spans(spans).SerializeToString())
        resource = spans[0].resource
        # The OTLP encoder groups spans by resource: Resource.__hash__ (a JSON dump of all its
        # attributes) runs once per span.
        hash_ns = min(_timed(lambda r=resource: hash(r), 2000) for _ in range(3))
        # The agent's own encoder (export/otlp_encode.py, what hms-otel-run's OTLP/HTTP exporter
        # uses): the same bytes, a warm encoder (its KeyValue cache filled by earlier batches).
        from hms_otel_agent.export.otlp_encode import SpanEncoder

        encoder = SpanEncoder()
        same_bytes = encoder.encode(spans) == encode_spans(spans).SerializeToString()
        agent_best = min(
            _timed(lambda spans=spans, encoder=encoder: encoder.encode(spans), number) for _ in range(3)
        )
        # The local-file default's former path (export/otlp_json.py, now its fallback): the SDK's
        # encoder, then protobuf's MessageToDict, the hex ids and json.dumps.
        from hms_otel_agent.export.otlp_json import message_to_otlp_json
        from hms_otel_agent.export.otlp_json_encode import SpanJsonEncoder

        json_best = min(
            _timed(lambda spans=spans: message_to_otlp_json(encode_spans(spans)), max(1, number // 3))
            for _ in range(3)
        )
        # The local-file default now (export/otlp_json_encode.py): the same line, warm encoder.
        json_encoder = SpanJsonEncoder()
        same_line = json_encoder.encode(spans) == message_to_otlp_json(encode_spans(spans))
        json_agent_best = min(
            _timed(lambda spans=spans, encoder=json_encoder: encoder.encode(spans), number) for _ in range(3)
        )
        out[name] = {
            "us_per_span": round(best / len(spans) / 1e3, 2),
            "local_file_json_us_per_span": round(json_best / len(spans) / 1e3, 2),
            "local_file_json_encoder_us_per_span": round(json_agent_best / len(spans) / 1e3, 2),
            "local_file_json_encoder_same_line": same_line,
            "agent_encoder_us_per_span": round(agent_best / len(spans) / 1e3, 2),
            "agent_encoder_same_bytes": same_bytes,
            "resource_hash_us_per_span": round(hash_ns / 1e3, 2),
            "resource_attributes": len(resource.attributes),
            "bytes_per_span": round(size / len(spans), 1),
            "attributes_per_span": round(sum(len(s.attributes or {}) for s in spans) / len(spans), 2),
        }
    from hms_otel_agent import pipeline
    from hms_otel_agent.instrument import db as db_hook

    pipeline.uninstall_end_hook()
    db_hook.uninstall()
    return out


def _timed(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - start) / number


# --- main ---------------------------------------------------------------------------------------


def collect(quick: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "library_depth": LIBRARY_DEPTH,
    }
    for name, bench in (
        ("processor", bench_processor),
        ("detectors", bench_detectors),
        ("pipeline", bench_pipeline),
        ("encode", bench_encode),
    ):
        try:
            results[name] = bench(quick)
        except Exception as exc:  # an API changed under the benchmark: report, keep going
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        results["calls"] = bench_calls(requests=5 if quick else 20)
    except Exception as exc:
        results["calls"] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def render(results: dict[str, Any]) -> str:
    lines = [f"micro_pipeline (Python {results['python']})"]
    proc = results.get("processor", {})
    if "error" in proc:
        lines.append(f"  processor: {proc['error']}")
    else:
        lines.append("  SignalProcessor on_start + before_end")
        for key, value in proc.items():
            lines.append(f"    {key:<44} {value:9.2f} us")
    det = results.get("detectors", {})
    if "error" in det:
        lines.append(f"  detectors: {det['error']}")
    else:
        lines.append("  detectors (per owner / per call; target <= 3 us per DB span)")
        for activity, by in det.items():
            for detector, row in by.items():
                lines.append(
                    f"    {activity[:52]:<52} {detector:<26} {row['us_per_owner']:9.2f} us "
                    f"{row['us_per_call']:7.3f} us/call  ({row['findings']} findings)"
                )
    pipe = results.get("pipeline", {})
    if "error" in pipe:
        lines.append(f"  pipeline: {pipe['error']}")
    else:
        lines.append("  pipeline per request (median block): none / sdk / agent, and per span")
        for shape, row in pipe.items():
            r = row["request_us"]
            lines.append(
                f"    {shape:<12} {row['spans_per_request']:>3} spans  request {r['none']:8.1f} / "
                f"{r['sdk']:8.1f} / {r['agent']:8.1f} us   telemetry per span: "
                f"sdk {row['sdk_overhead_per_span_us']:6.2f} us, "
                f"agent {row['agent_overhead_per_span_us']:6.2f} us "
                f"(+{row['agent_minus_sdk_per_span_us']:.2f} us, {row['agent_over_sdk_telemetry_cost']:.2f}x)"
            )
    enc = results.get("encode", {})
    if "error" in enc:
        lines.append(f"  encode: {enc['error']}")
    else:
        for name, row in enc.items():
            lines.append(
                f"  OTLP encode ({name} spans): SDK encoder {row['us_per_span']:.2f} us/span "
                f"(of which Resource.__hash__ {row['resource_hash_us_per_span']:.2f} us, "
                f"{row['resource_attributes']} resource attributes), "
                f"{row['bytes_per_span']:.0f} B/span, {row['attributes_per_span']:.1f} attributes/span"
            )
            if "local_file_json_us_per_span" in row:
                lines.append(
                    "    local file, former path (SDK encoder + MessageToDict + json): "
                    f"{row['local_file_json_us_per_span']:.2f} us/span; "
                    f"its JSON encoder (export/otlp_json_encode.py): "
                    f"{row['local_file_json_encoder_us_per_span']:.2f} us/span, "
                    f"same line: {row['local_file_json_encoder_same_line']}"
                )
            if "agent_encoder_us_per_span" in row:
                lines.append(
                    f"    agent encoder (export/otlp_encode.py): "
                    f"{row['agent_encoder_us_per_span']:.2f} us/span, "
                    f"same bytes: {row['agent_encoder_same_bytes']}"
                )
    calls = results.get("calls", {})
    if "error" in calls:
        lines.append(f"  calls: {calls['error']}")
    elif calls:
        lines.append(f"  Python calls per request that differ (sdk -> agent, {calls['queries']} queries)")
        python_rows = [r for r in calls["calls_per_request"] if "(~)" not in r["function"]]
        for row in python_rows[:15]:
            lines.append(f"    {row['function'][:90]:<90} {row['sdk']:7.1f} -> {row['agent']:7.1f}")
        lines.append(
            "  agent functions per request: calls, cumulative us under cProfile (inflated; relative)"
        )
        for row in calls.get("agent_functions", [])[:12]:
            lines.append(
                f"    {row['function'][:90]:<90} {row['calls']:7.1f} "
                f"{row['cumulative_us_under_cprofile']:9.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Micro-benchmarks of the agent's per-span work.")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a few seconds)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = collect(args.quick)
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
