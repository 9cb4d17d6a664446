"""Bounded memory under every backend failure, in CI (the long version: scripts/soak_faults.py,
figures in docs/reliability.md).

A script under hms-otel-run ends spans as fast as one thread can (a server span with 10 SQL
children, ~1 ms apart) against a backend failing in each mode of scripts/soak_faults.py, over
OTLP/HTTP and gRPC: an https:// endpoint on a plain-HTTP server, a refused connection, a backend that
answers after the exporter's timeout, 503/429 with retries, a backend that never answers. The script
measures what the Python heap holds (tracemalloc, started after the agent, so it counts the queue,
the batches in flight and whatever the exporters keep) once the queue had time to fill up and at the
end: the growth in between must stay under what the cap allows -- the queue (OTEL_BSP_MAX_QUEUE_SIZE)
plus one batch in flight, at a generous size per span. RSS is reported alongside (glibc and OpenSSL
arenas make it noisy on a short run; the soak script shows it flat over minutes).

Also here: a late answer is counted as delivered, and a gunicorn master with two workers exits within
one shutdown timeout against a stalled backend (a deadline shared by the run's processes).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess, hermetic_env, venv_executable

from .conftest import gunicorn, start_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from soak_faults import FaultBackend

pytestmark = pytest.mark.e2e

QUEUE, BATCH = 256, 64
TIMEOUT_MS = 500  # the exporter's; it waits for an answer up to twice that
SPAN_BYTES = 8 * 1024  # generous: a span of this script holds ~2-3 KiB in the heap
SECONDS = 3.0
SCRIPT = """
import json, sys, time, tracemalloc
from opentelemetry import trace
from hms_otel_agent import agent
tracemalloc.start()
tracer = trace.get_tracer("fault-memory")
text = "SELECT p.id, p.name FROM hms_patient p WHERE p.ward_id = ? AND p.active ORDER BY p.id LIMIT ?"
start = time.monotonic(); samples = []; next_sample = 0.0
while (now := time.monotonic() - start) < float(sys.argv[1]):
    with tracer.start_as_current_span("GET /patients/{pk}/", kind=trace.SpanKind.SERVER):
        for i in range(10):
            with tracer.start_as_current_span("SELECT hms_patient", kind=trace.SpanKind.CLIENT) as q:
                q.set_attribute("db.query.text", text)
    time.sleep(0.001)
    if now >= next_sample:
        rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
        samples.append((now, tracemalloc.get_traced_memory()[0], rss * 1024))
        next_sample += 0.5
batch = agent.current_pipeline().batch_processors[0]
print(json.dumps({"samples": samples, "dropped": batch.dropped, "max_queue": batch.max_queue_length}))
"""
FAILURES = ("tls", "refused", "slow", "retry", "stall")


def run_script(tmp_path: Path, mode: str, protocol: str) -> dict:
    backend = FaultBackend(mode, delay_s=1.5 * TIMEOUT_MS / 1000)  # slow: late, within the wait
    script = tmp_path / f"spans_{mode}_{protocol.split('/')[0]}.py"
    script.write_text(SCRIPT)
    env = hermetic_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": backend.endpoint(protocol),
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(TIMEOUT_MS),
            "OTEL_BSP_MAX_QUEUE_SIZE": str(QUEUE),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": "1000",
            "HMS_OTEL_LIVE_LOG": "false",
        }
    )
    try:
        started = time.monotonic()
        result = subprocess.run(
            [venv_executable("hms-otel-run"), sys.executable, str(script), str(SECONDS)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - started
    finally:
        backend.stop()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out.update(mode=mode, protocol=protocol, elapsed=elapsed, requests=backend.requests, stderr=result.stderr)
    return out


def test_memory_stays_within_the_cap_under_every_backend_failure(tmp_path: Path) -> None:
    cases = [(mode, protocol) for mode in ("healthy", *FAILURES) for protocol in ("http/protobuf", "grpc")]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda case: run_script(tmp_path, *case), cases))
    cap_bytes = (QUEUE + BATCH) * SPAN_BYTES
    report = []
    for run in runs:
        samples = run["samples"]
        settled = next(s for s in samples if s[0] >= SECONDS * 0.4)
        end = samples[-1]
        growth = end[1] - settled[1]
        peak = max(s[1] for s in samples)
        report.append(
            f"{run['mode']:8} {run['protocol']:14} "
            f"heap {settled[1] / 2**20:5.1f} -> {end[1] / 2**20:5.1f} MiB "
            f"(peak {peak / 2**20:5.1f}), RSS {settled[2] / 2**20:5.1f} -> {end[2] / 2**20:5.1f} MiB, "
            f"dropped {run['dropped']}, export requests {run['requests']}"
        )
        assert run["max_queue"] <= QUEUE
        assert growth < cap_bytes, "\n".join(report)
        assert peak < 2 * cap_bytes + 8 * 2**20, "\n".join(report)  # the cap, plus the agent's own state
        if run["mode"] in ("tls", "refused", "retry", "stall"):
            assert run["dropped"]["export_failed"] + run["dropped"]["queue_full"] > 0, "\n".join(report)
            assert run["stderr"].count("cannot export traces") == 1, run["stderr"]
        if run["mode"] == "slow":
            # The backend answers after the timeout but within the wait: delivered, not failed.
            assert run["requests"] > 0 and run["dropped"]["export_failed"] == 0, "\n".join(report)
    print("\n".join(report))


def test_gunicorn_master_and_workers_exit_within_one_shutdown_timeout(
    sample_app_db: dict[str, str], otlp_receiver: OtlpReceiver, app_process: Callable[..., AppProcess]
) -> None:
    """SIGTERM to gunicorn with two workers whose backend never answers (30 s exporter timeout),
    compared with the same app whose backend answers: the workers and then the master each waited
    the whole shutdown timeout in turn; now the run shares one deadline."""
    timeout_s = 2.0
    with OtlpReceiver() as healthy:
        apps = []
        for receiver in (otlp_receiver, healthy):
            env = {
                **sample_app_db,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "30000",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
                "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": str(int(timeout_s * 1000)),
                "HMS_OTEL_LIVE_LOG": "false",
            }
            apps.append(start_sample(app_process, gunicorn, env, extra=("-w", "2"), wait=False))
        for app in apps:
            app.wait_http("/health/", timeout=60)
        otlp_receiver.set_mode("stall")
        for app in apps:
            for _ in range(6):
                assert app.request("GET", "/patients/?limit=5").status == 200
        time.sleep(0.5)  # the stalled app's queues and metrics now wait on its backend

        def stop(app: AppProcess) -> float:
            started = time.monotonic()
            assert app.stop(signal.SIGTERM, timeout=30) == 0
            return time.monotonic() - started

        with ThreadPoolExecutor(2) as pool:
            stalled_s, healthy_s = pool.map(stop, apps)
        otlp_receiver.set_mode("ok")
    # One shutdown timeout more than the same stop with a healthy backend (gunicorn's own stopping
    # and the interpreters' exits take seconds on a busy machine); waiting in turn took two more.
    assert stalled_s < healthy_s + 1.6 * timeout_s, f"exit took {stalled_s:.1f} s, healthy {healthy_s:.1f} s"
