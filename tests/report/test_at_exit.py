"""The findings report printed at exit by the root process of an hms-otel-run run (embedded default)."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.processes import AppProcess, run, venv_executable
from harness.services import free_port

pytestmark = pytest.mark.e2e

SCRIPT = """
import os, sys, psycopg
from opentelemetry import trace
with trace.get_tracer("job").start_as_current_span("nightly-job"):
    conn = psycopg.connect(os.environ["DATABASE_URL"])
    for i in range(int(sys.argv[1])):
        conn.execute("SELECT mrn FROM hms_patient WHERE id = %s", (i + 1,)).fetchone()
"""


def script_env(sample_app_db: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in sample_app_db.items() if k != "DJANGO_SETTINGS_MODULE"}
    return {**env, "HMS_OTEL_LIVE_LOG": "false", **extra}


def run_job(tmp_path: Path, env: dict[str, str], repetitions: int):  # type: ignore[no-untyped-def]
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    cmd = [venv_executable("hms-otel-run"), sys.executable, str(script), str(repetitions)]
    result = run(cmd, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def test_plain_script_prints_only_this_runs_findings(tmp_path: Path, sample_app_db: dict[str, str]) -> None:
    env = script_env(sample_app_db)
    first = run_job(tmp_path, env, 6)
    assert "hms-otel findings" in first.stderr and "nightly-job" in first.stderr
    second = run_job(tmp_path, env, 9)  # same local file, a new run
    err = second.stderr
    assert "1 finding (recorded by the agent) in 1 span outside requests;" in err, err
    row = next(line for line in err.splitlines() if "nightly-job" in line and "N+1" in line)
    assert "   9 " in row and "   6 " not in row and "  15 " not in row
    assert "job.py:7 in <module>" in err, err
    assert "hms-otel report --run " in err and "Traceback" not in err
    # Both runs are in the file: `hms-otel report` without --run shows them together.
    report = run([venv_executable("hms-otel"), "report", "--format", "json"], cwd=tmp_path, timeout=60)
    assert '"repetitions": 15' in report.stdout and '"requests": 2' in report.stdout


@pytest.mark.parametrize(
    "extra",
    [{"HMS_OTEL_REPORT": "false"}, {"OTEL_TRACES_EXPORTER": "hms_file,console"}],
    ids=["report-false", "not-only-the-local-file"],
)
def test_no_report_when_off_or_not_the_embedded_default(
    tmp_path: Path, sample_app_db: dict[str, str], extra: dict[str, str]
) -> None:
    result = run_job(tmp_path, script_env(sample_app_db, **extra), 6)
    assert "hms-otel findings" not in result.stderr
    assert (tmp_path / ".hms-otel" / "traces.jsonl").exists()


def test_report_true_without_findings_is_one_line(tmp_path: Path, sample_app_db: dict[str, str]) -> None:
    result = run_job(tmp_path, script_env(sample_app_db, HMS_OTEL_REPORT="true"), 2)
    lines = [line for line in result.stderr.splitlines() if line.startswith("hms-otel: no findings")]
    assert lines == [lines[0]] and "(0 requests, 2 SQL queries)" in lines[0]


def test_runserver_with_autoreloader_ctrl_c(
    tmp_path: Path, app_process: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> None:
    port = free_port()
    cmd = [
        venv_executable("hms-otel-run"),
        sys.executable, "-m", "hms_otel_agent.sample", "runserver", f"127.0.0.1:{port}",
    ]  # fmt: skip
    app = app_process(
        cmd,
        env={**sample_app_db, "HMS_OTEL_LIVE_LOG": "false"},
        cwd=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        stop_signal=signal.SIGINT,
    )
    app.wait_http("/health/", timeout=60)
    assert app.request("GET", "/encounters/?limit=12").status == 200
    assert app.request("GET", "/encounters/optimized/?limit=12").status == 200
    assert app.stop() == 0 and not app.killed
    err = app.stderr
    assert err.count("hms-otel findings") == 1, err  # the root only, not the autoreloader's child
    rows = [line for line in err.splitlines() if " N+1 " in line]
    assert rows and all("encounters/ " in row and "optimized" not in row for row in rows), err
    assert re.search(r"views\.py:\d+\s+in\s+encounter_list_naive", err), err  # (wrapped or not)
