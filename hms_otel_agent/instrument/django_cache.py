"""Spans for Django's cache API: one CLIENT span ``cache.<operation>`` per call, on any backend.

Applied once Django is ready. The public methods (`OPERATIONS`) are wrapped on every class
of a backend's MRO, from the concrete class up to ``BaseCache``, that defines them: the
classes already imported when the agent installs, and the class of every backend constructed
afterwards (a hook on ``BaseCache.__init__``, which every backend calls), which covers backends
imported lazily (django-redis, ``caches[alias]`` on first use) and project subclasses, whether
they implement a method or inherit it.

One call, one span: a wrapped method called while another runs in the same context (the
base ``get_or_set`` calls ``get`` and ``add``, ``get_many`` calls ``get``, DatabaseCache's
``get`` calls ``get_many``, a subclass calls ``super()``) runs unwrapped. The outer span is
the current span. By default (HMS_OTEL_CACHE_COMMAND_SPANS=false) the Redis commands it sends
get no spans: the agent's Redis wrapper sees `cache_hooks.current_django_call` and adds their
names to the call (`hms.cache.commands`), one span per call. With command spans on they are its
children, left to the contrib's attributes.

Hit or miss never changes what the caller gets: ``get`` is called with a private sentinel as
the default and the caller's default is returned when the sentinel comes back.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Collection, Sequence
from time import time_ns
from typing import Any

import wrapt
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Status, StatusCode

from hms_otel_agent import __version__, guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument import implicit_units
from hms_otel_agent.instrument.cache_hooks import (
    captured_keys,
    current_django_call,
    key_hash,
    key_text,
    keys_pattern,
    read_attributes,
)
from hms_otel_agent.instrument.context import add_detached, detection_only_parent, user_location
from hms_otel_agent.instrument.sdk_internals import SUPPRESS_INSTRUMENTATION_KEY, set_attributes
from hms_otel_agent.signals.records import CacheCall
from hms_otel_agent.signals.vocabulary import (
    CACHE_COMMANDS,
    CACHE_RECORD,
    DJANGO_CACHE_SCOPE,
    code_attributes,
)

SCOPE = DJANGO_CACHE_SCOPE
OPERATIONS = (
    "get",
    "get_many",
    "get_or_set",
    "has_key",
    "set",
    "add",
    "set_many",
    "delete",
    "delete_many",
    "incr",
    "decr",
    "touch",
    "clear",
)
# Short names by the module and class that define a backend (the first match in the MRO).
BACKEND_NAMES = {
    ("django_redis.cache", "RedisCache"): "django_redis",
    ("django.core.cache.backends.redis", "RedisCache"): "redis",
    ("django.core.cache.backends.locmem", "LocMemCache"): "locmem",
    ("django.core.cache.backends.db", "DatabaseCache"): "db",
    ("django.core.cache.backends.db", "BaseDatabaseCache"): "db",
    ("django.core.cache.backends.filebased", "FileBasedCache"): "file",
    ("django.core.cache.backends.memcached", "BaseMemcachedCache"): "memcached",
    ("django.core.cache.backends.dummy", "DummyCache"): "dummy",
}
# Positional index of the timeout argument of the writes.
_TIMEOUT_INDEX = {"set": 2, "add": 2, "get_or_set": 2, "set_many": 1, "touch": 1}
_SINGLE_KEY = frozenset(("get", "get_or_set", "has_key", "set", "add", "delete", "incr", "decr", "touch"))

_MISSING = object()  # our default for get(): comes back only on a miss


_state: dict[str, Any] = {
    "tracer": None,
    "capture_keys": False,
    "command_spans": False,
    "default_timeout": object(),  # Django's DEFAULT_TIMEOUT once installed
}
_wrapped: list[tuple[type, str, Any]] = []  # (class, method name, original)
_instrumented: set[type] = set()
_lock = threading.Lock()  # backends are constructed on any thread
_takes_default: dict[Any, bool] = {}  # get() implementation -> has a `default` parameter
_names: dict[type, str] = {}


def when_ready(settings: Settings, tracer_provider: Any) -> Callable[[], None]:
    """The callback for `django_server.when_django_ready`."""

    def instrument_django_cache() -> None:
        install(settings, tracer_provider)

    return instrument_django_cache


def install(settings: Settings, tracer_provider: Any) -> None:
    from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

    _state["default_timeout"] = DEFAULT_TIMEOUT
    _state["tracer"] = trace.get_tracer(SCOPE, __version__, tracer_provider)
    _state["capture_keys"] = settings.capture_cache_keys
    _state["command_spans"] = settings.cache_command_spans
    if not _is_ours(BaseCache.__dict__.get("__init__")):
        wrapt.wrap_function_wrapper(BaseCache, "__init__", _backend_init)
    pending: list[type] = [BaseCache]
    while pending:
        cls = pending.pop()
        instrument_backend_class(cls)
        pending.extend(cls.__subclasses__())


def uninstall() -> None:
    from django.core.cache.backends.base import BaseCache

    while _wrapped:
        cls, name, original = _wrapped.pop()
        if _is_ours(cls.__dict__.get(name)):
            setattr(cls, name, original)
    _instrumented.clear()
    init = BaseCache.__dict__.get("__init__")
    if _is_ours(init):
        BaseCache.__init__ = init.__wrapped__
    _state["tracer"] = None


def _backend_init(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        if instance is not None and type(instance) not in _instrumented:
            instrument_backend_class(type(instance))
    except Exception as exc:
        guard.report("django cache instrumentation", exc)
    return result


_backend_init._hms_django_cache = True  # type: ignore[attr-defined]


def _is_ours(attribute: Any) -> bool:
    return isinstance(attribute, wrapt.FunctionWrapper) and getattr(
        getattr(attribute, "_self_wrapper", None), "_hms_django_cache", False
    )


def instrument_backend_class(cls: type) -> None:
    """Wrap the cache API methods defined by `cls` and its bases up to ``BaseCache``."""
    from django.core.cache.backends.base import BaseCache

    if cls in _instrumented or not issubclass(cls, BaseCache):
        return
    with _lock:
        for klass in cls.__mro__:
            if klass in _instrumented or not issubclass(klass, BaseCache):
                continue
            _instrumented.add(klass)
            for name in OPERATIONS:
                attribute = klass.__dict__.get(name)
                if attribute is None or _is_ours(attribute) or not callable(attribute):
                    continue
                wrapt.wrap_function_wrapper(klass, name, _WRAPPERS[name])
                _wrapped.append((klass, name, attribute))


def backend_name(cls: type) -> str:
    name = _names.get(cls)
    if name is None:
        for klass in cls.__mro__:
            name = BACKEND_NAMES.get((klass.__module__, klass.__name__))
            if name is not None:
                break
        else:
            name = cls.__name__
        _names[cls] = name
    return name


# --- the wrapper -------------------------------------------------------------------------------


class _Call:
    """One Django cache call in progress: what the wrapper learned before the call, the
    arguments to call with, and its span. Also `cache_hooks.current_django_call` while it runs."""

    __slots__ = (
        "args",
        "attributes",
        "call",
        "commands",
        "get_missed",
        "keys",
        "kwargs",
        "operation",
        "sentinel",
        "span",
        "user_default",
    )

    def __init__(self, operation: str, args: Any, kwargs: Any) -> None:
        self.operation = operation
        self.args = args
        self.kwargs = kwargs
        self.sentinel = False  # get() was given our _MISSING as its default
        self.keys: Sequence[Any] = ()
        self.user_default: Any = None
        self.span: Any = None
        self.call: CacheCall | None = None
        # The span's attributes, written once when the call returns (or fails).
        self.attributes: dict[str, Any] | None = None
        self.get_missed: bool | None = None  # get_or_set: what its first inner get() found
        # The names of the Redis commands the call sent, folded into its span when they get no
        # spans of their own (HMS_OTEL_CACHE_COMMAND_SPANS=false); None: not folded.
        self.commands: list[str] | None = None


def _argument(args: Any, kwargs: Any, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _ttl(instance: Any, args: Any, kwargs: Any, operation: str) -> float | None:
    """Seconds until the written entry expires; None: never. DEFAULT_TIMEOUT is the backend's."""
    default = _state["default_timeout"]  # Django's DEFAULT_TIMEOUT sentinel
    timeout = _argument(args, kwargs, _TIMEOUT_INDEX[operation], "timeout", default)
    if timeout is default:
        timeout = getattr(instance, "default_timeout", None)
    if timeout is None:
        return None
    return max(0.0, float(timeout))


def _has_default(wrapped: Any) -> bool:
    """Whether a get() takes ``default`` (BaseCache's contract; a backend may not honour it)."""
    function = getattr(wrapped, "__func__", wrapped)
    known = _takes_default.get(function)
    if known is None:
        try:
            known = "default" in inspect.signature(function).parameters
        except (TypeError, ValueError):
            known = False
        if len(_takes_default) < 1000:
            _takes_default[function] = known
    return known


def _prepare(operation: str, instance: Any, args: Any, kwargs: Any, wrapped: Any = None) -> _Call:
    prepared = _Call(operation, args, kwargs)
    if operation in _SINGLE_KEY:
        key = _argument(args, kwargs, 0, "key", None)
        keys: Sequence[Any] = () if key is None else (key,)
    elif operation == "get_many" or operation == "delete_many":
        raw = _argument(args, kwargs, 0, "keys", ())
        # Lists, tuples, sets, dict views can be read twice; an iterator is left alone.
        keys = raw if isinstance(raw, (list, tuple)) else list(raw) if isinstance(raw, Collection) else ()
    elif operation == "set_many":
        data = _argument(args, kwargs, 0, "data", None)
        keys = list(data) if isinstance(data, dict) else ()
    else:
        keys = ()
    prepared.keys = keys
    if operation == "get" and (len(args) > 1 or "default" in kwargs or _has_default(wrapped)):
        prepared.user_default = _argument(args, kwargs, 1, "default", None)
        prepared.args, prepared.kwargs = _replace(args, kwargs, 1, "default", _MISSING)
        prepared.sentinel = True
    elif operation == "get_or_set":
        default = _argument(args, kwargs, 1, "default", None)
        if callable(default):
            prepared.args, prepared.kwargs = _replace(args, kwargs, 1, "default", _outside_call(default))
    return prepared


def _replace(args: Any, kwargs: Any, index: int, name: str, value: Any) -> tuple[Any, Any]:
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), kwargs
    return args, {**kwargs, name: value}


def _outside_call(default: Callable[[], Any]) -> Callable[[], Any]:
    """get_or_set's callable default is the application's code: its own cache calls get spans."""

    def compute() -> Any:
        outer = current_django_call.get()
        if outer is not None:
            outer.get_missed = True
        token = current_django_call.set(None)
        # Traced even when the call's own commands are not (HMS_OTEL_CACHE_COMMAND_SPANS=false).
        context_token = context_api.attach(context_api.set_value(SUPPRESS_INSTRUMENTATION_KEY, False))
        try:
            return default()
        finally:
            context_api.detach(context_token)
            current_django_call.reset(token)

    return compute


def _start(operation: str, instance: Any, prepared: _Call, detached: bool = False) -> None:
    # The attributes are written when the call returns, with hit or miss, in one write without
    # the SDK's per-value checks (context.set_attributes): the samplers the agent configures
    # never read them, and a span that is not recorded needs none of them. `detached`: under a
    # span recorded for detection only, the call gets its record and no span.
    span = None if detached else implicit_units.start_client_span(_state["tracer"], f"cache.{operation}")
    prepared.span = span
    if span is not None and not span.is_recording():
        return
    keys = prepared.keys
    pattern = keys_pattern(keys)
    backend = backend_name(type(instance))
    writes = 0
    ttl_s: float | None = None
    if operation in _TIMEOUT_INDEX:
        ttl_s = _ttl(instance, prepared.args, prepared.kwargs, operation)
        writes = 0 if operation == "get_or_set" else len(keys)
    attributes: dict[str, Any] = {"hms.cache.operation": operation, "hms.cache.backend": backend}
    if pattern:
        attributes["hms.cache.key_pattern"] = pattern
    if writes and ttl_s is not None:
        attributes["hms.cache.ttl_s"] = ttl_s
    if _state["capture_keys"] and keys:
        attributes["hms.cache.key"] = captured_keys(keys)
    location = user_location()
    if location is not None:
        attributes.update(code_attributes(location))
    prepared.attributes = attributes
    if not _state["command_spans"] and span is not None:
        prepared.commands = []
    unique = keys if len(keys) <= 1 else list(dict.fromkeys(key_text(k) for k in keys))
    call = CacheCall(
        operation=operation,
        key_pattern=pattern,
        start_ns=0,
        duration_ns=0,
        backend=backend,
        reads=len(unique) if operation == "get_many" else 0,  # hits and misses: when it returns
        writes=writes,
        deletes=(len(keys) or 1) if operation in ("delete", "delete_many") else 0,
        ttl_s=ttl_s,
        key_hash=key_hash(unique),
        location=location,
        django_api=True,
    )
    prepared.call = call
    if span is not None:
        setattr(span, CACHE_RECORD, call)


def _finish(operation: str, prepared: _Call, result: Any) -> None:
    call = prepared.call
    attributes = prepared.attributes
    if call is None or attributes is None:
        return
    reads = hits = 0
    if operation == "get":
        missed = result is _MISSING if prepared.sentinel else result is None
        reads, hits = 1, 0 if missed else 1
    elif operation == "has_key":
        reads, hits = 1, 1 if result else 0
    elif operation == "get_or_set":
        if prepared.get_missed is not None:
            reads, hits = 1, 0 if prepared.get_missed else 1
            call.writes = 1 if prepared.get_missed else 0
    elif operation == "get_many":
        reads = call.reads
        hits = min(len(result), reads) if isinstance(result, dict) else 0
    if reads:
        call.reads, call.hits, call.misses = reads, hits, reads - hits
        attributes.update(read_attributes(reads, hits, reads - hits, single=operation != "get_many"))
    if operation == "get_or_set" and call.writes and call.ttl_s is not None:
        attributes["hms.cache.ttl_s"] = call.ttl_s  # it wrote: the miss is known only now
    span = prepared.span
    if span is not None and span.get_span_context().trace_flags.sampled:  # else: detection only
        if prepared.commands:
            attributes[CACHE_COMMANDS] = tuple(prepared.commands)
        set_attributes(span, attributes)


def _nested(operation: str, outer: _Call, wrapped: Any, args: Any, kwargs: Any) -> Any:
    """A cache method called by another one: no span; get_or_set learns hit or miss."""
    result = wrapped(*args, **kwargs)
    if operation == "get" and outer.operation == "get_or_set" and outer.get_missed is None:
        try:
            outer.get_missed = result is _argument(args, kwargs, 1, "default", None)
        except Exception as exc:
            guard.report("django cache instrumentation", exc)
    return result


def _make_wrapper(operation: str) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        outer = current_django_call.get()
        if outer is not None:
            return _nested(operation, outer, wrapped, args, kwargs)
        if _state["tracer"] is None or instance is None or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        prepared: _Call | None = None
        parent = detection_only_parent()
        try:
            prepared = _prepare(operation, instance, args, kwargs, wrapped)
            _start(operation, instance, prepared, parent is not None)
        except Exception as exc:
            guard.report("django cache instrumentation", exc)
            if prepared is not None and prepared.span is not None:
                prepared.span.end()
            prepared = None
        if prepared is None:
            return wrapped(*args, **kwargs)
        span = prepared.span
        if span is None:
            return _call_detached(operation, prepared, parent, wrapped)
        context = trace.set_span_in_context(span)
        if not _state["command_spans"]:  # HMS_OTEL_CACHE_COMMAND_SPANS=false: no spans below
            context = context_api.set_value(SUPPRESS_INSTRUMENTATION_KEY, True, context)
        token = context_api.attach(context)
        call_token = current_django_call.set(prepared)
        try:
            result = wrapped(*prepared.args, **prepared.kwargs)
        except BaseException as exc:
            current_django_call.reset(call_token)
            context_api.detach(token)
            _end_failed(span, prepared.attributes, exc, prepared.commands)
            raise
        current_django_call.reset(call_token)
        context_api.detach(token)
        try:
            _finish(operation, prepared, result)
        except Exception as exc:
            guard.report("django cache instrumentation", exc)
        _end(span)
        if result is _MISSING and prepared.sentinel:
            return prepared.user_default
        return result

    wrapper._hms_django_cache = True  # type: ignore[attr-defined]
    wrapper.__name__ = f"hms_django_cache_{operation}"
    return wrapper


def _call_detached(operation: str, prepared: _Call, parent: Any, wrapped: Callable[..., Any]) -> Any:
    """The call under a span recorded for detection only: no span, its record to the span
    processor (instrument/context.py add_detached) when it returns or raises."""
    token = None
    if not _state["command_spans"]:  # as with a span: nothing below it is traced
        token = context_api.attach(context_api.set_value(SUPPRESS_INSTRUMENTATION_KEY, True))
    call_token = current_django_call.set(prepared)
    start_ns = time_ns()
    try:
        result = wrapped(*prepared.args, **prepared.kwargs)
    except BaseException:
        current_django_call.reset(call_token)
        if token is not None:
            context_api.detach(token)
        _add_detached(parent, prepared, start_ns)
        raise
    current_django_call.reset(call_token)
    if token is not None:
        context_api.detach(token)
    try:
        _finish(operation, prepared, result)
    except Exception as exc:
        guard.report("django cache instrumentation", exc)
    _add_detached(parent, prepared, start_ns)
    if result is _MISSING and prepared.sentinel:
        return prepared.user_default
    return result


def _add_detached(parent: Any, prepared: _Call, start_ns: int) -> None:
    try:
        if prepared.call is not None:
            add_detached(parent, prepared.call, start_ns, time_ns())
    except Exception as exc:
        guard.report("django cache instrumentation", exc)


def _end_failed(
    span: Any,
    attributes: dict[str, Any] | None,
    exc: BaseException,
    prepared_commands: list[str] | None = None,
) -> None:
    try:
        if attributes:
            if prepared_commands:
                attributes[CACHE_COMMANDS] = tuple(prepared_commands)
            set_attributes(span, attributes)
        if isinstance(exc, Exception) and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    except Exception as error:
        guard.report("django cache instrumentation", error)
    _end(span)


def _end(span: Any) -> None:
    """End the span; between the application's call and its caller: never raises."""
    try:
        span.end()
    except Exception as exc:
        guard.report("django cache instrumentation", exc)


_WRAPPERS = {name: _make_wrapper(name) for name in OPERATIONS}
