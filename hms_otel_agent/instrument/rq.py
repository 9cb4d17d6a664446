"""RQ jobs: one owner span per job run, and the trace carried from the code that enqueued it.

There is no contrib instrumentation for RQ, so the agent makes the spans, with the messaging
semantic conventions:

* ``Queue.enqueue_job`` (every ``enqueue`` / ``enqueue_call`` / ``enqueue_at`` path): a PRODUCER
  span ``rq.enqueue <function>``; the trace context (``traceparent`` / ``tracestate``) is put in
  the job's ``meta`` under ``hms_otel.trace``, the one field RQ stores with a job for its users;
* ``Job.perform`` (in the worker, in the work horse it forks or in-process for ``SimpleWorker``):
  a CONSUMER span ``rq.job <function>``, child of the enqueuing span when the meta carries one,
  ``hms.work.kind = job``: the owner of the job's queries and cache calls;
* a forked work horse leaves with ``os._exit``, which skips exit handlers: after each job it ends
  its implicit units and flushes the telemetry (at most `FLUSH_TIMEOUT_MS`) before RQ exits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind

from hms_otel_agent import guard
from hms_otel_agent.instrument import implicit_units, units

META_KEY = "hms_otel.trace"
FLUSH_TIMEOUT_MS = 2000

_provider: Any = None
_patched: list[tuple[Any, str]] = []


def _function(job: Any) -> str:
    try:
        return str(job.func_name or "job")
    except Exception:  # an unreadable job: RQ itself fails it later, with its own message
        return "job"


def _attributes(job: Any, operation: str, function: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "rq",
        "messaging.operation.type": operation,
        "code.function.name": function,
    }
    origin = getattr(job, "origin", None)
    if origin:
        attributes["messaging.destination.name"] = str(origin)
    job_id = getattr(job, "id", None)  # assigned here if not yet: RQ does the same when it saves
    if job_id:
        attributes["messaging.message.id"] = str(job_id)
    return attributes


def _enqueue_job(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    span = token = None
    try:
        job = args[0] if args else kwargs.get("job")
        function = _function(job)
        attributes = _attributes(job, "publish", function)
        attributes.setdefault("messaging.destination.name", str(getattr(instance, "name", "")))
        span = units.tracer().start_span(
            f"rq.enqueue {function}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        token = context_api.attach(trace.set_span_in_context(span))
        carrier: dict[str, str] = {}
        inject(carrier)
        if carrier and isinstance(getattr(job, "meta", None), dict):
            job.meta[META_KEY] = carrier
    except Exception as exc:
        guard.report("rq instrumentation (enqueue)", exc)
        if span is not None and token is None:
            span.end()
            span = None
    return units.call_in(span, token, wrapped, args, kwargs)


def _perform(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    span = token = None
    try:
        function = _function(instance)
        meta = getattr(instance, "meta", None)
        carrier = meta.get(META_KEY) if isinstance(meta, dict) else None
        parent = extract(carrier) if isinstance(carrier, dict) else None
        span = units.tracer().start_span(
            f"rq.job {function}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                units.KIND: units.JOB,
                units.NAME: function,
                **_attributes(instance, "process", function),
            },
        )
        token = context_api.attach(trace.set_span_in_context(span, parent))
    except Exception as exc:
        guard.report("rq instrumentation (job)", exc)
        if span is not None and token is None:
            span.end()
            span = None
    return units.call_in(span, token, wrapped, args, kwargs)


def _perform_job(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        if getattr(instance, "_is_horse", False):  # a forked work horse: os._exit comes next
            _flush()


def _flush() -> None:
    try:
        implicit_units.close_all()
        provider = _provider
        if provider is not None and hasattr(provider, "force_flush"):
            provider.force_flush(FLUSH_TIMEOUT_MS)
    except Exception as exc:
        guard.report("rq instrumentation (flush)", exc)


def install(tracer_provider: Any) -> None:
    global _provider
    _provider = tracer_provider
    from rq.job import Job
    from rq.queue import Queue

    targets: list[tuple[Any, str, Any]] = [(Queue, "enqueue_job", _enqueue_job), (Job, "perform", _perform)]
    try:
        from rq.worker import BaseWorker as worker_class
    except ImportError:  # RQ < 2
        from rq.worker import Worker as worker_class
    targets.append((worker_class, "perform_job", _perform_job))
    for owner, name, wrapper in targets:
        if not isinstance(owner.__dict__.get(name), wrapt.FunctionWrapper):
            wrapt.wrap_function_wrapper(owner, name, wrapper)
            _patched.append((owner, name))


def uninstall() -> None:
    while _patched:
        owner, name = _patched.pop()
        current = owner.__dict__.get(name)
        if isinstance(current, wrapt.FunctionWrapper):
            setattr(owner, name, current.__wrapped__)
