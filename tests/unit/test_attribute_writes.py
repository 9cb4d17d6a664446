"""The agent's attribute writes (instrument/sdk_internals.set_attributes) leave a span exactly as
Span.set_attributes does: values, order, dropped counts, limits, ended spans, odd values."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from hms_otel_agent.instrument.sdk_internals import set_attributes


def two_spans(limits: SpanLimits | None = None, initial: dict[str, Any] | None = None) -> tuple[Any, Any]:
    tracer = TracerProvider(span_limits=limits or SpanLimits()).get_tracer("t")
    return tracer.start_span("a", attributes=initial), tracer.start_span("b", attributes=initial)


def same(a: Any, b: Any) -> None:
    assert list(a.attributes.items()) == list(b.attributes.items())
    assert a.dropped_attributes == b.dropped_attributes


_values = (
    st.text(max_size=5)
    | st.integers()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.none()
    | st.lists(st.text(max_size=3), max_size=2)
    | st.binary(max_size=3)
)
_keys = st.sampled_from(["a", "b", "c", "d", "e", "hms.db.fingerprint", ""])


@settings(max_examples=300, deadline=None)
@given(
    initial=st.dictionaries(st.sampled_from(["a", "b", "x"]), st.text(max_size=3), max_size=3),
    writes=st.lists(st.dictionaries(_keys, _values, max_size=4), max_size=3),
    maxlen=st.none() | st.integers(1, 6),
    value_length=st.none() | st.integers(1, 4),
)
def test_the_same_as_set_attributes(initial, writes, maxlen, value_length) -> None:  # type: ignore[no-untyped-def]
    limits = SpanLimits(max_span_attributes=maxlen, max_attribute_length=value_length)
    ours, theirs = two_spans(limits, initial)
    for attributes in writes:
        set_attributes(ours, attributes)
        theirs.set_attributes(attributes)
        same(ours, theirs)


def test_an_ended_span_is_left_alone_with_the_sdks_warning(caplog: pytest.LogCaptureFixture) -> None:
    ours, _ = two_spans()
    ours.end()
    with caplog.at_level(logging.WARNING):
        set_attributes(ours, {"a": "1"})
    assert dict(ours.attributes) == {}
    assert "ended span" in caplog.text


def test_a_key_set_again_moves_to_the_end() -> None:
    ours, theirs = two_spans(initial={"a": "1", "b": "2"})
    set_attributes(ours, {"a": "3"})
    theirs.set_attributes({"a": "3"})
    same(ours, theirs)
    assert list(ours.attributes) == ["b", "a"]
