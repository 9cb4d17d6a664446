"""One shutdown deadline for every process of a run.

``HMS_OTEL_SHUTDOWN_TIMEOUT_MS`` bounds how long the *run* may take to exit, not each process in
turn: a gunicorn master stops its workers and exits after them, and with a dead backend each of
them waited the whole timeout, one after the other (3 s became 6.4 s). The first process of a run
that begins shutting down publishes its deadline in the run's directory (the live log's, see
`report.live.RunClaims`); a process shutting down while that deadline is current uses it instead of
its own. A deadline is current until `CURRENT_S` after it passed (the workers' interpreters take
a while to exit after their deadline, and gunicorn reaps them before the master's own exit) -- so
a worker that gunicorn restarted an hour ago does not shorten the master's shutdown. Deadlines are
on the monotonic clock, which on Linux and macOS is the same in every process of the machine.
A process joining a deadline that has (nearly) passed still gets `MIN_GRACE_S` of its own when it
has spans to send (`pending`): a subprocess that exited a few seconds earlier must not leave the
next one no time to flush. One with none (a gunicorn master after workers that waited the whole
deadline on a failing backend) keeps to the deadline: its own last metrics are not worth a second
timeout for the process tree.
"""

from __future__ import annotations

import contextlib
import os
import time

from hms_otel_agent.config import RUN_ID_ENV
from hms_otel_agent.report.live import RunClaims

DEADLINE_FILE = "shutdown-deadline"
CURRENT_S = 30.0
MIN_GRACE_S = 1.0


def shutdown_deadline(
    timeout_s: float, environ: os._Environ[str] | dict[str, str] | None = None, pending: bool = True
) -> float:
    """This process's shutdown deadline (`time.monotonic()` based), shared with its run;
    `pending`: this process has spans still to send (see the module's docstring)."""
    now = time.monotonic()
    own = now + timeout_s
    environ = os.environ if environ is None else environ
    run_id = environ.get(RUN_ID_ENV, "")
    if not run_id:
        return own
    try:
        path = RunClaims(run_id).file(DEADLINE_FILE)
        if path is None:
            return own
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="ascii") as handle:
                shared = float(handle.read(64))
            if shared >= now - max(timeout_s, CURRENT_S):
                return min(own, max(shared, now + MIN_GRACE_S)) if pending else min(own, shared)
        temporary = f"{path}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(repr(own))
        os.replace(temporary, path)
    except Exception:
        pass  # the file is an optimisation: on its own, each process keeps its own deadline
    return own
