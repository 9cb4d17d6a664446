"""Owner spans for work outside requests: `unit_of_work`, and the span every kind of it shares.

Detection groups DB and cache calls under their owner, the nearest ancestor span that is not a
DB or cache span (processors/grouping.py). Django's middleware gives each request one; management
commands (instrument/django_commands.py), RQ jobs (instrument/rq.py), Celery tasks (the
contrib's ``run/<task>`` span), code in a ``with unit_of_work(...)`` block and, failing all of
these, each thread's implicit unit (instrument/implicit_units.py) get theirs here or there.

Spans made here are INTERNAL (CONSUMER for jobs), from the tracer scope ``hms_otel_agent.work``,
and carry ``hms.work.kind`` and ``hms.work.name``. An exception leaving the block is recorded
and sets the span's status, as the SDK's ``start_as_current_span`` does, and is re-raised.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from hms_otel_agent import __version__, guard

SCOPE = "hms_otel_agent.work"
KIND = "hms.work.kind"
NAME = "hms.work.name"
UNIT_OF_WORK, COMMAND, IMPLICIT, JOB = "unit_of_work", "command", "implicit", "job"
MAX_NAME_CHARS = 200  # a name is a span name: low cardinality is the caller's business, size ours

F = TypeVar("F", bound=Callable[..., Any])

_provider: Any = None  # the agent's tracer provider (install()); else the global one, when called
_tracers: dict[int, tuple[Any, Any]] = {}  # id(provider) -> (provider, its tracer for SCOPE)


def install(tracer_provider: Any) -> None:
    global _provider
    _provider = tracer_provider


def uninstall() -> None:
    global _provider
    _provider = None
    _tracers.clear()


def tracer() -> Any:
    """The tracer of the ``hms_otel_agent.work`` scope on the agent's provider (the global one
    when the agent did not start: then a no-op tracer, and `unit_of_work` costs next to nothing)."""
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    entry = _tracers.get(id(provider))
    if entry is None or entry[0] is not provider:
        entry = (provider, provider.get_tracer(SCOPE, __version__))
        if len(_tracers) > 16:
            _tracers.clear()
        _tracers[id(provider)] = entry
    return entry[1]


def start(
    name: str, kind: str, attributes: dict[str, Any] | None = None, span_kind: SpanKind = SpanKind.INTERNAL
) -> Any:
    """Start (not activate) an owner span of `kind` named `name`."""
    name = str(name)[:MAX_NAME_CHARS] or kind
    values: dict[str, Any] = {KIND: kind, NAME: name}
    if attributes:
        values.update(attributes)
    return tracer().start_span(name, kind=span_kind, attributes=values)


def end(span: Any, token: Any, error: BaseException | None) -> None:
    """Deactivate and end an owner span; `error`: the exception leaving its block, if any."""
    try:
        context_api.detach(token)
    except Exception as exc:
        guard.report("unit of work (end)", exc)
    try:
        if isinstance(error, SystemExit) and error.code in (0, None):
            error = None  # sys.exit() / exit(0): a normal end
        if error is not None and span.is_recording():
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
    except Exception as exc:
        guard.report("unit of work (end)", exc)


def call_in(span: Any, token: Any, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """``wrapped(*args, **kwargs)`` inside `span`, activated by `token`, then `end` it with the
    exception leaving the call, raised unchanged; no span (it failed to start): a plain call."""
    if span is None:
        return wrapped(*args, **kwargs)
    error: BaseException | None = None
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        error = exc
        raise
    finally:
        end(span, token, error)


class unit_of_work:
    """An owner span for work outside requests: the queries and cache calls made inside it are
    grouped under it, and their N+1s, duplicates and cache findings are written on it.

    ``with unit_of_work("nightly-import"): ...``, ``async with unit_of_work("sync-labs"): ...``,
    or as a decorator: ``@unit_of_work("send-reminders")`` / ``@unit_of_work()`` (named after the
    function) / ``@unit_of_work``, on plain and ``async`` functions; each call is one unit (of a
    generator function: making the generator, not iterating it).
    A unit inside another owner (a request, a task) is an owner of its own: its queries are
    counted there, not in the enclosing one. Without the agent started, a no-op.
    """

    __slots__ = ("_active", "attributes", "name")

    def __new__(cls, name: Any = None, *, attributes: dict[str, Any] | None = None) -> Any:
        if callable(name):  # the bare decorator, @unit_of_work: the wrapped function itself
            return cls(attributes=attributes)(name)
        return super().__new__(cls)

    def __init__(self, name: str | None = None, *, attributes: dict[str, Any] | None = None) -> None:
        self.name = None if name is None else str(name)
        self.attributes = dict(attributes) if attributes else None
        # Per context, not per instance: one instance may be entered by several threads or tasks.
        self._active: ContextVar[tuple[tuple[Any, Any], ...]] = ContextVar(
            "hms_otel_unit_of_work", default=()
        )

    # -- as a context manager ------------------------------------------------------------------

    def __enter__(self) -> unit_of_work:
        span = token = None
        try:
            span = start(self.name or UNIT_OF_WORK, UNIT_OF_WORK, self.attributes)
            token = context_api.attach(trace.set_span_in_context(span))
        except Exception as exc:
            guard.report("unit of work (start)", exc)
        self._active.set((*self._active.get(), (span, token)))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        active = self._active.get()
        if not active:
            return
        self._active.set(active[:-1])
        span, token = active[-1]
        if span is not None and token is not None:
            end(span, token, exc)

    async def __aenter__(self) -> unit_of_work:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- as a decorator --------------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        name = self.name or _function_name(func)
        attributes = {**(self.attributes or {}), "code.function.name": _function_name(func)}
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*a: Any, **k: Any) -> Any:
                with unit_of_work(name, attributes=attributes):
                    return await func(*a, **k)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*a: Any, **k: Any) -> Any:
            with unit_of_work(name, attributes=attributes):
                return func(*a, **k)

        return run  # type: ignore[return-value]


def _function_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{qualname}" if module and module != "__main__" else str(qualname)
