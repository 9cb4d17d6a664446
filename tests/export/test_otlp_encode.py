"""The agent's OTLP span encoder (export/otlp_encode.py) writes exactly what the SDK's encoder
builds: the bytes decode to an equal ExportTraceServiceRequest for spans of every shape."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from hms_otel_agent.export.otlp_encode import SpanEncoder
from hms_otel_agent.instrument import sdk_internals


def http_span_exporter_class() -> type:
    return sdk_internals.otlp_span_exporter_class("http/protobuf", SpanEncoder)


def grpc_span_exporter_class() -> type:
    return sdk_internals.otlp_span_exporter_class("grpc", SpanEncoder)


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def assert_same(spans: Sequence[ReadableSpan], encoder: SpanEncoder | None = None) -> None:
    expected = encode_spans(spans)
    encoded = (encoder or SpanEncoder()).encode(spans)
    assert encoded == expected.SerializeToString()  # the same bytes (fields in order, NaN too)
    assert ExportTraceServiceRequest.FromString(encoded).SerializeToString() == encoded


VALUES = {
    "str": "SELECT ? FROM t",
    "empty": "",
    "unicode": "Zoë — 患者",
    "true": True,
    "false": False,
    "zero": 0,
    "int": 42,
    "big": 2**62,
    "negative": -7,
    "float": 1.5,
    "nan": float("nan"),
    "strings": ("a", "b", ""),
    "ints": (1, -2, 3),
    "floats": (0.5, 2.0),
    "bools": (True, False),
    "empty_seq": (),
}


def spans_of_every_shape() -> list[ReadableSpan]:
    keep = Keep()
    resource = Resource({"service.name": "hms", "process.pid": 42, "x.list": ("a", "b")}, "https://schema/1")
    provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_span_attributes=30, max_events=3))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    plain = provider.get_tracer("plain")
    versioned = provider.get_tracer("versioned", "1.2.3", schema_url="https://schema/2", attributes={"a": 1})
    remote = SpanContext(
        0xABC, 0x123, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")])
    )
    from opentelemetry import trace

    with plain.start_as_current_span("GET /x", kind=SpanKind.SERVER, attributes=VALUES) as server:
        with versioned.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
            db.set_attributes({"db.statement": "SELECT 1", "code.line.number": 10})
        for i in range(5):  # more events than the limit: dropped_events_count
            server.add_event(f"hms.n_plus_one {i}", {"hms.hints": ["a", "b"], "n": i, "ok": True})
        server.add_event("no attributes")
        server.set_status(Status(StatusCode.ERROR, "boom"))
    with plain.start_as_current_span(
        "child of remote", context=trace.set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.CONSUMER
    ) as consumer:
        consumer.set_attribute("many", "x")
        for i in range(40):  # more attributes than the limit: dropped_attributes_count
            consumer.set_attribute(f"a{i}", i)
    links = [
        Link(remote, {"link.attr": "v"}),
        Link(SpanContext(0xDEF, 0x456, is_remote=False)),
    ]
    with plain.start_as_current_span("", links=links, kind=SpanKind.PRODUCER) as unnamed:
        unnamed.set_status(Status(StatusCode.OK))
    with plain.start_as_current_span("internal") as internal:
        internal.set_attribute("bytes", b"\x00\x01")
    return keep.spans


def test_spans_of_every_shape_encode_as_the_sdk_encodes_them(fence_mode: bool) -> None:
    """With the fast paths the encoder reads the spans' members, without them their public
    properties: the same bytes either way."""
    spans = spans_of_every_shape()
    assert any(s.dropped_attributes for s in spans) and any(s.dropped_events for s in spans)
    assert_same(spans)
    encoder = SpanEncoder()
    assert_same(spans, encoder)
    assert_same(spans, encoder)  # again, from the encoder's caches
    for span in spans:
        assert_same([span], encoder)


def test_resources_and_scopes_are_grouped_by_equality_in_order_of_appearance(fence_mode: bool) -> None:
    def span(resource: Resource, scope: InstrumentationScope | None, name: str) -> ReadableSpan:
        context = SpanContext(1, hash(name) & 0xFFFF or 1, is_remote=False)
        return ReadableSpan(
            name=name,
            context=context,
            resource=resource,
            instrumentation_scope=scope,
            attributes={"n": name},
            start_time=1,
            end_time=2,
        )

    a1, a2, b = (
        Resource({"service.name": "a"}),
        Resource({"service.name": "a"}),
        Resource({"service.name": "b"}),
    )
    s1, s2 = InstrumentationScope("one"), InstrumentationScope("one")
    s3 = InstrumentationScope("two", "1.0", "https://schema")
    spans = [span(a1, s1, "1"), span(b, s3, "2"), span(a2, s2, "3"), span(a1, None, "4"), span(b, s1, "5")]
    assert_same(spans)


def test_a_value_the_encoder_does_not_know_is_refused() -> None:
    span = ReadableSpan(
        name="x", context=SpanContext(1, 2, False), attributes={"weird": object()}, start_time=1
    )
    with pytest.raises(TypeError):
        SpanEncoder().encode([span])


def test_the_exporter_class_follows_the_switch(fence_mode: bool) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    for made, stock in ((http_span_exporter_class(), Http), (grpc_span_exporter_class(), Grpc)):
        assert issubclass(made, stock)
        assert (made is stock) is not fence_mode


def test_the_exporter_posts_what_the_encoder_writes() -> None:
    from harness.otlp_receiver import OtlpReceiver

    spans = spans_of_every_shape()
    with OtlpReceiver() as receiver:
        exporter = http_span_exporter_class()(endpoint=receiver.http_endpoint + "/v1/traces", timeout=5)
        try:
            assert exporter.export(spans).name == "SUCCESS"
            received = receiver.wait_for_spans(count=len(spans), timeout=10)
        finally:
            exporter.shutdown()
    assert sorted(s.name for s in received) == sorted(s.name for s in spans)


@pytest.mark.parametrize("gzip", [False, True])
def test_the_grpc_exporter_sends_what_the_encoder_writes(gzip: bool) -> None:
    from harness.otlp_receiver import OtlpReceiver
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import Compression

    spans = spans_of_every_shape()
    compression = Compression.Gzip if gzip else Compression.NoCompression
    with OtlpReceiver() as receiver:
        exporter = grpc_span_exporter_class()(
            endpoint=receiver.grpc_endpoint,
            insecure=True,
            timeout=5,
            compression=compression,
            headers={"x-tenant": "ward-7"},
        )
        try:
            assert exporter.export(spans).name == "SUCCESS"
            received = receiver.wait_for_spans(count=len(spans), timeout=10)
            [request] = receiver.requests("traces", "grpc")
            receiver.set_mode("reject")  # INVALID_ARGUMENT: not retried, the batch fails
            assert exporter.export(spans[:1]).name == "FAILURE"
        finally:
            exporter.shutdown()
    assert sorted(s.name for s in received) == sorted(s.name for s in spans)
    assert request.body == encode_spans(spans).SerializeToString()  # the agent's bytes, unchanged
    assert request.headers["x-tenant"] == "ward-7"


def test_the_grpc_exporter_retries_and_reconnects_as_the_sdks_does() -> None:
    import threading

    from harness.otlp_receiver import OtlpReceiver

    spans = spans_of_every_shape()
    with OtlpReceiver() as receiver:
        receiver.set_mode("unavailable")
        exporter = grpc_span_exporter_class()(endpoint=receiver.grpc_endpoint, insecure=True, timeout=10)
        timer = threading.Timer(0.3, receiver.set_mode, ("ok",))
        timer.start()
        try:
            assert exporter.export(spans).name == "SUCCESS"  # retried after UNAVAILABLE, on a new channel
        finally:
            timer.cancel()
            exporter.shutdown()
        assert receiver.request_counts()["unavailable"] >= 1
        assert len(receiver.spans()) == len(spans)


def test_the_grpc_exporter_encodes_an_unknown_value_as_the_sdk_does() -> None:
    from harness.otlp_receiver import OtlpReceiver

    span = ReadableSpan(
        name="x", context=SpanContext(1, 2, False), attributes={"n": 1, "weird": object()}, start_time=1
    )
    with OtlpReceiver() as receiver:
        exporter = grpc_span_exporter_class()(endpoint=receiver.grpc_endpoint, insecure=True, timeout=5)
        try:
            assert exporter.export([span]).name == "SUCCESS"
        finally:
            exporter.shutdown()
        [request] = receiver.requests("traces", "grpc")
    assert request.body == encode_spans([span]).SerializeToString()  # "weird" left out, as the SDK does


_scalars = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)
_values = (
    _scalars
    | st.lists(st.text(max_size=5), max_size=3).map(tuple)
    | st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3).map(tuple)
)


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=10), _values, max_size=8),
    name=st.text(max_size=10),
    times=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    ids=st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1)),
    remote=st.booleans(),
)
def test_any_attributes_encode_as_the_sdk_encodes_them(attributes, name, times, ids, remote) -> None:  # type: ignore[no-untyped-def]
    trace_id, span_id, parent_id = ids
    parent = SpanContext(trace_id, parent_id, is_remote=remote) if parent_id else None
    span = ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, is_remote=False),
        parent=parent,
        resource=Resource({"service.name": "x"}),
        attributes=attributes,
        kind=SpanKind.CLIENT,
        start_time=times[0],
        end_time=times[1],
    )
    assert_same([span])
