"""Batching as the SDK does it: a full batch wakes the export thread, which then exports full
batches only; a partial batch waits for the schedule delay, a flush or shutdown. And the OTLP/HTTP
session skips requests' per-request environment lookups only when nothing in the environment
could change what they find."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hms_otel_agent.export import resilient
from hms_otel_agent.export.batch import BoundedBatchSpanProcessor


class Recording(SpanExporter):
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock:
            self.batches.append(len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def wait_for(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def end_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("test")
    for i in range(count):
        tracer.start_span(f"s{i}").end()


def test_a_size_wake_up_exports_full_batches_and_leaves_the_tail_for_the_timer() -> None:
    exporter = Recording()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=10, schedule_delay_ms=600_000
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        end_spans(provider, 25)
        wait_for(lambda: sum(exporter.batches) >= 20)
        time.sleep(0.1)  # give a (wrong) partial export the chance to happen
        assert exporter.batches == [10, 10]
        assert batch.queue_length == 5
        assert batch.force_flush(5000)
        assert exporter.batches == [10, 10, 5]
        assert batch.queue_length == 0
    finally:
        batch.shutdown(1000)


def test_the_timer_exports_a_partial_batch() -> None:
    exporter = Recording()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=100, schedule_delay_ms=50
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        end_spans(provider, 7)
        wait_for(lambda: sum(exporter.batches) == 7)
        assert exporter.batches == [7]
    finally:
        batch.shutdown(1000)


def test_shutdown_exports_the_partial_batch() -> None:
    exporter = Recording()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=100, schedule_delay_ms=600_000
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    end_spans(provider, 3)
    batch.shutdown(5000)
    assert exporter.batches == [3]
    assert batch.dropped_spans == 0


def test_after_fork_the_child_starts_empty_with_its_own_worker() -> None:
    exporter = Recording()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=100, schedule_delay_ms=600_000
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        end_spans(provider, 3)
        parent_worker = batch._worker
        batch._start_worker()  # what the at-fork handler runs in the child
        assert batch.queue_length == 0 and batch._worker is not parent_worker and batch._worker.is_alive()
        end_spans(provider, 2)
        assert batch.force_flush(5000)
        assert exporter.batches == [2]
    finally:
        batch.shutdown(1000)


@pytest.mark.parametrize(
    ("variable", "endpoint", "plain"),
    [
        (None, "http://collector:4318/v1/traces", True),
        ("HTTPS_PROXY", "http://collector:4318/v1/traces", False),
        ("http_proxy", "http://collector:4318/v1/traces", False),
        ("NO_PROXY", "http://collector:4318/v1/traces", False),
        ("ALL_PROXY", "http://collector:4318/v1/traces", False),
        ("socks_proxy", "http://collector:4318/v1/traces", False),
        ("NETRC", "http://collector:4318/v1/traces", False),
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "http://collector:4318/v1/traces", False),
        ("REQUESTS_CA_BUNDLE", "https://collector:4318/v1/traces", False),
        ("CURL_CA_BUNDLE", "https://collector:4318/v1/traces", False),
        ("REQUESTS_CA_BUNDLE", "http://collector:4318/v1/traces", True),  # no TLS: no CA bundle
        (None, "https://collector:4318/v1/traces", True),
    ],
)
def test_the_export_session_trusts_the_environment_whenever_it_configures_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path, variable: str | None, endpoint: str, plain: bool
) -> None:
    import os

    for name in list(os.environ):
        lowered = name.lower()
        if (
            lowered.endswith("_proxy")
            or lowered in ("netrc", "requests_ca_bundle", "curl_ca_bundle")
            or ("credential_provider" in lowered)
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    if variable is not None:
        monkeypatch.setenv(variable, "x")
    session = resilient.plain_http_session(endpoint)
    if plain:
        assert session is not None and session.trust_env is False
    else:
        assert session is None


def test_a_netrc_file_keeps_the_default_session(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import os

    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.lower() == "netrc":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine collector login u password p\n")
    assert resilient.plain_http_session("http://collector:4318/v1/traces") is None


def test_the_timer_exports_what_was_queued_not_what_ends_meanwhile() -> None:
    provider = TracerProvider()

    class EndsSpansWhileExporting(Recording):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if not self.batches:
                batch._delay_s = 600.0  # no further timer during the test
                end_spans(provider, 3)  # ended while the first export runs
            return super().export(spans)

    exporter = EndsSpansWhileExporting()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=100, schedule_delay_ms=50
    )
    provider.add_span_processor(batch)
    try:
        end_spans(provider, 7)
        wait_for(lambda: bool(exporter.batches))
        time.sleep(0.2)  # a drain-until-empty export loop would post the 3 now
        assert exporter.batches == [7]
        assert batch.queue_length == 3
        assert batch.force_flush(5000)
        assert exporter.batches == [7, 3]
    finally:
        batch.shutdown(1000)


def test_an_exporter_that_raised_is_replaced_at_the_next_export() -> None:
    """A wrapped exporter that raises (a gRPC channel left broken, say) is not used again: the
    next batch goes through a new one, and the failure is counted once."""
    built: list[_Broken] = []

    class _Broken(SpanExporter):
        def __init__(self) -> None:
            self.shut_down = False

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self is built[0]:
                raise AttributeError("stale channel")
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self.shut_down = True

    def factory() -> SpanExporter:
        built.append(_Broken())
        return built[-1]

    exporter = resilient.ResilientSpanExporter(factory, "http://127.0.0.1:9")
    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("s")
    span.end()
    assert exporter.export([span]) is SpanExportResult.FAILURE
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert len(built) == 2 and built[0].shut_down and not built[1].shut_down
    assert exporter.health.failed_batches == 1
