"""OTLP/JSON trace requests written straight from the spans, for the local-file exporter.

The local-file exporter used to build the SDK's protobuf message (``encode_spans``), convert it
with protobuf's ``json_format.MessageToDict`` (reflection over every field), rewrite the ids from
base64 to hex with a recursive walk and ``json.dumps`` the result: ~170 µs per span on a quiet
machine, 20x the agent's protobuf encoder, and the largest cost of the agent's default on a real
application (docs/benchmarks.md). This module writes the same line directly, as
``export/otlp_encode.py`` writes protobuf:

* the resource and each instrumentation scope are written once per batch;
* each attribute ``{"key":...,"value":...}`` is written once per distinct (key, value) and then
  reused from a cache bounded by its size (statements, ORM contexts, code locations repeat);
* ids are hex from the integers, times are decimal strings, enums their names.

The output is byte for byte what ``json.dumps(MessageToDict(encode_spans(spans)))`` with hex ids
wrote: fields in field-number order, defaults left out, 64-bit integers as strings, NaN and
infinities as strings, bytes as base64 (a unit test compares the two on many kinds of spans). A
value of an unexpected type raises ``TypeError`` and the caller falls back to the old path.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring  # json.dumps(ensure_ascii=False) for one string
from typing import Any

from opentelemetry.trace import SpanKind

from hms_otel_agent.export.otlp_encode import group_spans
from hms_otel_agent.instrument.sdk_internals import plain_attributes, span_fields

_KIND = {
    SpanKind.INTERNAL: '"kind":"SPAN_KIND_INTERNAL"',
    SpanKind.SERVER: '"kind":"SPAN_KIND_SERVER"',
    SpanKind.CLIENT: '"kind":"SPAN_KIND_CLIENT"',
    SpanKind.PRODUCER: '"kind":"SPAN_KIND_PRODUCER"',
    SpanKind.CONSUMER: '"kind":"SPAN_KIND_CONSUMER"',
}
_STATUS_CODE = {1: '"code":"STATUS_CODE_OK"', 2: '"code":"STATUS_CODE_ERROR"'}
# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100), plus IS_REMOTE (0x200) when the
# parent is remote — what the SDK's encoder sets.
_FLAGS_LOCAL = '"flags":256'
_FLAGS_REMOTE = '"flags":768'
_MAX_CACHE_CHARS = 4 * 1024 * 1024
_MAX_CACHED_VALUE_CHARS = 4096


def _double(value: float) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    return repr(value)  # what json.dumps writes for a float


def _any_value(value: Any) -> str:
    """An AnyValue object (its oneof is always written, even an empty string or false)."""
    cls = value.__class__
    if cls is str:
        return '{"stringValue":' + encode_basestring(value) + "}"
    if cls is bool:
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if cls is int:
        return '{"intValue":"' + str(value) + '"}'
    if cls is float:
        return '{"doubleValue":' + _double(value) + "}"
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, str):
        return '{"stringValue":' + encode_basestring(str(value)) + "}"
    if isinstance(value, int):
        return '{"intValue":"' + str(int(value)) + '"}'
    if isinstance(value, float):
        return '{"doubleValue":' + _double(float(value)) + "}"
    if isinstance(value, bytes):
        return '{"bytesValue":"' + base64.b64encode(bytes(value)).decode("ascii") + '"}'
    if isinstance(value, Sequence):
        if not value:
            return '{"arrayValue":{}}'
        return '{"arrayValue":{"values":[' + ",".join(_any_value(v) for v in value) + "]}}"
    if isinstance(value, Mapping):
        if not value:
            return '{"kvlistValue":{}}'
        items = ",".join(_key_value(str(k), v) for k, v in value.items())
        return '{"kvlistValue":{"values":[' + items + "]}}"
    raise TypeError(f"cannot encode a {cls.__name__}")


def _key_value(key: str, value: Any) -> str:
    """A KeyValue object (an empty key is a default and left out, as MessageToDict does)."""
    if key:
        return '{"key":' + encode_basestring(key) + ',"value":' + _any_value(value) + "}"
    return '{"value":' + _any_value(value) + "}"


def _key_values(attributes: Any) -> str:
    return ",".join(_key_value(key, value) for key, value in attributes.items())


class SpanJsonEncoder:
    """Encodes batches of ReadableSpans into one OTLP/JSON ExportTraceServiceRequest line. One per
    exporter (used by one export thread at a time)."""

    def __init__(self) -> None:
        self._kv: dict[tuple[str, type, Any], str] = {}  # (key, type, value) -> its JSON object
        self._kv_chars = 0
        self._resources: dict[int, tuple[Any, str]] = {}  # id(resource) -> (it, its "resource" object)
        self._scopes: dict[int, tuple[Any, str]] = {}  # id(scope) -> (it, its "scope" object)

    def _attributes(self, attributes: Any) -> str:
        """The members of a span's "attributes" array, from the cache when possible."""
        attributes = plain_attributes(attributes)
        cache = self._kv
        out = []
        for key, value in attributes.items():
            cls = value.__class__
            if (
                (cls is str and len(value) <= _MAX_CACHED_VALUE_CHARS)
                or cls is int
                or cls is bool
                or cls is float
            ):
                cache_key = (key, cls, value)  # the type: True == 1 == 1.0 must not share an entry
                encoded = cache.get(cache_key)
                if encoded is None:
                    encoded = _key_value(key, value)
                    if self._kv_chars > _MAX_CACHE_CHARS:
                        cache.clear()
                        self._kv_chars = 0
                    cache[cache_key] = encoded
                    self._kv_chars += 2 * len(encoded) + 100  # the string, the key's strings, the entry
                out.append(encoded)
            else:
                out.append(_key_value(key, value))
        return ",".join(out)

    def _resource(self, resource: Any) -> str:
        entry = self._resources.get(id(resource))
        if entry is not None and entry[0] is resource:
            return entry[1]
        attributes = resource.attributes
        content = '"attributes":[' + _key_values(attributes) + "]" if attributes else ""
        message = '"resource":{' + content + "}"
        if len(self._resources) > 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, message)  # keeps it alive: the id stays its own
        return message

    def _scope(self, scope: Any) -> str:
        entry = self._scopes.get(id(scope))
        if entry is not None and entry[0] is scope:
            return entry[1]
        parts = []
        if scope is not None:
            if scope.name:
                parts.append('"name":' + encode_basestring(scope.name))
            if scope.version:
                parts.append('"version":' + encode_basestring(scope.version))
            if scope.attributes:
                parts.append('"attributes":[' + _key_values(scope.attributes) + "]")
        message = '"scope":{' + ",".join(parts) + "}"
        if len(self._scopes) > 1024:
            self._scopes.clear()
        self._scopes[id(scope)] = (scope, message)
        return message

    def _span(self, span: Any) -> str:
        context, parent, name, kind, start, end, attributes, events, links, status = span_fields(span)
        parts = [f'{{"traceId":"{context.trace_id:032x}","spanId":"{context.span_id:016x}"']
        trace_state = context.trace_state
        if trace_state:
            state = ",".join(f"{k}={v}" for k, v in trace_state.items())
            parts.append('"traceState":' + encode_basestring(state))
        if parent:
            parts.append(f'"parentSpanId":"{parent.span_id:016x}"')
        if name:
            parts.append('"name":' + encode_basestring(name))
        parts.append(_KIND[kind])
        if start:
            parts.append(f'"startTimeUnixNano":"{start}"')
        if end:
            parts.append(f'"endTimeUnixNano":"{end}"')
        if attributes:
            parts.append('"attributes":[' + self._attributes(attributes) + "]")
        dropped = span.dropped_attributes
        if dropped:
            parts.append(f'"droppedAttributesCount":{dropped}')
        if events:
            event_json = []
            for event in events:
                event_parts = []
                if event.timestamp:
                    event_parts.append(f'"timeUnixNano":"{event.timestamp}"')
                if event.name:
                    event_parts.append('"name":' + encode_basestring(event.name))
                if event.attributes:
                    event_parts.append('"attributes":[' + _key_values(event.attributes) + "]")
                if event.dropped_attributes:
                    event_parts.append(f'"droppedAttributesCount":{event.dropped_attributes}')
                event_json.append("{" + ",".join(event_parts) + "}")
            parts.append('"events":[' + ",".join(event_json) + "]")
        dropped = span.dropped_events
        if dropped:
            parts.append(f'"droppedEventsCount":{dropped}')
        if links:
            link_json = []
            for link in links:
                linked = link.context
                link_parts = [f'"traceId":"{linked.trace_id:032x}","spanId":"{linked.span_id:016x}"']
                if link.attributes:
                    link_parts.append('"attributes":[' + _key_values(link.attributes) + "]")
                if link.dropped_attributes:
                    link_parts.append(f'"droppedAttributesCount":{link.dropped_attributes}')
                link_parts.append(_FLAGS_REMOTE if linked.is_remote else _FLAGS_LOCAL)
                link_json.append("{" + ",".join(link_parts) + "}")
            parts.append('"links":[' + ",".join(link_json) + "]")
        dropped = span.dropped_links
        if dropped:
            parts.append(f'"droppedLinksCount":{dropped}')
        status_parts = []
        if status.description:
            status_parts.append('"message":' + encode_basestring(status.description))
        code = status.status_code.value
        if code:
            status_parts.append(_STATUS_CODE[code])
        parts.append('"status":{' + ",".join(status_parts) + "}")
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return ",".join(parts) + "}"

    def encode(self, spans: Sequence[Any]) -> str:
        """The OTLP/JSON line of `spans` (what the SDK's encode_spans converts to)."""
        resource_spans = []
        for resource, scopes in group_spans(spans, self._span):
            scope_spans = []
            for scope, encoded_spans in scopes.items():
                scope_json = "{" + self._scope(scope) + ',"spans":[' + ",".join(encoded_spans) + "]"
                schema_url = scope.schema_url if scope is not None else None
                if schema_url:
                    scope_json += ',"schemaUrl":' + encode_basestring(schema_url)
                scope_spans.append(scope_json + "}")
            resource_json = "{" + self._resource(resource) + ',"scopeSpans":[' + ",".join(scope_spans) + "]"
            if resource.schema_url:
                resource_json += ',"schemaUrl":' + encode_basestring(resource.schema_url)
            resource_spans.append(resource_json + "}")
        return '{"resourceSpans":[' + ",".join(resource_spans) + "]}"
