"""redis-py (sync, asyncio, pipelines) through the OpenTelemetry contrib instrumentation.

The contrib instrumentation records `GET ?` and nothing about the result; the agent's
request and response hooks add the key pattern, hit or miss, and the TTL of writes
(see `cache_hooks`).

Single commands on the sync client (``Redis.execute_command``, what Django's RedisCache and
django-redis call) get the contrib's span from the agent's own wrapper (`_replace_command_wrapper`):
the same name, kind, attributes, current span, hooks and exception status, built with one
attribute write instead of one validated ``set_attribute`` per attribute and two generator
context managers — on a cache-heavy page that was most of the telemetry cost of a command.

For pipelines the contrib instrumentation calls only the response hook, after redis-py has
reset the pipeline's command stack. An outer wrapper on each pipeline class's ``execute``
(applied after the contrib one, so it runs first) copies the stack into
`cache_hooks.pipeline_commands` for the duration of the call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry.context import attach, detach
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind, set_span_in_context
from opentelemetry.trace.status import Status, StatusCode

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.cache_hooks import current_django_call, pipeline_commands
from hms_otel_agent.instrument.context import set_attributes

REDIS_SCOPE = "opentelemetry.instrumentation.redis"

# (module, class, async) of the pipelines whose execute() the contrib instrumentation wraps.
_PIPELINES = (
    ("redis.client", "Pipeline", False),
    ("redis.cluster", "ClusterPipeline", False),
    ("redis.asyncio.client", "Pipeline", True),
    ("redis.asyncio.cluster", "ClusterPipeline", True),
)
_wrapped: list[tuple[type, Any]] = []  # (class, original attribute)


def install(settings: Settings, tracer_provider: Any) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    from hms_otel_agent.instrument import cache_hooks

    request_hook = cache_hooks.redis_request_hook(settings)
    response_hook = cache_hooks.redis_response_hook(settings)
    RedisInstrumentor().instrument(
        tracer_provider=tracer_provider, request_hook=request_hook, response_hook=response_hook
    )
    try:
        tracer = RedisInstrumentor._get_tracer(tracer_provider=tracer_provider)
        _replace_command_wrapper(tracer, request_hook, response_hook)
    except Exception as exc:  # another contrib version: its own wrapper stays
        guard.report("redis instrumentation", exc)
    _wrap_pipelines()


def uninstall() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    _unwrap_pipelines()  # ours is the outermost wrapper: it goes first
    RedisInstrumentor().uninstrument()


# --- single commands ---------------------------------------------------------------------------


def _replace_command_wrapper(tracer: Any, request_hook: Any, response_hook: Any) -> None:
    """Put the agent's wrapper in place of the contrib's on ``redis.Redis.execute_command``
    (the contrib's ``uninstrument`` still unwraps it: it restores ``__wrapped__``)."""
    import redis
    from opentelemetry.instrumentation._semconv import (
        _get_semconv_opt_in_modes,
        _OpenTelemetryStabilitySignalType,
        _set_db_statement,
    )
    from opentelemetry.instrumentation.redis import util

    current = redis.Redis.__dict__.get("execute_command")
    if not isinstance(current, wrapt.FunctionWrapper):
        return
    modes = _get_semconv_opt_in_modes(
        (_OpenTelemetryStabilitySignalType.DATABASE, _OpenTelemetryStabilitySignalType.HTTP)
    )
    db_mode = modes[_OpenTelemetryStabilitySignalType.DATABASE]
    http_mode = modes[_OpenTelemetryStabilitySignalType.HTTP]
    # id(a pool's connection_kwargs) -> (that dict, its span attributes): bounded by the pools.
    by_pool: dict[int, tuple[Any, dict[str, Any]]] = {}

    def connection_attributes(instance: Any) -> dict[str, Any]:
        kwargs = getattr(getattr(instance, "connection_pool", None), "connection_kwargs", None)
        if kwargs is None:
            return {}
        entry = by_pool.get(id(kwargs))
        if entry is None or entry[0] is not kwargs:
            entry = (kwargs, util._extract_conn_attributes(kwargs, db_mode, http_mode))
            if len(by_pool) > 1000:
                by_pool.clear()
            by_pool[id(kwargs)] = entry
        return entry[1]

    def execute_command(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        name = util._build_span_name(instance, args)
        span = tracer.start_span(name, kind=SpanKind.CLIENT)
        token = attach(set_span_in_context(span))
        try:
            if span.is_recording():
                attributes: dict[str, Any] = {}
                _set_db_statement(attributes, util._format_command_args(args), db_mode)
                attributes["db.redis.args_length"] = len(args)
                attributes.update(connection_attributes(instance))
                set_attributes(span, attributes)
                if name == "redis.create_index":
                    util._add_create_attributes(span, args)
            if request_hook is not None:
                request_hook(span, instance, args, kwargs)  # the agent's hooks catch their own errors
            response = wrapped(*args, **kwargs)
            if name == "redis.search" and span.is_recording():
                util._add_search_attributes(span, response, args)
            if response_hook is not None:
                response_hook(span, instance, response)
            return response
        except Exception as exc:
            # What the SDK's start_as_current_span does with an exception leaving the block.
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            detach(token)
            span.end()

    redis.Redis.execute_command = wrapt.FunctionWrapper(current.__wrapped__, execute_command)  # type: ignore[method-assign]


# --- pipelines ---------------------------------------------------------------------------------


def command_stack(pipeline: Any) -> list[tuple[Any, ...]]:
    """The argument tuples of the commands queued on a pipeline (as the contrib code reads them:
    redis-py 6+ cluster pipelines keep them on their execution strategy)."""
    strategy = getattr(pipeline, "_execution_strategy", None)
    if strategy is not None and hasattr(strategy, "command_queue"):
        stack = strategy.command_queue
    elif strategy is not None and hasattr(strategy, "_command_queue"):
        stack = strategy._command_queue
    elif hasattr(pipeline, "command_stack"):
        stack = pipeline.command_stack
    else:
        stack = getattr(pipeline, "_command_stack", ())
    return [c.args if hasattr(c, "args") else c[0] for c in stack]


def _snapshot(instance: Any) -> list[tuple[Any, ...]] | None:
    """The pipeline's commands for the response hook; None under a Django cache call, whose own
    span is what gets the cache attributes."""
    if current_django_call.get() is not None:
        return None
    try:
        return command_stack(instance)
    except Exception as exc:
        guard.report("redis pipeline wrapper", exc)
        return None


def _execute(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    stack = _snapshot(instance)
    if stack is None:
        return wrapped(*args, **kwargs)
    token = pipeline_commands.set(stack)
    try:
        return wrapped(*args, **kwargs)
    finally:
        pipeline_commands.reset(token)


def _execute_async(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    stack = _snapshot(instance)

    async def execute() -> Any:
        if stack is None:
            return await wrapped(*args, **kwargs)
        token = pipeline_commands.set(stack)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            pipeline_commands.reset(token)

    return execute()


_execute._hms_pipeline = True  # type: ignore[attr-defined]
_execute_async._hms_pipeline = True  # type: ignore[attr-defined]


def _is_ours(attribute: Any) -> bool:
    return isinstance(attribute, wrapt.FunctionWrapper) and getattr(
        getattr(attribute, "_self_wrapper", None), "_hms_pipeline", False
    )


def _wrap_pipelines() -> None:
    for module_name, class_name, is_async in _PIPELINES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            cls = getattr(module, class_name, None)
            if cls is None or "execute" not in cls.__dict__ or _is_ours(cls.__dict__["execute"]):
                continue
            original = cls.__dict__["execute"]
            wrapt.wrap_function_wrapper(cls, "execute", _execute_async if is_async else _execute)
            _wrapped.append((cls, original))
        except Exception as exc:
            guard.report("redis pipeline wrapper", exc)


def _unwrap_pipelines() -> None:
    while _wrapped:
        cls, original = _wrapped.pop()
        if _is_ours(cls.__dict__.get("execute")):
            setattr(cls, "execute", original)  # noqa: B010
