"""Builds the tracer and meter providers, processors and exporters from `Settings`."""

from __future__ import annotations

# Imported before any provider exists so that its after-fork reset of the executor lock runs
# before the SDK's own fork handlers, which submit to an executor: in the other order a
# gunicorn --preload worker can deadlock right after fork.
import concurrent.futures.thread  # noqa: F401
import logging
import os
import platform
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import get_current_span

from hms_otel_agent import __version__, guard
from hms_otel_agent.config import Settings
from hms_otel_agent.export.batch import DROP_REASONS, BoundedBatchSpanProcessor
from hms_otel_agent.export.compress import SpanCompressor
from hms_otel_agent.export.otlp_encode import SpanEncoder
from hms_otel_agent.export.otlp_json import OtlpJsonFileMetricExporter, OtlpJsonFileSpanExporter
from hms_otel_agent.export.resilient import ResilientMetricExporter, ResilientSpanExporter, plain_http_session
from hms_otel_agent.instrument import django_server, eager_loads, sdk_internals
from hms_otel_agent.instrument.context import detached_sink, set_detached_sink
from hms_otel_agent.instrument.explain import EXPLAINER
from hms_otel_agent.instrument.sdk_internals import (  # noqa: F401  (re-exported for benchmarks)
    install_end_hook,
    install_exception_hook,
    uninstall_end_hook,
    uninstall_exception_hook,
)
from hms_otel_agent.local_paths import FileMark
from hms_otel_agent.processors import SignalMetrics, SignalProcessor
from hms_otel_agent.signals import cache_signals
from hms_otel_agent.signals.records import Finding, OwnerActivity
from hms_otel_agent.signals.registry import Detector

logger = logging.getLogger("hms_otel")


@dataclass
class Pipeline:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    signal_processor: SignalProcessor
    batch_processors: list[BoundedBatchSpanProcessor] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    local_dir: str | None = None
    # Where this run's lines begin in the local traces file (the report at exit reads from there).
    local_start: FileMark | None = None
    _shut_down: bool = False
    # What `install` replaced, given back by `uninstall`: (the sampled-out record sink before,
    # the one installed, whether the fast paths ran before); None when not installed.
    _installed: tuple[Any, Any, bool] | None = None

    def install(self) -> Pipeline:
        """The process-wide part of the pipeline, apart from `build` so that building one changes
        nothing outside it (tests, benchmarks and the pytest plugin build their own): the
        fast-path decision (one log line when installed versions are untested), the detectors'
        evidence across owners afresh, the sink of statements and cache calls recorded for
        detection only, the ``Span.end`` and ``Span.record_exception`` hooks, the pid after fork.
        Call it before `instrument.install` (which reads the fast-path decision)."""
        if self._installed is not None:
            return self
        settings = self.signal_processor.settings
        # Statements and cache calls of requests recorded for detection only go to the processor
        # without spans of their own.
        sink = self.signal_processor.record_detached if settings.detect_sampled_out else None
        self._installed = (detached_sink(), sink, sdk_internals.fast_paths())
        sdk_internals.configure(settings.fast_paths)
        cache_signals.reset_evidence()  # what the detectors decide across owners starts afresh
        set_detached_sink(sink)
        install_end_hook()
        install_exception_hook()
        if hasattr(os, "register_at_fork"):
            # A forked worker (gunicorn, uvicorn --workers) reports its own pid.
            weak = weakref.ref(self)

            def after_fork_in_child() -> None:
                forked = weak()
                if forked is not None:
                    try:
                        forked.update_resource(
                            {"process.pid": os.getpid(), "service.instance.id": str(uuid.uuid4())}
                        )
                    except Exception as exc:
                        guard.report("fork handling", exc)

            os.register_at_fork(after_in_child=after_fork_in_child)
        return self

    def uninstall(self) -> None:
        """Give back the sampled-out record sink and the fast-path decision `install` replaced (a
        pipeline of its own inside a process that has one: tests, the pytest plugin). The
        ``Span.end`` hooks stay: they call the processors of each span's own provider."""
        if self._installed is None:
            return
        before, sink, fast = self._installed
        self._installed = None
        if detached_sink() == sink:  # not replaced since by another pipeline's install
            set_detached_sink(before)
        sdk_internals.configure(fast)

    def shutdown(self, timeout_ms: int) -> None:
        """Flush and stop everything within `timeout_ms` in all, and `uninstall`."""
        if self._shut_down:
            return
        self._shut_down = True
        try:
            self.uninstall()
        except Exception as exc:
            guard.report("pipeline uninstall", exc)
        deadline = time.monotonic() + timeout_ms / 1000.0
        for processor in self.batch_processors:
            processor.shutdown(timeout_millis=int(max(0.0, deadline - time.monotonic()) * 1000))
        left_ms = (deadline - time.monotonic()) * 1000
        if left_ms <= 0:
            return  # the traces took the whole deadline (a stalled backend): the metrics go unsent
        try:
            # Collect and export now, with what is left of the deadline: the SDK's reader gives its
            # last collection at shutdown the export *interval* as timeout, and on a loaded machine
            # with a short interval that collection timed out -- the last requests' metrics were
            # lost (tests/reliability/test_phi_urls.py saw no http.server.duration point at all).
            # On a helper thread: the OTLP metric exporters do not honour the flush's timeout, and a
            # stalled backend must not hold the process beyond the deadline.
            flusher = threading.Thread(
                target=self._flush_metrics, args=(left_ms,), name="hms-otel-metrics-flush", daemon=True
            )
            try:
                flusher.start()
            except RuntimeError:
                # Python 3.12 refuses new threads once the interpreter finalizes (atexit handlers
                # run then). The reader's own thread, started long ago, makes the last collection
                # when the provider shuts down below, and that shutdown is bounded by the deadline.
                pass
            else:
                flusher.join(left_ms / 1000)
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms > 0:
                self.meter_provider.shutdown(timeout_millis=left_ms)
        except Exception as exc:
            guard.report("metrics shutdown", exc)

    def _flush_metrics(self, timeout_ms: float) -> None:
        try:
            self.meter_provider.force_flush(timeout_millis=timeout_ms)
        except Exception as exc:
            guard.report("metrics flush", exc)

    def has_pending_spans(self) -> bool:
        """Spans queued or held back for compression in this process (read without locks: a
        hint for the shutdown deadline, never wrong for long)."""
        try:
            for processor in self.batch_processors:
                compressor = processor.compressor
                if processor.queue_length or (compressor is not None and compressor.held_spans):
                    return True
            return False
        except Exception:
            return True  # when in doubt, the grace of a process with something to send

    def force_flush(self, timeout_ms: int = 5000) -> None:
        for processor in self.batch_processors:
            processor.force_flush(timeout_ms)
        try:
            self.meter_provider.force_flush(timeout_millis=timeout_ms)
        except Exception as exc:
            guard.report("metrics flush", exc)

    def update_resource(self, attributes: dict[str, Any]) -> None:
        """Change resource attributes for telemetry produced from now on."""
        resource = Resource(attributes)
        sdk_internals.update_resource(self.tracer_provider, resource)
        sdk_internals.update_resource(self.meter_provider, resource)

    def set_service_name(self, name: str) -> None:
        """Rename the service once the Django project is known."""
        self.update_resource({"service.name": name})

    def dropped_by_reason(self) -> dict[str, int]:
        totals = dict.fromkeys(DROP_REASONS, 0)
        for processor in self.batch_processors:
            for reason, count in processor.dropped.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals


def register_agent_metrics(pipeline: Pipeline) -> None:
    """hms.agent.dropped_spans and hms.agent.errors (docs/attributes.md), observed at each export."""
    meter = pipeline.meter_provider.get_meter("hms_otel_agent", __version__)

    def observe_dropped(options: CallbackOptions) -> list[Observation]:
        try:
            return [
                Observation(count, {"hms.reason": reason})
                for reason, count in pipeline.dropped_by_reason().items()
            ]
        except Exception as exc:
            guard.report("agent metrics", exc)
            return []

    def observe_errors(options: CallbackOptions) -> list[Observation]:
        try:
            return [
                Observation(count, {"hms.component": component})
                for component, count in sorted(guard.error_counts().items())
            ]
        except Exception as exc:
            guard.report("agent metrics", exc)
            return []

    meter.create_observable_counter(
        "hms.agent.dropped_spans",
        callbacks=[observe_dropped],
        unit="{span}",
        description="Spans the agent did not export, by reason (queue_full, export_failed, shutdown).",
    )
    meter.create_observable_counter(
        "hms.agent.errors",
        callbacks=[observe_errors],
        unit="{error}",
        description="Exceptions raised inside the agent and swallowed, by component.",
    )


# --- resource ---------------------------------------------------------------------------


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    from urllib.parse import unquote

    attributes: dict[str, str] = {}
    for item in raw.split(","):
        if "=" in item:
            key, value = item.split("=", 1)
            if key.strip():
                attributes[key.strip()] = unquote(value.strip())
    return attributes


def django_project_name(settings_module: str) -> str:
    """``hms.settings.production`` -> ``hms``; ``hms_otel_agent.sample.settings`` -> ``sample``."""
    parts = [p for p in settings_module.split(".") if p]
    if "settings" in parts:
        parts = parts[: parts.index("settings")]
    return parts[-1] if parts else ""


def default_service_name() -> str:
    """The Django project name when DJANGO_SETTINGS_MODULE is set, else the command."""
    project = django_project_name(os.environ.get("DJANGO_SETTINGS_MODULE", ""))
    if project:
        return project
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "-m" and index + 1 < len(argv):
            return argv[index + 1]
        if arg == "-c":
            break
        if not arg.startswith("-"):
            return os.path.basename(arg)
    return "unknown_service:python"


def has_explicit_service_name(settings: Settings) -> bool:
    return bool(settings.service_name) or "service.name" in _parse_resource_attributes(
        settings.resource_attributes
    )


def build_resource(settings: Settings) -> Resource:
    attributes: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.distro.name": "hms-otel-agent",
        "telemetry.distro.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.executable.name": os.path.basename(sys.executable),
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "os.type": platform.system().lower(),
    }
    try:
        from importlib.metadata import version

        attributes["telemetry.sdk.version"] = version("opentelemetry-sdk")
    except Exception:
        pass
    attributes.update(_parse_resource_attributes(settings.resource_attributes))
    if settings.service_version:
        attributes["service.version"] = settings.service_version
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    elif "service.name" not in attributes:
        attributes["service.name"] = default_service_name()
    return Resource(attributes)


def _sampler(settings: Settings) -> sampling.Sampler:
    name, ratio = settings.traces_sampler, settings.traces_sampler_arg
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    inner: sampling.Sampler
    if name == "traceidratio":
        inner = sampling.TraceIdRatioBased(ratio)
    elif name == "parentbased_traceidratio":
        inner = sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
    else:
        inner = sampling.ParentBased(sampling.ALWAYS_ON)  # drops under an unsampled remote parent
    return DetectingSampler(inner) if settings.detect_sampled_out else inner


class DetectingSampler(sampling.Sampler):
    """Head sampling that still lets detection see every request (HMS_OTEL_DETECT_SAMPLED_OUT).

    Where `inner` samples, its decision stands. Where it drops, the span is recorded but not
    sampled (``RECORD_ONLY``): the processors see it, no exporter does — the span processor
    groups its DB and cache calls, detection, metrics, the live log and the report run as they
    do on a sampled request, and an owner span with findings is exported alone
    (``SignalProcessor``, ``hms.sampled_out``). The instrumentations build only the records
    the detectors read: a statement under such a span gets no span of its own (its record goes
    to the processor: instrument/db.py), a cache call no attributes (django_cache.py). A child
    of a local span nobody records stays dropped. `inner`'s trace state is kept;
    ``traceparent`` propagates the unsampled flag, as the specification says for the dropped
    decision."""

    def __init__(self, inner: sampling.Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> sampling.SamplingResult:
        result = self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is not sampling.Decision.DROP:
            return result
        parent = get_current_span(parent_context)
        parent_context_ = parent.get_span_context()
        if parent_context_.is_valid and not parent_context_.is_remote and not parent.is_recording():
            return result
        return sampling.SamplingResult(sampling.Decision.RECORD_ONLY, attributes, result.trace_state)

    def get_description(self) -> str:
        return f"HmsDetectingSampler{{{self._inner.get_description()}}}"


# --- exporters ----------------------------------------------------------------------------


def _otlp_span_exporter(settings: Settings, fast: bool | None = None) -> SpanExporter:
    if fast is None:
        fast = sdk_internals.allowed(settings.fast_paths)
    endpoint = settings.endpoint("traces")
    timeout = settings.answer_wait_s("traces")
    gzip = settings.compression("traces") == "gzip"
    if settings.protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import Compression as GrpcCompression

        # The SDK's OTLP/gRPC exporter; with the fast paths, sending the agent's encoded bytes
        # (export/otlp_encode.py).
        Grpc = sdk_internals.otlp_span_exporter_class("grpc", SpanEncoder, fast)
        insecure = endpoint.startswith("http://")
        compression = GrpcCompression.Gzip if gzip else GrpcCompression.NoCompression

        def grpc_factory() -> SpanExporter:
            return Grpc(endpoint=endpoint, insecure=insecure, timeout=timeout, compression=compression)

        return ResilientSpanExporter(grpc_factory, endpoint)
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

    # The SDK's OTLP/HTTP exporter; with the fast paths, with the agent's encoder
    # (export/otlp_encode.py: the same bytes, ~7x less CPU per span).
    Http = sdk_internals.otlp_span_exporter_class("http/protobuf", SpanEncoder, fast)
    http_compression = HttpCompression.Gzip if gzip else HttpCompression.NoCompression

    def http_factory() -> SpanExporter:
        return Http(
            endpoint=endpoint,
            timeout=timeout,
            compression=http_compression,
            session=plain_http_session(endpoint),
        )

    return ResilientSpanExporter(http_factory, endpoint)


def _otlp_metric_exporter(settings: Settings) -> MetricExporter:
    endpoint = settings.endpoint("metrics")
    timeout = settings.answer_wait_s("metrics")
    gzip = settings.compression("metrics") == "gzip"
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    http_compression = HttpCompression.Gzip if gzip else HttpCompression.NoCompression
    template = Http(endpoint="http://127.0.0.1:4318/v1/metrics", timeout=1)
    if settings.protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import Compression as GrpcCompression
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        insecure = endpoint.startswith("http://")
        compression = GrpcCompression.Gzip if gzip else GrpcCompression.NoCompression

        def grpc_factory() -> MetricExporter:
            return Grpc(endpoint=endpoint, insecure=insecure, timeout=timeout, compression=compression)

        return ResilientMetricExporter(grpc_factory, endpoint, template)

    def http_factory() -> MetricExporter:
        return Http(
            endpoint=endpoint,
            timeout=timeout,
            compression=http_compression,
            session=plain_http_session(endpoint),
        )

    return ResilientMetricExporter(http_factory, endpoint, template)


def _span_exporters(settings: Settings, fast: bool) -> list[tuple[str, SpanExporter]]:
    exporters: list[tuple[str, SpanExporter]] = []
    for name in settings.exporters("traces"):
        if name == "otlp":
            exporters.append(
                (
                    f"OTLP {settings.protocol('traces')} {settings.endpoint('traces')}",
                    _otlp_span_exporter(settings, fast),
                )
            )
        elif name == "console":
            exporters.append(("console", ConsoleSpanExporter()))
        elif name == "hms_file":
            exporters.append(
                (
                    "file",
                    OtlpJsonFileSpanExporter(
                        os.path.abspath(settings.local_dir),
                        direct=fast,
                        max_bytes=settings.local_max_mb * 1_000_000,
                    ),
                )
            )
    return exporters


def _metric_readers(settings: Settings) -> list[MetricReader]:
    readers: list[MetricReader] = []
    for name in settings.exporters("metrics"):
        exporter: MetricExporter
        if name == "otlp":
            exporter = _otlp_metric_exporter(settings)
        elif name == "console":
            exporter = ConsoleMetricExporter()
        elif name == "hms_file":
            exporter = OtlpJsonFileMetricExporter(
                os.path.abspath(settings.local_dir), settings.local_max_mb * 1_000_000
            )
        else:
            continue
        readers.append(
            PeriodicExportingMetricReader(
                exporter,
                export_interval_millis=settings.metric_export_interval_ms,
                export_timeout_millis=settings.metric_export_timeout_ms,
            )
        )
    return readers


# --- assembly -------------------------------------------------------------------------------


def build(
    settings: Settings,
    detectors: Sequence[Detector] = (),
    extra_span_processors: Sequence[SpanProcessor] = (),
    span_exporters: Sequence[tuple[str, SpanExporter]] | None = None,
    metric_readers: Sequence[MetricReader] | None = None,
    on_findings: Callable[[OwnerActivity, list[Finding]], None] | None = None,
) -> Pipeline:
    """Assemble providers, with no effect outside the pipeline (`Pipeline.install` has those).
    Tests pass their own exporters/readers; the agent passes None."""
    fast = sdk_internals.allowed(settings.fast_paths)
    resource = build_resource(settings)
    readers = list(_metric_readers(settings) if metric_readers is None else metric_readers)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    tracer_provider = TracerProvider(resource=resource, sampler=_sampler(settings), shutdown_on_exit=False)
    signal_processor = SignalProcessor(
        settings,
        detectors,
        SignalMetrics(meter_provider.get_meter("hms_otel_agent", __version__)),
        on_findings=on_findings,
        plans=EXPLAINER,
        eager_loads=eager_loads,
        route_literals=django_server.route_literals,
    )
    tracer_provider.add_span_processor(signal_processor)
    for processor in extra_span_processors:
        tracer_provider.add_span_processor(processor)
    pipeline = Pipeline(tracer_provider, meter_provider, signal_processor)
    chosen = list(_span_exporters(settings, fast) if span_exporters is None else span_exporters)
    for label, exporter in chosen:
        compressor = None
        if settings.compress_spans and label != "file":
            # Never the local file: `hms-otel analyze` and the report read every span from it.
            compressor = SpanCompressor(
                threshold=settings.n_plus_one_threshold,
                max_duration_ms=settings.slow_query_ms,
                open_spans=signal_processor.open_span_ids,
                max_held=settings.bsp_max_queue_size,
            )
        batch = BoundedBatchSpanProcessor(
            exporter,
            max_queue_size=settings.bsp_max_queue_size,
            max_export_batch_size=settings.bsp_max_export_batch_size,
            schedule_delay_ms=settings.bsp_schedule_delay_ms,
            compressor=compressor,
        )
        tracer_provider.add_span_processor(batch)
        pipeline.batch_processors.append(batch)
        pipeline.destinations.append(label)
        if label == "file":
            pipeline.local_dir = os.path.abspath(settings.local_dir)
            pipeline.local_start = getattr(exporter, "start_mark", None)
    register_agent_metrics(pipeline)
    return pipeline
