"""The findings report of this run, printed to stderr when the program hms-otel-run started exits.

Only the root process prints it: the one hms-otel-run exec'd (its pid is HMS_OTEL_ROOT_PID).
Worker processes (the runserver autoreloader's child, gunicorn workers) write their telemetry
to the same local file; the root prints after its own telemetry is flushed, after its child
processes have exited, and once the file has stopped growing. Only spans of this run count:
hms-otel-run puts a fresh HMS_OTEL_RUN_ID in the environment and every process of the run
exports it as the resource attribute ``hms.run.id``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from hms_otel_agent.config import ROOT_PID_ENV, RUN_ID_ENV, Settings
from hms_otel_agent.local_paths import FileMark
from hms_otel_agent.printable import printable

# ROOT_PID_ENV and RUN_ID_ENV, set by hms-otel-run (launch/run.py), are named in config.py with
# the other HMS_OTEL_* variables that are not settings; the resource attribute hms.run.id in
# signals/vocabulary.py (RUN_ID_ATTRIBUTE).


def is_root_process(environ: Any = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(ROOT_PID_ENV, "") == str(os.getpid())


def wanted(settings: Settings, local_dir: str | None, environ: Any = None) -> bool:
    """Whether this process should print the report at exit."""
    environ = os.environ if environ is None else environ
    if settings.report == "false" or not local_dir or not is_root_process(environ):
        return False
    if settings.report == "true":
        return True
    # auto: the embedded default only (traces go to the local file and nowhere else)
    return settings.exporters("traces") == ("hms_file",) and bool(environ.get(RUN_ID_ENV))


def _child_pids() -> list[int]:
    """Live child processes of this process (Linux /proc; [] elsewhere)."""
    me = str(os.getpid())
    children = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == me and fields[0] != "Z":
            children.append(int(entry))
    return children


def wait_for_writers(path: str, timeout_s: float, settle_s: float = 0.15) -> None:
    """Give child processes time to exit and flush, then wait for the file to stop growing."""
    deadline = time.monotonic() + timeout_s
    while _child_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    last_size, stable_since = -1, time.monotonic()
    settle_deadline = min(deadline, time.monotonic() + 1.0)
    while time.monotonic() < settle_deadline:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        now = time.monotonic()
        if size != last_size:
            last_size, stable_since = size, now
        elif now - stable_since >= settle_s:
            return
        time.sleep(0.03)


# The report at exit reads at most this much of the run (memory: parsed spans take several
# times their JSON), and for at most this long after the run's processes have exited.
MAX_READ_BYTES = 16_000_000
MAX_READ_SECONDS = 3.0


def print_report(
    local_dir: str,
    run_id: str,
    settings: Settings,
    stream: IO[str] | None = None,
    start: FileMark | None = None,
    max_bytes: int = MAX_READ_BYTES,
    max_seconds: float = MAX_READ_SECONDS,
) -> None:
    """The findings of this run's spans: those written since `start` (taken of the traces file
    when the run began), within `max_bytes` and `max_seconds`."""
    from hms_otel_agent.report.build import build_report, filter_run
    from hms_otel_agent.report.otlp import TRACES_FILE, read_run
    from hms_otel_agent.report.render import to_terminal

    stream = stream if stream is not None else sys.stderr
    path = os.path.join(local_dir, TRACES_FILE)
    if not os.path.exists(path):
        return
    result = read_run(path, run_id, start, max_bytes=max_bytes, max_seconds=max_seconds)
    spans = filter_run(result.spans, run_id)
    again = f"hms-otel report --run {printable(run_id)}" if run_id else "hms-otel report"
    if result.stopped_early:
        print(
            f"hms-otel: the report at exit stopped early ({result.stopped_early}); "
            f"for the whole run: {again}",
            file=stream,
            flush=True,
        )
    if not spans:
        return
    report = build_report(spans, settings, analyze=False, inputs=result.files or [path])
    local_dir = printable(local_dir)
    if result.skipped_lines:
        report.notes.append(f"{len(result.skipped_lines)} unreadable lines skipped in {path}")
    if result.stopped_early:
        report.notes.append(f"partial: the report at exit stopped early ({result.stopped_early})")
    if result.start_rotated_away:
        report.notes.append("partial: the start of this run was rotated away (HMS_OTEL_LOCAL_MAX_MB)")
    # (the report's own fields are escaped by the renderer)
    if not report.findings:
        s = report.summary
        print(
            f"hms-otel: no findings in this run ({s.requests} requests, {s.db_queries} SQL queries); "
            f"telemetry in {local_dir}/ ({again})",
            file=stream,
            flush=True,
        )
        return
    print(file=stream)
    to_terminal(report, stream)
    print(f"hms-otel: telemetry in {local_dir}/; print this again with: {again}", file=stream, flush=True)


def at_exit(
    local_dir: str | None, settings: Settings, start: FileMark | None = None, deadline: float | None = None
) -> None:
    """Called by the agent's atexit handler after its own telemetry was flushed; waits for the
    run's other processes until `deadline` (time.monotonic()) at most."""
    if not wanted(settings, local_dir):
        return
    assert local_dir is not None
    from hms_otel_agent.report.otlp import TRACES_FILE

    if deadline is None:
        deadline = time.monotonic() + settings.shutdown_timeout_ms / 1000.0
    wait_for_writers(os.path.join(local_dir, TRACES_FILE), max(0.0, deadline - time.monotonic()))
    print_report(local_dir, os.environ.get(RUN_ID_ENV, ""), settings, start=start)
