"""A bounded batch span processor that never blocks the application.

The SDK's BatchSpanProcessor drops silently from the caller's point of view and waits up
to 30 s per exporter at shutdown. This one keeps the same OTEL_BSP_* semantics but counts
every dropped span, re-initialises after fork (gunicorn workers), and shuts down within a
deadline shared by all exporters so a dead backend cannot hold up process exit.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Sequence

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

from hms_otel_agent import guard


class BoundedBatchSpanProcessor(SpanProcessor):
    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        schedule_delay_ms: int = 5000,
        name: str = "traces",
    ) -> None:
        self.exporter = exporter
        self.name = name
        self._max_queue_size = max_queue_size
        self._max_batch = min(max_export_batch_size, max_queue_size)
        self._delay_s = schedule_delay_ms / 1000.0
        self.dropped_spans = 0
        self.exported_batches = 0
        self._shutdown = False
        self._start_worker()
        if hasattr(os, "register_at_fork"):
            restart = weakref.WeakMethod(self._start_worker)

            def after_fork_in_child() -> None:
                method = restart()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_fork_in_child)

    def _start_worker(self) -> None:
        # After fork the parent's queue belongs to the parent: start empty with a new thread.
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wakeup = threading.Event()
        self._export_lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name=f"hms-otel-export-{self.name}", daemon=True)
        if not self._shutdown:
            self._worker.start()

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or not span.context.trace_flags.sampled:
            return
        queue = self._queue
        if len(queue) >= self._max_queue_size:
            self.dropped_spans += 1
            return
        queue.append(span)
        if len(queue) >= self._max_batch:
            self._wakeup.set()

    def _run(self) -> None:
        while not self._shutdown:
            self._wakeup.wait(self._delay_s)
            self._wakeup.clear()
            if self._shutdown:
                break
            self._export_all()

    def _export_all(self, deadline: float | None = None) -> None:
        with self._export_lock:
            while self._queue:
                if deadline is not None and time.monotonic() >= deadline:
                    self.dropped_spans += len(self._queue)
                    self._queue.clear()
                    return
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                self._export(batch)

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            self.exporter.export(batch)
            self.exported_batches += 1
        except Exception as exc:
            guard.report(f"{self.name} exporter", exc)
        finally:
            detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._shutdown:
            return False
        self._export_all(time.monotonic() + timeout_millis / 1000.0)
        return True

    def shutdown(self, timeout_millis: int = 30000) -> None:
        if self._shutdown:
            return
        deadline = time.monotonic() + timeout_millis / 1000.0
        self._shutdown = True
        self._wakeup.set()
        # The final flush runs in a daemon thread: a stalled backend must not hold up the
        # process's exit beyond the deadline. What is still queued then is counted as dropped.
        flusher = threading.Thread(target=self._final_flush, args=(deadline,), daemon=True)
        flusher.start()
        flusher.join(max(0.0, deadline - time.monotonic()))
        if flusher.is_alive():
            self.dropped_spans += len(self._queue)

    def _final_flush(self, deadline: float) -> None:
        self._export_all(deadline)
        try:
            self.exporter.shutdown()
        except Exception as exc:
            guard.report(f"{self.name} exporter", exc)
