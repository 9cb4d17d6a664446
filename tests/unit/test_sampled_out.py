"""pipeline.DetectingSampler: where head sampling drops a request, its spans are recorded (for
detection) but not sampled; an owner with findings is exported alone (the e2e side:
tests/e2e/test_sampled_out.py)."""

from __future__ import annotations

import dataclasses

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from hms_otel_agent import config, pipeline

NEVER = {"traces_sampler": "parentbased_traceidratio", "traces_sampler_arg": 0.0}


def settings(**changes: object) -> config.Settings:
    return dataclasses.replace(config.load({}).settings, live_log=False, **changes)


def provider(**changes: object) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=pipeline._sampler(settings(**changes)))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def test_a_dropped_request_is_recorded_not_sampled_with_its_attributes_and_children() -> None:
    tracer_provider, exporter = provider(**NEVER)
    tracer = tracer_provider.get_tracer("t")
    with (
        tracer.start_as_current_span("GET x", kind=SpanKind.SERVER, attributes={"http.route": "x/"}) as root,
        tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as child,
    ):
        assert child.is_recording() and not child.get_span_context().trace_flags.sampled
    assert root.is_recording() is False  # ended
    assert not root.get_span_context().trace_flags.sampled
    assert root.attributes["http.route"] == "x/"  # type: ignore[attr-defined]
    assert exporter.get_finished_spans() == ()  # recorded for detection only


def test_under_an_unsampled_remote_parent_the_default_sampler_records_too() -> None:
    tracer_provider, _ = provider()
    remote = SpanContext(0xABC, 0x123, is_remote=True, trace_flags=TraceFlags(0))
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    span = tracer_provider.get_tracer("t").start_span("GET x", context=parent, kind=SpanKind.SERVER)
    assert span.is_recording() and not span.get_span_context().trace_flags.sampled
    span.end()


def test_sampled_requests_always_off_and_the_switch_keep_their_meaning() -> None:
    tracer_provider, exporter = provider(traces_sampler="parentbased_traceidratio", traces_sampler_arg=1.0)
    with tracer_provider.get_tracer("t").start_as_current_span("GET x") as span:
        assert span.get_span_context().trace_flags.sampled
    assert len(exporter.get_finished_spans()) == 1
    for changes in ({"traces_sampler": "always_off"}, {**NEVER, "detect_sampled_out": False}):
        tracer_provider, exporter = provider(**changes)
        span = tracer_provider.get_tracer("t").start_span("GET x")
        assert not span.is_recording(), changes
    # A child of a local span nobody records (its parent dropped without the agent's sampler).
    sampler = pipeline.DetectingSampler(sampling.ParentBased(sampling.ALWAYS_OFF))
    local = trace.set_span_in_context(NonRecordingSpan(SpanContext(1, 2, is_remote=False)))
    result = sampler.should_sample(local, 1, "SELECT")
    assert result.decision is sampling.Decision.DROP
    assert "ParentBased" in sampler.get_description()
