"""Helpers for end-to-end tests: the sample app under hms-otel-run, exporting to a receiver."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, venv_executable
from harness.services import free_port

MANAGE = [sys.executable, "-m", "hms_otel_agent.sample"]


def otlp_env(receiver: OtlpReceiver, protocol: str) -> dict[str, str]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


def request_path(span: ReceivedSpan) -> str:
    """The URL path of a server span, whichever HTTP semantic conventions it follows."""
    attrs = span.attributes
    if attrs.get("url.path"):
        return str(attrs["url.path"])
    if attrs.get("http.target"):
        return str(attrs["http.target"]).split("?")[0]
    return urlsplit(str(attrs.get("http.url", ""))).path


def server_span_for(receiver: OtlpReceiver, path: str, timeout: float = 20) -> ReceivedSpan:
    def is_request(span: ReceivedSpan) -> bool:
        return span.kind == "SPAN_KIND_SERVER" and request_path(span) == path

    return receiver.wait_for_spans(is_request, timeout=timeout)[-1]


def children_complete(receiver: OtlpReceiver, span: ReceivedSpan, expected: int, timeout: float = 10) -> list:
    receiver.wait_for_spans(lambda s: s.parent_span_id == span.span_id, count=expected, timeout=timeout)
    return receiver.children_of(span)


@pytest.fixture
def run_sample(
    app_process: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> Callable[..., AppProcess]:
    """run_sample(server_cmd_builder, env) -> a started app on a free port, answering /health/."""

    def start(
        build: Callable[[int], list[str]],
        env: dict[str, str],
        *,
        agent: bool = True,
        timeout: float = 60,
        **kwargs: Any,
    ) -> AppProcess:
        port = free_port()
        cmd = build(port)
        if agent:
            cmd = [venv_executable("hms-otel-run"), "--", *cmd]
        app = app_process(cmd, env={**sample_app_db, **env}, base_url=f"http://127.0.0.1:{port}", **kwargs)
        app.wait_http("/health/", timeout=timeout)
        return app

    return start


def runserver(port: int, *extra: str) -> list[str]:
    return [*MANAGE, "runserver", f"127.0.0.1:{port}", *extra]


def gunicorn(port: int, *extra: str) -> list[str]:
    return [venv_executable("gunicorn"), "hms_otel_agent.sample.wsgi", "-b", f"127.0.0.1:{port}", *extra]


def uvicorn(port: int, *extra: str) -> list[str]:
    return [venv_executable("uvicorn"), "hms_otel_agent.sample.asgi:application", "--port", str(port), *extra]
