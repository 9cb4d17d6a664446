"""Span compression changes what is exported, never what is found: the sample app under
hms-otel-run, on real PostgreSQL and Redis, answers the same requests with HMS_OTEL_COMPRESS_SPANS
off and on; the finding events and the hms.* attributes of every request span are identical
(timings aside), every statement is accounted for by the DB spans' hms.compressed.count, and
every exported span's parent was exported too."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, venv_executable
from harness.services import free_port

from hms_otel_agent.signals.semconv import stable_value

PATHS = [
    "/encounters/?limit=10",
    "/patients/?limit=10",
    "/appointments/schedule/?limit=12",
    "/patients/records/?limit=10",
    "/notes/?limit=10",
    "/facilities/",
    "/reports/raw-encounters/?limit=10",
    "/patients/lookup/?ids=1,2,3,4,5,6",
    "/patients/cached/?limit=10",
    "/patients/cached/lookup/?ids=21,22,23,24,25,26",
    "/patients/1/summary/",
    "/encounters/recent/",
    "/encounters/optimized/?limit=10",
    "/stats/",
]
# Timings differ from run to run; everything else must not.
TIMED = {
    *("hms.finding.duration_ms", "hms.db.duration_ms", "hms.db.connect_ms", "hms.cache.hit_ratio"),
    *(f"hms.time.{part}" for part in ("db_ms", "cache_ms", "http_ms", "template_ms", "app_ms")),
}
_MS = re.compile(r"\(\d+(?:\.\d+)? ms\)")


def normalized(value: Any) -> Any:
    if isinstance(value, str):
        return _MS.sub("(… ms)", value)
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def exported_path(path: str) -> str:
    """How the agent exports a request's path: the route with its placeholder."""
    return path.split("?")[0].replace("/1/", "/{pk}/")


def request_spans(receiver: OtlpReceiver) -> dict[str, ReceivedSpan]:
    servers = {}
    for span in receiver.spans():
        if span.kind == "SPAN_KIND_SERVER":
            path = span.attributes.get("url.path")  # the stable names (the default), else the old
            servers[str(path) if path else urlsplit(str(span.attributes.get("http.url", ""))).path] = span
    return servers


def what_was_found(server: ReceivedSpan) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    attributes = {
        k: normalized(v) for k, v in server.attributes.items() if k.startswith("hms.") and k not in TIMED
    }
    attributes["hms.hints"] = sorted(attributes.get("hms.hints", []))  # findings are ordered by duration
    events = sorted(
        (
            (event.name, {k: normalized(v) for k, v in event.attributes.items() if k not in TIMED})
            for event in server.events
            if event.name.startswith("hms.")
        ),
        key=repr,
    )
    return attributes, events


def run_app(
    app_process: Callable[..., AppProcess], sample_app_db: dict[str, str], compress: bool
) -> OtlpReceiver:
    import redis

    redis.Redis.from_url(sample_app_db["REDIS_URL"]).flushdb()  # the same cold cache for both runs
    receiver = OtlpReceiver().start()
    port = free_port()
    env = {
        **sample_app_db,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "HMS_OTEL_COMPRESS_SPANS": "true" if compress else "false",
    }
    cmd = [
        venv_executable("hms-otel-run"),
        "--",
        sys.executable,
        "-m",
        "hms_otel_agent.sample",
        "runserver",
        f"127.0.0.1:{port}",
        "--noreload",
    ]
    app = app_process(cmd, env=env, base_url=f"http://127.0.0.1:{port}", stop_signal=signal.SIGINT)
    app.wait_http("/health/", timeout=60)
    for path in PATHS:
        assert app.request("GET", path).status == 200, path
    app.stop()  # flushes at exit
    receiver.wait_for_spans(lambda s: s.kind == "SPAN_KIND_SERVER", count=len(PATHS) + 1)
    receiver.stop()
    return receiver


def test_compression_changes_the_spans_exported_never_the_findings(
    app_process: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> None:
    plain = run_app(app_process, sample_app_db, compress=False)
    compressed = run_app(app_process, sample_app_db, compress=True)

    plain_requests, compressed_requests = request_spans(plain), request_spans(compressed)
    for path in PATHS:
        key = exported_path(path)
        assert what_was_found(compressed_requests[key]) == what_was_found(plain_requests[key]), path
    assert any(e.name == "hms.n_plus_one" for e in compressed_requests["/encounters/"].events)

    spans = compressed.spans()
    assert len(spans) < len(plain.spans())
    summaries = [s for s in spans if "hms.compressed.count" in s.attributes]
    assert summaries
    for summary in summaries:
        assert summary.attributes["hms.compressed.count"] >= 5  # HMS_OTEL_N_PLUS_ONE_THRESHOLD
        assert 0 < summary.attributes["hms.compressed.duration_ms"] <= summary.duration_ns / 1e6 + 0.001
        assert summary.attributes["hms.db.fingerprint"] and stable_value(summary.attributes, "db.query.text")
    ids = {(s.trace_id, s.span_id) for s in spans}
    assert len(ids) == len(spans)
    for span in spans:
        assert span.is_root or (span.trace_id, span.parent_span_id) in ids, span.short()
    # Every statement is still counted: the DB spans under a request stand for its query count.
    for path in PATHS:
        server = compressed_requests[exported_path(path)]
        db_spans = [s for s in compressed.descendants_of(server) if "hms.db.fingerprint" in s.attributes]
        represented = sum(int(s.attributes.get("hms.compressed.count", 1)) for s in db_spans)
        assert represented == server.attributes["hms.db.query_count"], path
