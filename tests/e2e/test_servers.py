"""The sample app under hms-otel-run on every supported server, exporting over gRPC and HTTP.

`/stats/` runs exactly 3 SQL queries and 2 Redis commands: each must arrive as a child of
the one server span, and nothing else may.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, venv_executable

from hms_otel_agent.signals.semconv import stable_value

from .conftest import gunicorn, otlp_env, runserver, server_span_for, uvicorn

pytestmark = pytest.mark.e2e

PROTOCOLS = ["grpc", "http/protobuf"]


def assert_stats_request_traced(receiver: OtlpReceiver, app: AppProcess) -> ReceivedSpan:
    response = app.request("GET", "/stats/")
    assert response.status == 200, response.text
    server = server_span_for(receiver, "/stats/")
    receiver.wait_for_spans(lambda s: s.parent_span_id == server.span_id, count=5, timeout=10)
    children = receiver.children_of(server)
    sql = [c for c in children if stable_value(c.attributes, "db.system.name") == "postgresql"]
    redis = [c for c in children if stable_value(c.attributes, "db.system.name") == "redis"]
    assert (len(sql), len(redis), len(children)) == (3, 2, 5), receiver.describe()
    assert all(c.kind == "SPAN_KIND_CLIENT" and c.trace_id == server.trace_id for c in children)
    assert all(
        server.start_time_unix_nano <= c.start_time_unix_nano <= server.end_time_unix_nano for c in children
    )
    assert server.attributes.get("http.route") == "stats/"
    assert stable_value(server.attributes, "http.response.status_code") == 200
    assert server.attributes.get("hms.db.query_count") == 3
    assert all(isinstance(c.attributes.get("hms.db.fingerprint"), str) for c in sql)
    assert server.resource.get("telemetry.distro.name") == "hms-otel-agent"
    assert server.resource.get("service.name")
    return server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_runserver_with_autoreloader(
    protocol: str, otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    app = run_sample(runserver, otlp_env(otlp_receiver, protocol), stop_signal=signal.SIGINT)
    server = assert_stats_request_traced(otlp_receiver, app)
    assert server.transport == ("grpc" if protocol == "grpc" else "http")
    # The request was served by the autoreloader's child, not the process hms-otel-run exec'd.
    assert server.resource["process.pid"] != app.pid
    assert server.resource["service.name"] == "sample"


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gunicorn_two_workers(
    protocol: str, preload: bool, otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    extra = ["-w", "2", *(["--preload"] if preload else [])]
    app = run_sample(lambda port: gunicorn(port, *extra), otlp_env(otlp_receiver, protocol))
    assert_stats_request_traced(otlp_receiver, app)
    # Concurrent requests: while one sync worker is busy, the other accepts.
    pids: set[int] = set()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(10):
            statuses = list(pool.map(lambda _: app.request("GET", "/encounters/?limit=20").status, range(8)))
            assert statuses == [200] * 8
            servers = otlp_receiver.wait_for_spans(
                lambda s: s.kind == "SPAN_KIND_SERVER" and s.name.startswith("GET encounters"), count=8
            )
            pids = {int(s.resource["process.pid"]) for s in servers}  # type: ignore[arg-type]
            if len(pids) >= 2:
                break
    assert len(pids) == 2, f"server spans came from {pids}; expected both workers"
    assert app.pid not in pids  # the master serves nothing


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_uvicorn_asgi(
    protocol: str, otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    app = run_sample(uvicorn, otlp_env(otlp_receiver, protocol))
    assert_stats_request_traced(otlp_receiver, app)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_opentelemetry_instrument_with_our_distro(
    protocol: str, otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    env = {
        **otlp_env(otlp_receiver, protocol),
        "OTEL_PYTHON_DISTRO": "hms_otel",
        "OTEL_PYTHON_CONFIGURATOR": "hms_otel",
    }
    app = run_sample(
        lambda port: [venv_executable("opentelemetry-instrument"), *runserver(port, "--noreload")],
        env,
        agent=False,
        stop_signal=signal.SIGINT,
    )
    assert_stats_request_traced(otlp_receiver, app)
    assert "Settings already configured" not in app.stderr


def test_service_name_from_environment_wins(
    otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    env = {
        **otlp_env(otlp_receiver, "http/protobuf"),
        "OTEL_SERVICE_NAME": "hms-web",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging,service.version=2.1",
    }
    app = run_sample(lambda port: gunicorn(port, "-w", "1"), env)
    app.request("GET", "/health/")
    span = server_span_for(otlp_receiver, "/health/")
    assert span.resource["service.name"] == "hms-web"
    assert span.resource["service.version"] == "2.1"
    assert span.resource["deployment.environment.name"] == "staging"
    assert span.resource["telemetry.distro.version"]
    assert os.path.basename(str(span.resource["process.executable.name"])).startswith("python")
