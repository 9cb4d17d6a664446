"""The one place that touches private members of the OpenTelemetry SDK and contrib, each with
the reason it is needed, behind a version gate and a switch.

Every private member of the OpenTelemetry SDK, the OTLP exporters and the contrib
instrumentations that the agent reads, writes, calls, replaces or subclasses is named here and
nowhere else (instrument/, processors/, export/, pipeline.py and launch/ call the functions
below; a test greps the package for it). Two kinds of use:

* **Fast paths** (`fast_paths()`): faster replacements of stock code that make the same
  telemetry -- the one-write span attributes (`set_attributes`), the DB span wrapper in place of
  ``dbapi.CursorTracer.traced_execution`` (instrument/db.py, with the dbapi accessors below),
  the Redis command wrapper in place of the contrib's (instrument/redis.py), the OTLP span
  exporters with the agent's encoder for HTTP and gRPC (`otlp_span_exporter_class`), the span
  members the encoders and span compression read (`span_fields`). They run only when
  ``HMS_OTEL_FAST_PATHS`` is true (the default) and the installed SDK and contrib versions are
  ones they were tested with (`TESTED`); otherwise the stock code paths run (the SDK's
  exporters, the contrib's wrappers, the spans' public properties) and the start-up says so in
  one line.
* **Required members**: what the agent cannot do at all through the public API (write findings
  before a span ends, scrub an event, remove an attribute, name its spans after the contrib's
  semantic-convention mode, ride on the dbapi instrumentation, which has no hooks, scrub the
  Django middleware's metric). These are used whatever the version or switch -- turning them
  off would export what the agent exists to keep in (PHI, raw SQL) -- each guarded where it is
  called; the tests run against the pinned versions.
"""

from __future__ import annotations

import functools
import importlib
import logging
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation._semconv import (
    _get_semconv_opt_in_modes,
    _OpenTelemetryStabilitySignalType,
    _set_db_name,
    _set_db_statement,
    _set_db_system,
)

from hms_otel_agent import guard

logger = logging.getLogger("hms_otel")

# Distribution -> the versions the fast paths were written and tested against (pyproject.toml
# pins them). A distribution that is not installed is not checked (psycopg2 without psycopg).
TESTED: dict[str, frozenset[str]] = {
    "opentelemetry-api": frozenset(("1.45.1",)),
    "opentelemetry-sdk": frozenset(("1.45.1",)),
    "opentelemetry-proto": frozenset(("1.45.1",)),
    "opentelemetry-exporter-otlp-proto-common": frozenset(("1.45.1",)),
    "opentelemetry-exporter-otlp-proto-http": frozenset(("1.45.1",)),
    "opentelemetry-exporter-otlp-proto-grpc": frozenset(("1.45.1",)),
    "opentelemetry-instrumentation": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-dbapi": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-psycopg": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-psycopg2": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-redis": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-django": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-wsgi": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-asgi": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-celery": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-requests": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-httpx": frozenset(("0.66b1",)),
    "opentelemetry-instrumentation-urllib3": frozenset(("0.66b1",)),
    "opentelemetry-semantic-conventions": frozenset(("0.66b1",)),
    "opentelemetry-util-http": frozenset(("0.66b1",)),
}

_fast = True


def installed_versions() -> dict[str, str]:
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
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


def allowed(enabled: bool, installed: Mapping[str, str] | None = None) -> bool:
    """What `configure` would decide, without deciding it or logging (pipeline.build picks its
    exporters with it; Pipeline.install configures)."""
    return enabled and not untested(installed_versions() if installed is None else installed)


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


# --- span fields: the OTLP encoders (export/otlp_encode.py, otlp_json_encode.py) and span
# compression (export/compress.py) ----------------------------------------------------------------

# Why private: the public properties copy (``events`` and ``links`` build a tuple, ``attributes``
# a MappingProxy around the BoundedAttributes) on every read, once per span per exporter; the
# private members are the same values without the copies. The stock reading is the public
# properties: same values, any SDK.
_OWN_FIELDS = operator.attrgetter(
    "_context", "_parent", "_name", "_kind", "_start_time", "_end_time",
    "_attributes", "_events", "_links", "_status",
)  # fmt: skip
_PUBLIC_FIELDS = operator.attrgetter(
    "context", "parent", "name", "kind", "start_time", "end_time",
    "attributes", "events", "links", "status",
)  # fmt: skip
_OWN_ORIGIN = operator.attrgetter("_resource", "_instrumentation_scope")
_PUBLIC_ORIGIN = operator.attrgetter("resource", "instrumentation_scope")


def span_fields(span: Any) -> tuple[Any, ...]:
    """(context, parent, name, kind, start_time, end_time, attributes, events, links, status) of
    an ended ReadableSpan."""
    return (_OWN_FIELDS if _fast else _PUBLIC_FIELDS)(span)


def span_origin(span: Any) -> tuple[Any, Any]:
    """(resource, instrumentation_scope) of a ReadableSpan."""
    return (_OWN_ORIGIN if _fast else _PUBLIC_ORIGIN)(span)


def span_context(span: Any) -> Any:
    """``span.context`` (the SDK's ``get_span_context`` / ``context`` are a property and a method
    call around ``_context``; span compression reads it for every span it is offered)."""
    return span._context if _fast else span.get_span_context()


def plain_attributes(attributes: Any) -> Any:
    """The plain dict under a BoundedAttributes (its ``_dict``): iterating it skips the
    BoundedAttributes' lock and per-item ``__getitem__``. Anything else as it is."""
    return getattr(attributes, "_dict", attributes) if _fast else attributes


def instrumentation_info(span: Any) -> Any:
    """The span's deprecated InstrumentationInfo, to copy it onto a span built from it (span
    compression's summary); the public property warns on each read. None on the stock path
    (only the deprecated property reads it)."""
    return getattr(span, "_instrumentation_info", None) if _fast else None


# --- OTLP span exporters with the agent's encoder --------------------------------------------------


def otlp_span_exporter_class(protocol: str, encoder: Callable[[], Any], fast: bool | None = None) -> type:
    """The SDK's OTLP span exporter class for `protocol` ("grpc" or "http/protobuf"); with the
    fast paths, a subclass that encodes through `encoder()` (export/otlp_encode.SpanEncoder:
    the same bytes, ~7x less CPU per span). Why private: the SDK exporters build the protobuf
    message inside ``export`` (HTTP) and ``_translate_data`` (gRPC) with no way to pass bytes.
    `fast`: the decision to follow (`allowed`), else the one `configure` made."""
    if fast is None:
        fast = _fast
    if protocol == "grpc":
        if fast:
            return _grpc_span_exporter_class(encoder)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc
    if fast:
        return _http_span_exporter_class(encoder)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http


def _http_span_exporter_class(encoder: Callable[[], Any]) -> type:
    """The OTLP/HTTP span exporter with `encoder` in place of the SDK's; everything else
    (session, compression, retries, size limit, the exporter's own metrics) is the SDK's. Reads
    ``_client``, ``_metrics``, ``_shutdown``, ``_max_request_size``, ``_is_request_too_large``
    and ``_logger`` (1.45): if they are not there, or the encoder meets a value it does not
    know, the SDK's export runs instead."""
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as sdk
    from opentelemetry.sdk.trace.export import SpanExportResult

    too_large = getattr(sdk, "_is_request_too_large", None)
    status_code_key = getattr(sdk, "HTTP_RESPONSE_STATUS_CODE", "http.response.status_code")

    class OTLPSpanExporter(sdk.OTLPSpanExporter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._hms_encoder = encoder()

        def export(self, spans: Sequence[Any]) -> Any:
            client = getattr(self, "_client", None)
            metrics = getattr(self, "_metrics", None)
            if self._shutdown or client is None or metrics is None or too_large is None:
                return super().export(spans)
            try:
                data = self._hms_encoder.encode(spans)
            except Exception:
                return super().export(spans)  # the SDK's encoder: its own handling of bad values
            with metrics.export_operation(len(spans)) as result:
                if too_large(data, self._max_request_size):
                    sdk._logger.warning(
                        "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                        len(data),
                        self._max_request_size,
                    )
                    result.error = sdk.RequestPayloadTooLargeError(
                        f"Serialized span request size {len(data)} bytes exceeds max_request_size "
                        f"{self._max_request_size} bytes."
                    )
                    return SpanExportResult.FAILURE
                export_result = client.export(data)
                if not export_result.success:
                    result.error = export_result.error
                    result.error_attrs = (
                        {status_code_key: export_result.status_code}
                        if export_result.status_code is not None
                        else None
                    )
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return OTLPSpanExporter


_TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _BytesTraceServiceStub:
    """TraceService's Export on a channel, taking the request already serialized (no request
    serializer: gRPC sends the bytes as they are)."""

    def __init__(self, channel: Any) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        self.Export = channel.unary_unary(
            _TRACE_EXPORT_METHOD,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


def _grpc_span_exporter_class(encoder: Callable[[], Any]) -> type:
    """The OTLP/gRPC span exporter with `encoder` in place of the SDK's: the request body is
    written by the agent and sent through a stub that passes bytes through; everything else
    (channel, credentials, compression, headers, retries with backoff and RetryInfo, the
    reconnect on UNAVAILABLE, the exporter's own metrics) is the SDK's ``_export``. Replaces the
    mixin's ``_stub`` / ``_client`` and overrides ``_translate_data`` (1.45): if the stub is not
    where it was, this is the SDK's exporter unchanged; a value the encoder does not know is
    encoded by the SDK's encoder for that batch."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as sdk

    class OTLPSpanExporter(sdk.OTLPSpanExporter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._hms_encoder = encoder()
            if getattr(self, "_stub", None) is sdk.TraceServiceStub and getattr(self, "_channel", None):
                self._stub = _BytesTraceServiceStub  # the SDK's reconnect builds its client from it
                self._client = _BytesTraceServiceStub(self._channel)  # type: ignore[assignment]

        def _translate_data(self, data: Sequence[Any]) -> Any:
            if self._stub is not _BytesTraceServiceStub:
                return encode_spans(data)
            try:
                return self._hms_encoder.encode(data)
            except Exception:
                return encode_spans(data).SerializeToString()  # the SDK's handling of odd values

    return OTLPSpanExporter


# --- providers and exporters: required members ----------------------------------------------------


def update_resource(provider: Any, resource: Any) -> None:
    """Merge `resource` into a tracer or meter provider's resource for telemetry made from now
    on (the service name once Django is known, the pid after fork). Required: the API fixes a
    provider's resource at construction (``_update_resource``, SDK 1.45)."""
    provider._update_resource(resource)


def metric_preferences(exporter: Any) -> dict[str, Any]:
    """The preferred temporality and aggregation a metric exporter was built with (from
    OTEL_EXPORTER_OTLP_METRICS_* environment), to give them to a wrapper exporter. Required:
    the MetricExporter base class keeps them private and the reader asks the exporter."""
    return {
        "preferred_temporality": exporter._preferred_temporality,
        "preferred_aggregation": exporter._preferred_aggregation,
    }


def sdk_configurator() -> tuple[type, type]:
    """(the configurator base class, the SDK's default configurator) for the agent's
    `opentelemetry-instrument` configurator (launch/distro.py). Required: the entry point
    protocol is private in the SDK (``opentelemetry.sdk._configuration``); contrib's own
    distro subclasses the same two."""
    from opentelemetry.sdk._configuration import _BaseConfigurator, _OTelSDKConfigurator

    return _BaseConfigurator, _OTelSDKConfigurator


def run_sdk_configurator(configurator: Any, **kwargs: Any) -> None:
    """The SDK configurator's work (its ``_configure``: what ``configure`` runs once)."""
    configurator._configure(**kwargs)


# The context key that switches instrumentations off for the agent's own work (its exporters'
# HTTP calls, the Django cache's inner Redis commands). Required: contrib's
# ``suppress_instrumentation`` is a context manager; the agent attaches the value itself
# on paths that cannot wrap a `with` (and the contrib reads this same key).
SUPPRESS_INSTRUMENTATION_KEY = _SUPPRESS_INSTRUMENTATION_KEY


def django_middleware_keys() -> tuple[str, tuple[str, ...]]:
    """(the request.META key where the contrib's Django middleware keeps the duration metric's
    attributes, the request attributes it copies onto the span: OTEL_PYTHON_DJANGO_TRACED_
    REQUEST_ATTRS as it read them). Required: the agent scrubs that metric's route and reads
    the same list; the middleware class and both are private (contrib 0.66b1)."""
    from opentelemetry.instrumentation.django.middleware.otel_middleware import _DjangoMiddleware

    return _DjangoMiddleware._environ_duration_attr_key, tuple(_DjangoMiddleware._traced_request_attrs or ())


# --- semantic-convention modes (opentelemetry-instrumentation's _semconv) --------------------------
# Required: the contrib instrumentations pick the old or stable database names from
# OTEL_SEMCONV_STABILITY_OPT_IN through these private helpers; the agent must name its own the
# same way, and set the contrib's attributes as the contrib would.

set_db_name = _set_db_name
set_db_statement = _set_db_statement
set_db_system = _set_db_system


def semconv_modes() -> tuple[Any, Any]:
    """(the database mode, the HTTP mode) the contrib instrumentations read (once per process)."""
    database = _OpenTelemetryStabilitySignalType.DATABASE
    http = _OpenTelemetryStabilitySignalType.HTTP
    modes = _get_semconv_opt_in_modes((database, http))
    return modes[database], modes[http]


# --- dbapi (instrument/db.py) ---------------------------------------------------------------------
# The fast path replaces ``CursorTracer.traced_execution`` (and its async twin) with the same span
# in one attribute write; it calls what contrib 0.66b1's version calls. The stock path rides on the
# two private methods the contrib's traced_execution calls while the span is open: the dbapi
# instrumentation has no request or response hook.

db_integration = operator.attrgetter("_db_api_integration")  # CursorTracer -> its integration
db_mode = operator.attrgetter("_sem_conv_opt_in_mode_db")  # integration -> its database mode
db_tracer = operator.attrgetter("_tracer")  # integration -> its tracer
# CursorTracer -> (SQL commenter on, the comment also in the exported statement)
sql_commenter = operator.attrgetter("_commenter_enabled", "_enable_attribute_commenter")
# integration -> (db.client.operation.duration, db.client.response.returned_rows): None when off
db_histograms = operator.attrgetter("_duration_histogram", "_returned_rows_histogram")


def add_sql_comment(tracer: Any, args: tuple[Any, ...], cursor: Any) -> tuple[Any, ...]:
    """The statement arguments with the contrib's SQL comment (sqlcommenter) added."""
    return tracer._update_args_with_added_sql_comment(args, cursor)


def db_record_metrics(tracer: Any, cursor: Any, operation: str, started: float, error: Any) -> None:
    """The contrib's own database metrics for one statement (opt-in)."""
    tracer._record_metrics(cursor, operation, started, error)


def db_metric_attributes(tracer: Any, operation: str, error: Any) -> dict[str, Any]:
    """The attributes the contrib puts on its database metrics."""
    return tracer._get_metric_attributes(operation, error)


_CURSOR_TRACER_HOOKS = {"populate_span": "_populate_span", "record_metrics": "_record_metrics"}


def cursor_tracer_hooks() -> dict[str, Any]:
    """The contrib CursorTracer's ``_populate_span`` and ``_record_metrics`` by plain name."""
    from opentelemetry.instrumentation import dbapi

    return {name: getattr(dbapi.CursorTracer, private) for name, private in _CURSOR_TRACER_HOOKS.items()}


def set_cursor_tracer_hooks(hooks: Mapping[str, Any]) -> None:
    """Put `hooks` (by the names `cursor_tracer_hooks` gives) on the contrib's CursorTracer."""
    from opentelemetry.instrumentation import dbapi

    for name, function in hooks.items():
        setattr(dbapi.CursorTracer, _CURSOR_TRACER_HOOKS[name], function)


# --- redis (instrument/redis.py) ------------------------------------------------------------------


def redis_tracer(tracer_provider: Any) -> Any:
    """The tracer the contrib's Redis instrumentor made its wrappers with (its ``_get_tracer``):
    the fast path's command wrapper makes the same spans with the same scope."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    return RedisInstrumentor._get_tracer(tracer_provider=tracer_provider)


# Helpers the contrib's Redis wrappers look up in their modules at each call; the agent puts its
# own in their place (span names and statements with nothing but the command words, peer names
# after the database mode, no search results on spans) and calls some of the originals. Required:
# the contrib's hooks run after these attributes are set, so a hook could only overwrite them.
REDIS_HELPERS: dict[str, tuple[str, str]] = {
    "search_attributes": ("opentelemetry.instrumentation.redis", "_add_search_attributes"),
    "create_attributes": ("opentelemetry.instrumentation.redis", "_add_create_attributes"),
    "span_name": ("opentelemetry.instrumentation.redis", "_build_span_name"),
    "statement": ("opentelemetry.instrumentation.redis", "_format_command_args"),
    "pipeline_meta": ("opentelemetry.instrumentation.redis", "_build_span_meta_data_for_pipeline"),
    "util_statement": ("opentelemetry.instrumentation.redis.util", "_format_command_args"),
    "conn_attributes": ("opentelemetry.instrumentation.redis.util", "_extract_conn_attributes"),
}
_redis_originals: dict[str, Any] = {}  # plain name -> the contrib's helper while replaced


def replace_redis_helpers(replacements: Mapping[str, Any]) -> None:
    for name, replacement in replacements.items():
        module_name, private = REDIS_HELPERS[name]
        module = importlib.import_module(module_name)
        original = module.__dict__.get(private)
        if original is None or original is replacement:
            continue
        _redis_originals[name] = original
        setattr(module, private, replacement)


def restore_redis_helpers() -> None:
    for name, original in list(_redis_originals.items()):
        module_name, private = REDIS_HELPERS[name]
        setattr(importlib.import_module(module_name), private, original)
    _redis_originals.clear()


def redis_original(name: str) -> Any:
    """The contrib's helper `name` replaced by `replace_redis_helpers`, or None."""
    return _redis_originals.get(name)


def redis_helper(name: str) -> Any:
    """The helper `name` as the contrib's wrappers call it now (the agent's while replaced)."""
    module_name, private = REDIS_HELPERS[name]
    return importlib.import_module(module_name).__dict__[private]


def redis_create_attributes(span: Any, args: Any) -> None:
    """The contrib's ``redis.create_index.*`` attributes (index name, field names and types)."""
    from opentelemetry.instrumentation.redis import util

    util._add_create_attributes(span, args)


def redis_command_queue(pipeline: Any) -> Any:
    """The commands queued on a redis-py pipeline, where each redis-py version keeps them (6+
    cluster pipelines on their execution strategy). Private in redis-py; read as the contrib
    reads them."""
    strategy = getattr(pipeline, "_execution_strategy", None)
    if strategy is not None and hasattr(strategy, "command_queue"):
        return strategy.command_queue
    if strategy is not None and hasattr(strategy, "_command_queue"):
        return strategy._command_queue
    if hasattr(pipeline, "command_stack"):
        return pipeline.command_stack
    return getattr(pipeline, "_command_stack", ())
