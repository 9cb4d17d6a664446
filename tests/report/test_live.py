"""The live log's run-wide claims (one line per finding per run across processes) and how code
locations are written (the same form in every process of a run)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from hms_otel_agent.instrument.context import display_path
from hms_otel_agent.report import live
from hms_otel_agent.report.live import LiveLog, RunClaims
from hms_otel_agent.signals.records import Finding, OwnerActivity


def _claim_all(root: str, names: list[str], start: multiprocessing.synchronize.Event, out: object) -> None:
    claims = RunClaims("run1", root=root)
    start.wait(10)
    out.put((os.getpid(), [name for name in names if claims.claim(name)]))  # type: ignore[attr-defined]


def test_each_name_is_claimed_by_exactly_one_process(tmp_path: Path) -> None:
    names = [f"fp{i}" for i in range(300)]
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    procs = [
        context.Process(target=_claim_all, args=(str(tmp_path / "claims"), names, start, out))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    won = [out.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(10)
    claimed = [name for _, names_won in won for name in names_won]
    assert sorted(claimed) == sorted(names)  # every name once: none lost, none twice


def finding(fingerprint: str = "f1") -> Finding:
    return Finding(
        kind="n_plus_one",
        fingerprint=fingerprint,
        hint=f"GET x/: {fingerprint}",
        repetitions=5,
        duration_ms=1.0,
    )


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hms_otel"]


def test_two_processes_of_a_run_log_a_finding_and_its_repeats_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "hms_otel")
    root = str(tmp_path / "claims")
    worker_a = LiveLog(repeat_interval_s=0.0, claims=RunClaims("run2", root=root))
    worker_b = LiveLog(repeat_interval_s=0.0, claims=RunClaims("run2", root=root))
    activity = OwnerActivity(name="GET x/")
    monkeypatch.setattr(live.time, "time", lambda: 1000.0)  # both in the same minute
    worker_a(activity, [finding()])
    worker_b(activity, [finding()])
    assert lines(caplog) == ["hms-otel: n plus one: GET x/: f1"]
    worker_a(activity, [finding()])
    worker_b(activity, [finding()])
    worker_b(activity, [finding()])
    repeats = [line for line in lines(caplog) if "seen again" in line]
    assert repeats == [
        "hms-otel: n plus one seen again (1 more times in this process since its last line): GET x/: f1"
    ]
    # Another interval: one summary again, by whichever claims it; b counts what it saw meanwhile.
    monkeypatch.setattr(live.time, "time", lambda: 1000.0 + 3600)
    worker_b(activity, [finding()])
    worker_a(activity, [finding()])
    repeats = [line for line in lines(caplog) if "seen again" in line]
    assert repeats[1:] == [
        "hms-otel: n plus one seen again (3 more times in this process since its last line): GET x/: f1"
    ]
    # A different run (another hms-otel-run) logs it again.
    LiveLog(claims=RunClaims("run3", root=root))(activity, [finding()])
    assert lines(caplog).count("hms-otel: n plus one: GET x/: f1") == 2
    # At most three marker files per finding: the first line and the last two intervals.
    assert len(os.listdir(os.path.join(root, "live-run2"))) <= 3


def test_claims_fail_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A claims directory that is not safe to use, or that goes away, never costs a line."""
    caplog.set_level(logging.INFO, "hms_otel")
    activity = OwnerActivity(name="GET x/")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # others can write there: not used
    for _ in range(2):
        LiveLog(claims=RunClaims("run4", root=str(shared)))(activity, [finding("f2")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)  # a symlink planted where the directory would be
    for _ in range(2):
        LiveLog(claims=RunClaims("run5", root=str(tmp_path / "link")))(activity, [finding("f3")])
    assert (
        sorted(lines(caplog))
        == ["hms-otel: n plus one: GET x/: f2"] * 2 + ["hms-otel: n plus one: GET x/: f3"] * 2
    )
    assert not list(elsewhere.iterdir())
    claims = RunClaims("run6", root=str(tmp_path / "ok"))
    assert claims.claim("a") and not claims.claim("a")
    claims.remove()  # the run ended under a worker still running: it logs rather than lose lines
    assert claims.claim("b") and claims.claim("b")


def test_display_path_same_form_whatever_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    views = project / "clinic" / "views.py"
    package = project / "clinic" / "__init__.py"
    monkeypatch.chdir(tmp_path)
    # Under the current directory: relative to it.
    assert display_path(str(views), "clinic.views") == os.path.join("project", "clinic", "views.py")
    # Elsewhere: the module's import path (an editable install, gunicorn --chdir, the demo).
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert display_path(str(views), "clinic.views") == os.path.join("clinic", "views.py")
    assert display_path(str(package), "clinic") == os.path.join("clinic", "__init__.py")
    # A script (no import path) and a name that does not match the file: absolute, not made up.
    assert display_path(str(views), "__main__") == str(views)
    assert display_path(str(views), "elsewhere.views") == str(views)


def test_a_repeat_line_names_the_routes_one_cause_was_seen_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hms_otel")
    log = LiveLog(repeat_interval_s=0.0)
    for route in ("feedings/", "sleep/", "feedings/"):
        log(OwnerActivity(name=f"GET {route}", route=route), [finding("f3")])
    assert lines(caplog) == [
        "hms-otel: n plus one: GET x/: f3",
        "hms-otel: n plus one seen again (1 more times in this process since its last line on 2 routes:"
        " feedings/, sleep/): GET x/: f3",
        "hms-otel: n plus one seen again (1 more times in this process since its last line on 2 routes:"
        " feedings/, sleep/): GET x/: f3",
    ]
