"""The agent without the launcher (`hms_otel_agent.start()`), and standard OTEL_* switches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess, run, venv_executable

from hms_otel_agent.signals.semconv import stable_value

from .conftest import gunicorn, otlp_env, server_span_for

pytestmark = pytest.mark.e2e

GUNICORN_CONFIG = """
import hms_otel_agent

def post_fork(server, worker):
    first = hms_otel_agent.start()
    again = hms_otel_agent.start()
    server.log.info("hms-otel start() returned %s then %s", first, again)
"""


def test_start_in_gunicorn_post_fork(
    tmp_path: Path, otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    config_file = tmp_path / "gunicorn.conf.py"
    config_file.write_text(GUNICORN_CONFIG)
    app = run_sample(
        lambda port: gunicorn(port, "-w", "2", "-c", str(config_file)),
        otlp_env(otlp_receiver, "grpc"),
        agent=False,
    )
    response = app.request("GET", "/stats/")
    assert response.status == 200
    server = server_span_for(otlp_receiver, "/stats/")
    otlp_receiver.wait_for_spans(lambda s: s.parent_span_id == server.span_id, count=5)
    assert len(otlp_receiver.children_of(server)) == 5  # started twice, instrumented once
    assert app.stderr.count("hms-otel start() returned True then False") == 2  # one per worker


def test_disabled_instrumentations_and_headers(
    otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    env = {
        **otlp_env(otlp_receiver, "http/protobuf"),
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-hms-tenant=ward-4b",
    }
    app = run_sample(lambda port: gunicorn(port, "-w", "1"), env)
    assert app.request("GET", "/stats/").status == 200
    server = server_span_for(otlp_receiver, "/stats/")
    otlp_receiver.wait_for_spans(lambda s: s.parent_span_id == server.span_id, count=3)
    systems = sorted(
        str(stable_value(c.attributes, "db.system.name")) for c in otlp_receiver.children_of(server)
    )
    assert systems == ["postgresql"] * 3
    headers = [r.headers for r in otlp_receiver.requests() if r.signal == "traces"]
    assert headers and all(h.get("x-hms-tenant") == "ward-4b" for h in headers)


SCRIPT = """
import os, psycopg2
from opentelemetry import trace
with trace.get_tracer("job").start_as_current_span("job"):
    psycopg2.connect(os.environ["DATABASE_URL"]).cursor().execute("SELECT 1")
print("done")
"""


@pytest.mark.parametrize(
    "switch",
    [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_SAMPLER": "always_off"}],
    ids=["sdk-disabled", "sampler-always-off"],
)
def test_switches_that_mean_no_traces(
    switch: dict[str, str], tmp_path: Path, otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {"DATABASE_URL": sample_app_db["DATABASE_URL"], **otlp_env(otlp_receiver, "grpc"), **switch}
    result = run([venv_executable("hms-otel-run"), "python", str(script)], env=env, timeout=60)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr
    assert otlp_receiver.spans() == []
    # A sampler keeps the SDK running, so spans of a sampled-in trace would arrive: check the control.
    control = run(
        [venv_executable("hms-otel-run"), "python", str(script)],
        env={k: v for k, v in env.items() if k not in switch},
        timeout=60,
    )
    assert control.returncode == 0
    assert {s.name for s in otlp_receiver.wait_for_spans(count=2)} == {"job", "SELECT"}
