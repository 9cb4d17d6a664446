"""redis-py (sync, asyncio, pipelines) through the OpenTelemetry contrib instrumentation.

The contrib instrumentation records `GET ?` and nothing about the result; the agent's
request and response hooks add the key pattern, hit or miss, and the TTL of writes
(see `cache_hooks`).

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

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.cache_hooks import current_django_call, pipeline_commands

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

    RedisInstrumentor().instrument(
        tracer_provider=tracer_provider,
        request_hook=cache_hooks.redis_request_hook(settings),
        response_hook=cache_hooks.redis_response_hook(settings),
    )
    _wrap_pipelines()


def uninstall() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    _unwrap_pipelines()  # ours is the outermost wrapper: it goes first
    RedisInstrumentor().uninstrument()


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
