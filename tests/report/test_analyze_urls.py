"""`hms-otel analyze` of spans from other agents prints span names with their path templated."""

from __future__ import annotations

from pathlib import Path

import pytest

from hms_otel_agent.launch.cli import main

from .otlp_builder import DJANGO, n_plus_one_request, write_lines

MRN = "MRN-" + "QZ7731X"


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
