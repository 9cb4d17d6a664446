"""Starting and stopping the agent in one process (idempotent, fork-aware)."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hms_otel_agent import config, guard
from hms_otel_agent.config import RUN_ID_ENV
from hms_otel_agent.printable import PrintableFormatter
from hms_otel_agent.report.at_exit import is_root_process
from hms_otel_agent.shutdown_deadline import shutdown_deadline
from hms_otel_agent.signals.vocabulary import RUN_ID_ATTRIBUTE

if TYPE_CHECKING:
    from hms_otel_agent.pipeline import Pipeline
    from hms_otel_agent.signals.registry import Detector

logger = logging.getLogger("hms_otel")

# Set in the environment once the configuration problems and the destination were shown,
# so child processes (the runserver autoreloader's child, subprocesses) do not repeat them.
ANNOUNCED_ENV = config.ANNOUNCED_ENV

_lock = threading.Lock()
_pipeline: Pipeline | None = None


class StrictConfigError(SystemExit):
    """Raised (exit status 2) when HMS_OTEL_STRICT is on and a setting was not accepted."""

    def __init__(self) -> None:
        super().__init__(2)


def _configure_logging(level: str) -> None:
    log = logging.getLogger("hms_otel")
    log.setLevel(level.upper())
    if not any(getattr(h, "_hms_otel", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrintableFormatter("%(message)s"))
        handler._hms_otel = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.propagate = False
    # A length limit (OTEL_*ATTRIBUTE_VALUE_LENGTH_LIMIT) truncates values because the user asked
    # for it; the SDK also warns once per truncated value, which floods the application's stderr.
    sdk_attributes = logging.getLogger("opentelemetry.attributes")
    if not any(isinstance(f, _AskedForTruncation) for f in sdk_attributes.filters):
        sdk_attributes.addFilter(_AskedForTruncation())


class _AskedForTruncation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("String attribute value exceeds max length")


def report_problems(loaded: config.LoadedSettings, *, force: bool = False) -> None:
    """Print one line per bad setting (once per process tree unless forced)."""
    if not loaded.failed or (os.environ.get(ANNOUNCED_ENV) and not force):
        return
    loaded.print_problems()


def load_settings() -> config.LoadedSettings:
    """The settings, their problems said once, and the environment cleaned of what the SDK and
    contrib must not read (config.clean_environ) -- before any of them is imported, which is
    why this module imports nothing of OpenTelemetry at its top."""
    loaded = config.load()
    if loaded.settings.strict and loaded.failed:
        report_problems(loaded, force=True)
        raise StrictConfigError()
    report_problems(loaded)
    config.clean_environ(loaded)
    return loaded


def default_detectors() -> list[Detector]:
    from hms_otel_agent.signals import registry

    return list(registry.DETECTORS)


def start(detectors: Sequence[Detector] | None = None) -> bool:
    global _pipeline
    with _lock:
        if _pipeline is not None:
            return False
        settings = load_settings().settings
        if settings.sdk_disabled:
            return False
        try:
            _pipeline = _start(settings, default_detectors() if detectors is None else detectors)
        except Exception as exc:
            guard.report("agent start-up", exc)
            return False
        return True


def _start(settings: config.Settings, detectors: Sequence[Detector]) -> Pipeline:
    from opentelemetry import metrics, trace

    from hms_otel_agent import instrument, pipeline
    from hms_otel_agent.export.resilient import silence_exporter_logs

    _configure_logging(settings.log_level)
    silence_exporter_logs(verbose=settings.log_level == "debug")
    from hms_otel_agent.report.live import LiveLog, RunClaims

    if settings.explain:
        from hms_otel_agent.instrument.explain import unsafe_reason

        reason = unsafe_reason(settings)
        if reason is not None:  # the simple protocol to the app's own role: EXPLAIN stays off
            if not os.environ.get(ANNOUNCED_ENV):
                logger.warning(reason)
            settings = config.replace(settings, explain=False)
    run_id = os.environ.get(RUN_ID_ENV)  # set by hms-otel-run
    # Under hms-otel-run, each finding is logged once per run, not once per worker process.
    live_log = LiveLog(claims=RunClaims(run_id) if run_id else None) if settings.live_log else None
    built = pipeline.build(settings, detectors, on_findings=live_log).install()
    if run_id:
        built.update_resource({RUN_ID_ATTRIBUTE: run_id})
    trace.set_tracer_provider(built.tracer_provider)
    metrics.set_meter_provider(built.meter_provider)
    instrument.install(settings, built.tracer_provider, built.meter_provider)
    if not pipeline.has_explicit_service_name(settings):
        from hms_otel_agent.instrument import django_server

        django_server.when_django_ready(lambda: _name_service_after_django_project(built))
    atexit.register(_at_exit, built, settings.shutdown_timeout_ms, settings)
    if not os.environ.get(ANNOUNCED_ENV):
        if built.local_dir:
            logger.info(
                "hms-otel: no OTLP endpoint configured; writing traces and metrics to %s/ "
                "(set OTEL_EXPORTER_OTLP_ENDPOINT to export to a collector)",
                built.local_dir,
            )
        else:
            logger.debug("hms-otel: exporting to %s", ", ".join(built.destinations) or "nowhere")
        os.environ[ANNOUNCED_ENV] = "1"
    return built


def _name_service_after_django_project(built: Pipeline) -> None:
    from django.conf import settings as django_settings

    from hms_otel_agent.pipeline import django_project_name

    module = getattr(django_settings, "SETTINGS_MODULE", None) or ""
    urlconf = str(getattr(django_settings, "ROOT_URLCONF", "") or "")
    name = django_project_name(module) or django_project_name(urlconf.rpartition(".")[0])
    if name:
        built.set_service_name(name)


def _at_exit(built: Pipeline, timeout_ms: int, settings: config.Settings | None = None) -> None:
    # One deadline for the whole run (a gunicorn master exits after its workers, not after them
    # plus its own timeout). Nothing is imported here: a runserver child has 0.25 s after Ctrl-C
    # before the autoreloader kills it, and an import on a busy machine can take most of that.
    deadline = shutdown_deadline(timeout_ms / 1000.0, pending=built.has_pending_spans())
    try:
        built.shutdown(int(max(0.0, deadline - time.monotonic()) * 1000))
    except Exception as exc:
        guard.report("agent shutdown", exc)
    if settings is not None and settings.report != "false":
        try:  # the root process of an hms-otel-run run prints the findings of the run
            from hms_otel_agent.report.at_exit import at_exit

            at_exit(built.local_dir, settings, start=built.local_start, deadline=deadline)
        except Exception as exc:
            guard.report("report at exit", exc)
    run_id = os.environ.get(RUN_ID_ENV)
    if run_id and is_root_process():  # the run is over: its live-log claims can go
        try:
            from hms_otel_agent.report.live import RunClaims

            RunClaims(run_id).remove()
        except Exception as exc:
            guard.report("live log claims at exit", exc)


def current_pipeline() -> Pipeline | None:
    return _pipeline
