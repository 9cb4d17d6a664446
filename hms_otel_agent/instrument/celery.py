"""Celery tasks through the contrib's instrumentation, and a flush when a pool process exits.

The contrib's ``CeleryInstrumentor`` makes a CONSUMER span ``run/<task>`` per task run -- the
owner of the task's queries and cache calls -- and a PRODUCER span ``apply_async/<task>`` per
publish, carrying the trace in the message headers so that the task's trace continues the
publisher's. It is applied when ``celery`` is imported, before the worker forks its pool: the
signal handlers it connects are inherited, and the agent's exporters start again in each child.

A pool process can end with ``os._exit`` (``worker_max_tasks_per_child``, a shutdown), which
skips exit handlers: on ``worker_process_shutdown`` the process ends its implicit units and
flushes what it recorded (at most `FLUSH_TIMEOUT_MS`).
"""

from __future__ import annotations

from typing import Any

from hms_otel_agent import guard
from hms_otel_agent.instrument import implicit_units

FLUSH_TIMEOUT_MS = 2000

_provider: Any = None


def _flush(*_args: Any, **_kwargs: Any) -> None:
    try:
        implicit_units.close_all()
        if _provider is not None and hasattr(_provider, "force_flush"):
            _provider.force_flush(FLUSH_TIMEOUT_MS)
    except Exception as exc:
        guard.report("celery instrumentation (flush)", exc)


def install(tracer_provider: Any, meter_provider: Any) -> None:
    global _provider
    from celery import signals
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    _provider = tracer_provider
    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, skip_dep_check=True
        )
    signals.worker_process_shutdown.connect(_flush, weak=False, dispatch_uid="hms_otel_flush")


def uninstall() -> None:
    from celery import signals
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().uninstrument()
    signals.worker_process_shutdown.disconnect(_flush, dispatch_uid="hms_otel_flush")
