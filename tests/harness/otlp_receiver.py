"""An in-process OTLP receiver for tests: gRPC and HTTP, real sockets, plain-data query API.

::

    with OtlpReceiver() as rx:             # or the ``otlp_receiver`` fixture
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.grpc_endpoint}   # or rx.http_endpoint
        ...
        [server] = rx.wait_for_spans(lambda s: s.kind == "SPAN_KIND_SERVER")
        queries = rx.children_of(server)

* gRPC ``opentelemetry.proto.collector.{trace,metrics,logs}.v1.*Service/Export`` on one loopback
  port; HTTP ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` on another
  (``application/x-protobuf`` or OTLP/JSON ``application/json``; ``Content-Encoding: gzip``/
  ``deflate`` honoured; chunked bodies accepted).
* Every request body is kept, after decompression, whatever the mode (:meth:`raw_payloads`), with the
  decoded message (:meth:`requests`). Only requests answered with success feed :meth:`spans` and
  :meth:`metrics`.
* Fault modes (:meth:`set_mode`), for reliability tests:

  ============  ===========================  ==========================================
  mode          gRPC status                  HTTP status
  ============  ===========================  ==========================================
  ok            OK                           200
  unavailable   UNAVAILABLE (retryable)      503 (retryable)
  error         INTERNAL (not retried)       500 (retried by the Python HTTP exporter)
  reject        INVALID_ARGUMENT             400 (never retried)
  stall         -- no answer: the request is held until the mode changes, :meth:`clear` or
                :meth:`stop` (or the client gives up), then answered as ``unavailable``
  ============  ===========================  ==========================================

  A body that does not decode is answered as ``reject`` in mode ``ok`` (a real collector would).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import inspect
import json
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

Mode = Literal["ok", "unavailable", "error", "reject", "stall"]
MODES: tuple[Mode, ...] = ("ok", "unavailable", "error", "reject", "stall")
Signal = Literal["traces", "metrics", "logs"]
Transport = Literal["grpc", "http"]

_SIGNALS: dict[str, tuple[str, type[Message], type[Message]]] = {
    # signal -> (gRPC service, request type, response type)
    "traces": (
        "opentelemetry.proto.collector.trace.v1.TraceService",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "metrics": (
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "logs": (
        "opentelemetry.proto.collector.logs.v1.LogsService",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}
_HTTP_PATHS: dict[str, Signal] = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}
_GRPC_FAULTS: dict[str, tuple[grpc.StatusCode, str]] = {
    "unavailable": (grpc.StatusCode.UNAVAILABLE, "test receiver: unavailable"),
    "error": (grpc.StatusCode.INTERNAL, "test receiver: internal error"),
    "reject": (grpc.StatusCode.INVALID_ARGUMENT, "test receiver: rejected"),
}
_HTTP_FAULTS: dict[str, tuple[int, int, str]] = {
    # mode -> (HTTP status, google.rpc.Code, message)
    "unavailable": (503, 14, "test receiver: unavailable"),
    "error": (500, 13, "test receiver: internal error"),
    "reject": (400, 3, "test receiver: rejected"),
}
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_MAX_MESSAGE = 64 * 1024 * 1024

TraceRequest = trace_service_pb2.ExportTraceServiceRequest
MetricsRequest = metrics_service_pb2.ExportMetricsServiceRequest
AttrValue = Any  # str | bool | int | float | bytes | list[AttrValue] | dict[str, AttrValue] | None
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Plain data
# ---------------------------------------------------------------------------------------------


class SpanEvent(NamedTuple):
    """A span event; compares equal to a ``(name, attributes)`` tuple."""

    name: str
    attributes: dict[str, AttrValue]


class SpanLink(NamedTuple):
    trace_id: str
    span_id: str
    attributes: dict[str, AttrValue]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received, flattened: ids are lowercase hex, enums are proto enum names."""

    trace_id: str
    span_id: str
    parent_span_id: str  # '' for a root span
    name: str
    kind: str  # 'SPAN_KIND_SERVER', 'SPAN_KIND_CLIENT', 'SPAN_KIND_INTERNAL', ...
    attributes: dict[str, AttrValue]
    events: list[SpanEvent]
    links: list[SpanLink]
    status_code: str  # 'STATUS_CODE_UNSET' | 'STATUS_CODE_OK' | 'STATUS_CODE_ERROR'
    status_message: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    resource: dict[str, AttrValue]
    scope_name: str
    scope_version: str
    transport: Transport
    trace_state: str = ""

    @property
    def duration_ns(self) -> int:
        return self.end_time_unix_nano - self.start_time_unix_nano

    @property
    def is_root(self) -> bool:
        return not self.parent_span_id

    def short(self) -> str:
        """One line for failure messages."""
        kind = self.kind.removeprefix("SPAN_KIND_")
        status = (
            ""
            if self.status_code == "STATUS_CODE_UNSET"
            else f" {self.status_code.removeprefix('STATUS_CODE_')}"
        )
        ids = f"trace={self.trace_id[:8]} span={self.span_id[:8]}"
        return f"{self.name!r} [{kind}{status}] {ids} via {self.transport}"


@dataclass(frozen=True)
class ReceivedDataPoint:
    """One metric data point, flattened. ``value`` for sum/gauge; count/sum/buckets for histograms."""

    name: str
    description: str
    unit: str
    type: str  # 'sum' | 'gauge' | 'histogram' | 'exponential_histogram' | 'summary'
    attributes: dict[str, AttrValue]
    value: int | float | None
    count: int | None
    sum: float | None
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    min: float | None
    max: float | None
    is_monotonic: bool | None  # sums only
    temporality: str  # 'AGGREGATION_TEMPORALITY_CUMULATIVE' | '..._DELTA' | '' (gauge/summary)
    start_time_unix_nano: int
    time_unix_nano: int
    resource: dict[str, AttrValue]
    scope_name: str
    transport: Transport


@dataclass(frozen=True)
class ReceivedRequest:
    """One export request as it arrived (any mode)."""

    transport: Transport
    signal: Signal
    mode: Mode  # the mode it was answered in
    body: bytes  # after gzip/deflate; for JSON, the JSON text as sent
    content_type: str  # 'application/grpc', 'application/x-protobuf' or 'application/json'
    content_encoding: str  # HTTP Content-Encoding ('' if none); '' for gRPC (grpc decompresses)
    headers: dict[str, str]  # HTTP headers / gRPC metadata, lowercase keys
    message: Message | None  # the decoded Export*ServiceRequest, None if it did not decode
    decode_error: str = ""
    received_at: float = field(default_factory=time.time)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def any_value(value: AnyValue) -> AttrValue:
    """AnyValue -> str / bool / int / float / bytes / list / dict / None."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, AttrValue]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def flatten_spans(
    request: trace_service_pb2.ExportTraceServiceRequest, transport: Transport
) -> list[ReceivedSpan]:
    out: list[ReceivedSpan] = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=trace_pb2.Span.SpanKind.Name(span.kind),
                        attributes=attributes(span.attributes),
                        events=[SpanEvent(e.name, attributes(e.attributes)) for e in span.events],
                        links=[
                            SpanLink(lk.trace_id.hex(), lk.span_id.hex(), attributes(lk.attributes))
                            for lk in span.links
                        ],
                        status_code=trace_pb2.Status.StatusCode.Name(span.status.code),
                        status_message=span.status.message,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        resource=resource,
                        scope_name=ss.scope.name,
                        scope_version=ss.scope.version,
                        transport=transport,
                        trace_state=span.trace_state,
                    )
                )
    return out


def _number(dp: metrics_pb2.NumberDataPoint) -> int | float | None:
    kind = dp.WhichOneof("value")
    return None if kind is None else getattr(dp, kind)


def flatten_metrics(
    request: metrics_service_pb2.ExportMetricsServiceRequest, transport: Transport
) -> list[ReceivedDataPoint]:
    out: list[ReceivedDataPoint] = []
    temporality_name = metrics_pb2.AggregationTemporality.Name
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(metric, kind)
                temporality = (
                    temporality_name(data.aggregation_temporality) if kind not in ("gauge", "summary") else ""
                )
                common: dict[str, Any] = {
                    "name": metric.name,
                    "description": metric.description,
                    "unit": metric.unit,
                    "type": kind,
                    "temporality": temporality,
                    "resource": resource,
                    "scope_name": sm.scope.name,
                    "transport": transport,
                }
                for dp in data.data_points:
                    point: dict[str, Any] = {
                        "attributes": attributes(dp.attributes),
                        "value": None,
                        "count": None,
                        "sum": None,
                        "bucket_counts": (),
                        "explicit_bounds": (),
                        "min": None,
                        "max": None,
                        "is_monotonic": None,
                        "start_time_unix_nano": dp.start_time_unix_nano,
                        "time_unix_nano": dp.time_unix_nano,
                    }
                    if kind in ("sum", "gauge"):
                        point["value"] = _number(dp)
                        if kind == "sum":
                            point["is_monotonic"] = data.is_monotonic
                    else:
                        point["count"] = dp.count
                        point["sum"] = dp.sum if kind == "summary" or dp.HasField("sum") else None
                        if kind != "summary":
                            point["min"] = dp.min if dp.HasField("min") else None
                            point["max"] = dp.max if dp.HasField("max") else None
                        if kind == "histogram":
                            point["bucket_counts"] = tuple(dp.bucket_counts)
                            point["explicit_bounds"] = tuple(dp.explicit_bounds)
                    out.append(ReceivedDataPoint(**common, **point))
    return out


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON encodes trace and span ids as hex, protobuf's JSON mapping expects base64."""
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in _HEX_ID_KEYS and isinstance(v, str)
            else _hex_ids_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode_request(signal: Signal, body: bytes, json_body: bool) -> Message:
    """Decode an Export*ServiceRequest from protobuf bytes or OTLP/JSON text."""
    message = _SIGNALS[signal][1]()
    if json_body:
        json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), message, ignore_unknown_fields=True)
    else:
        message.ParseFromString(body)
    return message


def _describe(predicate: Callable[..., bool] | None) -> str:
    if predicate is None:
        return "any"
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        source = getattr(predicate, "__name__", repr(predicate))
    source = " ".join(source.split())
    return source if len(source) <= 200 else source[:197] + "..."


# ---------------------------------------------------------------------------------------------
# The receiver
# ---------------------------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: OtlpReceiver


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 60  # idle keep-alive connections are closed after this

    def setup(self) -> None:
        super().setup()
        self.server.receiver._track_connection(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.receiver._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        signal = _HTTP_PATHS.get(path)
        if signal is None:
            self._send(404, b"unknown OTLP path", "text/plain")
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in ("application/x-protobuf", "application/json"):
            self._send(415, f"unsupported Content-Type {content_type!r}".encode(), "text/plain")
            return
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(raw)
            elif encoding == "deflate":
                try:
                    body = zlib.decompress(raw)
                except zlib.error:
                    body = zlib.decompress(raw, -zlib.MAX_WBITS)
            elif encoding in ("", "identity", "none"):
                body = raw
            else:
                self._send(415, f"unsupported Content-Encoding {encoding!r}".encode(), "text/plain")
                return
        except (OSError, EOFError, zlib.error) as exc:
            self._send(400, f"bad {encoding} body: {exc}".encode(), "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        mode = receiver._receive("http", signal, body, content_type, encoding, headers)
        is_json = content_type == "application/json"
        if mode == "ok":
            response = _SIGNALS[signal][2]()
            payload = (
                json_format.MessageToJson(response).encode() if is_json else response.SerializeToString()
            )
            self._send(200, payload, content_type)
            return
        status, code, message = _HTTP_FAULTS[mode]
        rpc_status = status_pb2.Status(code=code, message=message)
        payload = (
            json_format.MessageToJson(rpc_status).encode() if is_json else rpc_status.SerializeToString()
        )
        self._send(status, payload, content_type)


class OtlpReceiver:
    """In-process OTLP receiver; see the module docstring. Thread-safe; a context manager."""

    def __init__(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0) -> None:
        self.host = host
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._cond = threading.Condition()
        self._mode: Mode = "ok"
        self._release = threading.Event()  # set to let stalled requests go
        self._requests: list[ReceivedRequest] = []
        self._spans: list[ReceivedSpan] = []
        self._points: list[ReceivedDataPoint] = []
        self._counts: Counter[str] = Counter()
        self._grpc_server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._http_server: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        """Bind and serve. After :meth:`stop`, starting again reuses the same ports (a collector
        restart)."""
        if self._grpc_server is not None:
            return self
        self._release = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="otlp-grpc")
        server = grpc.server(
            self._executor,
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.so_reuseport", 0)],
        )
        for signal, (service, _request_type, response_type) in _SIGNALS.items():
            handler = grpc.unary_unary_rpc_method_handler(
                self._grpc_handler(cast(Signal, signal)),
                request_deserializer=None,  # raw bytes: kept as they arrived
                response_serializer=response_type.SerializeToString,
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
            )
        self._grpc_port = server.add_insecure_port(f"{self.host}:{self._grpc_port}")
        if not self._grpc_port:
            raise RuntimeError("could not bind the gRPC port")
        server.start()
        self._grpc_server = server

        http = _HttpServer((self.host, self._http_port), _HttpHandler)
        http.receiver = self
        self._http_port = int(http.server_address[1])
        self._http_server = http
        self._http_thread = threading.Thread(
            target=http.serve_forever, kwargs={"poll_interval": 0.01}, name="otlp-http", daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop both servers, letting stalled requests go and closing open HTTP connections."""
        self._release.set()
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            with self._cond:
                connections = list(self._connections)
            for conn in connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait(5)
            self._grpc_server = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # grpc does not own it: its threads would linger
            self._executor = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._grpc_server is not None

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def grpc_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` -- for OTEL_EXPORTER_OTLP_ENDPOINT with protocol grpc."""
        return f"http://{self.host}:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` -- the base; exporters append ``/v1/traces`` etc."""
        return f"http://{self.host}:{self._http_port}"

    # -- modes ----------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Answer every following request in ``mode``; releases requests stalled so far."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        with self._cond:
            self._mode = mode
            self._release.set()
            self._release = threading.Event()

    def request_counts(self) -> dict[str, int]:
        """How many requests (all signals and transports) were answered in each mode."""
        with self._cond:
            return {mode: self._counts[mode] for mode in MODES}

    def clear(self) -> None:
        """Forget everything received, reset the counts, release stalled requests. The mode stays."""
        with self._cond:
            self._requests.clear()
            self._spans.clear()
            self._points.clear()
            self._counts.clear()
            self._release.set()
            self._release = threading.Event()

    # -- receiving ------------------------------------------------------------------------------

    def _track_connection(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _receive(
        self,
        transport: Transport,
        signal: Signal,
        body: bytes,
        content_type: str,
        encoding: str,
        headers: dict[str, str],
        is_active: Callable[[], bool] | None = None,
    ) -> Mode:
        """Record a request and return the mode to answer it in (after stalling if asked)."""
        message: Message | None = None
        error = ""
        try:
            message = decode_request(signal, body, content_type == "application/json")
        except (DecodeError, ValueError, json_format.ParseError, RecursionError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self._cond:
            mode = self._mode
            release = self._release
            answer: Mode = "reject" if mode == "ok" and message is None else mode
            self._counts[mode] += 1
            self._requests.append(
                ReceivedRequest(
                    transport, signal, mode, body, content_type, encoding, headers, message, error
                )
            )
            if answer == "ok" and message is not None:
                if signal == "traces":
                    self._spans.extend(flatten_spans(cast(TraceRequest, message), transport))
                elif signal == "metrics":
                    self._points.extend(flatten_metrics(cast(MetricsRequest, message), transport))
            self._cond.notify_all()
        if mode == "stall":
            while not release.wait(0.05):
                if is_active is not None and not is_active():
                    break
            answer = "unavailable"
        return answer

    def _grpc_handler(self, signal: Signal) -> Callable[[bytes, grpc.ServicerContext], Message]:
        def export(body: bytes, context: grpc.ServicerContext) -> Message:
            metadata = {
                k.lower(): v if isinstance(v, str) else repr(v) for k, v in context.invocation_metadata()
            }
            mode = self._receive("grpc", signal, body, "application/grpc", "", metadata, context.is_active)
            if mode == "ok":
                return _SIGNALS[signal][2]()
            code, details = _GRPC_FAULTS[mode]
            context.abort(code, details)
            raise AssertionError("unreachable")  # context.abort raises

        return export

    # -- queries --------------------------------------------------------------------------------

    def requests(
        self, signal: Signal | None = None, transport: Transport | None = None
    ) -> list[ReceivedRequest]:
        """Every request received (any mode), oldest first."""
        with self._cond:
            return [
                r
                for r in self._requests
                if (signal is None or r.signal == signal) and (transport is None or r.transport == transport)
            ]

    def raw_payloads(self, signal: Signal | None = None, transport: Transport | None = None) -> list[bytes]:
        """The body of every request received (any mode), decompressed: for byte-level leak checks."""
        return [r.body for r in self.requests(signal, transport)]

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """Spans from successfully answered requests, in arrival order."""
        with self._cond:
            return [s for s in self._spans if name is None or s.name == name]

    def metrics(self, name: str | None = None) -> list[ReceivedDataPoint]:
        """Metric data points from successfully answered requests, in arrival order."""
        with self._cond:
            return [p for p in self._points if name is None or p.name == name]

    def children_of(self, span: ReceivedSpan) -> list[ReceivedSpan]:
        """Direct children of ``span``, by start time."""
        kids = [s for s in self.spans() if s.trace_id == span.trace_id and s.parent_span_id == span.span_id]
        return sorted(kids, key=lambda s: s.start_time_unix_nano)

    def descendants_of(self, span: ReceivedSpan) -> list[ReceivedSpan]:
        """Children, grandchildren... of ``span``, by start time."""
        same_trace = [s for s in self.spans() if s.trace_id == span.trace_id]
        found: list[ReceivedSpan] = []
        frontier = {span.span_id}
        while frontier:
            layer = [s for s in same_trace if s.parent_span_id in frontier]
            found.extend(layer)
            frontier = {s.span_id for s in layer}
        return sorted(found, key=lambda s: s.start_time_unix_nano)

    def parent_of(self, span: ReceivedSpan) -> ReceivedSpan | None:
        for s in self.spans():
            if s.trace_id == span.trace_id and s.span_id == span.parent_span_id:
                return s
        return None

    def _wait(
        self,
        what: str,
        items: Callable[[], list[T]],
        predicate: Callable[[T], bool] | None,
        count: int,
        timeout: float,
        summary: Callable[[], str],
    ) -> list[T]:
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        with self._cond:
            while True:
                matching: list[T] = []
                for item in items():
                    try:
                        if predicate is None or predicate(item):
                            matching.append(item)
                    except Exception as exc:  # a predicate that fails on some item: not a match
                        last_exc = exc
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            message = (
                f"timed out after {timeout:g}s waiting for {count} {what} matching {_describe(predicate)}; "
                f"{len(matching)} matched.\n"
            )
            if last_exc is not None:
                message += f"(the predicate raised {type(last_exc).__name__}: {last_exc} on some of them)\n"
            message += summary()
        raise AssertionError(message)

    def wait_for_spans(
        self, predicate: Callable[[ReceivedSpan], bool] | None = None, count: int = 1, timeout: float = 20.0
    ) -> list[ReceivedSpan]:
        """Wait until at least ``count`` received spans match ``predicate``; return all that match.
        On timeout raise AssertionError listing what did arrive. A predicate raising is a non-match."""
        __tracebackhide__ = True
        return self._wait("span(s)", lambda: self._spans, predicate, count, timeout, self.describe)

    def wait_for_metrics(
        self,
        predicate: Callable[[ReceivedDataPoint], bool] | None = None,
        count: int = 1,
        timeout: float = 20.0,
    ) -> list[ReceivedDataPoint]:
        """Like :meth:`wait_for_spans`, for metric data points."""
        __tracebackhide__ = True
        return self._wait("data point(s)", lambda: self._points, predicate, count, timeout, self.describe)

    def wait_for_requests(
        self, count: int = 1, mode: Mode | None = None, signal: Signal | None = None, timeout: float = 20.0
    ) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests (in ``mode``, of ``signal``) arrived."""
        __tracebackhide__ = True
        return self._wait(
            "request(s)",
            lambda: self._requests,
            lambda r: (mode is None or r.mode == mode) and (signal is None or r.signal == signal),
            count,
            timeout,
            self.describe,
        )

    def describe(self, limit: int = 60) -> str:
        """What arrived so far, human-readable: request counts, span trees, metric names."""
        with self._cond:
            counts = {m: c for m, c in self._counts.items() if c}
            spans = list(self._spans)
            points = list(self._points)
            undecodable = [r for r in self._requests if r.message is None]
        lines = [
            f"Receiver got {sum(counts.values())} request(s)"
            + (" (" + ", ".join(f"{m}: {c}" for m, c in counts.items()) + ")" if counts else "")
            + f", {len(spans)} span(s), {len(points)} data point(s)."
        ]
        for r in undecodable[:3]:
            lines.append(f"  undecodable {r.transport} {r.signal} request: {r.decode_error}")
        lines.extend(_span_tree_lines(spans, limit))
        if points:
            names = Counter(p.name for p in points)
            lines.append("Metrics: " + ", ".join(f"{n} ({c})" for n, c in sorted(names.items())))
        return "\n".join(lines)


def _span_tree_lines(spans: Sequence[ReceivedSpan], limit: int) -> list[str]:
    if not spans:
        return []
    ids = {(s.trace_id, s.span_id) for s in spans}
    children: dict[tuple[str, str], list[ReceivedSpan]] = {}
    roots: list[ReceivedSpan] = []
    for s in sorted(spans, key=lambda s: s.start_time_unix_nano):
        if s.parent_span_id and (s.trace_id, s.parent_span_id) in ids:
            children.setdefault((s.trace_id, s.parent_span_id), []).append(s)
        else:
            roots.append(s)
    lines = ["Spans (tree by parent):"]

    def walk(span: ReceivedSpan, depth: int) -> None:
        if len(lines) > limit:
            return
        orphan = " (parent not received)" if depth == 0 and span.parent_span_id else ""
        lines.append("  " + "  " * depth + "- " + span.short() + orphan)
        for child in children.get((span.trace_id, span.span_id), []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... ({len(spans)} spans in total)"]
    return lines
