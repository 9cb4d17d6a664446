"""The report formats: a stable JSON schema, a Markdown table for CI comments, the terminal view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hms_otel_agent.launch.cli import main

from .otlp_builder import DJANGO, n_plus_one_request, new_span_id, new_trace, request, span, write_lines

FINDING_KEYS = {
    "fingerprint", "kind", "route", "routes", "subject", "relation", "relation_kind", "model",
    "key_pattern", "statement", "requests", "repetitions", "max_repetitions", "total_ms", "per_request_ms",
    "location", "origin", "fix", "hint", "services",
}  # fmt: skip
SUMMARY_KEYS = {
    "spans", "traces", "owners", "requests", "tests", "owners_with_findings", "db_queries", "db_time_ms",
    "cache_reads", "cache_hit_ratio", "services", "run_ids",
}  # fmt: skip
PATTERN_KEYS = {
    "key_pattern", "reads", "hits", "misses", "hit_ratio", "writes", "writes_without_ttl", "deletes",
    "warming_candidate",
}  # fmt: skip


def cache_request(hits: int, misses: int) -> dict:
    trace, server = new_trace(), new_span_id()
    reads = [
        span(trace, new_span_id(), server, "cache.get", 3, duration_ms=0.1, attributes={
            "hms.cache.operation": "get", "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": i < hits, "hms.cache.backend": "redis"})
        for i in range(hits + misses)
    ]  # fmt: skip
    write = span(trace, new_span_id(), server, "cache.set", 3, attributes={
        "hms.cache.operation": "set", "hms.cache.key_pattern": "encounters:recent",
        "hms.cache.backend": "redis"})  # fmt: skip
    server_span = span(
        trace, server, "", "GET patients/cached/", 2, attributes={"http.route": "patients/cached/"}
    )
    return request({DJANGO: [server_span], "hms_otel_agent.django_cache": [*reads, write]})


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "traces.jsonl",
        n_plus_one_request(6),
        n_plus_one_request(10),
        n_plus_one_request(5, route="patients/"),
        cache_request(hits=3, misses=22),
    )


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_json_schema_is_stable(sample_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(run_cli(capsys, "analyze", str(sample_file), "--format", "json"))
    assert set(data) == {
        *("schema", "source", "inputs", "thresholds", "summary", "findings", "cache", "notes"),
        "time",  # added within hms-otel-report/1: where each route's time went
    }
    assert data["schema"] == "hms-otel-report/1" and data["source"] == "analyzed"
    times = {t["route"]: t for t in data["time"]}
    assert {"encounters/", "patients/"} <= set(times)
    for t in data["time"]:
        parts = [t[k] for k in ("db_ms", "cache_ms", "http_ms", "template_ms", "app_ms")]
        assert sum(parts) == pytest.approx(t["total_ms"]) and t["mean_ms"] * t["owners"] == pytest.approx(
            t["total_ms"]
        )
        assert sum(t["shares"].values()) == pytest.approx(1.0, abs=1e-3) or t["total_ms"] == 0
    assert times["encounters/"]["db_ms"] > 0
    assert data["inputs"] == [str(sample_file)]
    assert set(data["summary"]) == SUMMARY_KEYS
    assert data["summary"]["requests"] == 4 and data["summary"]["db_queries"] == 21
    # one fingerprint over three requests on two routes (and cache findings once that detector is in)
    [finding] = [f for f in data["findings"] if f["kind"] == "n_plus_one"]
    assert set(finding) == FINDING_KEYS
    assert finding["requests"] == 3 and finding["repetitions"] == 21 and finding["max_repetitions"] == 10
    assert finding["routes"] == ["encounters/", "patients/"] and finding["route"] == "encounters/"
    assert finding["total_ms"] == pytest.approx(21.0) and finding["per_request_ms"] == pytest.approx(7.0)
    assert finding["location"] == {"file": "hms/views.py", "line": 42, "function": "encounters"}
    assert set(data["cache"]) == {"key_patterns", "warming_candidates"}
    patterns = {p["key_pattern"]: p for p in data["cache"]["key_patterns"]}
    assert all(set(p) == PATTERN_KEYS for p in patterns.values())
    summary = patterns["patient:{id}:summary"]
    assert (summary["reads"], summary["hits"], summary["misses"]) == (25, 3, 22)
    assert summary["hit_ratio"] == 0.12 and summary["warming_candidate"] is True
    assert patterns["encounters:recent"]["writes_without_ttl"] == 1
    assert data["cache"]["warming_candidates"] == ["patient:{id}:summary"]


def test_findings_worst_first_by_total_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = n_plus_one_request(5)
    big = n_plus_one_request(9)
    for s in big["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # another statement, slower
        for a in s["attributes"]:
            if a["key"] == "db.statement":
                a["value"]["stringValue"] = "SELECT 1 FROM hms_facility WHERE id = ?"
    path = write_lines(tmp_path / "t.jsonl", small, big)
    data = json.loads(run_cli(capsys, "analyze", str(path), "--format", "json"))
    assert [f["repetitions"] for f in data["findings"]] == [9, 5]


def test_markdown_table(sample_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "analyze", str(sample_file), "--format", "markdown")
    lines = out.splitlines()
    assert lines[0] == "## hms-otel findings"
    header = lines.index(
        "| # | kind | route | relation / key pattern | requests | repetitions | total | per request "
        "| location | fix |"
    )
    assert lines[header + 1] == "|---:|---|---|---|---:|---:|---:|---:|---|---|"
    row = lines[header + 2]
    assert row.startswith("| 1 | N+1 | encounters/, patients/ | `hms_patient` | 3 | 21 | 21.0 ms | 7.0 ms |")
    assert "`hms/views.py:42 in encounters`" in row
    assert row.count(" | ") == 9  # the fix's "|"-free text stays in one cell
    assert "### Cache key patterns" in out and "**warming candidate**" in out


def test_output_file_format_from_extension(sample_file: Path, tmp_path: Path) -> None:
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    assert main(["analyze", str(sample_file), "-o", str(md)]) == 0
    assert main(["analyze", str(sample_file), "-o", str(js)]) == 0
    assert md.read_text().startswith("## hms-otel findings")
    assert json.loads(js.read_text())["schema"] == "hms-otel-report/1"


def test_terminal_view_and_fail_on_findings(sample_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(sample_file), "--fail-on-findings"]) == 1
    out = capsys.readouterr().out
    assert "hms-otel findings" in out and " (detected offline) in 4 requests" in out
    assert "ANY(%s)" in out and "hms/views.py:42" in out and "warming candidate" in out
