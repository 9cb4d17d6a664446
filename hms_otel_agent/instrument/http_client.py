"""Outbound HTTP: client spans for requests, httpx (sync and async) and urllib3 by the contrib
instrumentations, each applied when its library is imported (`instrument.install`).

The contrib makes the spans; the agent's request hooks leave an `HttpCall` on each span
(attribute ``_hms_http``) for the span processor: the safe URL (`signals.urls`, the same rules
as the span's exported URL; the processor's redaction templates the span's own attributes), a
hash of the raw URL, the code line that made the call, and whether the call has a timeout when
the client shows it (requests: the ``timeout`` that reaches ``HTTPAdapter.send``; httpx: the
request's ``timeout`` extension). No header is captured unless the user turns on the
contrib's capture variables, and then `signals.http_privacy` applies. requests sends through
urllib3: the contrib's requests span suppresses the urllib3 one, so one call is one span.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import wrapt

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.context import user_location
from hms_otel_agent.instrument.sdk_internals import set_attributes
from hms_otel_agent.signals import urls
from hms_otel_agent.signals.http_calls import HttpCall
from hms_otel_agent.signals.http_privacy import HttpPrivacy
from hms_otel_agent.signals.vocabulary import HTTP_RECORD, code_attributes
from hms_otel_agent.signals.vocabulary import HTTP_TIMEOUT as TIMEOUT_ATTRIBUTE

LIBRARIES = ("requests", "httpx", "urllib3")

_privacy: HttpPrivacy | None = None
_adapter_wrapped = False


def record(span: Any, library: str, method: Any, url: Any, timeout: bool | None = None) -> HttpCall | None:
    """Leave the call's record on its span (called from the contrib's request hooks)."""
    privacy = _privacy
    if privacy is None or not span.is_recording():
        return None
    raw = str(url)
    method_text = str(method.decode("ascii", "replace") if isinstance(method, bytes) else method).upper()
    location = user_location(sys._getframe(2))
    call = HttpCall(
        method=method_text if method_text.isalpha() and len(method_text) <= 10 else "_OTHER",
        url=urls.sanitize_target(
            raw, None, None, privacy.safe_query, privacy.redacted_query, words=privacy.path_words
        ),
        timeout=timeout,
        url_hash=hash(raw),
        location=location,
        library=library,
    )
    setattr(span, HTTP_RECORD, call)
    # The call site and the timeout on the span too: `hms-otel analyze` finds the same.
    attributes = code_attributes(location)
    if timeout is not None:
        attributes[TIMEOUT_ATTRIBUTE] = timeout
    if attributes:
        set_attributes(span, attributes)
    return call


# --- hooks -------------------------------------------------------------------------------


def _requests_hook(span: Any, request: Any) -> None:
    try:
        record(span, "requests", request.method, request.url)
    except Exception as exc:
        guard.report("requests request hook", exc)


def _httpx_timeout(extensions: Any) -> bool | None:
    timeout = extensions.get("timeout") if isinstance(extensions, dict) else None
    if not isinstance(timeout, dict):
        return None
    return timeout.get("connect") is not None and timeout.get("read") is not None


def _httpx_hook(span: Any, request: Any) -> None:
    try:
        record(span, "httpx", request.method, request.url, _httpx_timeout(request.extensions))
    except Exception as exc:
        guard.report("httpx request hook", exc)


async def _httpx_async_hook(span: Any, request: Any) -> None:
    try:
        record(span, "httpx", request.method, request.url, _httpx_timeout(request.extensions))
    except Exception as exc:
        guard.report("httpx request hook", exc)


def _urllib3_hook(span: Any, pool: Any, request: Any) -> None:
    try:
        record(span, "urllib3", request.method, request.url)
    except Exception as exc:
        guard.report("urllib3 request hook", exc)


def _requests_timeout(timeout: Any) -> bool:
    if isinstance(timeout, tuple):
        return len(timeout) == 2 and timeout[0] is not None and timeout[1] is not None
    return timeout is not None


def _adapter_send(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """requests' HTTPAdapter.send: the timeout the call was given (None when none was), read
    into the record of the current requests span."""
    try:
        from opentelemetry import trace

        call = getattr(trace.get_current_span(), HTTP_RECORD, None)
        if call is not None and call.library == "requests":
            timeout = kwargs["timeout"] if "timeout" in kwargs else args[2] if len(args) > 2 else None
            call.timeout = _requests_timeout(timeout)
            trace.get_current_span().set_attribute(TIMEOUT_ATTRIBUTE, call.timeout)
    except Exception as exc:
        guard.report("requests timeout", exc)
    return wrapped(*args, **kwargs)


# --- install ----------------------------------------------------------------------------------


def _set_privacy(settings: Settings) -> None:
    global _privacy
    if _privacy is None:
        _privacy = HttpPrivacy.from_settings(settings)


def _instrument(
    instrumentor: Any, settings: Settings, tracer_provider: Any, meter_provider: Any, **hooks: Any
) -> None:
    """The contrib instrumentor with the agent's hooks, once (another install left alone)."""
    _set_privacy(settings)
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, skip_dep_check=True, **hooks
        )


def instrument_requests(settings: Settings, tracer_provider: Any, meter_provider: Any) -> None:
    global _adapter_wrapped
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    _instrument(
        RequestsInstrumentor(), settings, tracer_provider, meter_provider, request_hook=_requests_hook
    )
    if not _adapter_wrapped:
        wrapt.wrap_function_wrapper("requests.adapters", "HTTPAdapter.send", _adapter_send)
        _adapter_wrapped = True


def instrument_httpx(settings: Settings, tracer_provider: Any, meter_provider: Any) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    _instrument(
        HTTPXClientInstrumentor(),
        settings,
        tracer_provider,
        meter_provider,
        request_hook=_httpx_hook,
        async_request_hook=_httpx_async_hook,
    )


def instrument_urllib3(settings: Settings, tracer_provider: Any, meter_provider: Any) -> None:
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    _instrument(URLLib3Instrumentor(), settings, tracer_provider, meter_provider, request_hook=_urllib3_hook)


def uninstall(name: str) -> None:
    global _adapter_wrapped
    if name == "requests":
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        RequestsInstrumentor().uninstrument()
        import requests.adapters

        send = requests.adapters.HTTPAdapter.send
        if _adapter_wrapped and isinstance(send, wrapt.FunctionWrapper):
            requests.adapters.HTTPAdapter.send = send.__wrapped__  # type: ignore[method-assign]
            _adapter_wrapped = False
    elif name == "httpx":
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().uninstrument()
    elif name == "urllib3":
        from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

        URLLib3Instrumentor().uninstrument()
