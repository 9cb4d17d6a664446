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


def test_a_process_with_nothing_to_send_keeps_to_a_passed_deadline() -> None:
    """A gunicorn master reaping workers that waited the whole deadline on a failing backend: it has
    no spans queued, so it takes no grace of its own (the tree exits one timeout after the stop)."""
    run = uuid.uuid4().hex[:16]
    env = {RUN_ID_ENV: run}
    try:
        path = RunClaims(run).file(DEADLINE_FILE)
        assert path is not None
        passed = time.monotonic() - 0.5
        with open(path, "w") as handle:
            handle.write(repr(passed))
        assert shutdown_deadline(3.0, env, pending=False) == passed
        before = time.monotonic()
        assert shutdown_deadline(3.0, env, pending=True) >= before + MIN_GRACE_S
    finally:
        RunClaims(run).remove()


def test_pending_spans_are_what_the_queues_and_the_compressor_hold() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from hms_otel_agent import config, pipeline
    from hms_otel_agent.signals.registry import DETECTORS

    settings = config.replace(config.load({}).settings, local_dir="")
    built = pipeline.build(
        settings, list(DETECTORS), span_exporters=[("memory", InMemorySpanExporter())], metric_readers=[]
    )
    try:
        [processor] = built.batch_processors
        assert built.has_pending_spans() is False
        processor._queue.append(object())  # a span ended and not yet exported
        assert built.has_pending_spans() is True
        processor._queue.clear()
        assert built.has_pending_spans() is False
        if processor.compressor is not None:
            processor.compressor.held_spans = 2  # a run of repeated DB spans held back
            assert built.has_pending_spans() is True
            processor.compressor.held_spans = 0
    finally:
        built.shutdown(1000)
