"""`hms-otel analyze` of spans from other agents prints span names with their path templated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hms_otel_agent.launch.cli import main

from .otlp_builder import (
    CLIENT,
    DJANGO,
    SERVER,
    n_plus_one_request,
    new_span_id,
    new_trace,
    request,
    span,
    write_lines,
)

MRN = "MRN-" + "QZ7731X"
START = 1_000_000_000
MS = 1_000_000


@pytest.mark.parametrize("fmt", ["terminal", "json", "markdown"])
def test_a_path_in_a_span_name_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    # An ASGI or Node agent names its server spans after the path and sets no http.route.
    request = n_plus_one_request(6, route=f"/patients/{MRN}/?q=Quillfeather")
    for scope in request["resourceSpans"][0]["scopeSpans"]:
        if scope["scope"]["name"] == DJANGO:
            [server] = scope["spans"]
            server["attributes"] = []
    path = write_lines(tmp_path / "other.jsonl", request)
    assert main(["analyze", "--format", fmt, str(path)]) == 0
    out = capsys.readouterr().out
    # the finding's row, named after the request: no route table, so no word is certainly structural
    assert "GET /{id}/{id}/?q=REDACTED" in out
    assert MRN not in out and "Quillfeather" not in out


def _foreign_request(target: str) -> Path:
    """An N+1 request whose server span is named after its raw target (no http.route)."""
    request = n_plus_one_request(6, route=target)
    for scope in request["resourceSpans"][0]["scopeSpans"]:
        if scope["scope"]["name"] == DJANGO:
            [server] = scope["spans"]
            server["attributes"] = []
    return request


@pytest.mark.parametrize(
    ("env", "printed", "absent"),
    [
        # the defaults: no word of the path is certainly structural, every value redacted
        ({}, "GET /{id}/{id}/?ward=REDACTED&q=REDACTED", [MRN, "Quillfeather", "ward=3"]),
        # the live agent's settings, read by analyze too
        (
            {"HMS_OTEL_SAFE_PATH_SEGMENTS": "patients", "HMS_OTEL_SAFE_QUERY_PARAMS": "ward"},
            "GET /patients/{id}/?ward=3&q=REDACTED",
            [MRN, "Quillfeather"],
        ),
        # the opt-ins restore what they promise and nothing else: q is always redacted
        (
            {"HMS_OTEL_CAPTURE_URL_PATHS": "true", "HMS_OTEL_CAPTURE_QUERY_VALUES": "true"},
            f"GET /patients/{MRN}/?ward=3&q=REDACTED",
            ["Quillfeather"],
        ),
        # HMS_OTEL_REDACT_QUERY_PARAMS adds to the always-redacted names, even with the opt-in
        (
            {"HMS_OTEL_CAPTURE_QUERY_VALUES": "true", "HMS_OTEL_REDACT_QUERY_PARAMS": "ward"},
            "GET /{id}/{id}/?ward=REDACTED&q=REDACTED",
            [MRN, "Quillfeather", "ward=3"],
        ),
    ],
    ids=["defaults", "safe settings", "capture opt-ins", "redact list"],
)
def test_analyze_applies_the_privacy_settings_of_the_live_agent(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    printed: str,
    absent: list[str],
) -> None:
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    path = write_lines(tmp_path / "other.jsonl", _foreign_request(f"/patients/{MRN}/?ward=3&q=Quillfeather"))
    for fmt in ("terminal", "json", "markdown"):
        assert main(["analyze", "--format", fmt, str(path)]) == 0
        out = capsys.readouterr().out
        assert printed in out, out
        for value in absent:
            assert value not in out, (fmt, value)


@pytest.mark.parametrize(
    ("env", "subject"),
    [
        ({}, "GET http://ehr.local/{id}/{id}/{id}?ward=REDACTED&name=REDACTED"),
        (
            {"HMS_OTEL_SAFE_PATH_SEGMENTS": "ehr,chart", "HMS_OTEL_SAFE_QUERY_PARAMS": "ward"},
            "GET http://ehr.local/ehr/chart/{id}?ward=3&name=REDACTED",
        ),
    ],
    ids=["defaults", "safe settings"],
)
def test_analyze_outbound_urls_follow_the_settings(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    subject: str,
) -> None:
    """A foreign agent's raw client spans: the URL of the HTTP N+1 is made safe with the settings."""
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    trace, server = new_trace(), new_span_id()
    calls = [
        span(
            trace,
            new_span_id(),
            server,
            "GET",
            CLIENT,
            START + (5 + 8 * index) * MS,
            8.0,
            {
                "http.request.method": "GET",
                "url.full": f"http://ehr.local/ehr/chart/{MRN}{index}?ward=3&name=Quillfeather",
                "http.response.status_code": 200,
            },
        )
        for index in range(6)
    ]
    server_span = span(trace, server, "", "GET chart/", SERVER, START, 100.0, {"http.route": "chart/"})
    path = write_lines(tmp_path / "t.jsonl", request({"io.other.http": calls, DJANGO: [server_span]}))
    assert main(["analyze", "--format", "json", str(path)]) == 0
    out = capsys.readouterr().out
    [finding] = [f for f in json.loads(out)["findings"] if f["kind"] == "http_n_plus_one"]
    assert finding["subject"] == subject
    assert MRN not in out and "Quillfeather" not in out
