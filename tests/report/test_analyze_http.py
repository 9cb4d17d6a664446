"""`hms-otel analyze` on outbound HTTP and template spans: from the agent's spans and from a
foreign agent's raw client spans (URLs made safe again), the HTTP findings and the time split
per route, the same as live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hms_otel_agent.launch.cli import main

from .otlp_builder import CLIENT, DJANGO, INTERNAL, SERVER, new_span_id, new_trace, request, span, write_lines

REQUESTS = "opentelemetry.instrumentation.requests"
TEMPLATES = "hms_otel_agent.django_templates"
MRNS = [f"MRN-QZ{index:04d}" for index in range(6)]
START = 1_000_000_000
MS = 1_000_000


def page(agent: bool) -> dict[str, Any]:
    """GET patients/fhir/ (100 ms): a template render 60-90 ms; six FHIR reads 5-55 ms (8 ms each,
    sequential), raw URLs with an MRN when a foreign agent sent them."""
    trace, server = new_trace(), new_span_id()
    calls = []
    for index, mrn in enumerate(MRNS):
        url = (
            "http://fhir.local:8080/fhir/Patient/{id}"
            if agent
            else f"http://fhir.local:8080/fhir/Patient/{mrn}"
        )
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": url,
            "http.response.status_code": 200,
        }
        if agent:
            attributes.update(
                {
                    "code.file.path": "hms/views.py",
                    "code.line.number": 12,
                    "code.function.name": "fhir_page",
                    "hms.http.timeout": False,
                }
            )
        calls.append(
            span(trace, new_span_id(), server, "GET", CLIENT, START + (5 + 8 * index) * MS, 8.0, attributes)
        )
    scopes = {
        (REQUESTS if agent else "io.other.http"): calls,
        DJANGO: [
            span(
                trace,
                server,
                "",
                "GET patients/fhir/",
                SERVER,
                START,
                100.0,
                {"http.route": "patients/fhir/"},
            )
        ],
    }
    if agent:
        scopes[TEMPLATES] = [
            span(
                trace,
                new_span_id(),
                server,
                "render x.html",
                INTERNAL,
                START + 60 * MS,
                30.0,
                {"hms.template.name": "x.html"},
            )
        ]
    return request(scopes)


@pytest.mark.parametrize("agent", [True, False], ids=["agent spans", "foreign raw spans"])
def test_analyze_finds_the_http_n_plus_one_and_splits_the_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: bool
) -> None:
    path = write_lines(tmp_path / "t.jsonl", page(agent), page(agent))
    assert main(["analyze", "--format", "json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    kinds = sorted(f["kind"] for f in data["findings"])
    assert kinds == (["http_n_plus_one", "http_no_timeout"] if agent else ["http_n_plus_one"])
    [n_plus_one] = [f for f in data["findings"] if f["kind"] == "http_n_plus_one"]
    assert n_plus_one["subject"] == "GET http://fhir.local:8080/fhir/Patient/{id}"
    assert (n_plus_one["requests"], n_plus_one["repetitions"]) == (2, 12)
    assert n_plus_one["fix"].startswith(
        "one search instead of a read per id: GET /fhir/Patient?_id=id1,id2,id3"
    )
    assert n_plus_one["location"] == (
        {"file": "hms/views.py", "line": 12, "function": "fhir_page"} if agent else None
    )
    [time] = data["time"]
    assert (time["route"], time["owners"], time["total_ms"]) == ("patients/fhir/", 2, 200.0)
    assert (time["http_ms"], time["template_ms"]) == (96.0, 60.0 if agent else 0.0)
    assert time["app_ms"] == pytest.approx(200.0 - 96.0 - time["template_ms"])
    assert not any(mrn in out for mrn in MRNS)
    timeout_note = "HTTP calls without a timeout (only the agent's client spans say it"
    assert any(timeout_note in note for note in data["notes"]) is (not agent)
    for fmt in ("terminal", "markdown"):
        assert main(["analyze", "--format", fmt, str(path)]) == 0
        text = capsys.readouterr().out
        assert "patients/fhir/" in text and not any(mrn in text for mrn in MRNS)
        assert ("where the time goes" in text) if fmt == "terminal" else ("### Where the time goes" in text)


def test_recorded_time_split_is_used_when_present(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hms-otel report` reads the split the live agent wrote (child spans may have been sampled
    or dropped on the way)."""
    trace = new_trace()
    recorded = {
        "hms.time.db_ms": 10.0,
        "hms.time.cache_ms": 0.0,
        "hms.time.http_ms": 30.0,
        "hms.time.template_ms": 20.0,
        "hms.time.app_ms": 40.0,
    }
    server = span(trace, new_span_id(), "", "GET a/", SERVER, START, 100.0, {"http.route": "a/", **recorded})
    path = write_lines(tmp_path / "t.jsonl", request({DJANGO: [server]}))
    assert main(["report", "--format", "json", str(path)]) == 0
    [time] = json.loads(capsys.readouterr().out)["time"]
    assert (time["db_ms"], time["http_ms"], time["template_ms"], time["app_ms"]) == (10.0, 30.0, 20.0, 40.0)
