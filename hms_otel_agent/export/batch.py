"""A bounded batch span processor that never blocks the application.

The SDK's BatchSpanProcessor drops silently from the caller's point of view and waits up
to 30 s per exporter at shutdown. This one keeps the same OTEL_BSP_* semantics but counts
every dropped span by reason (`queue_full`, `export_failed`, `shutdown`: the metric
hms.agent.dropped_spans), says so in the log (once when the queue first overflows, then a
summary at most once a minute while it keeps dropping), re-initialises after fork (gunicorn
workers), and shuts down within a deadline shared by all exporters so a dead backend cannot
hold up process exit. The queue never holds more than `max_queue_size` spans.

Batching follows the SDK's semantics: the worker wakes up when a full batch
(`max_export_batch_size`) is queued and then exports full batches only; a partial batch leaves
when the schedule delay has passed since the last timed export (what was queued then, not what
ends while it exports), on `force_flush` and at shutdown. (Draining until the queue was empty
posted the tail that arrived during the previous export as a small batch of its own: under load
~25 spans per request, each paying the HTTP client's per-request work.) An optional
`SpanCompressor` (export/compress.py) holds back runs of repeated DB spans until their parent
ends.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence

from opentelemetry.context import attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hms_otel_agent import guard
from hms_otel_agent.export.compress import SpanCompressor
from hms_otel_agent.instrument.sdk_internals import SUPPRESS_INSTRUMENTATION_KEY

logger = logging.getLogger("hms_otel")
DROP_SUMMARY_INTERVAL_S = 60.0
DROP_REASONS = ("queue_full", "export_failed", "shutdown")


class BoundedBatchSpanProcessor(SpanProcessor):
    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        schedule_delay_ms: int = 5000,
        name: str = "traces",
        compressor: SpanCompressor | None = None,
    ) -> None:
        self.exporter = exporter
        self.compressor = compressor
        # Called by the agent's Span.end hook (pipeline.install_end_hook) only when compressing.
        self.before_end = compressor.mark if compressor is not None else None
        self.name = name
        self._max_queue_size = max_queue_size
        self._max_batch = min(max_export_batch_size, max_queue_size)
        self._delay_s = schedule_delay_ms / 1000.0
        # OTEL_BSP_SCHEDULE_DELAY=0: export as soon as a span ends (never a busy loop).
        self._eager = schedule_delay_ms <= 0
        self.drop_summary_interval_s = DROP_SUMMARY_INTERVAL_S
        self._shutdown = False
        self._final_deadline: float | None = None
        self._start_worker()
        if hasattr(os, "register_at_fork"):
            restart = weakref.WeakMethod(self._start_worker)

            def after_fork_in_child() -> None:
                method = restart()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_fork_in_child)

    def _start_worker(self) -> None:
        # After fork the parent's queue and counts belong to the parent: start empty, with new
        # locks (another thread may have held the parent's at fork time) and a new thread.
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._queue_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._export_lock = threading.Lock()
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.max_queue_length = 0  # the longest the queue has been (for tests and the soak script)
        self._window_drops = 0
        self._window_start = 0.0
        self._warned = False
        if self.compressor is not None:
            self.compressor.reset()
        self._worker = threading.Thread(target=self._run, name=f"hms-otel-export-{self.name}", daemon=True)
        if not self._shutdown:
            self._worker.start()

    @property
    def dropped_spans(self) -> int:
        """Spans dropped for any reason (see `dropped` for the count per reason)."""
        return sum(self.dropped.values())

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or not span.context.trace_flags.sampled:
            return
        compressor = self.compressor
        if compressor is not None:
            try:
                out = compressor.offer(span)
            except Exception as exc:
                guard.report(f"{self.name} span compression", exc)
                out = span
            if out is None:
                return  # held back: part of a run of repeated DB spans
            if out.__class__ is list:
                self._enqueue_many(out)
                return
        queue = self._queue
        with self._queue_lock:
            length = len(queue)
            if length < self._max_queue_size:
                queue.append(span)
                length += 1
                if length > self.max_queue_length:
                    self.max_queue_length = length
                full = False
            else:
                full = True
        if full:
            self._drop("queue_full", 1)
        elif self._eager or (length >= self._max_batch and not self._wakeup.is_set()):
            self._wakeup.set()

    def _enqueue_many(self, spans: Sequence[ReadableSpan]) -> None:
        queue = self._queue
        with self._queue_lock:
            room = max(0, self._max_queue_size - len(queue))
            queue.extend(spans[:room] if room < len(spans) else spans)
            length = len(queue)
            if length > self.max_queue_length:
                self.max_queue_length = length
        if room < len(spans):
            self._drop("queue_full", len(spans) - room)
        if self._eager or (length >= self._max_batch and not self._wakeup.is_set()):
            self._wakeup.set()

    def _drop(self, reason: str, count: int) -> None:
        with self._queue_lock:
            self.dropped[reason] += count
            if reason != "queue_full":
                return
            self._window_drops += count
            first = not self._warned
            if first:
                self._warned = True
                self._window_start = time.monotonic()
                self._window_drops = 0
        if first:
            logger.warning(
                "hms-otel: the %s export queue is full (%d spans): the backend does not keep up; "
                "spans are dropped (the application is unaffected), counted in the metric "
                "hms.agent.dropped_spans and summarized every %d s",
                self.name,
                self._max_queue_size,
                self.drop_summary_interval_s,
            )
        else:
            self._maybe_summarize_drops()

    def _maybe_summarize_drops(self) -> None:
        with self._queue_lock:
            if not self._window_drops or time.monotonic() - self._window_start < self.drop_summary_interval_s:
                return
            window, self._window_drops = self._window_drops, 0
            self._window_start = time.monotonic()
            total = self.dropped["queue_full"]
        logger.warning(
            "hms-otel: %d %s spans dropped in the last %d s because the export queue was full (%d in all)",
            window,
            self.name,
            self.drop_summary_interval_s,
            total,
        )

    def _run(self) -> None:
        next_timed = time.monotonic() + self._delay_s
        while not self._shutdown:
            if self._eager:
                self._wakeup.wait()
            else:
                self._wakeup.wait(max(0.0, next_timed - time.monotonic()))
            self._wakeup.clear()
            if self._shutdown:
                break
            if self._eager or time.monotonic() >= next_timed:
                # The schedule delay has passed: what is queued now leaves, partial batch included.
                self._release_held(closed_only=True)
                self._export_queued()
                next_timed = time.monotonic() + self._delay_s
            else:
                # Woken up by a full batch: full batches only; the tail waits for the timer.
                self._export_all(full_batches_only=True)
            try:
                self._maybe_summarize_drops()
            except Exception as exc:
                guard.report(f"{self.name} export queue", exc)
        if self._final_deadline is not None:
            self._final_flush()

    def _release_held(self, closed_only: bool) -> None:
        compressor = self.compressor
        if compressor is None:
            return
        try:
            spans = compressor.release_closed() if closed_only else compressor.release_all()
        except Exception as exc:
            guard.report(f"{self.name} span compression", exc)
            return
        if spans:
            self._enqueue_many(spans)

    def _take_batch(self) -> list[ReadableSpan]:
        queue = self._queue
        with self._queue_lock:
            return [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]

    def _export_queued(self) -> None:
        """What is queued now, partial batch included, then full batches only: spans that end
        while this exports wait for a full batch or the next timer (draining until the queue is
        empty posted a small batch per export under load, as phase 1 measured)."""
        with self._export_lock:
            due = len(self._queue)
            while due > 0 or len(self._queue) >= self._max_batch:
                batch = self._take_batch()
                if not batch:
                    break
                due -= len(batch)
                self._export(batch)

    def _export_all(
        self, deadline: float | None = None, drop_at_deadline: bool = False, full_batches_only: bool = False
    ) -> bool:
        """Export what is queued (or only full batches); False if the deadline came first (then,
        at shutdown, the rest is dropped and counted)."""
        minimum = self._max_batch if full_batches_only else 1
        with self._export_lock:
            while len(self._queue) >= minimum:
                if deadline is not None and time.monotonic() >= deadline:
                    if drop_at_deadline:
                        with self._queue_lock:
                            left = len(self._queue)
                            self._queue.clear()
                        self._drop("shutdown", left)
                    return False
                self._export(self._take_batch())
        return True

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        if not batch:
            return
        token = attach(set_value(SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            result = self.exporter.export(batch)
            if result is SpanExportResult.FAILURE:
                self._drop("export_failed", len(batch))
        except Exception as exc:
            self._drop("export_failed", len(batch))
            guard.report(f"{self.name} exporter", exc)
        finally:
            detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._shutdown:
            return False
        # What is not exported by the deadline stays queued for the next export.
        self._release_held(closed_only=False)
        return self._export_all(time.monotonic() + timeout_millis / 1000.0)

    def shutdown(self, timeout_millis: int = 30000) -> None:
        if self._shutdown:
            return
        self._final_deadline = time.monotonic() + timeout_millis / 1000.0
        self._shutdown = True
        self._wakeup.set()
        # The worker thread does the final flush: Python 3.12 refuses to start threads at
        # interpreter exit, and the worker is a daemon, so a stalled backend cannot hold up the
        # process's exit beyond the deadline. What is still queued then is counted as dropped.
        worker = self._worker
        if worker.is_alive() and worker is not threading.current_thread():
            worker.join(max(0.0, self._final_deadline - time.monotonic()))
            if worker.is_alive():
                with self._queue_lock:
                    left = len(self._queue)
                    self._queue.clear()
                if self.compressor is not None:
                    left += len(self.compressor.release_all())  # held back, never queued
                self._drop("shutdown", left)
        else:
            self._final_flush()

    def _final_flush(self) -> None:
        self._release_held(closed_only=False)
        self._export_all(self._final_deadline, drop_at_deadline=True)
        try:
            self.exporter.shutdown()
        except Exception as exc:
            guard.report(f"{self.name} exporter", exc)
