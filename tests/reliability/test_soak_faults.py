"""The fault soak (scripts/soak_faults.py, figures in docs/reliability.md) in short, so the script
and what it measures keep working: the sample app under gunicorn with the agent, a few seconds of
load against a backend failing in each mode, and the same app without the agent.

The memory bound itself is asserted by test_fault_memory.py (the Python heap: RSS over seconds is
noise on a shared machine); here the RSS must only stay within a generous distance of the start,
every mode must deliver or count what it dropped, and the exit must stay within one shutdown
timeout of the app without the agent (plus generous slack for a loaded machine).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness.processes import hermetic_env, run, venv_executable

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak_faults.py"
MODES = ("baseline", "healthy", "tls", "refused", "slow", "retry", "stall")
SHUTDOWN_TIMEOUT_S = 3.0  # the script's HMS_OTEL_SHUTDOWN_TIMEOUT_MS


def test_the_fault_soak_runs_every_mode_briefly(pg_server_url: str, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- soak-faults:begin -->\nold\n<!-- soak-faults:end -->\nafter\n")
    args = ["--seconds", "4", "--sample-every", "1", "--modes", ",".join(MODES)]
    args += ["--protocols", "http/protobuf", "--jobs", "1", "--database-url", pg_server_url]
    args += ["--redis-url", redis_url, "--json", str(out), "--write-doc", str(doc)]
    result = run(
        [str(venv_executable("python")), str(SCRIPT), *args],
        env=hermetic_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(runs) == set(MODES)
    for mode, measured in runs.items():
        assert measured["app_requests"] > 0, mode
        first, last = measured["samples"][0][1], measured["samples"][-1][1]
        assert len(first) == len(last) == 2, (mode, measured["samples"])  # both workers sampled
        assert all(b - a < 64 * 1024 for a, b in zip(first, last, strict=True)), (
            mode,
            measured["samples"],
        )  # KiB
    assert runs["healthy"]["delivered"] > 0 and sum(runs["healthy"]["dropped"].values()) == 0
    # a late answer is delivered and not counted as failed
    assert runs["slow"]["delivered"] > 0 and runs["slow"]["dropped"]["export_failed"] == 0
    for mode in ("tls", "refused", "retry", "stall"):
        assert runs[mode]["delivered"] == 0, mode
        assert sum(runs[mode]["dropped"].values()) > 0, (mode, runs[mode]["dropped"])  # counted
    baseline_exit = runs["baseline"]["exit_s"]
    for mode in MODES[1:]:
        assert runs[mode]["exit_s"] < baseline_exit + SHUTDOWN_TIMEOUT_S + 3.0, (mode, runs[mode]["exit_s"])
    section = doc.read_text()
    assert section.startswith("before\n<!-- soak-faults:begin -->") and section.endswith("after\n")
    assert len(re.findall(r"^\| (?:baseline|healthy|tls|refused|slow|retry|stall) \|", section, re.M)) == 7
