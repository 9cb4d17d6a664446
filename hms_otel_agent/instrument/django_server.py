"""Django server spans, applied only once the application has set Django up.

`opentelemetry-instrument` instruments Django at start-up, which reads
`django.conf.settings` and so configures them from DJANGO_SETTINGS_MODULE: a test suite
that calls `settings.configure()` afterwards fails with "Settings already configured".
The agent instead wraps `django.setup()` when Django is imported and instruments after it
returns, so the settings are whatever the application configured.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import wrapt

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument import sdk_internals
from hms_otel_agent.signals import urls as url_rules
from hms_otel_agent.signals.http_privacy import HttpPrivacy
from hms_otel_agent.signals.semconv import split_host_port

logger = logging.getLogger("hms_otel")

_ready_callbacks: list[Callable[[], None]] = []


def when_django_ready(callback: Callable[[], None]) -> None:
    """Run `callback` once Django's app registry is ready (now, if it already is)."""
    _ready_callbacks.append(callback)
    if _django_ready():
        _run_ready_callbacks()


def _django_ready() -> bool:
    if "django.apps" not in sys.modules:
        return False
    try:
        from django.apps import apps

        return bool(apps.ready)
    except Exception:
        return False


def _run_ready_callbacks() -> None:
    # Django's logging config may have disabled loggers that existed before it ran.
    logging.getLogger("hms_otel").disabled = False
    while _ready_callbacks:
        callback = _ready_callbacks.pop(0)
        try:
            callback()
        except Exception as exc:
            guard.report(f"Django instrumentation ({getattr(callback, '__name__', callback)})", exc)


def _setup_wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    if _ready_callbacks:
        _run_ready_callbacks()
    return result


def hook_django_setup() -> None:
    """Register the post-import hook that wraps django.setup()."""

    def on_import(module: Any) -> None:
        try:
            if not isinstance(module.setup, wrapt.FunctionWrapper):
                wrapt.wrap_function_wrapper(module, "setup", _setup_wrapper)
            if _django_ready():
                _run_ready_callbacks()
        except Exception as exc:
            guard.report("Django instrumentation (setup hook)", exc)

    wrapt.register_post_import_hook(on_import, "django")


def instrument_server(settings: Settings, tracer_provider: Any, meter_provider: Any) -> Callable[[], None]:
    def instrument_django_server() -> None:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        instrumentor = DjangoInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            global _privacy, _duration_key, _traced_attributes
            _privacy = HttpPrivacy.from_settings(settings)
            _duration_key, _traced_attributes = sdk_internals.django_middleware_keys()
            instrumentor.instrument(
                tracer_provider=tracer_provider, meter_provider=meter_provider, request_hook=_request_hook
            )

    return instrument_django_server


# --- what the duration metric may carry -----------------------------------------------------------

_privacy: HttpPrivacy | None = None
_literals: frozenset[str] | None = None
_duration_key = ""  # where the middleware keeps the metric's attributes in request.META
_traced_attributes: tuple[str, ...] = ()  # OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS, as the contrib read it
_MAX_PATTERNS = 20_000


def route_literals() -> frozenset[str] | None:
    """The literal path segments of the application's routes (ROOT_URLCONF, with every include),
    read at its first traced request; None before (or without Django)."""
    return _literals


def _request_hook(span: Any, request: Any) -> None:
    """The contrib middleware's request hook: the http.server.duration metric is recorded with
    the attributes it collected at the start of the request, where ``http.target`` is the raw
    target (with its query) until a route is resolved — and stays so for unrouted requests
    (404s). It gets what the span gets (the span itself is scrubbed when it ends). The request
    attributes a user had the contrib record (OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS, by the
    attribute's own name) are scrubbed here, where their names are known."""
    try:
        if span.is_recording():
            _complete_stable_names(span, request)
    except Exception as exc:
        guard.report("Django request hook", exc)
    try:
        privacy = _privacy
        if privacy is None:
            return
        literals = _literals if _literals is not None else _load_literals()
        attributes = request.META.get(_duration_key)
        target = attributes.get("http.target") if isinstance(attributes, dict) else None
        if isinstance(target, str):
            attributes["http.target"] = privacy.target(target, None, literals)
        if _traced_attributes and span.is_recording():
            recorded = span.attributes
            for name in _traced_attributes:
                if name in recorded:
                    span.set_attribute(name, privacy.request_attribute(name, recorded[name], literals))
    except Exception as exc:
        guard.report("Django request hook", exc)
        with contextlib.suppress(Exception):  # no raw target in the metric then
            request.META[_duration_key].pop("http.target", None)
        with contextlib.suppress(Exception):
            for name in _traced_attributes:
                span.set_attribute(name, url_rules.REDACTED)


def _complete_stable_names(span: Any, request: Any) -> None:
    """What contrib 0.66 leaves out of a server span with the stable HTTP names: ``url.path`` and
    ``url.query`` when the server gives no raw URI (runserver, uvicorn: contrib reads them only
    with one), and ``server.address`` without the Host header's port (in ``server.port``). The
    path and query are as sent here, like contrib's: the span processor templates and redacts
    them when the span ends, as every URL attribute."""
    attributes = span.attributes
    if "http.request.method" not in attributes:  # old names only
        return
    changes: dict[str, Any] = {}
    if "url.path" not in attributes:
        changes["url.path"] = request.path
    if "url.query" not in attributes:
        query = request.META.get("QUERY_STRING")
        if query:
            changes["url.query"] = query
    address = attributes.get("server.address")
    if isinstance(address, str):
        host, port = split_host_port(address)
        if port is not None:
            changes["server.address"] = host
            if "server.port" not in attributes:
                changes["server.port"] = port
    if changes:
        span.set_attributes(changes)


def _load_literals() -> frozenset[str]:
    """Walk the URL patterns once. The middleware has resolved the request's path already (for
    the span name), so the URLconf is imported; includes not yet imported are imported here, as
    Django's first reverse() does. Whatever fails leaves an empty set: every unrouted segment
    is then replaced."""
    global _literals
    routes: list[str] = []
    try:
        from django.conf import settings as django_settings
        from django.urls import get_resolver

        todo = list(get_resolver().url_patterns)
        seen = 0
        while todo and seen < _MAX_PATTERNS:
            pattern = todo.pop()
            seen += 1
            routes.append(str(pattern.pattern))
            if type(pattern.pattern).__name__ == "LocalePrefixPattern":  # i18n_patterns(): /en/, /de/
                routes.extend(code for code, _name in getattr(django_settings, "LANGUAGES", ()) or ())
            children = getattr(pattern, "url_patterns", None)
            if children:
                todo.extend(children)
        found = url_rules.route_literals(routes)
    except Exception as exc:
        guard.report("Django URL patterns", exc)
        found = frozenset()
    _literals = found
    return found


def uninstrument_server() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    global _literals
    DjangoInstrumentor().uninstrument()
    _literals = None
