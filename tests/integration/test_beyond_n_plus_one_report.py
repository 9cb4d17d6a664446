"""Issue 9 end to end: the sample app under hms-otel-run (CONN_MAX_AGE=0, a low large-result
threshold), its local file read by `hms-otel report` (what the agent recorded) and by `hms-otel
analyze` (detected again offline): the same findings of the new kinds, with their fixes."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.processes import AppProcess, venv_executable
from harness.services import free_port

from hms_otel_agent.launch.cli import main

pytestmark = pytest.mark.e2e

TRAFFIC = [
    "/patients/export/",
    "/patients/export/optimized/?limit=20",
    # ids no other test reads: the Redis database may be shared with other test sessions
    "/patients/cached/lookup/?ids=51,52,53,54,55,56,57,58",
    "/patients/cached/lookup/optimized/?ids=41,42,43,44,45,46,47,48",
    "/stats/",
]
KINDS = {"unbounded_result", "repeated_group", "connection_churn"}


def test_report_and_analyze_show_the_new_kinds(
    tmp_path: Path,
    app_process: Callable[..., AppProcess],
    sample_app_db: dict[str, str],
    redis_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    env = {
        **sample_app_db,
        "HMS_SAMPLE_CONN_MAX_AGE": "0",
        "HMS_OTEL_LARGE_RESULT_ROWS": "50",
        "HMS_OTEL_LIVE_LOG": "false",
        "HMS_OTEL_REPORT": "false",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    cmd = [
        venv_executable("hms-otel-run"),
        sys.executable, "-m", "hms_otel_agent.sample", "runserver", f"127.0.0.1:{port}", "--noreload",
    ]  # fmt: skip
    app = app_process(
        cmd, env=env, cwd=tmp_path, base_url=f"http://127.0.0.1:{port}", stop_signal=signal.SIGINT
    )
    try:
        app.wait_http("/health/", timeout=60)
        for path in TRAFFIC:
            if "lookup" in path:
                redis_client.flushdb()  # cold: every patient misses
            assert app.request("GET", path).status == 200, path
        assert app.stop() == 0
    finally:
        redis_client.flushdb()  # shared with other tests: leave it clean

    assert main(["report", str(tmp_path / ".hms-otel"), "--format", "json"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert (
        main(["analyze", str(tmp_path / ".hms-otel"), "--format", "json", "--large-result-rows", "50"]) == 0
    )
    analyzed = json.loads(capsys.readouterr().out)

    def new_kinds(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f["kind"]: f for f in report["findings"] if f["kind"] in KINDS}

    found = new_kinds(recorded)
    assert set(found) == KINDS
    assert found["unbounded_result"]["route"] == "patients/export/"
    assert found["unbounded_result"]["fix"].startswith("paginate: Patient.objects.order_by('pk')")
    assert found["repeated_group"]["route"] == "patients/cached/lookup/"
    assert found["repeated_group"]["subject"] == (
        "cache.get patient:{id}:summary + Patient select + cache.set patient:{id}:summary"
    )
    churn = found["connection_churn"]
    assert churn["subject"] == "database 'default'" and churn["requests"] == len(TRAFFIC)
    assert "'CONN_MAX_AGE': 60" in churn["fix"]
    # the twins fix the queries, not the settings: churn is everywhere, the rest is not on them
    code = [f for kind, f in found.items() if kind != "connection_churn"]
    assert not {r for f in code for r in f["routes"] if "optimized" in r}
    # offline, from the same file: the same findings
    offline = new_kinds(analyzed)
    for kind in KINDS:
        keys = ("fingerprint", "requests", "repetitions", "fix", "subject")
        assert {k: offline[kind][k] for k in keys} == {k: found[kind][k] for k in keys}, kind
