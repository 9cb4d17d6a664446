"""Outbound HTTP on the sample app's FHIR views (in-process Django, real PostgreSQL, a real
loopback FHIR server): client spans from requests, httpx (sync and async) and urllib3, their
URLs without an MRN or a name, the HTTP findings at the lines that make the calls, and the
owner's time split."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan

from hms_otel_agent import sample
from hms_otel_agent.demo import fhir_server

OUTBOUND = "hms_otel_agent/sample/hms/outbound.py"
SCOPES = {
    "requests": "opentelemetry.instrumentation.requests",
    "httpx": "opentelemetry.instrumentation.httpx",
    "urllib3": "opentelemetry.instrumentation.urllib3",
}


def marker(what: str) -> int:
    lines = (Path(sample.__file__).parent / "hms" / "outbound.py").read_text().splitlines()
    [number] = [i for i, line in enumerate(lines, 1) if line.endswith(f"# outbound: {what}")]
    return number


@pytest.fixture(scope="module")
def fhir() -> Iterator[fhir_server.FakeFhirServer]:
    server = fhir_server.FakeFhirServer(delay_ms=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fhir_views(traced: Traced, fhir: fhir_server.FakeFhirServer) -> Iterator[Traced]:
    from django.test import override_settings

    with override_settings(HMS_SAMPLE_FHIR_URL=fhir.url):
        yield traced


def client_spans(traced: Traced, scope: str) -> list[ReadableSpan]:
    return [s for s in traced.spans() if s.instrumentation_scope.name == SCOPES[scope]]


def findings(traced: Traced, server: ReadableSpan) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in traced.events(server):
        kind = event.get("hms.finding.kind")
        if isinstance(kind, str) and kind.startswith("http_"):
            found.setdefault(kind, []).append(event)
    return found


def seeded_phi() -> list[str]:
    from hms_otel_agent.sample.hms.models import Patient

    patients = list(Patient.objects.order_by("id")[:6])
    return [p.mrn for p in patients] + [p.family_name for p in patients]


def exported_text(spans: list[ReadableSpan]) -> str:
    return "\n".join(span.to_json() for span in spans)


def test_naive_view_n_plus_one_and_no_timeout_at_the_calling_lines(fhir_views: Traced) -> None:
    traced = fhir_views
    response, server = traced.request("/patients/fhir/?limit=6")
    assert response.status_code == 200 and len(response.json()["results"]) == 6
    calls = client_spans(traced, "requests")
    assert len(calls) == 12
    assert not client_spans(traced, "urllib3")  # requests' own urllib3 call is not a second span
    assert all(c.parent is not None and c.parent.span_id == server.context.span_id for c in calls)
    base = re.sub(r"/fhir$", "", traced_base(traced))
    urls = sorted(
        {str((c.attributes or {}).get("http.url") or (c.attributes or {}).get("url.full")) for c in calls}
    )
    assert urls == [
        f"{base}/fhir/Observation?patient=REDACTED&patient.family=REDACTED&_count=3",
        f"{base}/fhir/Patient/{{id}}",
    ]
    found = findings(traced, server)
    n_plus_one = {e["hms.finding.subject"]: e for e in found["http_n_plus_one"]}
    read = n_plus_one[f"GET {base}/fhir/Patient/{{id}}"]
    assert (read["hms.finding.repetitions"], read["code.file.path"], read["code.line.number"]) == (
        6,
        OUTBOUND,
        marker("Patient read"),
    )
    assert read["hms.hint.fix"].startswith(
        "one search instead of a read per id: GET /fhir/Patient?_id=id1,id2,id3"
    )
    search = n_plus_one[f"GET {base}/fhir/Observation?patient=REDACTED&patient.family=REDACTED&_count=3"]
    assert search["code.line.number"] == marker("Observation search")
    assert search["hms.hint.fix"].startswith(
        "one search for every value: GET /fhir/Observation?patient=v1,v2,v3"
    )
    no_timeout = sorted(e["code.line.number"] for e in found["http_no_timeout"])
    assert no_timeout == sorted([marker("Patient read"), marker("Observation search")])
    assert all(e["hms.finding.repetitions"] == 6 for e in found["http_no_timeout"])
    assert "http_sequential" not in found  # the loop is the N+1's: one batch fix, not concurrency
    attributes = server.attributes or {}
    assert attributes["hms.time.http_ms"] > 0
    parts = [attributes[f"hms.time.{k}"] for k in ("db_ms", "cache_ms", "http_ms", "template_ms", "app_ms")]
    duration_ms = ((server.end_time or 0) - (server.start_time or 0)) / 1e6
    assert abs(sum(parts) - duration_ms) < 0.01
    text = exported_text(traced.spans())
    for value in seeded_phi():
        assert value not in text


def traced_base(traced: Traced) -> str:
    from django.conf import settings

    return str(settings.HMS_SAMPLE_FHIR_URL)


def test_optimized_twin_same_content_two_calls_no_http_finding(fhir_views: Traced) -> None:
    traced = fhir_views
    naive, _ = traced.request("/patients/fhir/?limit=6")
    response, server = traced.request("/patients/fhir/optimized/?limit=6")
    assert response.json() == naive.json()
    calls = client_spans(traced, "httpx")
    assert len(calls) == 2
    assert findings(traced, server) == {}
    text = exported_text(traced.spans())
    assert "_id=REDACTED" in text
    for value in seeded_phi():
        assert value not in text


def test_async_httpx_without_timeout_and_urllib3(traced: Traced, fhir: fhir_server.FakeFhirServer) -> None:
    import httpx
    import urllib3

    async def fetch_all() -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            for index in range(5):
                await client.get(f"{fhir.url}/Patient/MRN-A{index}")

    with traced.tracer.start_as_current_span("nightly-sync"):
        asyncio.run(fetch_all())
        pool = urllib3.PoolManager()
        for index in range(5):
            pool.request("GET", f"{fhir.url}/Observation?patient=MRN-U{index}")
    [owner] = [s for s in traced.spans() if s.name == "nightly-sync"]
    assert len(client_spans(traced, "httpx")) == 5 and len(client_spans(traced, "urllib3")) == 5
    found = findings(traced, owner)
    subjects = sorted(e["hms.finding.subject"] for e in found["http_n_plus_one"])
    assert subjects == [f"GET {fhir.url}/Observation?patient=REDACTED", f"GET {fhir.url}/Patient/{{id}}"]
    [no_timeout] = found["http_no_timeout"]  # httpx's timeout=None; urllib3's is not judged
    assert no_timeout["hms.hint.fix"].startswith("give the client or call a timeout: httpx")
    assert no_timeout["code.file.path"].endswith("test_http_client.py")
    text = exported_text(traced.spans())
    assert "MRN-A" not in text and "MRN-U" not in text


def test_sequential_calls_to_different_endpoints(traced: Traced, fhir: fhir_server.FakeFhirServer) -> None:
    import requests

    slow = fhir_server.FakeFhirServer(delay_ms=60)
    slow.start()
    try:
        with traced.tracer.start_as_current_span("dashboard"):
            requests.get(f"{slow.url}/Patient/p1", timeout=5)
            requests.get(f"{slow.url}/Observation?patient=p1", timeout=5)
            requests.get(f"{slow.url}/metadata", timeout=5)
    finally:
        slow.stop()
    [owner] = [s for s in traced.spans() if s.name == "dashboard"]
    found = findings(traced, owner)
    assert list(found) == ["http_sequential"]
    [event] = found["http_sequential"]
    assert event["hms.finding.repetitions"] == 3
    assert event["hms.hint.fix"].startswith("if no call needs another's answer, run them concurrently")


def test_disabled_client_makes_no_span(traced: Traced, fhir: fhir_server.FakeFhirServer) -> None:
    """`uninstall` undoes the instrumentation (and `install` applies it again)."""
    import requests

    from hms_otel_agent.instrument import http_client

    http_client.uninstall("requests")
    try:
        requests.get(f"{fhir.url}/metadata", timeout=5)
        assert client_spans(traced, "requests") == []
    finally:
        http_client.instrument_requests(traced.base_settings, traced.tracer_provider, None)
    requests.get(f"{fhir.url}/metadata", timeout=5)
    assert len(client_spans(traced, "requests")) == 1
