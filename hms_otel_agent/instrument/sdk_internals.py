"""The one place that touches private members of the OpenTelemetry SDK and contrib, each with
the reason it is needed, behind a version gate and a switch.

Two kinds of use:

* **Fast paths** (`fast_paths()`): faster replacements of stock code that make the same
  telemetry — the one-write span attributes (`set_attributes`), the DB span wrapper in place of
  ``dbapi.CursorTracer.traced_execution`` (instrument/db.py), the Redis command wrapper in place
  of the contrib's (instrument/redis.py), the OTLP span encoder for HTTP and gRPC
  (export/otlp_encode.py), the local file's OTLP/JSON encoder (export/otlp_json_encode.py).
  They run only when ``HMS_OTEL_FAST_PATHS`` is true (the default) and the installed SDK and
  contrib versions are ones they were tested with (`TESTED`); otherwise the stock code paths run
  and the start-up says so in one line.
* **Required members**: what the agent cannot do at all through the public API (write findings
  before a span ends, scrub an event, remove an attribute). These are used whatever the
  version, each guarded where it is called; the tests run against the pinned versions.

Fast-path code that still reads private members where it runs (instrument/db.py,
instrument/redis.py, export/otlp_encode.py, export/otlp_json_encode.py, export/compress.py) is
only reached when `fast_paths()` is true, or (compress.py) when span compression is opted in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from hms_otel_agent import guard

logger = logging.getLogger("hms_otel")

# Distribution -> the versions the fast paths were written and tested against (pyproject.toml
# pins them). A distribution that is not installed is not checked (psycopg2 without psycopg).
TESTED: dict[str, frozenset[str]] = {
    "opentelemetry-api": frozenset(("1.45.1",)),
    "opentelemetry-sdk": frozenset(("1.45.1",)),
    "opentelemetry-exporter-otlp-proto-http": frozenset(("1.45.1",)),
    "opentelemetry-exporter-otlp-proto-grpc": frozenset(("1.45.1",)),
    "opentelemetry-instrumentation": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-dbapi": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-psycopg": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-psycopg2": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-redis": frozenset(("0.66b1",)),
}

_fast = True


def installed_versions() -> dict[str, str]:
    found = {}
    for name in TESTED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def untested(installed: Mapping[str, str]) -> list[str]:
    """``name==version`` of each installed distribution outside the tested set."""
    return [
        f"{name}=={version}"
        for name, version in sorted(installed.items())
        if name in TESTED and version not in TESTED[name]
    ]


def configure(enabled: bool, installed: Mapping[str, str] | None = None) -> bool:
    """Decide once at start whether the fast paths run: `enabled` (HMS_OTEL_FAST_PATHS) and every
    installed SDK / contrib version tested. Logs one line when versions turn them off."""
    global _fast
    if not enabled:
        _fast = False
        return False
    outside = untested(installed_versions() if installed is None else installed)
    if outside:
        logger.warning(
            "hms-otel: %s not among the versions the agent's fast paths were tested with; "
            "using the stock OpenTelemetry code paths (same spans, more CPU per span)",
            ", ".join(outside),
        )
    _fast = not outside
    return _fast


def fast_paths() -> bool:
    return _fast


# --- contrib hooks --------------------------------------------------------------------------------


def call_hook(hook: Callable[..., None] | None, *args: Any) -> None:
    """A request or response hook called as the contrib calls it (``if callable(hook):
    _execute_hook(hook, ...)``): its exception never reaches the application; the agent reports
    it once per distinct error instead of a warning with a traceback per call."""
    if callable(hook):
        try:
            hook(*args)
        except Exception as exc:
            guard.report("instrumentation hook", exc)


# --- span attributes -------------------------------------------------------------------------------

try:  # Fast path: the SDK's span and attribute classes (opentelemetry-sdk 1.45).
    from opentelemetry.attributes import BoundedAttributes as _BoundedAttributes
    from opentelemetry.sdk.trace import _Span as _SdkSpan
except ImportError:  # pragma: no cover - another SDK: always the SDK's own set_attributes
    _BoundedAttributes = _SdkSpan = None  # type: ignore[assignment,misc]

_PLAIN = frozenset((str, int, bool, float))
_STR = frozenset((str,))


def set_attributes(span: Any, attributes: dict[str, Any]) -> None:
    """``span.set_attributes(attributes)`` for the agent's own attributes, without the SDK's
    per-value validation when it cannot change anything: an SDK span that has not ended, whose
    attributes have room for these and no value length limit, and values of the plain types the
    validation returns unchanged (str, int, bool, float). The result is what set_attributes
    gives: the same values in the same order (a key set again moves to the end). Anything else,
    or with the fast paths off, goes through ``span.set_attributes``.

    Why private: the SDK validates each value (isinstance checks against the abstract Sequence
    and Mapping) and takes the span's lock once per attribute; on the agent's DB and cache
    spans that cost more than the rest of the hooks. Reads ``_Span._lock``, ``_end_time``,
    ``_attributes`` and ``BoundedAttributes._dict`` / ``_lock`` / ``_immutable``."""
    bounded = getattr(span, "_attributes", None)
    if (
        not _fast
        or span.__class__ is not _SdkSpan
        or bounded.__class__ is not _BoundedAttributes
        or bounded.max_value_len is not None
        or bounded._immutable
        or not set(map(type, attributes.values())) <= _PLAIN
        or not set(map(type, attributes)) <= _STR
        or "" in attributes
    ):
        span.set_attributes(attributes)
        return
    with span._lock:
        done = span._end_time is None
        if done:
            with bounded._lock:
                stored = bounded._dict
                maxlen = bounded.maxlen
                if maxlen is not None and len(stored) + len(attributes) > maxlen:
                    done = False
                else:
                    if stored and not stored.keys().isdisjoint(attributes):
                        for key in attributes:
                            stored.pop(key, None)
                    stored.update(attributes)
    if not done:
        # Ended (the SDK's warning) or full (it drops the oldest, counts and warns).
        span.set_attributes(attributes)


def attribute_dict(span: Any) -> Any:
    """The span's attributes as the mapping that can be changed in place (redaction removes
    URL parts, headers and user agents). Required: the API can set an attribute, never remove
    one. The plain dict under BoundedAttributes also spares a KeyError per missing lookup."""
    bounded = span._attributes
    return getattr(bounded, "_dict", bounded)


def replace_event(span: Any, index: int, event: Any) -> None:
    """Put `event` in place of the span's event at `index` (an exception event with its message
    removed). Required: events are append-only in the API; ``BoundedList._dq`` is the deque."""
    span._events._dq[index] = event


def events(span: Any) -> Any:
    """The span's events without the copy ``span.events`` makes (the BoundedList)."""
    return span._events


def replace_status(span: Any, status: Any) -> None:
    """Set the status with a scrubbed description. Required: ``set_status`` keeps an ERROR
    status's first description, so the scrubbed one could not replace it."""
    span._status = status


def mark_sampled(span: Any) -> None:
    """Set the sampled flag of a span recorded but not sampled (pipeline.DetectingSampler), before
    it ends, so that the exporters' processors export it (they read the flag in on_end): a
    request head sampling dropped, with findings, exports its owner span alone. Required: a
    span's context is fixed at start in the API."""
    from opentelemetry.trace import SpanContext, TraceFlags

    context = span._context
    span._context = SpanContext(
        context.trace_id,
        context.span_id,
        is_remote=False,
        trace_flags=TraceFlags(context.trace_flags | TraceFlags.SAMPLED),
        trace_state=context.trace_state,
    )


# --- the Span.end and Span.record_exception hooks ------------------------------------------------


def span_processors(span: Any) -> tuple[Any, ...]:
    """The processors of the provider that made `span`. Required: the SDK has no public way from
    a span to its provider's processors (``_span_processor._span_processors``)."""
    return getattr(span._span_processor, "_span_processors", ())


_original_end: Any = None


def install_end_hook() -> None:
    """Let processors write to a span just before it ends (docs/architecture.md): the SDK
    freezes attributes in ``end()`` before any processor's ``on_end`` sees the span. Required:
    no public hook runs between the last write and the freeze."""
    global _original_end
    if _original_end is not None:
        return
    from opentelemetry.sdk.trace import Span

    original = Span.end
    time_ns = time.time_ns
    # The provider's processors tuple -> their before_end callables. The SDK replaces the tuple
    # when a processor is added, so a new tuple is looked at once; bounded by the providers.
    hooks: dict[int, tuple[Any, tuple[Callable[[Span, int], None], ...]]] = {}

    def before_end_hooks(processors: Any) -> tuple[Callable[[Span, int], None], ...]:
        callables = tuple(
            hook for hook in (getattr(p, "before_end", None) for p in processors) if hook is not None
        )
        if len(hooks) > 1000:
            hooks.clear()
        hooks[id(processors)] = (processors, callables)  # keeps the tuple alive: its id stays its own
        return callables

    def end(self: Span, end_time: int | None = None) -> None:
        if self._end_time is None:  # not ended yet: `end_time` is None until then
            if end_time is None:
                end_time = time_ns()
            processors = getattr(self._span_processor, "_span_processors", ())
            entry = hooks.get(id(processors))
            callables = (
                entry[1] if entry is not None and entry[0] is processors else before_end_hooks(processors)
            )
            for before_end in callables:
                before_end(self, end_time)
        original(self, end_time)

    Span.end = end  # type: ignore[method-assign]
    _original_end = original


def uninstall_end_hook() -> None:
    global _original_end
    if _original_end is not None:
        from opentelemetry.sdk.trace import Span

        Span.end = _original_end  # type: ignore[method-assign]
        _original_end = None


_original_record_exception: Any = None


def install_exception_hook() -> None:
    """Let a processor record an exception event itself (`SignalProcessor.exception_event`):
    the exception object is there, so its stack trace can be built from its structure instead
    of scrubbed as text, and its message is never read. Required: the SDK formats the message
    into the event before any processor sees it."""
    global _original_record_exception
    if _original_record_exception is not None:
        return
    from opentelemetry.sdk.trace import Span

    original = Span.record_exception

    def record_exception(
        self: Span,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        for processor in span_processors(self):
            handler = getattr(processor, "exception_event", None)
            if handler is not None and handler(self, exception, attributes, timestamp, escaped):
                return
        original(self, exception, attributes, timestamp, escaped)

    Span.record_exception = record_exception  # type: ignore[method-assign]
    _original_record_exception = original


def uninstall_exception_hook() -> None:
    global _original_record_exception
    if _original_record_exception is not None:
        from opentelemetry.sdk.trace import Span

        Span.record_exception = _original_record_exception  # type: ignore[method-assign]
        _original_record_exception = None
