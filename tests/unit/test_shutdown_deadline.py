"""One shutdown deadline per run (shutdown_deadline.py): the processes of a run that shut down
together share the first one's deadline; a deadline long past does not shorten a later shutdown."""

from __future__ import annotations

import time
import uuid

from hms_otel_agent.config import RUN_ID_ENV
from hms_otel_agent.report.live import RunClaims
from hms_otel_agent.shutdown_deadline import DEADLINE_FILE, MIN_GRACE_S, shutdown_deadline


def test_processes_of_a_run_share_the_first_deadline() -> None:
    run = uuid.uuid4().hex[:16]
    env = {RUN_ID_ENV: run}
    try:
        first = shutdown_deadline(3.0, env)  # a gunicorn worker stopped by the master
        time.sleep(0.2)
        master = shutdown_deadline(3.0, env)  # the master, after its workers
        assert master == first
        assert shutdown_deadline(3.0, {}) > first  # no run: a deadline of its own
    finally:
        RunClaims(run).remove()


def test_a_stale_deadline_is_replaced() -> None:
    run = uuid.uuid4().hex[:16]
    env = {RUN_ID_ENV: run}
    try:
        path = RunClaims(run).file(DEADLINE_FILE)
        assert path is not None
        with open(path, "w") as handle:  # a worker restarted long ago
            handle.write(repr(time.monotonic() - 600))
        before = time.monotonic()
        deadline = shutdown_deadline(3.0, env)
        assert deadline >= before + 3.0
        assert shutdown_deadline(3.0, env) == deadline
    finally:
        RunClaims(run).remove()


def test_a_deadline_just_passed_still_leaves_time_to_flush() -> None:
    """A subprocess that exited a few seconds ago published a deadline now past: the next process
    of the run to shut down (a multiprocessing child, the parent itself) still gets MIN_GRACE_S."""
    run = uuid.uuid4().hex[:16]
    env = {RUN_ID_ENV: run}
    try:
        path = RunClaims(run).file(DEADLINE_FILE)
        assert path is not None
        with open(path, "w") as handle:
            handle.write(repr(time.monotonic() - 2.0))
        before = time.monotonic()
        deadline = shutdown_deadline(3.0, env)
        assert before + MIN_GRACE_S <= deadline < before + 3.0
    finally:
        RunClaims(run).remove()
