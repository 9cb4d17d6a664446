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


def findings_without_route(traced) -> int:  # type: ignore[no-untyped-def]
    points = traced.metric_points("hms.findings")
    return sum(p.value for p in points if p.attributes.get("http.route") == "unknown")


def test_a_sampled_out_owner_with_an_n_plus_one_exports_alone_and_counts(traced) -> None:  # type: ignore[no-untyped-def]
    from hms_otel_agent.sample.hms.models import Encounter

    tracer = traced.tracer_provider.get_tracer("tests.sampled_out")
    tracer.sampler = pipeline._sampler(settings(**NEVER))  # this tracer's spans: never sampled
    before = findings_without_route(traced)
    traced.clear()
    with tracer.start_as_current_span("nightly job") as owner:
        assert owner.is_recording() and not owner.get_span_context().trace_flags.sampled
        mrns = []
        # six different patients (other tests add encounters): an N+1, not a duplicate
        for encounter in Encounter.objects.order_by("patient_id", "id").distinct("patient_id")[:6]:
            mrns.append(encounter.patient.mrn)
    assert len(mrns) == 6
    [exported] = traced.spans()  # the owner alone: its 7 statements had no span of their own
    assert exported.name == "nightly job" and exported.attributes["hms.sampled_out"] is True
    assert exported.attributes["hms.db.query_count"] == 7
    [event] = [e for e in exported.events if e.name == "hms.n_plus_one"]
    assert event.attributes["hms.orm.relation"] == "hms.Encounter.patient"
    assert (
        event.attributes["code.function.name"]
        == test_a_sampled_out_owner_with_an_n_plus_one_exports_alone_and_counts.__name__
    )
    after = findings_without_route(traced)
    assert after >= before + 1  # (other tests may add findings of unrouted owners)


def test_a_sampled_out_owner_without_findings_exports_nothing(traced) -> None:  # type: ignore[no-untyped-def]
    from hms_otel_agent.sample.hms.models import Encounter

    tracer = traced.tracer_provider.get_tracer("tests.sampled_out")
    tracer.sampler = pipeline._sampler(settings(**NEVER))
    traced.clear()
    with tracer.start_as_current_span("nightly job"):
        assert len(list(Encounter.objects.select_related("patient").order_by("id")[:6])) == 6
    assert traced.spans() == []


def test_a_sampled_out_owners_cache_calls_count_without_spans(traced, redis_client) -> None:  # type: ignore[no-untyped-def]
    from django.core.cache import cache

    def reads(result: str) -> int:
        points = traced.metric_points("hms.cache.reads")
        return sum(
            p.value
            for p in points
            if p.attributes["http.route"] == "unknown" and p.attributes["hms.cache.result"] == result
        )

    tracer = traced.tracer_provider.get_tracer("tests.sampled_out")
    tracer.sampler = pipeline._sampler(settings(**NEVER))
    cache.set("sampled-out:1", "x")
    hits, misses = reads("hit"), reads("miss")
    traced.clear()
    with tracer.start_as_current_span("nightly job"):
        assert cache.get("sampled-out:1") == "x"
        assert cache.get("sampled-out:2") is None
        assert cache.get_many(["sampled-out:1", "sampled-out:3"]) == {"sampled-out:1": "x"}
    assert (reads("hit") - hits, reads("miss") - misses) == (2, 2)
    assert traced.spans() == []  # no findings: nothing exported


def test_building_a_pipeline_changes_nothing_outside_it_install_does_and_shutdown_gives_it_back() -> None:
    """pipeline.build has no process-wide effect (tests and the pytest plugin build their own);
    Pipeline.install points the sampled-out record sink at its processor and decides the fast
    paths; shutdown gives both back."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from hms_otel_agent.instrument import context, sdk_internals
    from hms_otel_agent.signals import cache_signals

    before_sink, before_fast, before_evidence = (
        context.detached_sink(),
        sdk_internals.fast_paths(),
        cache_signals.evidence,
    )
    built = pipeline.build(
        settings(detect_sampled_out=True, fast_paths=not before_fast),
        span_exporters=[],
        metric_readers=[InMemoryMetricReader()],
    )
    try:
        assert context.detached_sink() == before_sink
        assert sdk_internals.fast_paths() is before_fast
        assert cache_signals.evidence is before_evidence
        built.install()
        assert context.detached_sink() == built.signal_processor.record_detached
        assert sdk_internals.fast_paths() is (not before_fast)
        assert cache_signals.evidence is not before_evidence
    finally:
        built.shutdown(1000)
    assert context.detached_sink() == before_sink
    assert sdk_internals.fast_paths() is before_fast
