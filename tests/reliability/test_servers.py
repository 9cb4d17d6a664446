"""Servers and process trees: every worker of a pre-fork or multi-process server traces its own
requests exactly once, and a Python process started by the application starts its own agent
exactly once. (gunicorn sync with and without --preload and runserver's autoreloader are in
tests/e2e/test_servers.py; the findings of threaded and ASGI servers in test_load.py.)"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, run, venv_executable

from hms_otel_agent.signals.semconv import stable_value

from .conftest import FAST_EXPORT, gunicorn, start_sample, uvicorn

pytestmark = pytest.mark.e2e

SPAWNER = Path(__file__).parent / "scripts" / "spawner.py"


def stats_children(receiver: OtlpReceiver, server: ReceivedSpan) -> list[ReceivedSpan]:
    receiver.wait_for_spans(lambda s: s.parent_span_id == server.span_id, count=5, timeout=20)
    return receiver.children_of(server)


@pytest.mark.parametrize(
    "build, extra",
    [(uvicorn, ["--workers", "2"]), (gunicorn, ["-k", "gthread", "-w", "2", "--threads", "4"])],
    ids=["uvicorn-workers", "gunicorn-gthread"],
)
def test_each_worker_traces_its_requests_once(
    build: Callable[..., list[str]],
    extra: list[str],
    otlp_receiver: OtlpReceiver,
    app_process: Callable[..., AppProcess],
    sample_app_db: dict[str, str],
) -> None:
    env = {
        **sample_app_db,
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    app = start_sample(app_process, build, env, extra=extra)
    pids: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            statuses = list(pool.map(lambda _: app.request("GET", "/stats/").status, range(16)))
            assert statuses == [200] * 16
            servers = otlp_receiver.wait_for_spans(
                lambda s: s.kind == "SPAN_KIND_SERVER" and s.attributes.get("http.route") == "stats/",
                count=16,
            )
            pids = {int(s.resource["process.pid"]) for s in servers}  # type: ignore[arg-type]
            if len(pids) >= 2:
                break
    assert len(pids) == 2, f"server spans came from {pids}; expected both workers"
    assert app.pid not in pids
    servers = [s for s in otlp_receiver.spans() if s.attributes.get("http.route") == "stats/"]
    for server in servers[:10]:
        children = stats_children(otlp_receiver, server)
        sql = [c for c in children if stable_value(c.attributes, "db.system.name") == "postgresql"]
        cache = [c for c in children if stable_value(c.attributes, "db.system.name") == "redis"]
        assert (len(sql), len(cache), len(children)) == (3, 2, 5), otlp_receiver.describe()
        assert all(c.resource["process.pid"] == server.resource["process.pid"] for c in children)
    # One agent per process: one service.instance.id per pid, none shared between workers.
    instances: dict[object, set[object]] = {}
    for span in otlp_receiver.spans():
        instances.setdefault(span.resource["process.pid"], set()).add(span.resource["service.instance.id"])
    assert all(len(ids) == 1 for ids in instances.values()), instances
    assert len({i for ids in instances.values() for i in ids}) == len(instances)


def test_python_subprocesses_start_their_own_agent_once(
    otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **sample_app_db,
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "HMS_OTEL_LOG_LEVEL": "debug",
    }
    result = run([venv_executable("hms-otel-run"), "--", sys.executable, str(SPAWNER)], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    roles = ["parent", "child", "nested", "spawned"]
    printed = {line["role"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert sorted(printed) == sorted(roles)
    assert not any(p["started_again"] for p in printed.values())  # already started, once
    assert len({p["pid"] for p in printed.values()}) == 4
    for role in roles:
        [owner] = otlp_receiver.wait_for_spans(lambda s, role=role: s.name == role)
        queries = otlp_receiver.wait_for_spans(
            lambda s, role=role: f"AS {role}_query" in str(stable_value(s.attributes, "db.query.text"))
        )
        assert len(queries) == 1, f"{role}: {len(queries)} spans for one query"
        assert queries[0].parent_span_id == owner.span_id
        assert owner.resource["process.pid"] == printed[role]["pid"]
    # Each process exported under one identity of its own.
    instances: dict[object, set[object]] = {}
    for span in otlp_receiver.spans():
        instances.setdefault(span.resource["process.pid"], set()).add(span.resource["service.instance.id"])
    assert len(instances) == 4 and all(len(ids) == 1 for ids in instances.values()), instances
    assert "Overriding of current" not in result.stderr and "Traceback" not in result.stderr
    # Configuration problems and the destination are announced once per process tree.
    assert result.stderr.count("hms-otel: exporting to") <= 1


def test_sigterm_does_not_lose_the_last_spans(
    otlp_receiver: OtlpReceiver, app_process: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> None:
    """uvicorn ends with SIGTERM's default action after its graceful shutdown (no atexit): the
    spans still queued (OTEL_BSP_SCHEDULE_DELAY is 5 s by default) are flushed first."""
    env = {**sample_app_db, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint}
    app = start_sample(app_process, uvicorn, env, extra=["--no-access-log"])
    assert app.request("GET", "/stats/").status == 200
    assert app.stop(signal.SIGTERM) == -signal.SIGTERM  # ends as it always did
    assert otlp_receiver.spans(), "spans queued at SIGTERM were lost"
    otlp_receiver.wait_for_spans(lambda s: s.attributes.get("http.route") == "stats/", timeout=5)


SIGTERM_SCRIPT = """
import signal, sys, time
from opentelemetry import trace
if sys.argv[1] == "own-handler":
    signal.signal(signal.SIGTERM, lambda *_: (print("own handler", flush=True), sys.exit(3)))
with trace.get_tracer("job").start_as_current_span("before-sigterm"):
    pass
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("handler", ["default", "own-handler"])
def test_sigterm_in_a_script(handler: str, otlp_receiver: OtlpReceiver, tmp_path: Path) -> None:
    """With SIGTERM's default action the script's spans are flushed, then it dies of SIGTERM as
    before; an application's own SIGTERM handler is left alone."""
    script = tmp_path / "job.py"
    script.write_text(SIGTERM_SCRIPT)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint}
    command = [venv_executable("hms-otel-run"), "--", sys.executable, str(script), handler]
    with AppProcess(command, env=env, log_dir=tmp_path, name=handler) as app:
        wait_for_output(app, "ready")
        code = app.stop(signal.SIGTERM)
    if handler == "default":
        assert code == -signal.SIGTERM
    else:
        assert code == 3 and "own handler" in app.stdout
    otlp_receiver.wait_for_spans(lambda s: s.name == "before-sigterm", timeout=5)


def wait_for_output(app: AppProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in app.stdout:
        assert time.monotonic() < deadline and app.running, app.output_tail()
        time.sleep(0.05)
