"""The OTLP/HTTP exporter's session builds one TLS context and reuses it (docs/reliability.md).

Stock requests lets urllib3 build a context and load the CA bundle for every new connection;
against an `https://` endpoint whose handshake keeps failing (a plain-HTTP server) every retry
parsed the bundle again and RSS grew. Here: many export attempts against such an endpoint
create one SSLContext with the agent's session (and one per attempt with the stock one, so the
count can fail), and the reused context still verifies certificates: a self-signed server is
refused without OTEL_EXPORTER_OTLP_CERTIFICATE and accepted with it.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from hms_otel_agent.export.resilient import plain_http_session

ATTEMPTS = 12


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")  # a new connection (and handshake) per export
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(context: ssl.SSLContext | None) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.handle_error = lambda *args: None  # type: ignore[method-assign]  # refused handshakes are expected
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing configured that would make the agent keep the exporter's default session."""
    for name in list(os.environ):
        lowered = name.lower()
        bundle_or_proxy = lowered.endswith("_proxy") or lowered in (
            "netrc",
            "requests_ca_bundle",
            "curl_ca_bundle",
        )
        if bundle_or_proxy or lowered.startswith("otel_exporter_otlp") or "credential_provider" in lowered:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def contexts_created(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext]:
    created: list[ssl.SSLContext] = []
    original = ssl.SSLContext.__new__

    def counting(cls: type, *args: object, **kwargs: object) -> ssl.SSLContext:
        context = original(cls, *args, **kwargs)  # type: ignore[call-arg]
        created.append(context)
        return context

    monkeypatch.setattr(ssl.SSLContext, "__new__", staticmethod(counting))
    return created


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    yield from _serve(None)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def https_port(self_signed: tuple[Path, Path]) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    yield from _serve(context)


@pytest.fixture
def mtls_port(self_signed: tuple[Path, Path]) -> Iterator[int]:
    """A server that also asks for a client certificate (the same self-signed one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    context.load_verify_locations(cafile=self_signed[0])
    context.verify_mode = ssl.CERT_REQUIRED
    yield from _serve(context)


def _span() -> ReadableSpan:
    span = TracerProvider().get_tracer("t").start_span("tls")
    span.end()
    return span  # type: ignore[return-value]


def _export_attempts(session: requests.Session, endpoint: str) -> list[SpanExportResult]:
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=0.2, session=session)
    try:
        return [exporter.export([_span()]) for _ in range(ATTEMPTS)]
    finally:
        exporter.shutdown()


@pytest.mark.usefixtures("plain_environment")
def test_failing_handshakes_reuse_one_context(
    plain_http_port: int, contexts_created: list[ssl.SSLContext]
) -> None:
    endpoint = f"https://127.0.0.1:{plain_http_port}/v1/traces"
    session = plain_http_session(endpoint)
    assert session is not None
    results = _export_attempts(session, endpoint)
    assert results == [SpanExportResult.FAILURE] * ATTEMPTS
    assert len(contexts_created) == 1


@pytest.mark.usefixtures("plain_environment")
def test_the_stock_session_builds_a_context_per_attempt(
    plain_http_port: int, contexts_created: list[ssl.SSLContext]
) -> None:
    # What the fix removes (and proof the count above can fail).
    endpoint = f"https://127.0.0.1:{plain_http_port}/v1/traces"
    results = _export_attempts(requests.Session(), endpoint)
    assert results == [SpanExportResult.FAILURE] * ATTEMPTS
    assert len(contexts_created) >= ATTEMPTS


@pytest.mark.usefixtures("plain_environment")
def test_an_unknown_certificate_is_refused(https_port: int, contexts_created: list[ssl.SSLContext]) -> None:
    endpoint = f"https://127.0.0.1:{https_port}/v1/traces"
    session = plain_http_session(endpoint)
    assert session is not None
    assert _export_attempts(session, endpoint) == [SpanExportResult.FAILURE] * ATTEMPTS
    assert len(contexts_created) == 1  # the server's context is built before the fixture counts


@pytest.mark.usefixtures("plain_environment")
@pytest.mark.parametrize(
    "variable",
    ["OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "REQUESTS_CA_BUNDLE"],
)
def test_the_configured_certificate_is_trusted(
    https_port: int, self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, str(self_signed[0]))
    endpoint = f"https://127.0.0.1:{https_port}/v1/traces"
    session = plain_http_session(endpoint)
    assert session is not None
    assert _export_attempts(session, endpoint) == [SpanExportResult.SUCCESS] * ATTEMPTS


@pytest.mark.usefixtures("plain_environment")
@pytest.mark.parametrize("with_client_certificate", [False, True])
def test_the_client_certificate_is_presented(
    mtls_port: int,
    self_signed: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    with_client_certificate: bool,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(self_signed[0]))
    if with_client_certificate:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(self_signed[0]))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(self_signed[1]))
    endpoint = f"https://127.0.0.1:{mtls_port}/v1/traces"
    session = plain_http_session(endpoint)
    assert session is not None
    expected = SpanExportResult.SUCCESS if with_client_certificate else SpanExportResult.FAILURE
    assert _export_attempts(session, endpoint) == [expected] * ATTEMPTS
