"""Redaction of live spans just before they end: URLs, the user agent, captured headers,
exception messages and status descriptions (rules in signals/http_privacy.py and
signals/redact.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

from opentelemetry.sdk.trace import Event, Span
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.sdk_internals import attribute_dict, events, replace_event, replace_status
from hms_otel_agent.signals import redact
from hms_otel_agent.signals.http_privacy import HttpPrivacy, named_headers
from hms_otel_agent.signals.redact import scrub_stacktrace
from hms_otel_agent.signals.vocabulary import STRUCTURED_TRACES_RECORD


def no_literals() -> frozenset[str] | None:
    return None


_URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.path", "url.query")
_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
_USER_AGENT_ATTRIBUTES = ("http.user_agent", "user_agent.original")

_CAPTURE_VARIABLES = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",  # outbound calls (requests, ...)
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
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
        known = _named = (capture, frozenset().union(*map(named_headers, capture)))
    return known[1]


def http_privacy(settings: Settings) -> HttpPrivacy:
    """The URL, user-agent and header rules of `settings` (built again when they change)."""
    global _privacy
    built = _privacy
    if built is None or built[0] is not settings:
        built = _privacy = (settings, HttpPrivacy.from_settings(settings, _named_headers))
    return built[1]


def scrub(
    span: Span,
    settings: Settings,
    urls: bool = True,
    route_literals: Callable[[], frozenset[str] | None] = no_literals,
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


def scrub_fail_closed(span: Span) -> None:
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
