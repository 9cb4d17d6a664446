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
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hms_otel_agent import guard
from hms_otel_agent.export.local_files import LineWriter
from hms_otel_agent.export.otlp_json_encode import SpanJsonEncoder
from hms_otel_agent.local_paths import FileMark

TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.jsonl"
# Shares of HMS_OTEL_LOCAL_MAX_MB: traces are most of what is written.
TRACES_SHARE = 0.8
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


class OtlpJsonFileSpanExporter(SpanExporter):
    def __init__(self, directory: str, direct: bool = True, max_bytes: int = 100_000_000) -> None:
        path = os.path.join(directory, TRACES_FILE)
        self._writer = LineWriter(path, int(max_bytes * TRACES_SHARE))
        # Where this run's lines begin (the report at exit reads from there).
        self.start_mark = FileMark.of(path)
        # `direct`: OTLP/JSON written from the spans' members (otlp_json_encode.py, a fast path:
        # HMS_OTEL_FAST_PATHS); else through the SDK's encoder and protobuf's MessageToDict.
        self._encoder = SpanJsonEncoder() if direct else None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        if self._writer.refused:
            return SpanExportResult.FAILURE
        line = None
        if self._encoder is not None:
            # On an odd value, the SDK's encoder below: its handling of it.
            with contextlib.suppress(Exception):
                line = self._encoder.encode(spans)  # the same line, without protobuf
        if line is None:
            line = message_to_otlp_json(encode_spans(spans))
        return SpanExportResult.SUCCESS if self._writer.write(line) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


class OtlpJsonFileMetricExporter(MetricExporter):
    def __init__(self, directory: str, max_bytes: int = 100_000_000) -> None:
        super().__init__()
        self._writer = LineWriter(os.path.join(directory, METRICS_FILE), int(max_bytes * (1 - TRACES_SHARE)))

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        # Never raises: the SDK's reader would log a traceback on every export.
        try:
            request = encode_metrics(metrics_data)
            if request.resource_metrics and not self._writer.write(message_to_otlp_json(request)):
                return MetricExportResult.FAILURE
        except Exception as exc:
            guard.report("metrics file exporter", exc)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass
