"""Django server spans, applied only once the application has set Django up.

`opentelemetry-instrument` instruments Django at start-up, which reads
`django.conf.settings` and so configures them from DJANGO_SETTINGS_MODULE: a test suite
that calls `settings.configure()` afterwards fails with "Settings already configured".
The agent instead wraps `django.setup()` when Django is imported and instruments after it
returns, so the settings are whatever the application configured.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import wrapt

from hms_otel_agent import guard

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


def instrument_server(tracer_provider: Any, meter_provider: Any) -> Callable[[], None]:
    def instrument_django_server() -> None:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        instrumentor = DjangoInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    return instrument_django_server


def uninstrument_server() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().uninstrument()
