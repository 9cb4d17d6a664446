"""redis-py (sync, asyncio, pipelines) through the OpenTelemetry contrib instrumentation.

The contrib instrumentation records `GET ?` and nothing about the result; the agent's
request and response hooks add the key pattern, hit or miss, and the TTL of writes
(see `cache_hooks`).

Single commands on the sync client (``Redis.execute_command``, what Django's RedisCache and
django-redis call) get the contrib's span from the agent's own wrapper (`_replace_command_wrapper`):
the same name, kind, attributes, current span, hooks and exception status, built with one
attribute write instead of one validated ``set_attribute`` per attribute and two generator
context managers — on a cache-heavy page that was most of the telemetry cost of a command.

Nothing the agent or the contrib's helpers do can fail the command: agent code runs before and
after the application's call, never around it, each part guarded (`guard.report`); the reply and
the exception the application gets are redis-py's own. The contrib's helpers that read values or
mishandle replies are replaced in the contrib's modules (its own wrappers, still in place on
cluster clients, asyncio clients and ``Pipeline.immediate_execute_command``, look them up at
each call): ``_add_search_attributes`` exported the RediSearch query, the number of results and
every field of every document found, and raised KeyError on RESP3 replies (a dict: redis-py
8's default), failing the request; only ``redis.search.index`` is kept, as a key pattern. The
span name and ``db.statement`` keep only the command words: redis-py splits a first argument on
whitespace, so ``execute_command(f"GET {key}")`` put the key in both.

Stable names (OTEL_SEMCONV_STABILITY_OPT_IN ``database`` / ``database/dup``, the agent's default):
contrib 0.66 sets ``db.system.name``, ``db.query.text`` and the peer; the agent adds
``db.operation.name`` (the command; ``BATCH GET`` / ``BATCH`` with ``db.operation.batch.size``
for a pipeline of two or more commands) and ``db.namespace`` (the database index), and names
the peer after the database mode (contrib names it after the HTTP mode).

For pipelines the contrib instrumentation calls only the response hook, after redis-py has
reset the pipeline's command stack. An outer wrapper on each pipeline class's ``execute``
(applied after the contrib one, so it runs first) copies the stack into
`cache_hooks.pipeline_commands` for the duration of the call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import wrapt
from opentelemetry.context import attach, detach
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import get_current_span, set_span_in_context
from opentelemetry.trace.status import Status, StatusCode

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument import implicit_units, sdk_internals
from hms_otel_agent.instrument.cache_hooks import command_head, current_django_call, pipeline_commands
from hms_otel_agent.instrument.db_semconv import database_mode, mode_of, peer_attributes
from hms_otel_agent.instrument.sdk_internals import call_hook, set_attributes
from hms_otel_agent.signals.key_pattern import key_pattern
from hms_otel_agent.signals.vocabulary import CACHE_COMMANDS_MAX

REDIS_SCOPE = "opentelemetry.instrumentation.redis"

# (module, class, async) of the pipelines whose execute() the contrib instrumentation wraps.
_PIPELINES = (
    ("redis.client", "Pipeline", False),
    ("redis.cluster", "ClusterPipeline", False),
    ("redis.asyncio.client", "Pipeline", True),
    ("redis.asyncio.cluster", "ClusterPipeline", True),
)
_wrapped: list[tuple[type, Any]] = []  # (class, original attribute)
_stable_names = False  # the database mode (contrib's, read at install) emits the stable names


def install(settings: Settings, tracer_provider: Any) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    from hms_otel_agent.instrument import cache_hooks

    request_hook = cache_hooks.redis_request_hook(settings)
    response_hook = _with_pipeline_operation(cache_hooks.redis_response_hook(settings))
    RedisInstrumentor().instrument(
        tracer_provider=tracer_provider, request_hook=request_hook, response_hook=response_hook
    )
    try:
        global _stable_names
        _stable_names = database_mode().stable
        _replace_contrib_helpers()
        if sdk_internals.fast_paths():
            tracer = sdk_internals.redis_tracer(tracer_provider)
            _replace_command_wrapper(tracer, request_hook, response_hook)
        else:
            _wrap_fold()
    except Exception as exc:  # another contrib version: its own wrapper stays
        guard.report("redis instrumentation", exc)
    _wrap_pipelines()


def uninstall() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    _unwrap_pipelines()  # ours is the outermost wrapper: it goes first
    _unwrap_fold()
    RedisInstrumentor().uninstrument()
    _restore_contrib_helpers()


# --- single commands ---------------------------------------------------------------------------


def _replace_command_wrapper(tracer: Any, request_hook: Any, response_hook: Any) -> None:
    """Put the agent's wrapper in place of the contrib's on ``redis.Redis.execute_command``
    (the contrib's ``uninstrument`` still unwraps it: it restores ``__wrapped__``)."""
    import redis

    current = redis.Redis.__dict__.get("execute_command")
    if not isinstance(current, wrapt.FunctionWrapper):
        return
    db_mode, http_mode = sdk_internals.semconv_modes()
    stable = mode_of(db_mode).stable
    # id(a pool's connection_kwargs) -> (that dict, its span attributes): bounded by the pools.
    by_pool: dict[int, tuple[Any, dict[str, Any]]] = {}

    def connection_attributes(instance: Any) -> dict[str, Any]:
        kwargs = getattr(getattr(instance, "connection_pool", None), "connection_kwargs", None)
        if kwargs is None:
            return {}
        entry = by_pool.get(id(kwargs))
        if entry is None or entry[0] is not kwargs:
            entry = (kwargs, sdk_internals.redis_helper("conn_attributes")(kwargs, db_mode, http_mode))
            if len(by_pool) > 1000:
                by_pool.clear()
            by_pool[id(kwargs)] = entry
        return entry[1]

    def start(instance: Any, args: Any, kwargs: Any) -> tuple[Any, Any, str] | None:
        """The command's span, current, with its attributes and the request hook's; None when
        agent code failed (the command then runs untraced)."""
        try:
            name = span_name(instance, args)
            span = implicit_units.start_client_span(tracer, name)
            token = attach(set_span_in_context(span))
        except Exception as exc:
            guard.report("redis instrumentation", exc)
            return None
        try:
            if span.is_recording() and span.get_span_context().trace_flags.sampled:
                attributes: dict[str, Any] = {}
                sdk_internals.set_db_statement(attributes, statement(args), db_mode)
                attributes["db.redis.args_length"] = len(args)
                attributes.update(connection_attributes(instance))
                if stable and args:
                    attributes["db.operation.name"] = operation_name(args)
                set_attributes(span, attributes)
                if name == "redis.create_index":
                    _create_attributes(span, args)
        except Exception as exc:
            guard.report("redis instrumentation", exc)
        call_hook(request_hook, span, instance, args, kwargs)  # as the contrib calls it
        return span, token, name

    def end(span: Any, token: Any, name: str, instance: Any, args: Any, response: Any) -> None:
        try:
            if name == "redis.search" and span.is_recording():
                search_attributes(span, args)
        except Exception as exc:
            guard.report("redis instrumentation", exc)
        try:
            call_hook(response_hook, span, instance, response)  # as the contrib calls it
        finally:
            _close(span, token)

    def execute_command(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        call = current_django_call.get()
        if call is not None:
            commands = call.commands
            if commands is not None:  # folded into the Django cache call's span: no span here
                _fold(commands, args)
                return wrapped(*args, **kwargs)
            if _detection_only():
                return wrapped(*args, **kwargs)
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        started = start(instance, args, kwargs)
        if started is None:
            return wrapped(*args, **kwargs)
        span, token, name = started
        # The application's call runs outside every guard: its result and its exception pass
        # through untouched; agent code before and after it never raises.
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            _failed(span, token, exc)
            raise
        end(span, token, name, instance, args, response)
        return response

    redis.Redis.execute_command = wrapt.FunctionWrapper(current.__wrapped__, execute_command)  # type: ignore[method-assign]


def _fold(commands: list[str], args: Any) -> None:
    """Add a command's name (never its arguments) to its Django cache call's list."""
    try:
        if len(commands) < CACHE_COMMANDS_MAX and args:
            commands.append(operation_name(args))
    except Exception as exc:
        guard.report("redis instrumentation", exc)


def _fold_command(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    """Stock paths (HMS_OTEL_FAST_PATHS=false): around the contrib's wrapper, which sends no span
    under a Django cache call, the command's name folded into the call as the fast path does."""
    call = current_django_call.get()
    if call is not None and call.commands is not None:
        _fold(call.commands, args)
    return wrapped(*args, **kwargs)


_fold_command._hms_fold = True  # type: ignore[attr-defined]


def _is_fold(attribute: Any) -> bool:
    return isinstance(attribute, wrapt.FunctionWrapper) and getattr(
        getattr(attribute, "_self_wrapper", None), "_hms_fold", False
    )


def _wrap_fold() -> None:
    import redis

    current = redis.Redis.__dict__.get("execute_command")
    if isinstance(current, wrapt.FunctionWrapper) and not _is_fold(current):
        redis.Redis.execute_command = wrapt.FunctionWrapper(current, _fold_command)  # type: ignore[method-assign]


def _unwrap_fold() -> None:
    import redis

    current = redis.Redis.__dict__.get("execute_command")
    if _is_fold(current):
        redis.Redis.execute_command = current.__wrapped__  # type: ignore[method-assign,union-attr]


def _detection_only() -> bool:
    """Whether the current span is recorded for detection only (head sampling dropped it:
    pipeline.DetectingSampler). The commands a Django cache call sends are not read by the
    detectors (the call is what counts), so under such a call they need no span."""
    span = get_current_span()
    return span.is_recording() and not span.get_span_context().trace_flags.sampled


def _close(span: Any, token: Any) -> None:
    try:
        detach(token)
        span.end()
    except Exception as exc:
        guard.report("redis instrumentation", exc)


def _failed(span: Any, token: Any, exc: BaseException) -> None:
    """What the SDK's start_as_current_span does with an exception leaving the block (only
    ``Exception``s are recorded); never raises, so the application's exception goes on as it was."""
    try:
        if isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    except Exception as error:  # an exception whose str() raises, for one
        guard.report("redis instrumentation", error)
    finally:
        _close(span, token)


def search_attributes(span: Any, args: Any) -> None:
    """``redis.search.index`` only (as a key pattern). The contrib's helper also exports the
    query (``redis.search.query``: what was searched for, names included), the number of
    results and every field of every document found (``redis.search.xdoc_*``), and raises
    KeyError on a RESP3 reply (a dict: redis-py 8's default)."""
    if len(args) > 1:
        pattern = key_pattern(args[1])
        if pattern:
            span.set_attribute("redis.search.index", pattern)


def _create_attributes(span: Any, args: Any) -> None:
    """The contrib's ``redis.create_index.*`` (the index name, field names and types: schema,
    not data), guarded; the index name as a key pattern."""
    try:
        sdk_internals.redis_create_attributes(span, args)
        if len(args) > 1 and span.is_recording():
            span.set_attribute("redis.create_index.index", key_pattern(args[1]))
    except Exception as exc:
        guard.report("redis instrumentation", exc)


def _search_attributes(span: Any, response: Any, args: Any) -> None:
    """In place of the contrib's ``_add_search_attributes`` in its own wrappers (cluster
    clients, ``Pipeline.immediate_execute_command``): `search_attributes`, guarded."""
    try:
        if span.is_recording():
            search_attributes(span, args)
    except Exception as exc:
        guard.report("redis instrumentation", exc)


# --- stable names -------------------------------------------------------------------------------


def operation_name(args: Any) -> str:
    """``db.operation.name``: the command words (``GET``, ``CLIENT LIST``, ``FT.SEARCH``)."""
    head, _ = command_head(args[0]) if args and args[0] else ([], 0)
    return " ".join(head)


def _conn_attributes(conn_kwargs: Any, db_mode: Any, http_mode: Any) -> dict[str, Any]:
    """In place of the contrib's ``_extract_conn_attributes`` (every client, pipeline and cluster
    span): the peer named after the database mode, and ``db.namespace``, the database index."""
    original = sdk_internals.redis_original("conn_attributes")
    attributes: dict[str, Any] = original(conn_kwargs, db_mode, http_mode) if original else {}
    mode = mode_of(db_mode)
    if mode.stable:
        attributes = peer_attributes(attributes, mode)
        db = conn_kwargs.get("db")
        attributes["db.namespace"] = str(0 if db is None else db)
    return attributes


# (pipeline, its operation name, its size) from `_pipeline_meta` to the response hook, which
# sets them on the pipeline's span (the contrib's wrapper sets its attributes itself).
_pipeline_operation: ContextVar[tuple[Any, str, int] | None] = ContextVar("hms_redis_pipeline", default=None)


def _batch_operation(stack: list[Any]) -> tuple[str, int]:
    names = {operation_name(c.args if hasattr(c, "args") else c[0]) for c in stack}
    if len(stack) == 1:
        return names.pop(), 1
    return ("BATCH " + next(iter(names)) if len(names) == 1 else "BATCH"), len(stack)


def _with_pipeline_operation(response_hook: Any) -> Any:
    def hook(span: Any, instance: Any, response: Any) -> None:
        pending = _pipeline_operation.get()
        if pending is not None and pending[0] is instance:
            _pipeline_operation.set(None)
            try:
                if span.is_recording():
                    attributes: dict[str, Any] = {"db.operation.name": pending[1]}
                    if pending[2] != 1:
                        attributes["db.operation.batch.size"] = pending[2]
                    span.set_attributes(attributes)
            except Exception as exc:
                guard.report("redis instrumentation", exc)
        if response_hook is not None:
            response_hook(span, instance, response)

    return hook


# --- span name and statement -------------------------------------------------------------------

_MAX_STATEMENT_CHARS = 1000  # as the contrib's


def span_name(instance: Any, args: Any) -> str:
    """The contrib's span name (``GET``, ``redis.search``, the db index without a command),
    with nothing but the command words."""
    if len(args) > 0 and args[0]:
        if args[0] == "FT.SEARCH":
            return "redis.search"
        if args[0] == "FT.CREATE":
            return "redis.create_index"
        head, _ = command_head(args[0])
        if head:
            return " ".join(head)
    db = instance.connection_pool.connection_kwargs.get("db")
    return str(0 if db is None else db)


def statement(args: Any) -> str:
    """The contrib's ``COMMAND ? ?``, with values in the first argument replaced too."""
    if not args:
        return ""
    head, extra = command_head(args[0])
    text = " ".join(head + ["?"] * (extra + len(args) - 1))
    if len(text) > _MAX_STATEMENT_CHARS:
        text = text[: _MAX_STATEMENT_CHARS - 3] + "..."
    return text


def _pipeline_meta(instance: Any) -> tuple[list[Any], str, str]:
    """The contrib's ``_build_span_meta_data_for_pipeline``, its span name from `span_name`."""
    original = sdk_internals.redis_original("pipeline_meta")
    if original is None:
        return [], "", "redis"
    stack, resource, _ = original(instance)
    try:
        names = [span_name(instance, c.args if hasattr(c, "args") else c[0]) for c in stack]
        if stack and _stable_database():
            _pipeline_operation.set((instance, *_batch_operation(stack)))
        return stack, resource, " ".join(names) or "redis"
    except Exception as exc:
        guard.report("redis instrumentation", exc)
        return stack, resource, "redis"


def _stable_database() -> bool:
    return _stable_names


# The agent's helpers in place of the contrib's (instrument/sdk_internals.py: REDIS_HELPERS).
_REPLACEMENTS = {
    "search_attributes": _search_attributes,
    "create_attributes": _create_attributes,
    "span_name": span_name,
    "statement": statement,
    "pipeline_meta": _pipeline_meta,
    "util_statement": statement,
    "conn_attributes": _conn_attributes,
}


def _replace_contrib_helpers() -> None:
    sdk_internals.replace_redis_helpers(_REPLACEMENTS)


def _restore_contrib_helpers() -> None:
    sdk_internals.restore_redis_helpers()


# --- pipelines ---------------------------------------------------------------------------------


def command_stack(pipeline: Any) -> list[tuple[Any, ...]]:
    """The argument tuples of the commands queued on a pipeline (as the contrib code reads them:
    redis-py 6+ cluster pipelines keep them on their execution strategy)."""
    stack = sdk_internals.redis_command_queue(pipeline)
    return [c.args if hasattr(c, "args") else c[0] for c in stack]


def _snapshot(instance: Any) -> list[tuple[Any, ...]] | None:
    """The pipeline's commands for the response hook; None under a Django cache call, whose own
    span is what gets the cache attributes."""
    call = current_django_call.get()
    if call is not None:
        if call.commands is not None:  # folded into the Django cache call's span
            try:
                for command in command_stack(instance):
                    _fold(call.commands, command)
            except Exception as exc:
                guard.report("redis pipeline wrapper", exc)
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
