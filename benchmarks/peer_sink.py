"""A loopback sink for every agent of the peer benchmark, run in its own process.

``python benchmarks/peer_sink.py --http NAME=PORT ... --grpc NAME=PORT ...``

* HTTP ports answer what each agent sends, so that no agent blocks, retries or backs off:
  OTLP/HTTP (``/v1/traces``, ``/v1/metrics``, ``/v1/logs``; decoded and counted like
  ``otlp_sink.py``), the Datadog agent's API (``PUT``/``POST /v0.4|0.5/traces`` with the agent's
  ``rate_by_service`` answer, ``GET /info``, stats, telemetry, remote configuration), Sentry's
  envelope endpoint (``POST /api/<project>/envelope/``) and the Elastic APM server (``GET /``
  server information, ``POST /intake/v2/events``, agent configuration). Anything else: 200 ``{}``.
* gRPC ports implement the OTLP ``TraceService`` and ``MetricsService`` (``grpcio``, which the OTLP
  gRPC exporter already needs).

Counts requests, bytes and OTLP spans per name; ``GET /stats`` on any HTTP port returns them as
JSON. Prints ``ready`` on stdout once every port listens.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import threading
import zlib
from collections import defaultdict
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

_lock = threading.Lock()
COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
PORT_NAMES: dict[int, str] = {}

# What a Datadog agent 7 answers: the tracer reads the endpoints and, with client_drop_p0s, may drop
# unsampled traces itself (as it does in production against a current agent).
DD_INFO = {
    "version": "7.60.0",
    "endpoints": [
        *("/v0.4/traces", "/v0.5/traces", "/v0.6/stats", "/v0.7/config", "/telemetry/proxy/"),
        *("/debugger/v1/input", "/debugger/v1/diagnostics", "/evp_proxy/v2/"),
    ],
    "client_drop_p0s": True,
}
ELASTIC_INFO = {
    "build_date": "2024-01-01T00:00:00Z",
    "build_sha": "0",
    "publish_ready": True,
    "version": "8.15.0",
}


def _count(name: str, kind: str, size: int, spans: int = 0) -> None:
    with _lock:
        counts = COUNTS[name]
        counts["requests"] += 1
        counts["bytes"] += size
        counts[kind + "_requests"] += 1
        counts["spans"] += spans


def _trace_spans(body: bytes) -> int:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"{}", content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        name = PORT_NAMES.get(self.server.server_address[1], "?")
        if path == "/stats":
            with _lock:
                data = {n: dict(c) for n, c in COUNTS.items()}
            self._reply(200, json.dumps(data).encode())
        elif path == "/info":
            self._reply(200, json.dumps(DD_INFO).encode())
        elif path == "/":
            _count(name, "other", 0)
            self._reply(200, json.dumps(ELASTIC_INFO).encode())
        else:
            _count(name, "other", 0)
            self._reply(200)

    def do_POST(self) -> None:
        raw = self._body()
        path = urlsplit(self.path).path
        name = PORT_NAMES.get(self.server.server_address[1], "?")
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if path.startswith("/v1/"):
            try:
                body = gzip.decompress(raw) if encoding == "gzip" else raw
                body = zlib.decompress(body) if encoding == "deflate" else body
                spans = _trace_spans(body) if path == "/v1/traces" else 0
            except Exception:
                _count(name, "bad", len(raw))
                self._reply(400, b"", "application/x-protobuf")
                return
            _count(name, "otlp", len(raw), spans)
            self._reply(200, b"", "application/x-protobuf")
        elif path.endswith("/traces"):
            _count(name, "dd_traces", len(raw))
            self._reply(200, b'{"rate_by_service":{"service:,env:":1}}')
        elif path.endswith("/envelope/") or path.endswith("/store/"):
            _count(name, "sentry", len(raw))
            self._reply(200)
        elif path.startswith("/intake/"):
            _count(name, "elastic", len(raw))
            self._reply(202, b"")
        else:
            _count(name, "other", len(raw))
            self._reply(200)

    do_PUT = do_POST


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name

    def Export(self, request: Any, context: Any) -> Any:
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        _count(self.name, "otlp", request.ByteSize(), spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name

    def Export(self, request: Any, context: Any) -> Any:
        _count(self.name, "otlp", request.ByteSize())
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _pairs(values: list[str]) -> list[tuple[str, int]]:
    out = []
    for value in values:
        name, _, port = value.rpartition("=")
        out.append((name, int(port)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", action="append", default=[], help="NAME=PORT of an HTTP port")
    parser.add_argument("--grpc", action="append", default=[], help="NAME=PORT of an OTLP gRPC port")
    args = parser.parse_args(argv)
    servers = []
    for name, port in _pairs(args.http):
        server = _Server(("127.0.0.1", port), _Handler)
        PORT_NAMES[server.server_address[1]] = name
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    grpc_servers = []
    if args.grpc:
        import grpc

        for name, port in _pairs(args.grpc):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(name), server)
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(name), server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            server.start()
            grpc_servers.append(server)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
