"""The live log under real servers: each finding once per run across worker processes, and code
locations written the same way whatever server runs the app and from whatever directory."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.processes import AppProcess

from hms_otel_agent.report.live import RunClaims
from hms_otel_agent.report.otlp import read_paths

from .conftest import gunicorn, runserver

pytestmark = pytest.mark.e2e

NAIVE_RELATIONS = ("Encounter.patient", "Encounter.facility", "Patient.insurance")
LOCATION = "hms_otel_agent/sample/hms/views.py"


def live_lines(stderr: str, relation: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("hms-otel: n plus one: GET encounters/: ") and f" {relation} loaded lazily" in line
    ]


def run_id_of(telemetry: Path) -> str:
    ids = {str(s.resource.get("hms.run.id")) for s in read_paths([str(telemetry)], strict=False).spans}
    assert len(ids) == 1, ids
    return ids.pop()


def test_gunicorn_workers_log_each_finding_once_per_run(
    tmp_path: Path, run_sample: Callable[..., AppProcess]
) -> None:
    telemetry = tmp_path / "telemetry"
    access = ["--access-logfile", "-", "--access-logformat", "served-by %(p)s %(U)s"]
    app = run_sample(
        lambda port: gunicorn(port, "-w", "2", *access),
        {"HMS_OTEL_LOCAL_DIR": str(telemetry), "HMS_OTEL_REPORT": "false"},
        cwd=tmp_path,  # not the project: paths must still read as the module's
    )
    pids: set[str] = set()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(20):
            statuses = list(pool.map(lambda _: app.request("GET", "/encounters/?limit=20").status, range(8)))
            assert statuses == [200] * 8
            pids = set(re.findall(r"served-by <(\d+)> /encounters/", app.stdout))
            if len(pids) >= 2:
                break
    # Both workers ran the N+1 page: without the run's claims each would have logged it.
    assert len(pids) == 2, app.stdout
    time.sleep(0.5)  # the last request's line
    assert app.stop() == 0, app.stderr
    err = app.stderr
    for relation in NAIVE_RELATIONS:
        lines = live_lines(err, relation)
        assert len(lines) == 1, (relation, err)
        assert f" at {LOCATION}:" in lines[0], lines[0]
    # The run's claims are removed when it ends.
    claims = RunClaims(run_id_of(telemetry / "traces.jsonl"))
    assert claims.directory and not os.path.exists(claims.directory)


def test_runserver_shows_the_same_paths(tmp_path: Path, run_sample: Callable[..., AppProcess]) -> None:
    app = run_sample(
        runserver,
        {"HMS_OTEL_LOCAL_DIR": str(tmp_path / "telemetry"), "HMS_OTEL_REPORT": "false"},
        cwd=tmp_path,
        stop_signal=signal.SIGINT,
    )
    for _ in range(2):
        assert app.request("GET", "/encounters/?limit=20").status == 200
    time.sleep(0.5)
    app.stop()
    for relation in NAIVE_RELATIONS:
        lines = live_lines(app.stderr, relation)
        assert len(lines) == 1 and f" at {LOCATION}:" in lines[0], (relation, app.stderr)
