"""Servers and process trees: every worker of a pre-fork or multi-process server traces its own
requests exactly once, and a Python process started by the application starts its own agent
exactly once. (gunicorn sync with and without --preload and runserver's autoreloader are in
tests/e2e/test_servers.py; the findings of threaded and ASGI servers in test_load.py.)"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, run, venv_executable

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
        sql = [c for c in children if c.attributes.get("db.system") == "postgresql"]
        cache = [c for c in children if c.attributes.get("db.system") == "redis"]
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
            lambda s, role=role: f"AS {role}_query" in str(s.attributes.get("db.statement", ""))
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
