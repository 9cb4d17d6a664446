"""The exported payload of the sample app's requests, held against a recorded run.

The sample pages (export/test_otlp_json_encode.SAMPLE_PAGES) run in this process through the
agent's pipeline; their spans are encoded as the OTLP exporter encodes them, with what differs
from run to run made constant: trace and span ids numbered in order of appearance; times and
durations zeroed, in hints too (whose findings come worst first, by time); the process's pid and
instance id; this checkout's directory; the test database's name, the peer port and the Redis
database index. On Python 3.11 + Django 5.2 the bytes must equal those recorded in
``recorded/sample_payload.txt`` (one span per line, readable in a diff):
a refactoring that changes what leaves the process -- a name, an attribute, a value, an event,
the order of spans -- fails here. After an intended change, record again with
``HMS_OTEL_RECORD_PAYLOADS=1`` and review the diff of the recorded file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import django
from export.test_otlp_json_encode import SAMPLE_PAGES
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, SpanContext

from hms_otel_agent.export.otlp_encode import SpanEncoder

RECORDED = Path(__file__).parent / "recorded" / "sample_payload.txt"
RECORDED_ON = ((3, 11), (5, 2))  # Python, Django
_OUT = "HMS_OTEL_PAYLOAD_OUT"  # where the fresh process writes the payload's text
ROOT = str(Path(__file__).resolve().parents[2])
# Values that differ between two runs of the same requests: times, and what they decide.
_TIMED = re.compile(r"duration|_ms$|\.ms$|time|stacktrace|peer\.port$|database_index$")
_DATABASE = re.compile(r"hms_otel_t_[0-9a-f]+_[a-z0-9]+_")  # the test database: new each run, per worker
_TIME_TEXT = re.compile(r"\d+(?:[.,]\d+)* ?(?:ms|s)\b")  # "(39.5 ms)" in a hint
_VOLATILE_RESOURCE = ("process.pid", "service.instance.id", "process.command_args", "process.command_line")


class _Ids:
    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def __call__(self, value: int) -> int:
        return self.seen.setdefault(value, len(self.seen) + 1)


def _constant(value: Any) -> Any:
    if isinstance(value, str):
        return _TIME_TEXT.sub("<time>", _DATABASE.sub("<database>_", value.replace(ROOT, "<root>")))
    if isinstance(value, tuple):
        return tuple(_constant(v) for v in value)
    return value


def _attributes(attributes: Any) -> dict[str, Any]:
    out = {k: _constant(v) for k, v in (attributes or {}).items() if not _TIMED.search(k)}
    for key, value in out.items():
        if "hint" in key and isinstance(value, tuple):
            out[key] = tuple(sorted(value))  # worst first: by time
    return out


def _normalized(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    trace_ids, span_ids = _Ids(), _Ids()

    def context(ctx: SpanContext | None) -> SpanContext | None:
        if ctx is None:
            return None
        return SpanContext(
            trace_ids(ctx.trace_id), span_ids(ctx.span_id), ctx.is_remote, ctx.trace_flags, ctx.trace_state
        )

    out = []
    for span in spans:
        resource = span.resource
        attributes = {k: v for k, v in resource.attributes.items() if k not in _VOLATILE_RESOURCE}
        out.append(
            ReadableSpan(
                name=span.name,
                context=context(span.context),
                parent=context(span.parent),
                resource=Resource(attributes, resource.schema_url),
                attributes=_attributes(span.attributes),
                # Findings come out worst first: by time, which differs between runs.
                events=sorted(
                    (Event(e.name, _attributes(e.attributes), 0) for e in span.events),
                    key=lambda e: (e.name, repr(sorted(e.attributes.items()))),
                ),
                links=[Link(context(link.context), _attributes(link.attributes)) for link in span.links],  # type: ignore[arg-type]
                kind=span.kind,
                status=span.status,
                start_time=0,
                end_time=0,
                instrumentation_scope=span.instrumentation_scope,
            )
        )
    return out


def _lines(payload: bytes) -> list[str]:
    """One line a span (text format of the protobuf message), in the request's order."""
    request = ExportTraceServiceRequest.FromString(payload)
    lines = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                text = str(span).replace("\n", " ").strip()
                lines.append(f"{scope_spans.scope.name} | {text}")
    return lines


def test_the_sample_apps_payload_encodes_as_the_sdk_encodes_it(traced: Any) -> None:
    """In this process: the normalized payload, the agent's encoder against the SDK's. In the
    fresh process of the test below, it also writes the payload's text where it is told."""
    from django.core.cache import caches
    from django.test import Client

    from hms_otel_agent.instrument import implicit_units

    for alias in caches:  # the same misses and hits in every run (this process's Redis database)
        caches[alias].clear()
    implicit_units.close_all()  # the clearing's own unit of work ends here, not during a request
    from hms_otel_agent.signals import cache_signals

    cache_signals.reset_evidence()  # what earlier tests' requests taught the detectors
    traced.clear()
    client = Client(raise_request_exception=False)
    for path in SAMPLE_PAGES:
        client.get(path)
    spans = _normalized(traced.spans())
    assert len(spans) > 100
    payload = SpanEncoder().encode(spans)
    assert payload == encode_spans(spans).SerializeToString()  # the agent's encoder, the SDK's bytes
    out = os.environ.get(_OUT)
    if out:
        Path(out).write_text("\n".join(_lines(payload)) + "\n", encoding="utf-8")


def test_the_sample_apps_payload_is_the_recorded_one(tmp_path: Path) -> None:
    """In a fresh process: what earlier tests in this one left behind (Django's caches, learned
    key patterns, open units of work) would change the spans."""
    out = tmp_path / "payload.txt"
    test = f"{Path(__file__).resolve()}::test_the_sample_apps_payload_encodes_as_the_sdk_encodes_it"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:xdist", test],
        env={**os.environ, _OUT: str(out)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    if os.environ.get("HMS_OTEL_RECORD_PAYLOADS"):
        RECORDED.write_text(text, encoding="utf-8")
    # The payload depends on the interpreter and Django (qualified function names from 3.11,
    # Django's own spans and queries): it is held where it was recorded, Python 3.11 + Django 5.2
    # (CI's first stage); elsewhere the run above still checks the encoder against the SDK's.
    if (sys.version_info[:2], django.VERSION[:2]) == RECORDED_ON:
        assert text == RECORDED.read_text(encoding="utf-8")
