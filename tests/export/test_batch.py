"""The export path in-process (export/batch.py, export/resilient.py): a bounded queue, every
dropped span counted by reason, one warning then periodic summaries, a shutdown that keeps its
deadline, and the agent metrics. Batching as the SDK does it: a full batch wakes the export
thread, which then exports full batches only; a partial batch waits for the schedule delay, a
flush or shutdown. And the OTLP/HTTP session skips requests' per-request environment lookups
only when nothing in the environment could change what they find."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

import pytest
from harness.otlp_receiver import OtlpReceiver
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hms_otel_agent import config, guard, pipeline
from hms_otel_agent.export import resilient
from hms_otel_agent.export.batch import BoundedBatchSpanProcessor


class StallingExporter(SpanExporter):
    """Blocks every export until released, like a backend that accepted and never answered."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0
        self.calls = 0
        self.received = 0  # spans handed to export (held while stalled)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.received += len(spans)
        self.release.wait(30)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class FailingExporter(SpanExporter):
    def __init__(self, raises: bool) -> None:
        self.raises = raises

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.raises:
            raise OSError("backend exploded")
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def make_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("test")
    for i in range(count):
        tracer.start_span(f"s{i}").end()


def test_queue_never_exceeds_its_size_and_every_drop_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    exporter = StallingExporter()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=100, max_export_batch_size=10, schedule_delay_ms=1
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        with caplog.at_level(logging.WARNING, logger="hms_otel"):
            threads = [threading.Thread(target=make_spans, args=(provider, 2500)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        # 10 000 spans ended while the exporter holds one batch of 10: at most 100 wait.
        assert batch.max_queue_length <= 100
        assert batch.queue_length <= 100
        assert exporter.calls == 1 and exporter.received <= 10  # the worker is stuck in one export
        assert batch.dropped["queue_full"] + batch.queue_length + exporter.received == 10_000
        warnings = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once, not once per span
        assert "hms.agent.dropped_spans" in warnings[0]
    finally:
        exporter.release.set()
        batch.shutdown(timeout_millis=5000)


def test_drops_are_summarized_periodically(caplog: pytest.LogCaptureFixture) -> None:
    exporter = StallingExporter()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=5, max_export_batch_size=5, schedule_delay_ms=10
    )
    batch.drop_summary_interval_s = 0.2
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        with caplog.at_level(logging.WARNING, logger="hms_otel"):
            make_spans(provider, 50)
            time.sleep(0.3)
            make_spans(provider, 50)  # a drop after the interval: a summary line
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(
                "dropped in the last" in r.getMessage() for r in caplog.records
            ):
                time.sleep(0.05)
        summaries = [r.getMessage() for r in caplog.records if "dropped in the last" in r.getMessage()]
        assert summaries, [r.getMessage() for r in caplog.records]
        assert "because the export queue was full" in summaries[0]
    finally:
        exporter.release.set()
        batch.shutdown(timeout_millis=5000)


@pytest.mark.parametrize("raises", [False, True], ids=["failure-result", "exception"])
def test_failed_exports_are_counted(raises: bool) -> None:
    guard.reset_for_tests()
    batch = BoundedBatchSpanProcessor(FailingExporter(raises), max_queue_size=1000, schedule_delay_ms=5000)
    provider = TracerProvider()
    provider.add_span_processor(batch)
    make_spans(provider, 30)
    batch.force_flush(5000)
    assert batch.dropped == {"queue_full": 0, "export_failed": 30, "shutdown": 0}
    batch.shutdown(1000)
    if raises:
        assert guard.error_counts() == {"traces exporter": 1}


def test_shutdown_keeps_its_deadline_and_counts_what_is_left() -> None:
    exporter = StallingExporter()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=10, schedule_delay_ms=1
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    make_spans(provider, 200)
    deadline = time.monotonic() + 5
    while exporter.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    batch.shutdown(timeout_millis=300)
    took = time.monotonic() - started
    assert took < 2.0  # the exporter would block for 30 s
    assert batch.dropped["shutdown"] == 200 - exporter.received
    assert batch.queue_length == 0
    exporter.release.set()


def test_force_flush_past_its_deadline_keeps_the_spans() -> None:
    exporter = StallingExporter()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=10, schedule_delay_ms=60_000
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    make_spans(provider, 50)
    flusher = threading.Thread(target=batch.force_flush, args=(200,))
    flusher.start()
    time.sleep(0.3)  # the first batch is stuck in the exporter; the flush gives up
    exporter.release.set()
    flusher.join(5)
    assert batch.dropped_spans == 0
    assert batch.force_flush(5000)
    assert exporter.exported == 50
    batch.shutdown(1000)


def test_agent_metrics_report_drops_by_reason_and_errors_by_component() -> None:
    guard.reset_for_tests()
    reader = InMemoryMetricReader()
    settings = config.replace(config.load({}).settings, live_log=False, bsp_max_queue_size=5)
    built = pipeline.build(
        settings, span_exporters=[("failing", FailingExporter(False))], metric_readers=[reader]
    ).install()
    try:
        tracer = built.tracer_provider.get_tracer("test")
        for i in range(20):
            tracer.start_span(f"s{i}").end()
        built.force_flush(5000)
        try:
            raise KeyError("MRN-000123")
        except KeyError as exc:
            guard.report("test component", exc)
        points = metric_points(reader)
        dropped = {p[0]["hms.reason"]: p[1] for p in points["hms.agent.dropped_spans"]}
        # Every span is accounted for: rejected by the full queue or failed by the exporter.
        assert dropped["queue_full"] + dropped["export_failed"] == 20
        assert dropped["queue_full"] > 0 and dropped["export_failed"] >= 5 and dropped["shutdown"] == 0
        errors = {p[0]["hms.component"]: p[1] for p in points["hms.agent.errors"]}
        assert errors == {"test component": 1}
    finally:
        built.shutdown(1000)


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, object], float]]]:
    found: dict[str, list[tuple[dict[str, object], float]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), point.value))
    return found


def test_internal_error_log_names_the_place_never_the_message(caplog: pytest.LogCaptureFixture) -> None:
    guard.reset_for_tests()

    def agent_code(key: str) -> int:
        return int(key)  # ValueError: invalid literal for int() with base 10: 'Okafor'

    with caplog.at_level(logging.WARNING, logger="hms_otel"):
        try:
            agent_code("Okafor")
        except ValueError as exc:
            guard.report("some hook", exc)
    [line] = [r.getMessage() for r in caplog.records]
    assert "Okafor" not in line
    assert "internal error in some hook (ValueError at " in line and "in agent_code" in line


def thread_cpu_ticks(native_id: int | None) -> int:
    """User + system CPU time of one thread of this process, in clock ticks (Linux)."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_zero_schedule_delay_exports_at_once_without_spinning() -> None:
    exported: list[int] = []

    class Recording(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            exported.append(len(spans))
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    batch = BoundedBatchSpanProcessor(Recording(), schedule_delay_ms=0)
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        if os.path.exists(f"/proc/self/task/{batch._worker.native_id}/stat"):
            before = thread_cpu_ticks(batch._worker.native_id)
            time.sleep(0.3)  # idle: the worker thread must sleep, not poll
            assert thread_cpu_ticks(batch._worker.native_id) - before <= 3  # 1 tick = 10 ms
        make_spans(provider, 3)
        deadline = time.monotonic() + 5
        while sum(exported) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(exported) == 3
    finally:
        batch.shutdown(1000)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize(
    ("variables", "bounded"),
    [
        ({"OTEL_BSP_EXPORT_TIMEOUT": "500"}, True),
        ({"OTEL_BSP_EXPORT_TIMEOUT": "500", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "400"}, True),
        ({"OTEL_BSP_EXPORT_TIMEOUT": "0", "OTEL_EXPORTER_OTLP_TIMEOUT": "60000"}, False),
    ],
)
def test_one_span_export_ends_within_the_bsp_export_timeout(
    otlp_receiver: OtlpReceiver, protocol: str, variables: dict[str, str], bounded: bool
) -> None:
    """OTEL_BSP_EXPORT_TIMEOUT bounds one export against a backend that accepts and never answers
    (the OTLP timeout, 60 s, would be longer); 0 leaves the OTLP timeout alone."""
    otlp_receiver.set_mode("stall")
    endpoint = otlp_receiver.grpc_endpoint if protocol == "grpc" else otlp_receiver.http_endpoint
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
        **variables,
    }
    settings = config.load(environ).settings
    exporter = pipeline._otlp_span_exporter(settings)
    provider = TracerProvider()
    spans: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    make_spans(provider, 1)
    done = threading.Event()
    result: list[SpanExportResult] = []

    def export() -> None:
        result.append(exporter.export(spans))
        done.set()

    threading.Thread(target=export, daemon=True).start()
    try:
        # Generous against a loaded machine; the unbounded case would wait 60 s.
        assert done.wait(15) is bounded
        if bounded:
            assert result == [SpanExportResult.FAILURE]
    finally:
        otlp_receiver.set_mode("ok")  # releases the stalled request
        done.wait(15)
        exporter.shutdown()


# --- batching -----------------------------------------------------------------------------------


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


def test_a_size_wake_up_exports_full_batches_and_leaves_the_tail_for_the_timer() -> None:
    exporter = Recording()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=10, schedule_delay_ms=600_000
    )
    provider = TracerProvider()
    provider.add_span_processor(batch)
    try:
        make_spans(provider, 25)
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
        make_spans(provider, 7)
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
    make_spans(provider, 3)
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
        make_spans(provider, 3)
        parent_worker = batch._worker
        batch._start_worker()  # what the at-fork handler runs in the child
        assert batch.queue_length == 0 and batch._worker is not parent_worker and batch._worker.is_alive()
        make_spans(provider, 2)
        assert batch.force_flush(5000)
        assert exporter.batches == [2]
    finally:
        batch.shutdown(1000)


@pytest.mark.parametrize(
    ("variable", "endpoint", "trust_env"),
    [
        (None, "http://collector:4318/v1/traces", False),
        ("HTTPS_PROXY", "http://collector:4318/v1/traces", None),
        ("http_proxy", "http://collector:4318/v1/traces", None),
        ("NO_PROXY", "http://collector:4318/v1/traces", None),
        ("ALL_PROXY", "http://collector:4318/v1/traces", None),
        ("socks_proxy", "http://collector:4318/v1/traces", None),
        ("NETRC", "http://collector:4318/v1/traces", None),
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "http://collector:4318/v1/traces", None),
        (
            "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER",
            "https://collector:4318/v1/metrics",
            None,
        ),
        ("REQUESTS_CA_BUNDLE", "https://collector:4318/v1/traces", True),
        ("CURL_CA_BUNDLE", "https://collector:4318/v1/traces", True),
        ("HTTPS_PROXY", "https://collector:4318/v1/traces", True),
        ("REQUESTS_CA_BUNDLE", "http://collector:4318/v1/traces", False),  # no TLS: no CA bundle
        (None, "https://collector:4318/v1/traces", False),
    ],
)
def test_the_export_session_trusts_the_environment_whenever_it_configures_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path, variable: str | None, endpoint: str, trust_env: bool | None
) -> None:
    """None: the exporter's default session; else ours, reading the environment per request
    only when it configures something (https endpoints always get ours, for its one TLS context)."""
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
    if trust_env is None:
        assert session is None
    else:
        assert session is not None and session.trust_env is trust_env


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
                make_spans(provider, 3)  # ended while the first export runs
            return super().export(spans)

    exporter = EndsSpansWhileExporting()
    batch = BoundedBatchSpanProcessor(
        exporter, max_queue_size=1000, max_export_batch_size=100, schedule_delay_ms=50
    )
    provider.add_span_processor(batch)
    try:
        make_spans(provider, 7)
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


def test_the_failure_reason_is_the_one_of_the_exporter_on_this_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The trace and metric exporters fail at the same time on threads of their own: the traces'
    warning quotes what the trace exporter said, not the metric exporter's last words."""
    resilient.silence_exporter_logs(verbose=False)
    exporter_log = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
    traces_failing, metrics_said = threading.Event(), threading.Event()

    class _Failing(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            exporter_log.warning("Transient error StatusCode.UNAVAILABLE encountered while exporting traces")
            traces_failing.set()
            metrics_said.wait(5)  # the metric exporter speaks last, on its own thread
            return SpanExportResult.FAILURE

    def metric_exporter_thread() -> None:
        traces_failing.wait(5)
        exporter_log.error(
            "Failed to export metrics to 127.0.0.1:4317, error code: StatusCode.RESOURCE_EXHAUSTED"
        )
        metrics_said.set()

    exporter = resilient.ResilientSpanExporter(_Failing, "http://127.0.0.1:4317")
    span = TracerProvider().get_tracer("t").start_span("s")
    span.end()
    other = threading.Thread(target=metric_exporter_thread)
    other.start()
    with caplog.at_level(logging.WARNING, logger="hms_otel"):
        assert exporter.export([span]) is SpanExportResult.FAILURE
    other.join(5)
    [line] = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("hms-otel: cannot export traces")
    ]
    assert "(unavailable)" in line and "metrics" not in line.split("(", 1)[1], line
