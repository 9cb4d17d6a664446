"""The OTLP receiver decodes what the real OpenTelemetry SDK exporters send, over gRPC and HTTP."""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

import grpc
import pytest
from harness.otlp_receiver import Mode, OtlpReceiver, ReceivedSpan, SpanEvent, Transport
from harness.processes import run
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

SECRET = "leak-marker-7f3a9c"
RESOURCE = Resource.create({"service.name": "harness-test", "deployment.environment": "test"})
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def span_exporter(kind: Transport, rx: OtlpReceiver, timeout: float = 5) -> SpanExporter:
    if kind == "grpc":
        return GrpcSpanExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=timeout)
    return HttpSpanExporter(
        endpoint=rx.http_endpoint + "/v1/traces", timeout=timeout, compression=Compression.Gzip
    )


def emit_parent_and_child(exporter: SpanExporter) -> None:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("harness.tests", "1.2.3")
    with tracer.start_as_current_span("GET /patients/", kind=SpanKind.SERVER) as parent:
        parent.set_attributes(
            {
                "s": "text",
                "b": True,
                "i": 42,
                "f": 1.5,
                "ls": ["a", "b"],
                "lb": [True, False],
                "li": [1, 2, 3],
                "lf": [0.5, 2.0],
                "secret": SECRET,
            }
        )
        with tracer.start_as_current_span("SELECT hms_patient", kind=SpanKind.CLIENT) as child:
            child.set_attribute("db.system", "postgresql")
            child.add_event("cache.miss", {"key": "patient:1", "hit": False, "n": 3})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_spans_from_the_sdk_exporter_are_decoded(otlp_receiver: OtlpReceiver, transport: Transport) -> None:
    emit_parent_and_child(span_exporter(transport, otlp_receiver))

    [parent] = otlp_receiver.wait_for_spans(lambda s: s.name == "GET /patients/")
    [child] = otlp_receiver.wait_for_spans(lambda s: s.name == "SELECT hms_patient")
    assert len(otlp_receiver.spans()) == 2
    assert parent.transport == child.transport == transport
    assert parent.kind == "SPAN_KIND_SERVER" and child.kind == "SPAN_KIND_CLIENT"
    assert len(parent.trace_id) == 32 and len(parent.span_id) == 16
    assert parent.trace_id == parent.trace_id.lower() and int(parent.trace_id, 16)
    assert parent.parent_span_id == "" and parent.is_root
    assert child.parent_span_id == parent.span_id and child.trace_id == parent.trace_id
    assert parent.attributes == {
        "s": "text",
        "b": True,
        "i": 42,
        "f": 1.5,
        "ls": ["a", "b"],
        "lb": [True, False],
        "li": [1, 2, 3],
        "lf": [0.5, 2.0],
        "secret": SECRET,
    }
    assert type(parent.attributes["i"]) is int and type(parent.attributes["f"]) is float
    assert child.events == [("cache.miss", {"key": "patient:1", "hit": False, "n": 3})]
    assert child.events[0] == SpanEvent("cache.miss", {"key": "patient:1", "hit": False, "n": 3})
    assert (child.status_code, child.status_message) == ("STATUS_CODE_ERROR", "boom")
    assert parent.status_code == "STATUS_CODE_UNSET"
    assert 0 < child.duration_ns <= parent.duration_ns
    assert parent.start_time_unix_nano <= child.start_time_unix_nano
    assert parent.resource["service.name"] == "harness-test"
    assert parent.resource["deployment.environment"] == "test"
    assert parent.scope_name == "harness.tests" and parent.scope_version == "1.2.3"
    assert otlp_receiver.children_of(parent) == [child]
    assert otlp_receiver.descendants_of(parent) == [child]
    assert otlp_receiver.parent_of(child) == parent
    assert otlp_receiver.spans("SELECT hms_patient") == [child]
    assert otlp_receiver.request_counts()["ok"] == 2  # SimpleSpanProcessor: one request per span

    # Byte-level: the raw bodies (after gunzip for HTTP) hold the attribute bytes.
    payloads = otlp_receiver.raw_payloads(signal="traces", transport=transport)
    assert len(payloads) == 2
    assert any(SECRET.encode() in body for body in payloads)
    requests = otlp_receiver.requests()
    if transport == "http":
        assert {r.content_encoding for r in requests} == {"gzip"}
        assert {r.content_type for r in requests} == {"application/x-protobuf"}
    else:
        assert {r.content_type for r in requests} == {"application/grpc"}


def emit_metrics(exporter: MetricExporter) -> MeterProvider:
    """Record a few instruments and force one export; the caller shuts the provider down (which
    exports once more)."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("harness.meter")
    requests = meter.create_counter("hms.requests", unit="{request}", description="requests served")
    requests.add(2, {"route": "/patients/"})
    requests.add(1, {"route": "/patients/"})
    inflight = meter.create_up_down_counter("hms.inflight")
    inflight.add(5)
    inflight.add(-2)
    duration = meter.create_histogram("hms.duration", unit="ms")
    for value in (3.0, 12.0, 700.0):
        duration.record(value, {"route": "/x/"})
    meter.create_observable_gauge("hms.ratio", callbacks=[lambda _options: [Observation(0.25, {"k": "v"})]])
    assert provider.force_flush(10_000)
    return provider


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_metrics_from_the_sdk_exporter_are_decoded(otlp_receiver: OtlpReceiver, transport: Transport) -> None:
    exporter: MetricExporter = (
        GrpcMetricExporter(endpoint=otlp_receiver.grpc_endpoint, insecure=True, timeout=5)
        if transport == "grpc"
        else HttpMetricExporter(endpoint=otlp_receiver.http_endpoint + "/v1/metrics", timeout=5)
    )
    provider = emit_metrics(exporter)

    otlp_receiver.wait_for_metrics(lambda p: p.name == "hms.ratio")
    assert len(otlp_receiver.requests(signal="metrics")) == 1
    [counter] = otlp_receiver.metrics("hms.requests")
    assert (counter.type, counter.value, counter.is_monotonic) == ("sum", 3, True)
    assert counter.attributes == {"route": "/patients/"} and counter.unit == "{request}"
    assert counter.description == "requests served"
    assert counter.temporality == "AGGREGATION_TEMPORALITY_CUMULATIVE"
    assert counter.resource["service.name"] == "harness-test" and counter.scope_name == "harness.meter"
    assert counter.transport == transport
    [updown] = otlp_receiver.metrics("hms.inflight")
    assert (updown.type, updown.value, updown.is_monotonic) == ("sum", 3, False)
    [hist] = otlp_receiver.metrics("hms.duration")
    assert (hist.type, hist.count, hist.sum, hist.min, hist.max) == ("histogram", 3, 715.0, 3.0, 700.0)
    assert hist.unit == "ms" and hist.value is None
    assert sum(hist.bucket_counts) == 3 and len(hist.bucket_counts) == len(hist.explicit_bounds) + 1
    [gauge] = otlp_receiver.metrics("hms.ratio")
    assert (gauge.type, gauge.value, gauge.attributes, gauge.temporality) == ("gauge", 0.25, {"k": "v"}, "")
    provider.shutdown()


# --- OTLP/JSON and hand-made requests ------------------------------------------------------------


def one_span_request(name: str = "json-span") -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="j")))
    span = rs.scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    span.span_id = bytes.fromhex("b7ad6b7169203331")
    span.parent_span_id = bytes.fromhex("00f067aa0ba902b7")
    span.name = name
    span.kind = trace_pb2.Span.SPAN_KIND_INTERNAL
    span.attributes.append(KeyValue(key="kv", value=AnyValue(bytes_value=b"\x00\x01")))
    return request


def post(
    url: str, body: bytes, content_type: str, encoding: str = "", timeout: float = 5
) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_otlp_json_with_hex_ids(otlp_receiver: OtlpReceiver) -> None:
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "j"}}]},
                    "scopeSpans": [
                        {
                            "scope": {"name": "s"},
                            "spans": [
                                {
                                    "traceId": "0af7651916cd43dd8448eb211c80319c",
                                    "spanId": "b7ad6b7169203331",
                                    "parentSpanId": "00f067aa0ba902b7",
                                    "name": "json-span",
                                    "kind": 3,
                                    "startTimeUnixNano": "1000",
                                    "endTimeUnixNano": "2000",
                                    "attributes": [
                                        {"key": "n", "value": {"intValue": "7"}},
                                        {
                                            "key": "a",
                                            "value": {"arrayValue": {"values": [{"doubleValue": 1.5}]}},
                                        },
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()
    status, response = post(
        otlp_receiver.http_endpoint + "/v1/traces", gzip.compress(body), "application/json", "gzip"
    )
    assert status == 200 and json.loads(response) == {}
    [span] = otlp_receiver.spans()
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "00f067aa0ba902b7",
    )
    assert (span.kind, span.attributes, span.duration_ns) == ("SPAN_KIND_CLIENT", {"n": 7, "a": [1.5]}, 1000)
    assert otlp_receiver.raw_payloads() == [body]


def test_undecodable_and_unknown_requests(otlp_receiver: OtlpReceiver) -> None:
    url = otlp_receiver.http_endpoint
    assert post(url + "/v1/traces", b"\xff\xff\xff", "application/x-protobuf")[0] == 400
    assert post(url + "/v1/nope", b"", "application/x-protobuf")[0] == 404
    assert post(url + "/v1/traces", b"", "text/plain")[0] == 415
    [bad] = otlp_receiver.requests()
    assert bad.message is None and bad.decode_error
    assert otlp_receiver.spans() == []
    with pytest.raises(AssertionError, match="undecodable http traces request"):
        otlp_receiver.wait_for_spans(timeout=0.05)


def test_wait_for_spans_failure_lists_what_arrived(otlp_receiver: OtlpReceiver) -> None:
    emit_parent_and_child(span_exporter("http", otlp_receiver))
    with pytest.raises(AssertionError) as info:
        otlp_receiver.wait_for_spans(lambda s: s.attributes["db.system"] == "redis", timeout=0.2)
    message = str(info.value)
    assert "timed out after 0.2s waiting for 1 span(s) matching" in message
    assert 's.attributes["db.system"] == "redis"' in message  # the predicate's source
    assert "'GET /patients/' [SERVER]" in message
    assert "  - 'SELECT hms_patient' [CLIENT ERROR]" in message  # indented under its parent
    assert "KeyError" in message  # the predicate raised on the parent span: a non-match, reported


def test_wait_for_spans_returns_as_soon_as_enough_arrive(otlp_receiver: OtlpReceiver) -> None:
    def later() -> None:
        time.sleep(0.2)
        emit_parent_and_child(span_exporter("grpc", otlp_receiver))

    thread = threading.Thread(target=later)
    thread.start()
    t0 = time.monotonic()
    spans = otlp_receiver.wait_for_spans(count=2, timeout=10)
    assert time.monotonic() - t0 < 5 and len(spans) == 2
    thread.join()
    otlp_receiver.clear()
    assert otlp_receiver.spans() == [] and otlp_receiver.requests() == []
    assert sum(otlp_receiver.request_counts().values()) == 0


# --- fault modes ---------------------------------------------------------------------------------


@pytest.fixture
def grpc_export(otlp_receiver: OtlpReceiver) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    channel = grpc.insecure_channel(f"127.0.0.1:{otlp_receiver.grpc_port}")
    yield channel.unary_unary(
        TRACE_EXPORT,
        request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
        response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
    )
    channel.close()


@pytest.mark.parametrize(
    ("mode", "grpc_code", "http_status"),
    [
        ("ok", grpc.StatusCode.OK, 200),
        ("unavailable", grpc.StatusCode.UNAVAILABLE, 503),
        ("error", grpc.StatusCode.INTERNAL, 500),
        ("reject", grpc.StatusCode.INVALID_ARGUMENT, 400),
    ],
)
def test_fault_modes_answer_as_specified(
    otlp_receiver: OtlpReceiver,
    grpc_export: grpc.UnaryUnaryMultiCallable,
    mode: Mode,
    grpc_code: grpc.StatusCode,
    http_status: int,
) -> None:
    otlp_receiver.set_mode(mode)
    request = one_span_request()
    try:
        grpc_export(request, timeout=5)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
    assert code == grpc_code
    status, _ = post(
        otlp_receiver.http_endpoint + "/v1/traces", request.SerializeToString(), "application/x-protobuf"
    )
    assert status == http_status
    assert otlp_receiver.request_counts()[mode] == 2
    assert len(otlp_receiver.raw_payloads()) == 2  # kept whatever the answer
    assert len(otlp_receiver.spans()) == (2 if mode == "ok" else 0)


def test_stall_holds_requests_until_released(
    otlp_receiver: OtlpReceiver, grpc_export: grpc.UnaryUnaryMultiCallable
) -> None:
    otlp_receiver.set_mode("stall")
    with pytest.raises(grpc.RpcError) as info:
        grpc_export(one_span_request(), timeout=0.15)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(TimeoutError):
        post(
            otlp_receiver.http_endpoint + "/v1/traces",
            one_span_request().SerializeToString(),
            "application/x-protobuf",
            timeout=0.15,
        )
    assert otlp_receiver.request_counts()["stall"] == 2

    # A stalled request is answered 'unavailable' once the mode changes.
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(
            post(
                otlp_receiver.http_endpoint + "/v1/traces",
                one_span_request().SerializeToString(),
                "application/x-protobuf",
                timeout=10,
            )[0]
        )
    )
    thread.start()
    otlp_receiver.wait_for_requests(count=3, mode="stall", timeout=5)
    otlp_receiver.set_mode("ok")
    thread.join(5)
    assert results == [503]
    assert otlp_receiver.spans() == []


def test_stop_is_bounded_while_a_request_stalls(otlp_receiver: OtlpReceiver) -> None:
    otlp_receiver.set_mode("stall")
    errors: list[BaseException] = []

    def client() -> None:
        try:
            post(otlp_receiver.http_endpoint + "/v1/traces", b"", "application/x-protobuf", timeout=10)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    otlp_receiver.wait_for_requests(mode="stall", timeout=5)
    t0 = time.monotonic()
    otlp_receiver.stop()
    assert time.monotonic() - t0 < 2
    thread.join(5)
    assert not thread.is_alive()


def finished_spans() -> Sequence[ReadableSpan]:
    memory = InMemorySpanExporter()
    emit_parent_and_child(memory)
    return memory.get_finished_spans()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_exporter_fails_fast_on_reject(otlp_receiver: OtlpReceiver, transport: Transport) -> None:
    otlp_receiver.set_mode("reject")
    exporter = span_exporter(transport, otlp_receiver, timeout=10)
    t0 = time.monotonic()
    assert exporter.export(finished_spans()) == SpanExportResult.FAILURE
    assert time.monotonic() - t0 < 3  # not retried
    exporter.shutdown()
    assert otlp_receiver.request_counts()["reject"] == 1


def test_restart_on_the_same_ports(otlp_receiver: OtlpReceiver) -> None:
    ports = (otlp_receiver.grpc_port, otlp_receiver.http_port)
    otlp_receiver.stop()
    with pytest.raises(urllib.error.URLError):
        post(otlp_receiver.http_endpoint + "/v1/traces", b"", "application/x-protobuf", timeout=1)
    otlp_receiver.start()
    assert (otlp_receiver.grpc_port, otlp_receiver.http_port) == ports
    emit_parent_and_child(span_exporter("grpc", otlp_receiver))
    assert len(otlp_receiver.wait_for_spans(count=2)) == 2
    assert all(isinstance(s, ReceivedSpan) for s in otlp_receiver.spans())


CHILD_EXPORT = """
import os, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
if os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
with provider.get_tracer("child").start_as_current_span("from-child"):
    pass
provider.shutdown()
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_endpoints_work_as_otel_exporter_otlp_endpoint(otlp_receiver: OtlpReceiver, protocol: str) -> None:
    endpoint = otlp_receiver.grpc_endpoint if protocol == "grpc" else otlp_receiver.http_endpoint
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    run([sys.executable, "-c", CHILD_EXPORT], env=env, timeout=60, check=True)
    [span] = otlp_receiver.wait_for_spans(timeout=5)
    assert span.name == "from-child" and span.transport == protocol.split("/")[0]
