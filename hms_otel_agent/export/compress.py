"""Span compression: a run of repeated DB spans under one parent leaves as one summary span.

Like Elastic APM's span compression (its *composite spans*), for the N+1 runs the agent
detects: the DB client spans that end under one parent span with the same statement
fingerprint and the same ORM context (relation, path, code location: one interned
`OrmContext`) are held back in the batch processor until the parent ends. A run of at least
`threshold` spans (HMS_OTEL_N_PLUS_ONE_THRESHOLD) is then exported as one span: the first
span's identity (trace id, span id, parent), name, attributes and statement, starting when the
first started and ending when the last ended, with

* ``hms.compressed.count`` — how many spans it stands for (Elastic: ``composite.count``),
* ``hms.compressed.duration_ms`` — the sum of their durations (Elastic: ``composite.sum``);
  the span's own duration is the gross one, from the first start to the last end.

Unlike Elastic's consecutive-sibling strategies, the spans of a run need not be adjacent:
``for e in encounters: e.patient; e.facility`` interleaves two runs, each compressed on its own.
Shorter runs are exported as they are. Nothing else is compressed: a span is eligible only if it
is a DB span the SQL hook saw (it carries the hook's record), ended without error status, events
or links, ran shorter than HMS_OTEL_SLOW_QUERY_MS (slow executions stay visible one by one) and
has a local parent that is still open (known to the span processor). DB client spans are leaves
(the contrib instrumentation's span wraps one driver call), so no exported span ever names a
dropped span as its parent.

Detection never looks at exported spans: the span processor has recorded every statement in the
owner's `OwnerActivity` before the span reaches the batch processor, so findings and hints are
the same with compression on or off.

Memory is bounded: a run that reached the threshold keeps only its first span and three
numbers; at most `max_held` spans are held in all, beyond which the oldest parent's runs are
released as they are (a summary for a run that reached the threshold, the spans otherwise).
Parents that ended without their on_end reaching us (not sampled, evicted, ended before their
children) are released on the export thread's timer, and everything at flush and shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Container
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from hms_otel_agent.instrument.sdk_internals import (
    instrumentation_info,
    span_context,
    span_fields,
    span_origin,
)
from hms_otel_agent.signals.vocabulary import DB_RECORD

COUNT = "hms.compressed.count"
DURATION_MS = "hms.compressed.duration_ms"
_UNSET = StatusCode.UNSET
_OK = StatusCode.OK


class _Run:
    __slots__ = ("count", "duration_ns", "end_ns", "first", "pending")

    def __init__(self, span: Any, duration_ns: int) -> None:
        self.first = span
        self.pending: list[Any] | None = []  # spans after the first, until the run is long enough
        self.count = 1
        self.duration_ns = duration_ns
        self.end_ns = span_fields(span)[5]


class SpanCompressor:
    """Held runs by parent span id. `offer` runs on the application's threads, `release_*` on
    the export thread: all state is changed under one lock."""

    def __init__(
        self, threshold: int, max_duration_ms: float, open_spans: Container[int], max_held: int
    ) -> None:
        self.threshold = max(2, threshold)
        self.max_duration_ns = int(max_duration_ms * 1e6)
        self.open_spans = open_spans
        self.max_held = max(1, max_held)
        self.reset()

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, dict[tuple[str, int], _Run]] = {}
        # span id -> (parent id, run key, duration): eligible spans between mark() and offer()
        self._marked: dict[int, tuple[int, tuple[str, int], int]] = {}
        self.held_spans = 0  # spans referenced by _held (first + pending of every run)

    def mark(self, span: Any, end_ns: int) -> None:
        """From the `Span.end` hook, while the span is still the live SDK span (its DB record is
        on it; the processors' on_end get a copy without it): note an eligible span by id."""
        record = getattr(span, DB_RECORD, None)
        if record is None:
            return
        context, parent, _, _, start, _, _, events, links, status = span_fields(span)
        if (
            parent is None
            or parent.is_remote
            or events
            or links
            or status.status_code not in (_UNSET, _OK)
            or not context.trace_flags.sampled
        ):
            return
        duration = end_ns - start
        if duration >= self.max_duration_ns or parent.span_id not in self.open_spans:
            return
        self._marked[context.span_id] = (
            parent.span_id,
            (record.fingerprint.digest, id(record.orm)),
            duration,
        )

    def offer(self, span: Any) -> Any:
        """Take an ended span. Returns None when the span is held, the span itself when it goes
        to the queue alone, or a list of spans to queue (held runs released by it, then it)."""
        released = None
        span_id = span_context(span).span_id
        if self._held and span_id in self._held:
            with self._lock:
                runs = self._held.pop(span_id, None)
                released = self._release(runs) if runs is not None else None
        if self._marked:
            marked = self._marked.pop(span_id, None)
            if marked is not None:
                overflow = self._hold(marked[0], marked[1], span, marked[2])
                if overflow:
                    released = overflow if released is None else released + overflow
                return released
        if released is None:
            return span
        released.append(span)
        return released

    def _hold(self, parent_id: int, key: tuple[str, int], span: Any, duration: int) -> list[Any] | None:
        with self._lock:
            runs = self._held.get(parent_id)
            if runs is None:
                runs = self._held[parent_id] = {}
            run = runs.get(key)
            if run is None:
                runs[key] = _Run(span, duration)
                self.held_spans += 1
            else:
                run.count += 1
                run.duration_ns += duration
                end_ns = span_fields(span)[5]
                if end_ns > run.end_ns:
                    run.end_ns = end_ns
                pending = run.pending
                if pending is not None:
                    if run.count >= self.threshold:
                        # Long enough: only the first span and the numbers are kept from now on.
                        self.held_spans -= len(pending)
                        run.pending = None
                    else:
                        pending.append(span)
                        self.held_spans += 1
            if self.held_spans <= self.max_held:
                return None
            # Over the cap (parents that never end, or one enormous request): the oldest
            # parent's runs leave as they are.
            released: list[Any] = []
            while self.held_spans > self.max_held and self._held:
                oldest = next(iter(self._held))
                released.extend(self._release(self._held.pop(oldest)))
            return released

    def _release(self, runs: dict[tuple[str, int], _Run]) -> list[Any]:
        """Spans to export for the runs of one parent (called under the lock)."""
        out: list[Any] = []
        for run in runs.values():
            pending = run.pending
            if pending is None:
                out.append(self._summary(run))
                self.held_spans -= 1
            else:
                out.append(run.first)
                out.extend(pending)
                self.held_spans -= 1 + len(pending)
        return out

    def _summary(self, run: _Run) -> ReadableSpan:
        first = run.first
        context, parent, name, kind, start, _, first_attributes, _, _, status = span_fields(first)
        resource, scope = span_origin(first)
        attributes = dict(first_attributes)
        attributes[COUNT] = run.count
        attributes[DURATION_MS] = round(run.duration_ns / 1e6, 3)
        return ReadableSpan(
            name=name,
            context=context,
            parent=parent,
            resource=resource,
            attributes=attributes,
            kind=kind,
            status=status,
            start_time=start,
            end_time=run.end_ns,
            instrumentation_info=instrumentation_info(first),
            instrumentation_scope=scope,
        )

    def release_closed(self) -> list[Any]:
        """Runs whose parent is no longer open (ended without reaching us, or evicted)."""
        if not self._held:
            return []
        open_spans = self.open_spans
        out: list[Any] = []
        with self._lock:
            for parent_id in [p for p in self._held if p not in open_spans]:
                out.extend(self._release(self._held.pop(parent_id)))
        return out

    def release_all(self) -> list[Any]:
        """Everything held (flush, shutdown): runs still open leave as they are so far."""
        if not self._held:
            return []
        out: list[Any] = []
        with self._lock:
            while self._held:
                out.extend(self._release(self._held.pop(next(iter(self._held)))))
        return out
