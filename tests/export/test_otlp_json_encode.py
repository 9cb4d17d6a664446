"""The local-file exporter's OTLP/JSON encoder (export/otlp_json_encode.py) writes exactly the
line the protobuf path wrote (``encode_spans`` -> ``MessageToDict`` -> hex ids -> ``json.dumps``),
for spans of every shape and for the sample app's own spans."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from export.test_otlp_encode import _values, spans_of_every_shape
from hms_otel_agent.export.otlp_json import TRACES_FILE, OtlpJsonFileSpanExporter, message_to_otlp_json
from hms_otel_agent.export.otlp_json_encode import SpanJsonEncoder


def assert_same(spans: Sequence[ReadableSpan], encoder: SpanJsonEncoder | None = None) -> None:
    expected = message_to_otlp_json(encode_spans(spans))
    assert (encoder or SpanJsonEncoder()).encode(spans) == expected


def test_spans_of_every_shape_encode_as_the_protobuf_path_wrote_them(fence_mode: bool) -> None:
    spans = spans_of_every_shape()
    assert any(s.dropped_attributes for s in spans) and any(s.links for s in spans)
    encoder = SpanJsonEncoder()
    assert_same(spans, encoder)
    assert_same(spans, encoder)  # again, from the encoder's caches
    for span in spans:
        assert_same([span], encoder)


def test_special_values() -> None:
    values = {
        "inf": float("inf"),
        "-inf": float("-inf"),
        "negzero": -0.0,
        "tiny": 5e-324,
        "big": 1e300,
        "control": 'a\x00b\n"\\\u2028',
        "none_in_seq": ("a", None),  # type: ignore[dict-item]
        "": "empty key",
        "bytes": b"\xff\x00",
        "mapping": {"k": 1, "n": {"x": "y"}},  # type: ignore[dict-item]
        "empty_mapping": {},  # type: ignore[dict-item]
    }
    span = ReadableSpan(
        name="x\ty",
        context=SpanContext(1, 2, False),
        resource=Resource({}),
        attributes=values,
        start_time=1,
        end_time=2,
    )
    assert_same([span])


def test_a_value_the_encoder_does_not_know_is_refused_and_the_exporter_falls_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    span = ReadableSpan(
        name="x", context=SpanContext(1, 2, False), attributes={"n": 1, "weird": object()}, start_time=1
    )
    with pytest.raises(TypeError):
        SpanJsonEncoder().encode([span])
    good = ReadableSpan(name="y", context=SpanContext(1, 3, False), attributes={"n": 1}, start_time=1)
    exporter = OtlpJsonFileSpanExporter(str(tmp_path))
    exporter.export([good, span])  # the SDK's encoder logs and leaves the attribute out
    [line] = (tmp_path / TRACES_FILE).read_text().splitlines()
    assert line == message_to_otlp_json(encode_spans([good, span]))
    assert '"weird"' not in line and line.count('"key":"n"') == 2


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.dictionaries(st.text(max_size=10), _values, max_size=8),
    name=st.text(max_size=10),
    times=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    ids=st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1)),
    remote=st.booleans(),
    kind=st.sampled_from(list(SpanKind)),
)
def test_any_attributes_encode_as_the_protobuf_path_wrote_them(  # type: ignore[no-untyped-def]
    attributes, name, times, ids, remote, kind
) -> None:
    trace_id, span_id, parent_id = ids
    parent = SpanContext(trace_id, parent_id, is_remote=remote) if parent_id else None
    span = ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, is_remote=False),
        parent=parent,
        resource=Resource({"service.name": "x"}),
        attributes=attributes,
        kind=kind,
        start_time=times[0],
        end_time=times[1],
    )
    assert_same([span])


SAMPLE_PAGES = (
    "/encounters/",
    "/encounters/optimized/",
    "/patients/cached/",
    "/stats/",
    "/patients/1/summary/",
    "/patients/search/?q=smith",
    "/boom/",
    "/clinic/",
)


def test_the_sample_apps_spans_encode_as_the_protobuf_path_wrote_them(traced, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    client = Client(raise_request_exception=False)
    for path in SAMPLE_PAGES:
        client.get(path)
    spans = traced.spans()
    assert len(spans) > 100
    assert any(s.events for s in spans) and any(s.kind is SpanKind.CLIENT for s in spans)
    encoder = SpanJsonEncoder()
    assert_same(spans, encoder)
    assert_same(spans, encoder)
    exporter = OtlpJsonFileSpanExporter(str(tmp_path))
    exporter.export(spans)
    [line] = (tmp_path / TRACES_FILE).read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == json.loads(message_to_otlp_json(encode_spans(spans)))
    assert os.stat(tmp_path / TRACES_FILE).st_size == len(line.encode("utf-8")) + 1
