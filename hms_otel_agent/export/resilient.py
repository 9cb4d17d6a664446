"""Exporter wrappers that turn a failing backend into one warning and periodic summaries.

The OTLP exporters log every failed batch (with retries, several lines per batch). The
agent silences their loggers and reports instead: one concise warning when exporting
first fails, a summary of what was dropped at most once a minute while it keeps failing,
and one line when it works again. Exporters are created lazily in the process that uses
them, so a gRPC channel is never carried across fork() into a gunicorn worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hms_otel_agent.instrument.sdk_internals import metric_preferences

logger = logging.getLogger("hms_otel")
SUMMARY_INTERVAL_S = 60.0
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp", "opentelemetry.exporter.http_transport")


class _LastMessage(logging.Handler):
    """Keeps the last thing the OTLP exporters said, per exporting thread, to quote it in our own
    warning (the trace and metric exporters run at once on threads of their own: one shared text
    quoted the metric exporter's failure in the traces' warning)."""

    MAX_THREADS = 64  # exporting threads are few; past this many the texts start over

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._texts: dict[int | None, str] = {}

    @property
    def text(self) -> str:
        """What the exporter running on this thread said last."""
        return self._texts.get(threading.get_ident(), "")

    @text.setter
    def text(self, value: str) -> None:
        self._set(threading.get_ident(), value)

    def _set(self, thread: int | None, value: str) -> None:
        if thread not in self._texts and len(self._texts) >= self.MAX_THREADS:
            self._texts.clear()
        self._texts[thread] = value

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            current = self._texts.get(record.thread, "")
            # The exporters end with a generic "Failed to export ... batch"; keep the cause.
            if not (current and message.startswith("Failed to export") and "due to" in message):
                self._set(record.thread, concise_reason(message))
        except Exception:
            self._texts.pop(record.thread, None)


_REASONS = (
    ("Connection refused", "connection refused"),
    ("StatusCode.UNAVAILABLE", "unavailable"),
    ("Name or service not known", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve"),
    ("DNS resolution failed", "the host name does not resolve"),
    ("timed out", "timed out"),
    ("Timeout", "timed out"),
    ("DEADLINE_EXCEEDED", "timed out"),
)


def concise_reason(message: str) -> str:
    """One short phrase for an exporter's log message."""
    for needle, reason in _REASONS:
        if needle in message:
            return reason
    match = re.search(r"code: (\d{3})", message)
    if match:
        return f"HTTP {match.group(1)}"
    return message.splitlines()[0][:160] if message else ""


_last_message = _LastMessage()


def silence_exporter_logs(verbose: bool) -> None:
    for name in _EXPORTER_LOGGERS:
        log = logging.getLogger(name)
        if _last_message not in log.handlers:
            log.addHandler(_last_message)
        log.propagate = verbose


class ExportHealth:
    """Counts failures of one exporter and decides what to log."""

    def __init__(self, signal: str, target: str, unit: str) -> None:
        self.signal = signal
        self.target = target
        self.unit = unit
        self.failed_batches = 0
        self._lock = threading.Lock()
        self._failing = False
        self._window_batches = 0
        self._window_items = 0
        self._window_start = 0.0

    def succeeded(self) -> None:
        if self._failing:
            with self._lock:
                self._failing = False
                self._flush_summary()
            logger.warning("hms-otel: exporting %s to %s works again", self.signal, self.target)

    def failed(self, items: int, reason: str) -> None:
        with self._lock:
            self.failed_batches += 1
            self._window_batches += 1
            self._window_items += items
            now = time.monotonic()
            if not self._failing:
                self._failing = True
                self._window_start = now
                self._window_batches = self._window_items = 0
                if not reason or reason.startswith("Failed to export"):
                    reason = probe(self.target) or reason
                logger.warning(
                    "hms-otel: cannot export %s to %s (%s); the application is unaffected, "
                    "dropped data is counted and summarized every %d s",
                    self.signal,
                    self.target,
                    reason or "no answer",
                    SUMMARY_INTERVAL_S,
                )
            elif now - self._window_start >= SUMMARY_INTERVAL_S:
                self._flush_summary()
                self._window_start = now

    def _flush_summary(self) -> None:
        if self._window_batches:
            logger.warning(
                "hms-otel: %d %s batches (%d %s) could not be exported to %s (%d batches in all)",
                self._window_batches,
                self.signal,
                self._window_items,
                self.unit,
                self.target,
                self.failed_batches,
            )
        self._window_batches = self._window_items = 0


def probe(url: str, timeout_s: float = 1.0) -> str:
    """Why an endpoint cannot be reached, in a few words ("" when a TCP connection works)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "malformed endpoint"
    try:
        socket.getaddrinfo(host, port)
    except OSError:
        return "the host name does not resolve"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


# What requests reads from the environment on every request when Session.trust_env is true
# (proxies and their exceptions, a CA bundle, .netrc credentials).
# (any *_proxy variable counts: urllib's getproxies_environment reads them all)
_ENVIRONMENT_VARIABLES = ("netrc",)
_CA_BUNDLE_VARIABLES = ("requests_ca_bundle", "curl_ca_bundle")
# The OTLP exporter's own credential provider brings its own session, which ours would replace.
_CREDENTIAL_PROVIDERS = (
    "otel_python_exporter_otlp_http_credential_provider",
    "otel_python_exporter_otlp_http_traces_credential_provider",
    "otel_python_exporter_otlp_http_metrics_credential_provider",
)


def plain_http_session(endpoint: str) -> Any:
    """The requests Session for an OTLP/HTTP exporter, or None to keep the exporter's default.

    With trust_env requests calls get_environ_proxies / should_bypass_proxies and looks for a
    .netrc file on every POST; nothing of it can matter when no proxy, CA bundle, netrc or
    credential provider is configured (a CA bundle only for https endpoints), which is checked
    here once per process: then trust_env is off. For an https endpoint the session also reuses
    one TLS context (_one_context_adapter), keeping trust_env on when the environment configures
    anything. None (the exporter's default session, exactly as without the agent) for a
    credential provider, an http endpoint whose environment configures anything, and on macOS
    and Windows, whose system proxy settings requests also reads."""
    try:
        if sys.platform in ("darwin", "win32"):
            return None
        names = {name.lower() for name in os.environ}
        if names.intersection(_CREDENTIAL_PROVIDERS):
            return None
        https = endpoint.lower().startswith("https://")
        home = os.path.expanduser("~")
        environment = (
            bool(names.intersection(_ENVIRONMENT_VARIABLES))
            or any(name.endswith("_proxy") for name in names)
            or (https and bool(names.intersection(_CA_BUNDLE_VARIABLES)))
            or any(os.path.exists(os.path.join(home, name)) for name in (".netrc", "_netrc"))
        )
        if environment and not https:
            return None
        import requests

        session = requests.Session()
        session.trust_env = environment
        if https:
            session.mount("https://", _one_context_adapter())
        return session
    except Exception:
        return None


def _one_context_adapter() -> Any:
    """A requests HTTPAdapter that builds one SSLContext per (verify, cert) pair and reuses it
    for every connection. Stock requests hands urllib3 the CA bundle's path per pool, and
    urllib3 then builds a context and loads the bundle for every new connection: against an
    endpoint whose handshake keeps failing, each retry parsed the whole bundle again (RSS rose
    by tens of MiB). The exporter still passes its own verify / cert (OTEL_EXPORTER_OTLP_*
    CERTIFICATE, CLIENT_KEY, CLIENT_CERTIFICATE); they are loaded into the context once."""
    import ssl

    from requests.adapters import HTTPAdapter
    from requests.utils import DEFAULT_CA_BUNDLE_PATH
    from urllib3.util.ssl_ import create_urllib3_context

    class OneContextAdapter(HTTPAdapter):
        def __init__(self) -> None:
            self._contexts: dict[tuple[Any, Any], ssl.SSLContext] = {}
            self._contexts_lock = threading.Lock()
            super().__init__()

        def _context(self, verify: Any, cert: Any) -> ssl.SSLContext:
            key = (verify, tuple(cert) if isinstance(cert, list) else cert)
            with self._contexts_lock:
                context = self._contexts.get(key)
                if context is None:
                    required = verify is not False
                    context = create_urllib3_context(
                        cert_reqs=ssl.CERT_REQUIRED if required else ssl.CERT_NONE
                    )
                    if required:
                        where = DEFAULT_CA_BUNDLE_PATH if verify is True else verify
                        if os.path.isdir(where):
                            context.load_verify_locations(capath=where)
                        else:
                            context.load_verify_locations(cafile=where)
                    if cert:
                        cert_file, key_file = cert if isinstance(cert, (tuple, list)) else (cert, None)
                        context.load_cert_chain(cert_file, key_file)
                    self._contexts[key] = context
                return context

        def build_connection_pool_key_attributes(
            self, request: Any, verify: Any, cert: Any = None
        ) -> tuple[dict[str, Any], dict[str, Any]]:
            host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
            if host_params.get("scheme") == "https":
                # The context holds the CA bundle and the client certificate: nothing per connection.
                pool_kwargs = {
                    "ssl_context": self._context(verify, cert),
                    "cert_reqs": pool_kwargs["cert_reqs"],
                }
            return host_params, pool_kwargs

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            if not url.lower().startswith("https"):
                super().cert_verify(conn, url, verify, cert)
                return
            conn.cert_reqs = "CERT_REQUIRED" if verify else "CERT_NONE"
            conn.ca_certs = conn.ca_cert_dir = conn.cert_file = conn.key_file = None

    return OneContextAdapter()


class _PerProcess:
    """Builds the wrapped exporter on first use in each process."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._pid = -1
        self._exporter: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        # Read once: another thread's discard() may clear the attribute between check and use.
        pid, exporter = os.getpid(), self._exporter
        if self._pid != pid or exporter is None:
            with self._lock:
                if self._pid != pid or self._exporter is None:
                    self._exporter = self._factory()
                    self._pid = pid
                exporter = self._exporter
        return exporter

    def discard(self) -> None:
        """After the exporter raised: its state is unknown (a gRPC channel half re-initialised,
        say), so the next export builds a new one rather than failing on it for good."""
        with self._lock:
            old, self._exporter, self._pid = self._exporter, None, -1
        if old is not None:
            with contextlib.suppress(Exception):
                old.shutdown()

    def shutdown(self, **kwargs: Any) -> None:
        if self._pid == os.getpid() and self._exporter is not None:
            self._exporter.shutdown(**kwargs)


class ResilientSpanExporter(SpanExporter):
    def __init__(self, factory: Callable[[], SpanExporter], target: str) -> None:
        self._inner = _PerProcess(factory)
        self.health = ExportHealth("traces", target, "spans")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        _last_message.text = ""
        try:
            result = self._inner.get().export(spans)
        except Exception as exc:
            # The type only: an exception raised while encoding may quote attribute values.
            self.health.failed(len(spans), type(exc).__name__)
            self._inner.discard()
            return SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.health.succeeded()
        else:
            self.health.failed(len(spans), _last_message.text)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()


class ResilientMetricExporter(MetricExporter):
    def __init__(self, factory: Callable[[], MetricExporter], target: str, template: MetricExporter) -> None:
        # The reader asks for preferred temporality/aggregation up front; take them from a
        # template exporter of the same kind (built without opening a connection).
        super().__init__(**metric_preferences(template))
        self._inner = _PerProcess(factory)
        self.health = ExportHealth("metrics", target, "data points")

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        _last_message.text = ""
        points = _count_points(metrics_data)
        try:
            result = self._inner.get().export(metrics_data, timeout_millis=timeout_millis)
        except Exception as exc:
            self.health.failed(points, type(exc).__name__)
            self._inner.discard()
            return MetricExportResult.FAILURE
        if result is MetricExportResult.SUCCESS:
            self.health.succeeded()
        else:
            self.health.failed(points, _last_message.text)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        # The SDK's reader passes what is left of its deadline as `timeout` (ms).
        timeout = kwargs.get("timeout")
        if isinstance(timeout, (int, float)):
            timeout_millis = min(timeout_millis, max(0.0, timeout))
        self._inner.shutdown(timeout_millis=timeout_millis)


def _count_points(metrics_data: MetricsData) -> int:
    try:
        return sum(
            len(metric.data.data_points)
            for rm in metrics_data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        )
    except Exception:
        return 0
