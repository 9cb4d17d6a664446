"""Thin adapters from live SDK spans to the plain records in `signals/`.

`SignalProcessor` groups DB and cache client spans under their owner — the nearest
ancestor that is neither — and, just before the owner ends, runs the detectors over the
owner's plain `OwnerActivity` and writes the findings onto the owner span. Everything
here runs on the application's threads, so every callback is guarded and all state is
bounded: spans that never end are evicted oldest first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.sdk_internals import (
    attribute_dict,
    events,
    mark_sampled,
    replace_event,
    replace_status,
    set_attributes,
)
from hms_otel_agent.signals import redact, time_split
from hms_otel_agent.signals.activity import (
    MAX_CALLS_PER_OWNER,
    CacheCall,
    ConnectCall,
    DbCall,
    Finding,
    OwnerActivity,
    PlanSummary,
)
from hms_otel_agent.signals.http_calls import HttpCall
from hms_otel_agent.signals.http_privacy import HttpPrivacy, named_headers
from hms_otel_agent.signals.redact import scrub_stacktrace
from hms_otel_agent.signals.registry import Detector, consolidate
from hms_otel_agent.signals.routes import readable_name
from hms_otel_agent.signals.vocabulary import (
    CACHE_RECORD,
    CACHE_SCOPES,
    CONNECT_RECORD,
    DB_RECORD,
    DB_SCOPES,
    DJANGO_CACHE_SCOPE,
    EAGER_LOADS_SPAN,
    EXPLAIN_EVENT,
    HTTP_CLIENT_SCOPES,
    HTTP_RECORD,
    STRUCTURED_TRACES_RECORD,
    TEMPLATE_SCOPE,
    TIME_PREFIX,
    finding_attributes,
    finding_event,
    plan_attributes,
)

logger = logging.getLogger("hms_otel")


_OWNER, _DB, _CACHE, _HTTP, _TEMPLATE = 0, 1, 2, 3, 4
# The part of the owner's time split (signals/time_split.py) each kind of child span is.
_TIME_KIND = {
    _DB: time_split.DB,
    _CACHE: time_split.CACHE,
    _HTTP: time_split.HTTP,
    _TEMPLATE: time_split.TEMPLATE,
}


class PlanSource(Protocol):
    """Where slow statements go for EXPLAIN and their plans come from (instrument/explain.py)."""

    def submit(self, fingerprint: Any, execution: tuple[Any, Any, Any], settings: Any) -> bool: ...

    def plan_for(self, fingerprint: str) -> PlanSummary | None: ...


class EagerLoadSource(Protocol):
    """Unused eager loading aggregated over many requests (instrument/eager_loads.py)."""

    def pending(self) -> bool: ...

    def flush(self, settings: Any) -> list[Finding]: ...


def _no_literals() -> frozenset[str] | None:
    return None


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


class SignalMetrics:
    """The agent's own instruments (names documented in docs/attributes.md)."""

    def __init__(self, meter: Any) -> None:
        self.findings = meter.create_counter(
            "hms.findings", unit="{finding}", description="Performance findings, by route, kind and relation."
        )
        self.cache_reads = meter.create_counter(
            "hms.cache.reads", unit="{read}", description="Cache keys read, by route, key pattern and result."
        )
        self.cache_write_ttl = meter.create_histogram(
            "hms.cache.write_ttl",
            unit="s",
            description="Expiry of cache writes, by key pattern.",
            explicit_bucket_boundaries_advisory=[1, 10, 60, 300, 900, 1800, 3600, 21600, 86400, 604800],
        )
        self.queries_per_request = meter.create_histogram(
            "hms.db.queries_per_request",
            unit="{query}",
            description="SQL statements run per request, by route.",
            explicit_bucket_boundaries_advisory=[0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377],
        )
        self.time = meter.create_counter(
            "hms.time",
            unit="s",
            description="Request time by route and part: db, cache, http, template, app (the rest).",
        )
        self.connection_uses = meter.create_counter(
            "hms.db.connection.uses",
            unit="{use}",
            description="Owner spans that ran SQL, by route and whether they reused a connection "
            "(opened none).",
        )


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
        route_literals: Callable[[], frozenset[str] | None] = _no_literals,
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
            kind = _DB if scope_name in DB_SCOPES else _CACHE if scope_name in CACHE_SCOPES else _OWNER
            if kind == _OWNER:
                if scope_name in HTTP_CLIENT_SCOPES:
                    kind = _HTTP
                elif scope_name == TEMPLATE_SCOPE:
                    kind = _TEMPLATE
            owner = None
            parent = span.parent
            if parent is not None and not parent.is_remote:
                parent_state = self._open.get(parent.span_id)
                if parent_state is not None:
                    if kind == _CACHE and parent_state.kind == _CACHE and scope_name != DJANGO_CACHE_SCOPE:
                        return  # a Redis command under a Django cache call: the call is what counts
                    owner = parent_state if parent_state.kind == _OWNER else parent_state.owner
            if kind == _OWNER:
                state = _State(_OWNER, None, OwnerActivity(name=span.name))
            elif owner is None:
                return  # a DB, cache, HTTP or template span with no owner in this process
            else:
                state = owner.child(kind)
            open_spans = self._open
            open_spans[span.context.span_id] = state
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
            if state is None or state.kind in _URL_KINDS:
                # DB and cache client spans never carry a URL: the statement, the command, ours.
                scope = span.instrumentation_scope
                scope_name = scope.name if scope is not None else ""
                _scrub(
                    span,
                    self.settings,
                    scope_name not in DB_SCOPES and scope_name not in CACHE_SCOPES,
                    self.route_literals,
                )
            elif events(span) or span.status.description:
                _scrub(span, self.settings, urls=False)
        except Exception as exc:
            guard.report("span processor (redaction)", exc)
            _scrub_fail_closed(span)
        try:
            # Any span but an owner's or a cache span may be a DB span (tracked or not).
            record = getattr(span, DB_RECORD, None) if state is None or state.kind == _DB else None
            if record is not None and record.execution is not None:
                self._release_execution(span, record, end_ns)
            if state is None:
                return
            kind = state.kind
            connects: list[ConnectCall] | None = getattr(span, CONNECT_RECORD, None)
            owner = state if kind == _OWNER else state.owner
            if connects and owner is not None:
                target = owner.activity
                if target is not None and len(target.connects) < MAX_CALLS_PER_OWNER:
                    target.connects.extend(connects)
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
            intervals.add(start_ns, end_ns, _TIME_KIND[kind])
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
            intervals.add(start_ns, end_ns, _TIME_KIND[_CACHE if is_cache else _DB])
            if is_cache:
                _add_cache_call(activity, record, start_ns, end_ns - start_ns)
            else:
                _add_db_call(activity, record, start_ns, end_ns - start_ns)
        except Exception as exc:
            guard.report("span processor (span end)", exc)

    def _release_execution(self, span: Span, record: Any, end_ns: int) -> None:
        """The statement and parameters leave the span record here, whatever happens next:
        queued for EXPLAIN when opted in and slow, else dropped."""
        execution = record.execution
        record.execution = None
        settings = self.settings
        plans = self.plans
        if (
            plans is not None
            and settings.explain
            and end_ns - (span.start_time or end_ns) >= settings.slow_query_ms * 1e6
        ):
            plans.submit(record.fingerprint, execution, settings)

    def exception_event(
        self, span: Span, exception: BaseException, attributes: Any, timestamp: int | None, escaped: bool
    ) -> bool:
        """Called by the ``Span.record_exception`` hook (pipeline.py): the exception event as the
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
                # _scrub leaves this one alone (the text scrubber would drop its source lines).
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
            self._record_cache(span, activity, route)
        if activity.connects or activity.db_count:
            self._record_connections(span, activity, route)
        if self.eager_loads is not None and self.eager_loads.pending():
            self._flush_eager_loads(self.eager_loads)
        if (
            not (activity.db_calls or activity.cache_calls or activity.connects or activity.http_calls)
            or not self.detectors
        ):
            return
        if activity.db_calls and self.plans is not None:
            _attach_plans(activity, self.settings.slow_query_ms, self.plans)
        findings: list[Finding] = []
        for detector in self.detectors:
            try:
                findings.extend(detector(activity, self.settings))
            except Exception as exc:
                guard.report(f"detector {getattr(detector, '__module__', detector)}", exc)
        findings = consolidate(findings)
        if findings:
            _write_findings(span, activity, findings)
            if not span.get_span_context().trace_flags.sampled:
                _export_alone(span)
            if self.metrics is not None:
                for finding in findings:
                    self.metrics.findings.add(
                        1,
                        {
                            "http.route": route,
                            "hms.finding.kind": finding.kind,
                            "hms.orm.relation": finding.relation,
                            "hms.cache.key_pattern": finding.key_pattern,
                        },
                    )
        if self.on_findings is not None and findings:
            self.on_findings(activity, findings)

    def _record_connections(self, span: Span, activity: OwnerActivity, route: str) -> None:
        opened = [c for c in activity.connects if not c.pooled]
        if activity.connects:
            span.set_attribute("hms.db.connections_opened", len(opened))
            span.set_attribute("hms.db.connect_ms", round(sum(c.duration_ns for c in opened) / 1e6, 3))
        if activity.db_count and self.metrics is not None:
            self.metrics.connection_uses.add(1, {"http.route": route, "hms.db.connection.reused": not opened})

    def _flush_eager_loads(self, eager_loads: EagerLoadSource) -> None:
        """Unused eager loading is decided over many requests: new findings get a span of
        their own (instrument/eager_loads.py), the findings metric and the live log."""
        findings = eager_loads.flush(self.settings)
        if not findings:
            return
        for finding in findings:
            if self.metrics is not None:
                self.metrics.findings.add(
                    1,
                    {
                        "hms.finding.kind": finding.kind,
                        "hms.orm.relation": finding.relation,
                        "hms.cache.key_pattern": "",
                    },
                )
        if self.on_findings is not None:
            self.on_findings(OwnerActivity(name=EAGER_LOADS_SPAN), findings)

    def _record_cache(self, span: Span, activity: OwnerActivity, route: str) -> None:
        hits = misses = 0
        metrics = self.metrics
        # Summed per key pattern first: one counter add per pattern and result, not per call.
        reads: dict[str, list[int]] = {}
        for call in activity.cache_calls:
            hits += call.hits
            misses += call.misses
            if metrics is None:
                continue
            if call.hits or call.misses:
                counts = reads.get(call.key_pattern)
                if counts is None:
                    reads[call.key_pattern] = [call.hits, call.misses]
                else:
                    counts[0] += call.hits
                    counts[1] += call.misses
            if call.writes and call.ttl_s is not None:
                metrics.cache_write_ttl.record(call.ttl_s, {"hms.cache.key_pattern": call.key_pattern})
        if metrics is not None:
            for pattern, (pattern_hits, pattern_misses) in reads.items():
                if pattern_hits:
                    metrics.cache_reads.add(
                        pattern_hits,
                        {"http.route": route, "hms.cache.key_pattern": pattern, "hms.cache.result": "hit"},
                    )
                if pattern_misses:
                    metrics.cache_reads.add(
                        pattern_misses,
                        {"http.route": route, "hms.cache.key_pattern": pattern, "hms.cache.result": "miss"},
                    )
        if hits or misses:
            span.set_attribute("hms.cache.hit_count", hits)
            span.set_attribute("hms.cache.miss_count", misses)
            span.set_attribute("hms.cache.hit_ratio", round(hits / (hits + misses), 4))


def _add_cache_call(activity: OwnerActivity, call: CacheCall, start_ns: int, duration: int) -> None:
    if len(activity.cache_calls) >= MAX_CALLS_PER_OWNER:
        activity.dropped += 1
        return
    call.start_ns = start_ns
    call.duration_ns = duration
    activity.cache_calls.append(call)


def _add_db_call(activity: OwnerActivity, record: Any, start_ns: int, duration: int) -> None:
    activity.db_count += 1
    activity.db_duration_ns += duration
    if record is None:
        return
    if len(activity.db_calls) >= MAX_CALLS_PER_OWNER:
        activity.dropped += 1
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


def _record_http(span: Span, activity: OwnerActivity, start_ns: int, duration: int) -> None:
    """The outbound call's record (`instrument.http_client`), timed and with its status."""
    call: HttpCall | None = getattr(span, HTTP_RECORD, None)
    if call is None:
        return
    if len(activity.http_calls) >= MAX_CALLS_PER_OWNER:
        activity.dropped += 1
        return
    call.start_ns = start_ns
    call.duration_ns = duration
    attributes = attribute_dict(span) or {}
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    if isinstance(status, int):
        call.status_code = status
    activity.http_calls.append(call)


_URL_KINDS = (_OWNER, _HTTP)  # template spans carry a template's name, never a URL
_URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.path", "url.query")
_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
_USER_AGENT_ATTRIBUTES = ("http.user_agent", "user_agent.original")

_CAPTURE_VARIABLES = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
)
_privacy: tuple[Settings, HttpPrivacy] | None = None
_named: tuple[tuple[str | None, ...], frozenset[str]] = ((None, None), frozenset())


def _named_headers() -> frozenset[str]:
    """The header names the contrib's capture variables spell out. The contrib reads them on
    every request, so they are read again here — only for spans that have captured headers."""
    global _named
    capture = tuple(map(os.environ.get, _CAPTURE_VARIABLES))
    known = _named
    if known[0] != capture:
        known = _named = (capture, named_headers(capture[0]) | named_headers(capture[1]))
    return known[1]


def http_privacy(settings: Settings) -> HttpPrivacy:
    """The URL, user-agent and header rules of `settings` (built again when they change)."""
    global _privacy
    built = _privacy
    if built is None or built[0] is not settings:
        built = _privacy = (settings, HttpPrivacy.from_settings(settings, _named_headers))
    return built[1]


def _scrub(
    span: Span,
    settings: Settings,
    urls: bool = True,
    route_literals: Callable[[], frozenset[str] | None] = _no_literals,
) -> None:
    """Remove patient data from URLs, the user agent, captured headers and exception messages
    before the span is exported. `urls`: look at the HTTP attributes (not for DB and cache
    client spans)."""
    if urls:
        attributes = attribute_dict(span)
        name = span.name
        if attributes or "/" in name:
            literals = route_literals() if span.kind is SpanKind.SERVER else None
            changes, new_name = http_privacy(settings).changes(attributes or {}, name, literals)
            for key, value in changes.items():
                if value is None:
                    attributes.pop(key, None)
                else:
                    span.set_attribute(key, value)
            if new_name != name:
                span.update_name(new_name)
    if settings.capture_exception_messages:
        return
    recorded = events(span)
    structured = getattr(span, STRUCTURED_TRACES_RECORD, ())
    for index in range(len(recorded) if recorded else 0):
        event = recorded[index]
        if event.name == "exception" and event.attributes:
            scrubbed = dict(event.attributes)
            scrubbed["exception.message"] = redact.exception_message(str(scrubbed.get("exception.type", "")))
            stacktrace = scrubbed.get("exception.stacktrace")
            if stacktrace is not None and not any(stacktrace is built for built in structured):
                scrubbed["exception.stacktrace"] = scrub_stacktrace(str(stacktrace))
            replace_event(span, index, Event(event.name, scrubbed, event.timestamp))
    status = span.status
    if status.description:
        replace_status(span, Status(status.status_code, redact.scrub_status_description(status.description)))


def _scrub_fail_closed(span: Span) -> None:
    """When redaction itself failed: drop what may identify a patient rather than export it."""
    try:
        attributes = attribute_dict(span) or {}
        for key in list(attributes):
            if key in _URL_ATTRIBUTES:
                span.set_attribute(key, redact.REDACTED)
            elif key in _USER_AGENT_ATTRIBUTES or key.startswith(_HEADER_PREFIXES):
                attributes.pop(key, None)
        name = span.name
        if "/" in name:
            span.update_name(name.split(" ", 1)[0] if " " in name else redact.REDACTED)
        recorded = events(span)
        for index in range(len(recorded)):
            event = recorded[index]
            if event.name == "exception":
                kept = {k: v for k, v in (event.attributes or {}).items() if k == "exception.type"}
                replace_event(span, index, Event(event.name, kept, event.timestamp))
        if span.status.description:
            replace_status(span, Status(span.status.status_code, redact.MESSAGE_REDACTED))
    except Exception as exc:
        guard.report("span processor (redaction fallback)", exc)


def _attach_plans(activity: OwnerActivity, slow_query_ms: float, plans: PlanSource) -> None:
    """Plans EXPLAIN found earlier for statements that are slow under this owner."""
    slow_ns = slow_query_ms * 1e6
    for call in activity.db_calls:
        if call.duration_ns >= slow_ns and call.fingerprint not in activity.plans:
            plan = plans.plan_for(call.fingerprint)
            if plan is not None:
                activity.plans[call.fingerprint] = plan


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
