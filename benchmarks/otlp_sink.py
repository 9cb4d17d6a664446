"""A lean OTLP/HTTP receiver for the benchmarks, run in its own process.

``python benchmarks/otlp_sink.py --port 4318 [--port 4319 ...]`` listens on each port (127.0.0.1),
answers ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` (``application/x-protobuf``, gzip
honoured) with 200, and counts what arrived, per port. It decodes every trace request (as a real
collector would) but only counts spans; ``GET /stats`` (on any port) returns the counts of all ports as
JSON. ``POST /inspect?on=1`` makes it also look inside spans (scopes, resources, ``hms.*`` attributes
and events): the benchmark runner switches it on while it verifies each mode, and off while measuring,
so the receiver stays cheap next to the server under test.

Runs in a separate process from the load generator so that decoding does not compete with the client
for the GIL. Prints ``ready <port> ...`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import threading
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_lock = threading.Lock()
_inspect = False


class PortCounts:
    def __init__(self) -> None:
        self.spans = 0
        self.trace_requests = 0
        self.trace_bytes = 0
        self.metric_requests = 0
        self.metric_points = 0
        self.log_requests = 0
        self.bad_requests = 0
        self.scopes: Counter[str] = Counter()
        self.distros: Counter[str] = Counter()  # resource telemetry.distro.name ('' when absent)
        self.span_attributes: Counter[str] = Counter()  # hms.* attribute keys seen on spans
        self.events: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {
            "spans": self.spans,
            "trace_requests": self.trace_requests,
            "trace_bytes": self.trace_bytes,
            "metric_requests": self.metric_requests,
            "metric_points": self.metric_points,
            "log_requests": self.log_requests,
            "bad_requests": self.bad_requests,
            "scopes": dict(self.scopes),
            "distros": dict(self.distros),
            "hms_span_attributes": dict(self.span_attributes),
            "events": dict(self.events),
        }


COUNTS: dict[int, PortCounts] = {}


def _count_traces(counts: PortCounts, body: bytes) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = 0
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans += len(scope_spans.spans)
    with _lock:
        counts.spans += spans
        counts.trace_requests += 1
        counts.trace_bytes += len(body)
    if not _inspect:
        return
    scopes: Counter[str] = Counter()
    distros: Counter[str] = Counter()
    attributes: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for resource_spans in request.resource_spans:
        distro = ""
        for kv in resource_spans.resource.attributes:
            if kv.key == "telemetry.distro.name":
                distro = kv.value.string_value
        for scope_spans in resource_spans.scope_spans:
            scopes[scope_spans.scope.name] += len(scope_spans.spans)
            distros[distro] += len(scope_spans.spans)
            for span in scope_spans.spans:
                for kv in span.attributes:
                    if kv.key.startswith("hms."):
                        attributes[kv.key] += 1
                for event in span.events:
                    events[event.name] += 1
    with _lock:
        counts.scopes.update(scopes)
        counts.distros.update(distros)
        counts.span_attributes.update(attributes)
        counts.events.update(events)


def _count_metrics(counts: PortCounts, body: bytes) -> None:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    request.ParseFromString(body)
    points = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
    with _lock:
        counts.metric_points += points
        counts.metric_requests += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OTLP/HTTP exporter's requests.Session expects

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/x-protobuf") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/stats":
            with _lock:
                data = {str(port): c.as_dict() for port, c in COUNTS.items()}
            self._reply(200, json.dumps(data).encode(), "application/json")
        else:
            self._reply(404)

    def do_POST(self) -> None:
        global _inspect
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        if url.path == "/inspect":
            _inspect = parse_qs(url.query).get("on", ["1"])[0] == "1"
            self._reply(200, b"{}", "application/json")
            return
        counts = COUNTS[self.server.server_address[1]]
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if url.path == "/v1/traces":
                _count_traces(counts, body)
            elif url.path == "/v1/metrics":
                _count_metrics(counts, body)
            elif url.path == "/v1/logs":
                with _lock:
                    counts.log_requests += 1
            else:
                self._reply(404)
                return
        except Exception:
            with _lock:
                counts.bad_requests += 1
            self._reply(400)
            return
        # An empty Export*ServiceResponse is an empty protobuf message.
        self._reply(200)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, action="append", required=True, help="port to listen on")
    args = parser.parse_args(argv)
    servers = []
    for port in args.port:
        server = _Server(("127.0.0.1", port), _Handler)
        COUNTS[server.server_address[1]] = PortCounts()
        servers.append(server)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", *(s.server_address[1] for s in servers), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        servers[0].serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
