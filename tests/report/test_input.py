"""Reading OTLP JSON: the formats accepted, bad input, span trees with missing parents."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.processes import run

from hms_otel_agent import config
from hms_otel_agent.launch.cli import main
from hms_otel_agent.report.build import build_report
from hms_otel_agent.report.otlp import InputError, read_paths
from hms_otel_agent.report.spans import build_owners

from .otlp_builder import (
    CLIENT,
    DJANGO,
    PSYCOPG,
    b64_ids,
    n_plus_one_request,
    new_span_id,
    new_trace,
    request,
    span,
    write_lines,
)

SETTINGS = config.load({}).settings


def analyze(tmp_path: Path, *requests: dict, name: str = "t.jsonl") -> dict:
    path = write_lines(tmp_path / name, *requests)
    report = build_report(read_paths([str(path)]).spans, SETTINGS, analyze=True)
    return report.to_dict()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- accepted input ---------------------------------------------------------------------------


def test_hex_and_base64_ids_give_the_same_findings(tmp_path: Path) -> None:
    req = n_plus_one_request(6)
    hex_report = analyze(tmp_path, req, name="hex.jsonl")
    b64_report = analyze(tmp_path, b64_ids(req), name="b64.jsonl")
    assert [f["fingerprint"] for f in hex_report["findings"]] == [
        f["fingerprint"] for f in b64_report["findings"]
    ]
    [finding] = hex_report["findings"]
    assert (finding["kind"], finding["repetitions"], finding["route"]) == ("n_plus_one", 6, "encounters/")


def test_numeric_and_named_kinds_snake_case_and_unknown_fields(tmp_path: Path) -> None:
    req = n_plus_one_request(5)
    rs = req["resourceSpans"][0]
    rs["someFutureField"] = {"x": 1}
    for ss in rs["scopeSpans"]:
        ss["unknown"] = [1, 2]
        for s in ss["spans"]:
            s["kind"] = {2: "SPAN_KIND_SERVER", 3: "SPAN_KIND_CLIENT"}[s["kind"]]
            s["droppedAttributesCount"] = 0
            s["flags"] = 256
            s["start_time_unix_nano"] = s.pop("startTimeUnixNano")
    req["resource_spans"] = req.pop("resourceSpans")
    rs["scope_spans"] = rs.pop("scopeSpans")
    report = analyze(tmp_path, req)
    assert [f["repetitions"] for f in report["findings"]] == [5]
    assert report["summary"]["requests"] == 1


def test_single_pretty_printed_request_document(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(n_plus_one_request(7), indent=2))
    report = build_report(read_paths([str(path)]).spans, SETTINGS, analyze=True)
    assert [f.repetitions for f in report.findings] == [7]


def test_metrics_lines_skipped_and_gzip_read(tmp_path: Path) -> None:
    path = tmp_path / "all.jsonl.gz"
    lines = [json.dumps({"resourceMetrics": []}), json.dumps(n_plus_one_request(5)), ""]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    assert len(read_paths([str(path)]).spans) == 6


def test_directory_means_its_traces_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "traces.jsonl", n_plus_one_request(5))
    (tmp_path / "metrics.jsonl").write_text("not even json\n")
    assert len(read_paths([str(tmp_path)]).spans) == 6


def test_sql_from_another_language_without_agent_attributes(tmp_path: Path) -> None:
    """db.query.text, no hms.db.fingerprint, no code location: SQL-level detection."""
    report = analyze(tmp_path, n_plus_one_request(5, sql_attr="db.query.text", agent_attributes=False))
    [finding] = report["findings"]
    assert finding["kind"] == "n_plus_one" and finding["location"] is None
    assert finding["fix"] == "one query for all values: SELECT ... FROM hms_patient WHERE id = ANY(%s)"
    assert finding["statement"].startswith('SELECT "hms_patient"."id" FROM')


def test_spans_whose_parent_is_missing_are_still_analyzed(tmp_path: Path) -> None:
    report = analyze(tmp_path, n_plus_one_request(6, with_parent=False))
    [finding] = report["findings"]
    assert finding["repetitions"] == 6
    assert "not in the data" in finding["route"]


def test_owner_is_nearest_non_db_ancestor_and_nested_cache_is_not_counted(tmp_path: Path) -> None:
    trace, server, job = new_trace(), new_span_id(), new_span_id()
    cache_span, redis_span = new_span_id(), new_span_id()
    sql = {"db.system": "postgresql", "db.statement": "SELECT 1 FROM t WHERE id = ?"}
    spans_db = [span(trace, new_span_id(), job, "SELECT", CLIENT, attributes=sql) for _ in range(5)]
    django_cache = span(
        trace, cache_span, server, "cache.get", CLIENT,
        attributes={"hms.cache.operation": "get", "hms.cache.key_pattern": "p:{id}", "hms.cache.hit": False},
    )  # fmt: skip
    redis_cmd = span(
        trace, redis_span, cache_span, "GET", CLIENT,
        attributes={"db.system": "redis", "hms.cache.operation": "GET", "hms.cache.hit": False},
    )  # fmt: skip
    req = request(
        {
            DJANGO: [span(trace, server, "", "GET x/", 2, attributes={"http.route": "x/"})],
            "app": [span(trace, job, server, "compute", 1)],
            PSYCOPG: spans_db,
            "hms_otel_agent.django_cache": [django_cache],
            "opentelemetry.instrumentation.redis": [redis_cmd],
        }
    )
    path = write_lines(tmp_path / "t.jsonl", req)
    owners = {o.activity.name: o for o in build_owners(read_paths([str(path)]).spans)}
    assert owners["compute"].activity.db_count == 5
    assert owners["GET x/"].activity.db_count == 0
    [call] = owners["GET x/"].activity.cache_calls
    assert (call.operation, call.reads, call.misses, call.django_api) == ("get", 1, 1, True)


def test_django_cache_calls_inside_a_django_cache_call_are_counted(tmp_path: Path) -> None:
    """A get_or_set default that reads the cache itself: both calls are the application's."""
    trace, server, outer = new_trace(), new_span_id(), new_span_id()

    def call(operation: str) -> dict[str, Any]:
        return {"hms.cache.operation": operation, "hms.cache.key_pattern": "p:{id}", "hms.cache.hit": False}

    req = request(
        {
            DJANGO: [span(trace, server, "", "GET x/", 2, attributes={"http.route": "x/"})],
            "hms_otel_agent.django_cache": [
                span(trace, outer, server, "cache.get_or_set", CLIENT, attributes=call("get_or_set")),
                span(trace, new_span_id(), outer, "cache.get", CLIENT, attributes=call("get")),
            ],
        }
    )
    path = write_lines(tmp_path / "t.jsonl", req)
    [owner] = build_owners(read_paths([str(path)]).spans)
    assert sorted(c.operation for c in owner.activity.cache_calls) == ["get", "get_or_set"]


def test_report_uses_recorded_events_and_analyze_redetects(tmp_path: Path) -> None:
    trace, server = new_trace(), new_span_id()
    event = {
        "hms.finding.kind": "n_plus_one",
        "hms.finding.fingerprint": "abcdef0123456789",
        "hms.finding.repetitions": 12,
        "hms.finding.duration_ms": 30.5,
        "hms.orm.relation": "hms.Encounter.patient",
        "hms.hint.fix": ".select_related('patient')",
        "hms.hint": "GET encounters/: Encounter.patient loaded lazily 12x",
        "code.file.path": "hms/views.py",
        "code.line.number": 7,
        "code.function.name": "encounters",
    }
    owner = span(
        trace, server, "", "GET encounters/", 2, attributes={"http.route": "encounters/"},
        events=[("hms.n_plus_one", event)],
    )  # fmt: skip
    req = request({DJANGO: [owner]})
    path = write_lines(tmp_path / "t.jsonl", req)
    recorded = build_report(read_paths([str(path)]).spans, SETTINGS, analyze=False).to_dict()
    [finding] = recorded["findings"]
    assert finding["fingerprint"] == "abcdef0123456789"
    assert finding["location"] == {"file": "hms/views.py", "line": 7, "function": "encounters"}
    assert finding["fix"] == ".select_related('patient')"
    assert build_report(read_paths([str(path)]).spans, SETTINGS, analyze=True).findings == []


def test_run_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = n_plus_one_request(5, resource={"service.name": "a", "hms.run.id": "run-old"}, start=1)
    new = n_plus_one_request(8, resource={"service.name": "a", "hms.run.id": "run-new"}, start=10**12)
    path = write_lines(tmp_path / "t.jsonl", old, new)
    code, out, _ = cli(capsys, "analyze", str(path), "--format", "json", "--last-run")
    assert code == 0
    assert [f["repetitions"] for f in json.loads(out)["findings"]] == [8]
    code, out, _ = cli(capsys, "analyze", str(path), "--format", "json", "--run", "run-old")
    assert [f["repetitions"] for f in json.loads(out)["findings"]] == [5]
    code, out, _ = cli(capsys, "analyze", str(path), "--format", "json")
    assert json.loads(out)["findings"][0]["requests"] == 2


def test_threshold_flag_applies_to_analyze(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "t.jsonl", n_plus_one_request(3))
    assert json.loads(cli(capsys, "analyze", str(path), "--format", "json")[1])["findings"] == []
    _, out, _ = cli(capsys, "analyze", str(path), "--format", "json", "--n-plus-one-threshold", "3")
    assert len(json.loads(out)["findings"]) == 1


# --- bad input --------------------------------------------------------------------------------

GOOD = json.dumps(n_plus_one_request(5))
BAD_ATTRIBUTES = json.dumps(
    {
        "resourceSpans": [
            {"scopeSpans": [{"spans": [{"spanId": "0000000000000001", "attributes": {"k": "v"}}]}]}
        ]
    }
)


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("hello world\n", 1, "not valid JSON"),
        (GOOD + "\n" + "{not json}\n" + GOOD + "\n", 2, "not valid JSON"),
        (GOOD + "\n" + GOOD[: len(GOOD) // 2], 2, "truncated line"),
        ("[1, 2, 3]\n", 1, "expected a JSON object"),
        ('{"resourceSpans": {"a": 1}}\n', 1, "resourceSpans must be a list"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x"}]}]}]}\n', 1, "no spanId"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}\n', 1, "spanId 'zz'"),
        (GOOD + "\n" + BAD_ATTRIBUTES, 2, "attributes must be a list"),
        ('{\n  "resourceSpans": [\n    {"scopeSpans": [\n', 4, "truncated document"),
        ('{\n  "resourceSpans": [\n    {"scopeSpans": [}\n  ]\n}\n', 3, "not valid JSON"),
    ],
)
def test_bad_input_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, line: int, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_paths([str(path)])
    assert (info.value.path, info.value.line) == (str(path), line)
    assert message in str(info.value)
    code, out, err = cli(capsys, "analyze", str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"hms-otel analyze: {path}:{line}: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_file_and_empty_local_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "analyze", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl: no such file or directory" in err
    code, _, err = cli(capsys, "report", "--local-dir", str(tmp_path / "none"))
    assert code == 2 and "nothing recorded yet" in err


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n" + "garbage\n")
    result = run([sys.executable, "-m", "hms_otel_agent.launch.cli", "analyze", str(path)], timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"hms-otel analyze: {path}:2: not valid JSON (Expecting value at column 1)"
    )
