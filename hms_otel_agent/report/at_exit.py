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


def print_report(local_dir: str, run_id: str, settings: Settings, stream: IO[str] | None = None) -> None:
    from hms_otel_agent.report.build import build_report, filter_run
    from hms_otel_agent.report.otlp import TRACES_FILE, read_paths
    from hms_otel_agent.report.render import to_terminal

    stream = stream if stream is not None else sys.stderr
    path = os.path.join(local_dir, TRACES_FILE)
    if not os.path.exists(path):
        return
    result = read_paths([path], strict=False, must_contain=run_id)
    spans = filter_run(result.spans, run_id)
    if not spans:
        return
    report = build_report(spans, settings, analyze=False, inputs=[path])
    again = f"hms-otel report --run {printable(run_id)}" if run_id else "hms-otel report"
    local_dir = printable(local_dir)
    if result.skipped_lines:
        report.notes.append(f"{len(result.skipped_lines)} unreadable lines skipped in {path}")
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


def at_exit(local_dir: str | None, settings: Settings) -> None:
    """Called by the agent's atexit handler after its own telemetry was flushed."""
    if not wanted(settings, local_dir):
        return
    assert local_dir is not None
    from hms_otel_agent.report.otlp import TRACES_FILE

    wait_for_writers(os.path.join(local_dir, TRACES_FILE), settings.shutdown_timeout_ms / 1000.0)
    print_report(local_dir, os.environ.get(RUN_ID_ENV, ""), settings)
