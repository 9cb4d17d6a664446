"""The embedded default exporter: OTLP-JSON lines in a local directory.

Each export appends one line holding one ExportTraceServiceRequest (or
ExportMetricsServiceRequest) in the OTLP/JSON encoding that the OpenTelemetry Collector's
file exporter writes: camelCase field names, ids as lowercase hex, 64-bit integers as
strings. `hms-otel report` and `hms-otel analyze` read these files, and so can any tool that
reads the collector's output.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hms_otel_agent.export.otlp_json_encode import SpanJsonEncoder

TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.jsonl"
_ID_FIELDS = frozenset(("traceId", "spanId", "parentSpanId"))


def message_to_otlp_json(message: Message) -> str:
    """One OTLP/JSON line for a protobuf export request."""
    data = MessageToDict(message, preserving_proto_field_name=False)
    _hex_ids(data)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _hex_ids(node: Any) -> None:
    # protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants hex trace and span ids.
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


class _LineWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        data = (line + "\n").encode("utf-8")
        # O_APPEND and a single write per line keep lines whole when several processes
        # (gunicorn workers) append to the same file.
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


class OtlpJsonFileSpanExporter(SpanExporter):
    def __init__(self, directory: str, direct: bool = True) -> None:
        self._writer = _LineWriter(os.path.join(directory, TRACES_FILE))
        # `direct`: OTLP/JSON written from the spans' members (otlp_json_encode.py, a fast path:
        # HMS_OTEL_FAST_PATHS); else through the SDK's encoder and protobuf's MessageToDict.
        self._encoder = SpanJsonEncoder() if direct else None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        line = None
        if self._encoder is not None:
            # On an odd value, the SDK's encoder below: its handling of it.
            with contextlib.suppress(Exception):
                line = self._encoder.encode(spans)  # the same line, without protobuf
        if line is None:
            line = message_to_otlp_json(encode_spans(spans))
        self._writer.write(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class OtlpJsonFileMetricExporter(MetricExporter):
    def __init__(self, directory: str) -> None:
        super().__init__()
        self._writer = _LineWriter(os.path.join(directory, METRICS_FILE))

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        request = encode_metrics(metrics_data)
        if request.resource_metrics:
            self._writer.write(message_to_otlp_json(request))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass
