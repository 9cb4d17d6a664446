"""Outbound HTTP, template spans and the time split end to end: the sample app under
hms-otel-run (runserver, real PostgreSQL and Redis) calling a loopback fake FHIR server, spans
read from an OTLP receiver. Seeded MRNs (in FHIR paths) and family names (in a search
parameter) never leave the process."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess

from hms_otel_agent import sample
from hms_otel_agent.demo.fhir_server import FakeFhirServer

from .conftest import otlp_env, runserver, server_span_for

pytestmark = pytest.mark.e2e

OUTBOUND = "hms_otel_agent/sample/hms/outbound.py"
CLIENT_SCOPES = ("opentelemetry.instrumentation.requests", "opentelemetry.instrumentation.httpx")
PARTS = ("db_ms", "cache_ms", "http_ms", "template_ms", "app_ms")


def marker(what: str) -> int:
    lines = (Path(sample.__file__).parent / "hms" / "outbound.py").read_text().splitlines()
    [number] = [i for i, line in enumerate(lines, 1) if line.endswith(f"# outbound: {what}")]
    return number


def seeded(db_url: str, count: int) -> list[str]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT mrn, family_name FROM hms_patient ORDER BY id LIMIT %s", (count,)
        ).fetchall()
    return [value for row in rows for value in row]


def everything(span: ReceivedSpan) -> str:
    texts = [span.name, repr(span.attributes), span.status_message, repr(span.resource)]
    texts += [repr(e) for e in span.events]
    return "\n".join(texts)


def time_split(span: ReceivedSpan) -> dict[str, float]:
    return {part: float(span.attributes[f"hms.time.{part}"]) for part in PARTS}  # type: ignore[arg-type]


def test_outbound_calls_templates_and_time_split_under_hms_otel_run(
    otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> None:
    with FakeFhirServer(delay_ms=2) as fhir_url:
        env = {**otlp_env(otlp_receiver, "http/protobuf"), "HMS_SAMPLE_FHIR_URL": fhir_url}
        app = run_sample(lambda port: runserver(port, "--noreload"), env, stop_signal=signal.SIGINT)
        assert app.request("GET", "/patients/fhir/?limit=8").status == 200
        assert app.request("GET", "/patients/fhir/optimized/?limit=8").status == 200
        assert app.request("GET", "/clinic/wards/board/").status == 200
        naive = server_span_for(otlp_receiver, "/patients/fhir/")
        optimized = server_span_for(otlp_receiver, "/patients/fhir/optimized/")
        board = server_span_for(otlp_receiver, "/clinic/wards/board/")
        otlp_receiver.wait_for_spans(lambda s: s.parent_span_id == naive.span_id, count=16)
        app.stop()
    base = fhir_url.removesuffix("/fhir")

    # client spans: one per call, under the request, URLs templated
    calls = [s for s in otlp_receiver.children_of(naive) if s.scope_name in CLIENT_SCOPES]
    assert len(calls) == 16 and all(s.kind == "SPAN_KIND_CLIENT" for s in calls)
    urls = sorted({str(s.attributes.get("url.full") or s.attributes.get("http.url")) for s in calls})
    assert urls == [
        f"{base}/fhir/Observation?patient=REDACTED&patient.family=REDACTED&_count=3",
        f"{base}/fhir/Patient/{{id}}",
    ]
    assert {s.attributes["hms.http.timeout"] for s in calls} == {False}
    assert {s.attributes["code.file.path"] for s in calls} == {OUTBOUND}
    twin_calls = [s for s in otlp_receiver.children_of(optimized) if s.scope_name in CLIENT_SCOPES]
    assert len(twin_calls) == 2 and {s.attributes["hms.http.timeout"] for s in twin_calls} == {True}

    # findings on the request, at the lines that make the calls
    events = [
        e.attributes
        for e in naive.events
        if str(e.attributes.get("hms.finding.kind", "")).startswith("http_")
    ]
    found = sorted(
        (str(e["hms.finding.kind"]), int(e["code.line.number"]), int(e["hms.finding.repetitions"]))
        for e in events
    )  # type: ignore[arg-type]
    read, search = marker("Patient read"), marker("Observation search")
    assert found == sorted(
        [
            ("http_n_plus_one", read, 8),
            ("http_n_plus_one", search, 8),
            ("http_no_timeout", read, 8),
            ("http_no_timeout", search, 8),
        ]
    )
    fixes = {
        str(e["hms.hint.fix"]).split(":")[0] for e in events if e["hms.finding.kind"] == "http_n_plus_one"
    }
    assert fixes == {"one search instead of a read per id", "one search for every value"}
    assert not [
        e for e in optimized.events if str(e.attributes.get("hms.finding.kind", "")).startswith("http_")
    ]

    # where the time went: parts add up to the request, outbound time mostly on the naive page
    for span in (naive, optimized, board):
        parts = time_split(span)
        assert abs(sum(parts.values()) - span.duration_ns / 1e6) < 0.01, parts
    assert time_split(naive)["http_ms"] > time_split(optimized)["http_ms"] > 0
    assert time_split(board)["template_ms"] > 0 and time_split(board)["db_ms"] > 0

    # the template page: render spans, and its N+1 at the included template's line
    renders = [s for s in otlp_receiver.spans() if s.scope_name == "hms_otel_agent.django_templates"]
    assert sorted(s.name for s in renders if s.trace_id == board.trace_id) == [
        "render clinic/_ward_summary.html",
        "render clinic/_ward_summary.html",
        "render clinic/ward_board.html",
    ]
    located = {
        (e.attributes["code.file.path"], e.attributes["code.function.name"])
        for e in board.events
        if e.name == "hms.n_plus_one"
    }
    assert located == {("clinic/_ward_summary.html", "template")}

    # no MRN or family name of the patients the view sent, anywhere
    text = "\n".join(everything(s) for s in otlp_receiver.spans())
    values = seeded(sample_app_db["DATABASE_URL"], 8)
    assert len(values) == 16
    assert [value for value in values if value in text] == []
