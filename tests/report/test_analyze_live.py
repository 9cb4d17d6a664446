"""`hms-otel analyze` on a collector-format file finds what the live agent found for the same traffic.

The sample app runs under hms-otel-run and exports to a test OTLP receiver (as to a collector) and
to its local file. The receiver's requests are written out as the collector's file exporter writes
them (one ExportTraceServiceRequest per line, hex ids, enums as numbers); the detectors then run
offline over that file and over the agent's own file, and each request's findings are compared with
the finding events the live agent recorded on it.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess, venv_executable
from harness.services import free_port

from hms_otel_agent import config
from hms_otel_agent.launch.cli import main
from hms_otel_agent.report.build import detect, registered_detectors
from hms_otel_agent.report.otlp import read_paths
from hms_otel_agent.report.spans import build_owners

pytestmark = pytest.mark.e2e

TRAFFIC = [
    ("GET", "/patients/?limit=12"),
    ("GET", "/patients/optimized/?limit=12"),
    ("GET", "/encounters/?limit=12"),
    ("GET", "/encounters/optimized/?limit=12"),
    ("GET", "/appointments/schedule/?limit=8"),
    ("GET", "/appointments/schedule/optimized/?limit=8"),
    ("GET", "/patients/records/?limit=8"),
    ("GET", "/patients/records/optimized/?limit=8"),
    ("GET", "/notes/?limit=10"),
    ("GET", "/notes/optimized/?limit=10"),
    ("GET", "/patients/birthdays/?limit=8"),
    ("GET", "/patients/birthdays/optimized/?limit=8"),
    ("GET", "/patients/lookup/?ids=1,2,3,4,5,6"),
    ("GET", "/patients/lookup/optimized/?ids=1,2,3,4,5,6"),
    ("GET", "/facilities/"),
    ("GET", "/facilities/optimized/"),
    ("GET", "/reports/raw-encounters/?limit=8"),
    ("GET", "/reports/raw-encounters/optimized/?limit=8"),
    ("GET", "/patients/cached/?limit=8"),
    ("GET", "/patients/cached/optimized/?limit=8"),
    ("GET", "/encounters/recent/?limit=5"),
    ("GET", "/encounters/recent/optimized/?limit=5"),
    ("GET", "/patients/3/flaky-summary/"),
    ("POST", "/patients/3/touch/"),
    ("POST", "/patients/3/touch/optimized/"),
    ("GET", "/patients/3/summary/"),
    ("GET", "/stats/"),
]
SQL_KINDS = ("n_plus_one", "duplicate_query")


def collector_line(message: Any) -> str:
    """What the collector's file exporter writes: OTLP/JSON with hex ids and numeric enums."""
    data = MessageToDict(message, use_integers_for_enums=True)

    def hex_ids(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else hex_ids(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [hex_ids(v) for v in node]
        return node

    return json.dumps(hex_ids(data))


def key(kind: str, attrs: dict[str, Any]) -> tuple[Any, ...]:
    if kind in SQL_KINDS:
        return (
            kind,
            attrs.get("fingerprint"),
            attrs.get("repetitions"),
            attrs.get("relation") or "",
            attrs.get("origin"),  # where the queryset came from: the place of the fix, both ways
            attrs.get("fix") or "",
        )
    return (kind, attrs.get("fingerprint"), attrs.get("key_pattern") or "", attrs.get("repetitions"))


def without_fixes(found: dict[str, set[tuple[Any, ...]]]) -> dict[str, set[tuple[Any, ...]]]:
    """The findings without their ORM fix: the live agent derives a fix from the ORM's metadata and
    shows it only once its check off the request path passed (the first occurrence of an N+1 may
    end before that); offline analysis has neither and derives a plainer fix from the records."""
    return {span_id: {k[:5] if k[0] in SQL_KINDS else k for k in keys} for span_id, keys in found.items()}


def live_findings(receiver: OtlpReceiver) -> dict[str, set[tuple[Any, ...]]]:
    out: dict[str, set[tuple[Any, ...]]] = {}
    for span in receiver.spans():
        for event in span.events:
            a = event.attributes
            if "hms.finding.kind" not in a:
                continue
            values = {
                "fingerprint": a["hms.finding.fingerprint"],
                "repetitions": a["hms.finding.repetitions"],
                "relation": a.get("hms.orm.relation"),
                "fix": a.get("hms.hint.fix"),
                "key_pattern": a.get("hms.cache.key_pattern"),
                "origin": (a.get("hms.orm.origin.code.file.path"), a.get("hms.orm.origin.code.line.number")),
            }
            out.setdefault(span.span_id, set()).add(key(str(a["hms.finding.kind"]), values))
    return out


def offline_findings(path: Path) -> dict[str, set[tuple[Any, ...]]]:
    settings = config.load({}).settings
    out: dict[str, set[tuple[Any, ...]]] = {}
    for owner in build_owners(read_paths([str(path)]).spans):
        for f in detect(owner, settings, registered_detectors()):
            assert owner.span is not None, f"finding under a missing parent: {f}"
            values = {
                "fingerprint": f.fingerprint,
                "repetitions": f.repetitions,
                "relation": f.relation,
                "fix": f.fix,
                "key_pattern": f.key_pattern,
                "origin": (f.origin.file, f.origin.line) if f.origin else (None, None),
            }
            out.setdefault(owner.span.span_id, set()).add(key(f.kind, values))
    return out


def test_analyze_collector_file_matches_live_detection(
    tmp_path: Path,
    otlp_receiver: OtlpReceiver,
    app_process: Callable[..., AppProcess],
    sample_app_db: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    env = {
        **sample_app_db,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp,hms_file",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Parameters and keys let the offline detectors tell repeated values apart, as the live
        # ones do in memory (duplicates, repeated misses).
        "HMS_OTEL_CAPTURE_SQL_PARAMETERS": "true",
        "HMS_OTEL_CAPTURE_CACHE_KEYS": "true",
        "HMS_OTEL_LIVE_LOG": "false",
    }
    cmd = [
        venv_executable("hms-otel-run"),
        sys.executable, "-m", "hms_otel_agent.sample", "runserver", f"127.0.0.1:{port}", "--noreload",
    ]  # fmt: skip
    app = app_process(
        cmd, env=env, cwd=tmp_path, base_url=f"http://127.0.0.1:{port}", stop_signal=signal.SIGINT
    )
    app.wait_http("/health/", timeout=60)
    for method, path in TRAFFIC:
        assert app.request(method, path).status == 200, path
    assert app.stop() == 0
    otlp_receiver.wait_for_spans(lambda s: s.kind == "SPAN_KIND_SERVER", count=len(TRAFFIC) + 1)

    collector_file = tmp_path / "collector.jsonl"
    requests = [r.message for r in otlp_receiver.requests("traces") if r.message is not None]
    collector_file.write_text("".join(collector_line(m) + "\n" for m in requests))

    live = live_findings(otlp_receiver)
    offline = offline_findings(collector_file)
    kinds = {k[0] for found in live.values() for k in found}
    assert "n_plus_one" in kinds
    if "cache_signals" in {getattr(d, "__module__", "").rpartition(".")[2] for d in registered_detectors()}:
        assert {"cache_n_plus_one", "cache_invalidation_storm"} <= kinds
    assert without_fixes(offline) == without_fixes(live)
    # Every N+1 of a relation names where its fix goes.
    origins = {k[3]: k[4] for found in live.values() for k in found if k[0] == "n_plus_one" and k[3]}
    assert origins and all(o != (None, None) for o in origins.values()), origins
    # The agent's own file gives the same.
    assert without_fixes(offline_findings(tmp_path / ".hms-otel" / "traces.jsonl")) == without_fixes(live)

    # Aggregated: `analyze` of the collector file and `report` of what the agent recorded agree.
    assert main(["analyze", str(collector_file), "--format", "json"]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    assert main(["report", str(tmp_path / ".hms-otel"), "--format", "json"]) == 0
    recorded = json.loads(capsys.readouterr().out)

    def groups(report: dict[str, Any]) -> set[tuple[Any, ...]]:
        return {
            (f["fingerprint"], f["kind"], f["requests"], f["repetitions"], f["route"])
            for f in report["findings"]
            if f["kind"] in SQL_KINDS
        }

    assert groups(analyzed) == groups(recorded)
    assert {f["route"] for f in analyzed["findings"]}.isdisjoint(
        {path.split("?")[0].lstrip("/") for _, path in TRAFFIC if "optimized" in path}
    )
    assert analyzed["summary"]["requests"] == recorded["summary"]["requests"] == len(TRAFFIC) + 1
    # With parameters and keys exported, nothing is missing: no note about it.
    assert not [n for n in analyzed["notes"] if "duplicate" in n or "repeated miss" in n], analyzed["notes"]


# The phrase the note uses for each kind `analyze` may be unable to see.
NOTE_PHRASES = {
    "duplicate_query": "duplicate queries",
    "cache_repeated_miss": "cache repeated misses",
    "unused_eager_load": "unused eager loads",
    "unbounded_result": "unbounded and wide results",
    "wide_result": "unbounded and wide results",
    "connection_churn": "connection churn",
}


def test_analyze_says_what_it_cannot_see_with_default_settings(
    tmp_path: Path,
    app_process: Callable[..., AppProcess],
    sample_app_db: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With default settings (no parameters, no raw keys exported), `analyze` finds nothing the
    live agent did not, and one note names every kind it missed and why."""
    port = free_port()
    cmd = [
        venv_executable("hms-otel-run"),
        sys.executable, "-m", "hms_otel_agent.sample", "runserver", f"127.0.0.1:{port}", "--noreload",
    ]  # fmt: skip
    env = {**sample_app_db, "HMS_OTEL_LIVE_LOG": "false", "HMS_OTEL_REPORT": "false"}
    app = app_process(
        cmd, env=env, cwd=tmp_path, base_url=f"http://127.0.0.1:{port}", stop_signal=signal.SIGINT
    )
    app.wait_http("/health/", timeout=60)
    for method, path in TRAFFIC:
        assert app.request(method, path).status == 200, path
    assert app.stop() == 0
    telemetry = str(tmp_path / ".hms-otel")
    assert main(["analyze", telemetry, "--format", "json"]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    assert main(["report", telemetry, "--format", "json"]) == 0
    recorded = json.loads(capsys.readouterr().out)

    def found(report: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {(f["kind"], f["route"], f["subject"]) for f in report["findings"]}

    assert found(analyzed) - found(recorded) == set()  # nothing offline that was not there live
    missed = {kind for kind, _, _ in found(recorded) - found(analyzed)}
    assert "cache_repeated_miss" in missed  # /patients/3/flaky-summary/: one key missed twice
    notes = [n for n in analyzed["notes"] if n.startswith("not detectable offline from this input: ")]
    assert len(notes) == 1, analyzed["notes"]
    for kind in missed:
        assert NOTE_PHRASES[kind] in notes[0], (kind, notes[0])
    assert "HMS_OTEL_CAPTURE_CACHE_KEYS=true" in notes[0]
    # The terminal report shows it too, wrapped to the width.
    assert main(["analyze", telemetry]) == 0
    assert "note: not detectable offline from this input: " in capsys.readouterr().out
