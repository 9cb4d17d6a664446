"""Thin adapters from live SDK spans to the plain records in `signals/`.

`SignalProcessor` groups DB and cache client spans under their owner — the nearest
ancestor that is neither — and, just before the owner ends, runs the detectors over the
owner's plain `OwnerActivity` and writes the findings onto the owner span. Everything
here runs on the application's threads, so every callback is guarded and all state is
bounded: spans that never end are evicted oldest first. The owner rule is signals/owners.py
(offline analysis uses it too); redaction, metrics and EXPLAIN dispatch are this package's
other modules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.sdk_internals import attribute_dict, events, mark_sampled, set_attributes
from hms_otel_agent.processors.explain import PlanSource, attach_plans, release_execution
from hms_otel_agent.processors.metrics import SignalMetrics, record_cache, record_connections
from hms_otel_agent.processors.redaction import no_literals, scrub, scrub_fail_closed
from hms_otel_agent.signals import redact, time_split
from hms_otel_agent.signals.owners import (
    CACHE,
    DB,
    HTTP,
    OWNER,
    TEMPLATE,
    TIME_PART,
    URL_ROLES,
    counted,
    is_client,
    scope_role,
)
from hms_otel_agent.signals.records import (
    CacheCall,
    ConnectCall,
    DbCall,
    Finding,
    HttpCall,
    OwnerActivity,
)
from hms_otel_agent.signals.registry import Detector, consolidate
from hms_otel_agent.signals.routes import readable_name
from hms_otel_agent.signals.vocabulary import (
    CACHE_RECORD,
    CONNECT_RECORD,
    DB_PAGED,
    DB_RECORD,
    EAGER_LOADS_SPAN,
    EXPLAIN_EVENT,
    HTTP_RECORD,
    STRUCTURED_TRACES_RECORD,
    TIME_PREFIX,
    finding_attributes,
    finding_event,
    plan_attributes,
)

logger = logging.getLogger("hms_otel")


_OWNER, _DB, _CACHE, _HTTP, _TEMPLATE = OWNER, DB, CACHE, HTTP, TEMPLATE


class EagerLoadSource(Protocol):
    """Unused eager loading aggregated over many requests (instrument/eager_loads.py)."""

    def pending(self) -> bool: ...

    def flush(self, settings: Any) -> list[Finding]: ...


class _State:
    """An open span the processor groups: an owner (with its activity), or a DB, cache, outbound
    HTTP or template span under one. The children of an owner share one state per kind (no
    allocation per span)."""

    __slots__ = ("activity", "children", "kind", "owner")

    def __init__(self, kind: int, owner: _State | None, activity: OwnerActivity | None) -> None:
        self.kind = kind
        self.owner = owner
        self.activity = activity
        self.children: list[_State | None] | None = None

    def child(self, kind: int) -> _State:
        children = self.children
        if children is None:
            children = self.children = [None, None, None, None, None]
        state = children[kind]
        if state is None:
            state = children[kind] = _State(kind, self, None)
        return state


class SignalProcessor(SpanProcessor):
    def __init__(
        self,
        settings: Settings,
        detectors: Sequence[Detector] = (),
        metrics: SignalMetrics | None = None,
        on_findings: Callable[[OwnerActivity, list[Finding]], None] | None = None,
        *,
        plans: PlanSource | None = None,
        eager_loads: EagerLoadSource | None = None,
        route_literals: Callable[[], frozenset[str] | None] = no_literals,
    ) -> None:
        """`plans`, `eager_loads` and `route_literals` (the application's literal path
        segments, for URL redaction) come from the instrumentation; pipeline.py wires them, so
        that this module does not import instrument/."""
        self.settings = settings
        self.detectors = tuple(detectors)
        self.metrics = metrics
        self.on_findings = on_findings
        self.plans = plans
        self.eager_loads = eager_loads
        self.route_literals = route_literals
        self._open: dict[int, _State] = {}
        self._max_open = settings.max_tracked_spans
        self.evicted = 0
        self._lock = threading.Lock()

    @property
    def open_span_ids(self) -> dict[int, Any]:
        """Span ids of the spans that started and have not ended (read-only use: membership)."""
        return self._open

    # --- SDK callbacks ---------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            scope = span.instrumentation_scope
            scope_name = scope.name if scope is not None else ""
            kind = scope_role(scope_name)
            owner = None
            parent = span.parent
            if parent is not None and not parent.is_remote:
                parent_state = self._open.get(parent.span_id)
                if parent_state is not None:
                    if not counted(kind, scope_name, parent_state.kind):
                        return  # a Redis command under a Django cache call: the call is what counts
                    owner = parent_state if parent_state.kind == _OWNER else parent_state.owner
            context = span.context
            if kind == _OWNER:
                activity = OwnerActivity(name=span.name, trace_id=context.trace_id, span_id=context.span_id)
                state = _State(_OWNER, None, activity)
            elif owner is None:
                return  # a DB, cache, HTTP or template span with no owner in this process
            else:
                state = owner.child(kind)
            open_spans = self._open
            open_spans[context.span_id] = state
            if len(open_spans) > self._max_open:
                self._evict()
        except Exception as exc:
            guard.report("span processor (on_start)", exc)

    def _evict(self) -> None:
        # Spans the application started and never ended; dicts keep insertion order.
        with self._lock:
            while len(self._open) > self._max_open:
                try:
                    del self._open[next(iter(self._open))]
                except (StopIteration, KeyError, RuntimeError):
                    break
                self.evicted += 1

    def before_end(self, span: Span, end_ns: int) -> None:
        """Called by the `Span.end` hook while the span can still be written."""
        state: _State | None = None
        try:
            state = self._open.pop(span.context.span_id, None)
            if state is None or state.kind in URL_ROLES:
                # DB and cache client spans never carry a URL: the statement, the command, ours.
                scope = span.instrumentation_scope
                scope_name = scope.name if scope is not None else ""
                scrub(span, self.settings, not is_client(scope_name), self.route_literals)
            elif events(span) or span.status.description:
                scrub(span, self.settings, urls=False)
        except Exception as exc:
            guard.report("span processor (redaction)", exc)
            scrub_fail_closed(span)
        try:
            # Any span but an owner's or a cache span may be a DB span (tracked or not).
            record = getattr(span, DB_RECORD, None) if state is None or state.kind == _DB else None
            if record is not None and record.execution is not None:
                release_execution(self.plans, span, record, end_ns, self.settings)
            if state is None:
                return
            kind = state.kind
            connects: list[ConnectCall] | None = getattr(span, CONNECT_RECORD, None)
            owner = state if kind == _OWNER else state.owner
            if connects and owner is not None and owner.activity is not None:
                owner.activity.add_connects(connects)
            if kind == _OWNER:
                # The shared child states point back at their owner: leave no cycle behind, so
                # that the owner's records go when the request does, not at the next collection.
                state.children = None
                self._finish_owner(span, state.activity, end_ns)  # type: ignore[arg-type]
                return
            if owner is None or owner.activity is None:
                return
            activity = owner.activity
            start_ns = span.start_time or end_ns
            duration = end_ns - start_ns
            intervals = activity.intervals
            if intervals is None:
                intervals = activity.intervals = time_split.Intervals()
            intervals.add(start_ns, end_ns, TIME_PART[kind])
            if kind == _HTTP:
                _record_http(span, activity, start_ns, duration)
            elif kind == _TEMPLATE:
                return
            elif kind == _DB:
                _add_db_call(activity, record, start_ns, duration)
            else:
                call: CacheCall | None = getattr(span, CACHE_RECORD, None)
                if call is not None:
                    _add_cache_call(activity, call, start_ns, duration)
        except Exception as exc:
            guard.report("span processor (span end)", exc)

    def record_detached(self, parent: Any, record: Any, start_ns: int, end_ns: int) -> None:
        """A statement (its DB span record) or a Django cache call (its CacheCall) run without
        a span of its own under `parent`, a span recorded for detection only (instrument/db.py,
        django_cache.py, pipeline.DetectingSampler): what `before_end` does with such a span."""
        try:
            is_cache = isinstance(record, CacheCall)
            if not is_cache:
                execution = record.execution
                record.execution = None
                settings, plans = self.settings, self.plans
                slow = end_ns - start_ns >= settings.slow_query_ms * 1e6
                if plans is not None and settings.explain and slow:
                    plans.submit(record.fingerprint, execution, settings)
            state = self._open.get(parent.get_span_context().span_id)
            if state is None:
                return
            owner = state if state.kind == _OWNER else state.owner
            if owner is None or owner.activity is None:
                return
            activity = owner.activity
            intervals = activity.intervals
            if intervals is None:
                intervals = activity.intervals = time_split.Intervals()
            intervals.add(start_ns, end_ns, TIME_PART[_CACHE if is_cache else _DB])
            if is_cache:
                _add_cache_call(activity, record, start_ns, end_ns - start_ns)
            else:
                _add_db_call(activity, record, start_ns, end_ns - start_ns)
        except Exception as exc:
            guard.report("span processor (span end)", exc)

    def exception_event(
        self, span: Span, exception: BaseException, attributes: Any, timestamp: int | None, escaped: bool
    ) -> bool:
        """Called by the ``Span.record_exception`` hook (sdk_internals): the exception event as the
        SDK records it, but without the message, its stack trace built from the exception's
        structure (`redact.format_exception_redacted`). False: record it as the SDK does
        (HMS_OTEL_CAPTURE_EXCEPTION_MESSAGES=true)."""
        if self.settings.capture_exception_messages:
            return False
        try:
            kind = type(exception)
            module, qualname = kind.__module__, kind.__qualname__
            type_name = f"{module}.{qualname}" if module and module != "builtins" else qualname
            event: dict[str, Any] = {
                "exception.type": type_name,
                "exception.message": redact.exception_message(type_name),
            }
            stacktrace: str | None = None
            try:
                stacktrace = redact.format_exception_redacted(exception)
                event["exception.stacktrace"] = stacktrace
            except Exception as exc:
                guard.report("span processor (exception)", exc)
            event["exception.escaped"] = str(escaped)
            if attributes:
                event.update(attributes)
            if stacktrace is not None and event.get("exception.stacktrace") is stacktrace:
                # redaction.scrub leaves this one alone (the text scrubber would drop its source lines).
                structured = getattr(span, STRUCTURED_TRACES_RECORD, None)
                if structured is None:
                    structured = []
                    setattr(span, STRUCTURED_TRACES_RECORD, structured)
                if len(structured) < 64:
                    structured.append(stacktrace)
            span.add_event("exception", event, timestamp)
        except Exception as exc:
            guard.report("span processor (exception)", exc)
            try:
                span.add_event("exception", {"exception.type": type(exception).__name__}, timestamp)
            except Exception as error:
                guard.report("span processor (exception)", error)
        return True

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        self._open.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # --- owners --------------------------------------------------------------------

    def _finish_owner(self, span: Span, activity: OwnerActivity, end_ns: int) -> None:
        attributes = span.attributes or {}
        route = attributes.get("http.route")
        activity.route = str(route) if route else ""
        # The Django middleware renames it to "GET <route>" mid-request; hints show the route
        # readable (a regex route as its template: signals/routes.py).
        activity.name = readable_name(span.name, activity.route)
        is_server = span.kind is SpanKind.SERVER
        if activity.db_count or is_server:
            span.set_attribute("hms.db.query_count", activity.db_count)
            span.set_attribute("hms.db.duration_ms", round(activity.db_duration_ns / 1e6, 3))
        route = activity.route or "unknown"
        if activity.intervals is not None or is_server:
            split = time_split.split(span.start_time or end_ns, end_ns, activity.intervals)
            set_attributes(span, {TIME_PREFIX + key: value for key, value in split.items()})
            if is_server and self.metrics is not None:
                for key, value in split.items():
                    if value:
                        self.metrics.time.add(value / 1e3, {"http.route": route, "hms.time.part": key[:-3]})
        if is_server and self.metrics is not None:
            self.metrics.queries_per_request.record(activity.db_count, {"http.route": route})
        if activity.cache_calls:
            record_cache(self.metrics, span, activity, route)
        if activity.connects or activity.db_count:
            record_connections(self.metrics, span, activity, route)
        if self.eager_loads is not None and self.eager_loads.pending():
            self._flush_eager_loads(self.eager_loads)
        if (
            not (activity.db_calls or activity.cache_calls or activity.connects or activity.http_calls)
            or not self.detectors
        ):
            return
        if activity.db_calls and self.plans is not None:
            attach_plans(activity, self.settings.slow_query_ms, self.plans)
        findings: list[Finding] = []
        for detector in self.detectors:
            try:
                findings.extend(detector(activity, self.settings))
            except Exception as exc:
                guard.report(f"detector {getattr(detector, '__module__', detector)}", exc)
        findings = consolidate(findings)
        if activity.paged:  # offline analysis cannot tell slices apart without the parameters
            span.set_attribute(DB_PAGED, sorted(activity.paged))
        if findings:
            _write_findings(span, activity, findings)
            if not span.get_span_context().trace_flags.sampled:
                _export_alone(span)
            if self.metrics is not None:
                self.metrics.count_findings(findings, route)
        if self.on_findings is not None and findings:
            self.on_findings(activity, findings)

    def _flush_eager_loads(self, eager_loads: EagerLoadSource) -> None:
        """Unused eager loading is decided over many requests: new findings get a span of
        their own (instrument/eager_loads.py), the findings metric and the live log."""
        findings = eager_loads.flush(self.settings)
        if not findings:
            return
        if self.metrics is not None:
            self.metrics.count_findings(findings, None)
        if self.on_findings is not None:
            self.on_findings(OwnerActivity(name=EAGER_LOADS_SPAN), findings)


def _record_http(span: Span, activity: OwnerActivity, start_ns: int, duration: int) -> None:
    """The outbound call's record (`instrument.http_client`), timed and with its status."""
    call: HttpCall | None = getattr(span, HTTP_RECORD, None)
    if call is None or not activity.has_room(activity.http_calls):
        return
    call.start_ns = start_ns
    call.duration_ns = duration
    attributes = attribute_dict(span) or {}
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    if isinstance(status, int):
        call.status_code = status
    activity.http_calls.append(call)


def _add_cache_call(activity: OwnerActivity, call: CacheCall, start_ns: int, duration: int) -> None:
    if activity.has_room(activity.cache_calls):
        call.start_ns = start_ns
        call.duration_ns = duration
        activity.cache_calls.append(call)


def _add_db_call(activity: OwnerActivity, record: Any, start_ns: int, duration: int) -> None:
    activity.count_db(duration)
    if record is None or not activity.has_room(activity.db_calls):
        return
    fp = record.fingerprint
    activity.db_calls.append(
        DbCall(
            fingerprint=fp.digest,
            statement=fp.normalized,
            start_ns=start_ns,
            duration_ns=duration,
            table=fp.table,
            filter_columns=fp.filter_columns,
            params_hash=record.params_hash,
            text_hash=record.text_hash,
            orm=record.orm,
            rows=record.rows,
        )
    )


def _export_alone(span: Span) -> None:
    """A request head sampling did not trace (pipeline.DetectingSampler) but with findings: its
    owner span is exported alone, marked, so that every finding links to a span (its statements
    and cache calls had no spans, or unsampled ones, and are not exported). Before the span
    ends: the exporters' processors read the sampled flag in on_end."""
    span.set_attribute("hms.sampled_out", True)
    mark_sampled(span)


def _write_findings(span: Span, activity: OwnerActivity, findings: list[Finding]) -> None:
    now = time.time_ns()
    n_plus_one = [f for f in findings if f.kind == "n_plus_one"]
    span.set_attribute("hms.n_plus_one", bool(n_plus_one))
    span.set_attribute("hms.n_plus_one.count", len(n_plus_one))
    span.set_attribute("hms.findings.count", len(findings))
    span.set_attribute("hms.hints", [f.hint for f in findings if f.hint])
    for finding in findings:
        span.add_event(finding_event(finding.kind), finding_attributes(finding), timestamp=now)
    for plan in activity.plans.values():
        span.add_event(EXPLAIN_EVENT, plan_attributes(plan), timestamp=now)
