"""OTLP trace requests written straight to protobuf wire format.

The SDK's encoder (``opentelemetry.exporter.otlp.proto.common``) builds a protobuf object per
span, per attribute and per value, and groups spans by resource through ``Resource.__hash__``,
which JSON-dumps every resource attribute once per span. On the agent's spans (10-11 attributes)
that was ~50-70 µs per span, the largest single cost of the export thread. This module writes the
same bytes directly:

* the resource and each instrumentation scope are encoded once per batch (resources are grouped
  by identity first, then by equality, as the SDK groups them by equality);
* each ``KeyValue`` is written once per distinct (key, value) and then reused from a cache
  bounded by its size in bytes (attribute values repeat: statements, ORM contexts, code
  locations, peers) — values are never kept beyond that cache;
* everything else (ids, times, events, links, status, flags) is written field by field.

The output decodes to exactly the message the SDK's ``encode_spans`` builds (same fields, same
presence of empty messages, same order of resources, scopes and spans); a unit test compares
the two on many kinds of spans. A value of an unexpected type raises ``TypeError`` and the
caller falls back to the SDK's encoder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind

from hms_otel_agent.instrument.sdk_internals import plain_attributes, span_fields, span_origin

T = TypeVar("T")
_PACK_Q = struct.Struct("<Q").pack
_PACK_D = struct.Struct("<d").pack
_PACK_I = struct.Struct("<I").pack

_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",  # field 6 (kind), varint
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
# Span.flags (field 16, fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100), plus
# SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK (0x200) when the parent is remote — what the SDK writes.
_FLAGS_LOCAL = b"\x85\x01" + _PACK_I(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _PACK_I(0x300)
_SPAN_ATTRIBUTE = b"\x4a"  # Span.attributes: field 9, length-delimited
_MAX_CACHE_BYTES = 4 * 1024 * 1024
_MAX_CACHED_VALUE_CHARS = 4096

_varints = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _varints[n]
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF  # int64: two's complement, ten bytes
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message's content (the oneof is always written, even an empty string)."""
    cls = value.__class__
    if cls is str:
        return _field(b"\x0a", value.encode("utf-8"))
    if cls is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if cls is int:
        return b"\x18" + _varint(value)
    if cls is float:
        return b"\x21" + _PACK_D(value)
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", str(value).encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(int(value))
    if isinstance(value, float):
        return b"\x21" + _PACK_D(float(value))
    if isinstance(value, bytes):
        return _field(b"\x3a", bytes(value))
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode a {cls.__name__}")


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message's content."""
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


def group_spans(spans: Sequence[Any], encode: Callable[[Any], T]) -> Iterable[tuple[Any, dict[Any, list[T]]]]:
    """(resource, {scope: [encode(span), ...]}) in order of first span, grouped as the SDK's
    encoder groups them: resources by equality, scopes by identity (shared by the JSON encoder)."""
    groups: dict[int, tuple[Any, dict[Any, list[T]]]] = {}
    canonical: dict[int, int] = {}  # id(resource) -> id of the first equal resource
    for span in spans:
        resource, scope = span_origin(span)
        key = canonical.get(id(resource))
        if key is None:
            key = id(resource)
            for other_key, (other, _) in groups.items():
                if other == resource:
                    key = other_key
                    break
            canonical[id(resource)] = key
        group = groups.get(key)
        if group is None:
            group = groups[key] = (resource, {})
        group[1].setdefault(scope or None, []).append(encode(span))
    return groups.values()


class SpanEncoder:
    """Encodes batches of ReadableSpans into ExportTraceServiceRequest bytes. One per exporter
    (used by one export thread at a time)."""

    def __init__(self) -> None:
        self._kv: dict[tuple[str, type, Any], bytes] = {}  # (key, type, value) -> field 9 bytes
        self._kv_bytes = 0
        self._resources: dict[int, tuple[Any, bytes]] = {}  # id(resource) -> (it, its message)
        self._scopes: dict[int, tuple[Any, bytes]] = {}  # id(scope) -> (it, its message)

    def _attributes(self, tag: bytes, attributes: Any) -> list[bytes]:
        """Repeated KeyValue fields (tag: the field's tag byte), from the cache when possible."""
        if not attributes:
            return []
        attributes = plain_attributes(attributes)
        if tag != _SPAN_ATTRIBUTE:  # resources and scopes: encoded once per batch anyway
            return [_field(tag, _key_value(key, value)) for key, value in attributes.items()]
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
                    encoded = _field(tag, _key_value(key, value))
                    if self._kv_bytes > _MAX_CACHE_BYTES:
                        cache.clear()
                        self._kv_bytes = 0
                    cache[cache_key] = encoded
                    self._kv_bytes += 2 * len(encoded) + 100  # the bytes, the key's strings, the entry
                out.append(encoded)
            else:
                out.append(_field(tag, _key_value(key, value)))
        return out

    def _resource(self, resource: Any) -> bytes:
        entry = self._resources.get(id(resource))
        if entry is not None and entry[0] is resource:
            return entry[1]
        message = b"".join(self._attributes(b"\x0a", resource.attributes))
        if len(self._resources) > 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, message)  # keeps it alive: the id stays its own
        return message

    def _scope(self, scope: Any) -> bytes:
        entry = self._scopes.get(id(scope))
        if entry is not None and entry[0] is scope:
            return entry[1]
        parts = []
        if scope is not None:
            if scope.name:
                parts.append(_field(b"\x0a", scope.name.encode("utf-8")))
            if scope.version:
                parts.append(_field(b"\x12", scope.version.encode("utf-8")))
            parts.extend(self._attributes(b"\x1a", scope.attributes))
        message = b"".join(parts)
        if len(self._scopes) > 1024:
            self._scopes.clear()
        self._scopes[id(scope)] = (scope, message)
        return message

    def _span(self, span: Any) -> bytes:
        """A ScopeSpans ``spans`` field (the Span message with its tag and length)."""
        context, parent, name, kind, start, end, attributes, events, links, status = span_fields(span)
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        trace_state = context.trace_state
        if trace_state:
            parts.append(
                _field(b"\x1a", ",".join(f"{k}={v}" for k, v in trace_state.items()).encode("utf-8"))
            )
        if parent:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        if name:
            parts.append(_field(b"\x2a", name.encode("utf-8")))
        parts.append(_KIND[kind])
        if start:
            parts.append(b"\x39" + _PACK_Q(start))
        if end:
            parts.append(b"\x41" + _PACK_Q(end))
        parts.extend(self._attributes(b"\x4a", attributes))
        dropped = span.dropped_attributes
        if dropped:
            parts.append(b"\x50" + _varint(dropped))
        for event in events or ():
            event_parts = []
            if event.timestamp:
                event_parts.append(b"\x09" + _PACK_Q(event.timestamp))
            if event.name:
                event_parts.append(_field(b"\x12", event.name.encode("utf-8")))
            event_parts.extend(_field(b"\x1a", _key_value(k, v)) for k, v in (event.attributes or {}).items())
            if event.dropped_attributes:
                event_parts.append(b"\x20" + _varint(event.dropped_attributes))
            parts.append(_field(b"\x5a", b"".join(event_parts)))
        dropped = span.dropped_events
        if dropped:
            parts.append(b"\x60" + _varint(dropped))
        for link in links or ():
            link_context = link.context
            link_parts = [
                b"\x0a\x10" + link_context.trace_id.to_bytes(16, "big"),
                b"\x12\x08" + link_context.span_id.to_bytes(8, "big"),
            ]
            link_parts.extend(_field(b"\x22", _key_value(k, v)) for k, v in (link.attributes or {}).items())
            if link.dropped_attributes:
                link_parts.append(b"\x28" + _varint(link.dropped_attributes))
            link_parts.append(b"\x35" + _PACK_I(0x300 if link_context.is_remote else 0x100))
            parts.append(_field(b"\x6a", b"".join(link_parts)))
        dropped = span.dropped_links
        if dropped:
            parts.append(b"\x70" + _varint(dropped))
        status_parts = b""
        if status.description:
            status_parts = _field(b"\x12", status.description.encode("utf-8"))
        code = status.status_code.value
        if code:
            status_parts += b"\x18" + _varint(code)
        parts.append(_field(b"\x7a", status_parts))
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return _field(b"\x12", b"".join(parts))

    def encode(self, spans: Sequence[Any]) -> bytes:
        """ExportTraceServiceRequest bytes for `spans` (what the SDK's encode_spans serializes to)."""
        out = []
        for resource, scopes in group_spans(spans, self._span):
            scope_spans = []
            for scope, encoded_spans in scopes.items():
                scope_parts = [_field(b"\x0a", self._scope(scope)), *encoded_spans]
                schema_url = scope.schema_url if scope is not None else None
                if schema_url:
                    scope_parts.append(_field(b"\x1a", schema_url.encode("utf-8")))
                scope_spans.append(_field(b"\x12", b"".join(scope_parts)))
            resource_parts = [_field(b"\x0a", self._resource(resource)), *scope_spans]
            if resource.schema_url:
                resource_parts.append(_field(b"\x1a", resource.schema_url.encode("utf-8")))
            out.append(_field(b"\x0a", b"".join(resource_parts)))
        return b"".join(out)
