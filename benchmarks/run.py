"""End-to-end overhead benchmark of the agent against plain OpenTelemetry and no tracing.

``python benchmarks/run.py [--quick] [--rounds R] [--requests N] [--duration S]``

Drives the bundled sample app (gunicorn, 2 sync workers, real PostgreSQL and Redis on loopback) in
three modes, interleaved round by round so that machine noise hits all three alike:

``none``   no instrumentation: ``gunicorn hms_otel_agent.sample.wsgi ...``
``otel``   ``opentelemetry-instrument gunicorn ...`` with the plain SDK (the default distro and the
           SDK's own configurator, never the hms_otel entry points), only the django, psycopg,
           psycopg2 and redis instrumentations, OTLP/HTTP to the sink
``hms``    ``hms-otel-run gunicorn ...`` with every signal on (defaults), OTLP/HTTP to the sink

Both instrumented modes export to a real OTLP/HTTP receiver on loopback (``otlp_sink.py``, its own
process) with the same exporter settings, so serialization and export cost count.

Per scenario (the N+1-heavy ``/encounters/``, its optimized twin, the cache-heavy
``/patients/cached/`` and a realistic mix) and mode: per-request latency (median, p99; serial
requests), CPU per request of the gunicorn workers (``/proc/<pid>/stat`` utime+stime, export threads
included), throughput at fixed concurrency, spans received per request; per mode: peak RSS of the
workers. Each as a ratio to both baselines. Then the micro-benchmarks and a py-spy profile of the
workers under ``/encounters/`` load (where the remaining cost goes).

Needs a PostgreSQL server it may create a database on (``--database-url``, default
``postgresql://postgres@127.0.0.1:5432/postgres``; a database ``hms_bench_<random>`` is created,
seeded and dropped) and a Redis database it may flush (``--redis-url``, default
``redis://127.0.0.1:6379/11``). Results: a table on stdout and ``benchmarks/results/<date>.json``.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import profile_modes  # noqa: E402

VENV_BIN = Path(sys.executable).parent
APP = "hms_otel_agent.sample.wsgi:application"
MODES = ("none", "otel", "hms")
MODE_TITLES = {"none": "none", "otel": "otel-instrument", "hms": "hms-otel-run"}
WANTED_INSTRUMENTATIONS = frozenset(("django", "psycopg", "psycopg2", "redis"))
BASELINE_SDK_DIR = HERE / "baseline_sdk"  # registers the plain SDK configurator as "hms_bench_sdk"
BASELINE_SDK_NAME = "hms_bench_sdk"
# The realistic mix: mostly well-written pages, some anti-patterns, detail views, health checks.
MIX_WEIGHTS = (
    ("/encounters/optimized/", 4),
    ("/patients/cached/optimized/", 3),
    ("/patients/{pk}/summary/", 5),
    ("/stats/", 3),
    ("/health/", 2),
    ("/encounters/", 1),
    ("/patients/cached/", 1),
    ("/patients/optimized/", 1),
)
SCENARIOS = ("encounters", "encounters_optimized", "cached", "mix")
SCENARIO_TITLES = {
    "encounters": "/encounters/ (N+1)",
    "encounters_optimized": "/encounters/optimized/",
    "cached": "/patients/cached/",
    "mix": "mix",
}


# --- small helpers ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or value != value or base != base:
        return None
    return round(value / base, 3)


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, dead or alive) in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


# Where the agent (and the sample app) is imported from: the working tree, or with --agent-ref a
# `git archive` of that commit (first on PYTHONPATH of every process the benchmark starts).
SOURCE_ROOT: Path | None = None


def hermetic_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HMS_OTEL_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    paths = [p for p in (extra.pop("PYTHONPATH", ""), str(SOURCE_ROOT or "")) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def snapshot(ref: str, into: Path) -> tuple[Path, str]:
    """The repository at `ref` (``git archive``), with the current benchmarks/ on top, so that
    one benchmark version can measure any commit of the agent."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.rmtree(into / "benchmarks", ignore_errors=True)
    shutil.copytree(HERE, into / "benchmarks", ignore=shutil.ignore_patterns("results", "__pycache__"))
    return into, sha


# --- database and redis -------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.contextmanager
def bench_database(server_url: str, redis_url: str, patients: int) -> Iterator[tuple[str, list[int]]]:
    """Create, migrate and seed ``hms_bench_<random>``; flush the Redis db; undo both at the end."""
    import psycopg
    import redis
    from psycopg import sql

    name = f"hms_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
        env = hermetic_env({"DATABASE_URL": url, "REDIS_URL": redis_url})
        for command in (["migrate", "--no-input", "-v", "0"], ["seed_hms", "--patients", str(patients)]):
            subprocess.run(
                [sys.executable, "-m", "hms_otel_agent.sample", *command],
                cwd=SOURCE_ROOT or ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
        with psycopg.connect(url) as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM hms_patient ORDER BY id")]
        yield url, ids
    finally:
        with contextlib.suppress(Exception):
            client.flushdb()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        log(f"dropped database {name}, flushed {redis_url}")


# --- the OTLP sink -------------------------------------------------------------------------------


class Sink:
    """``otlp_sink.py`` in its own process, one port per instrumented mode."""

    def __init__(self, modes: list[str], log_dir: Path) -> None:
        self.ports = {mode: free_port() for mode in modes}
        args = [a for port in self.ports.values() for a in ("--port", str(port))]
        self.log = (log_dir / "sink.stderr").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "otlp_sink.py"), *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            env=hermetic_env({}),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready"):
            raise RuntimeError(f"OTLP sink did not start: {line!r}")
        self.control = next(iter(self.ports.values()))

    def endpoint(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.ports[mode]}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control}/stats", timeout=10) as resp:
            data = json.loads(resp.read())
        return {mode: data[str(port)] for mode, port in self.ports.items()}

    def spans(self, mode: str) -> int:
        return int(self.stats()[mode]["spans"])

    def inspect(self, on: bool) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control}/inspect?on={int(on)}", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


# --- the servers --------------------------------------------------------------------------------


def installed_instrumentations() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="opentelemetry_instrumentor")})


def gunicorn_args(port: int, workers: int) -> list[str]:
    args = [APP, "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    probe = subprocess.run([str(VENV_BIN / "gunicorn"), "--help"], capture_output=True, text=True)
    if "--no-control-socket" in probe.stdout:  # gunicorn >= 24: one control socket per user otherwise
        args.append("--no-control-socket")
    return args


@dataclass
class Server:
    mode: str
    port: int
    command: list[str]
    env_shown: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_dir: Path
    rss_after_warmup_kb: dict[int, int] = field(default_factory=dict)

    @property
    def workers(self) -> list[int]:
        return children_of(self.proc.pid)

    def cpu(self) -> tuple[float, tuple[int, ...]]:
        pids = tuple(self.workers)
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += proc_cpu_seconds(pid)
        return total, pids

    def tail(self) -> str:
        path = self.log_dir / f"{self.mode}.stderr"
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:]) if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def start_server(
    mode: str,
    sink: Sink | None,
    db_url: str,
    redis_url: str,
    workers: int,
    bsp_delay_ms: int,
    log_dir: Path,
    hms_env: dict[str, str] | None = None,
) -> Server:
    port = free_port()
    shown: dict[str, str] = {}
    if mode == "none":
        command = [str(VENV_BIN / "gunicorn"), *gunicorn_args(port, workers)]
    else:
        assert sink is not None
        shown = {
            "OTEL_SERVICE_NAME": f"hms-bench-{mode}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint(mode),
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_BSP_SCHEDULE_DELAY": str(bsp_delay_ms),
        }
        if mode == "otel":
            disabled = [n for n in installed_instrumentations() if n not in WANTED_INSTRUMENTATIONS]
            shown.update(
                {
                    "OTEL_PYTHON_DISTRO": BASELINE_SDK_NAME,
                    "OTEL_PYTHON_CONFIGURATOR": BASELINE_SDK_NAME,
                    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(disabled),
                    "PYTHONPATH": str(BASELINE_SDK_DIR),
                }
            )
            command = [str(VENV_BIN / "opentelemetry-instrument"), "gunicorn", *gunicorn_args(port, workers)]
        else:
            shown.update(hms_env or {})
            command = [str(VENV_BIN / "hms-otel-run"), "--", "gunicorn", *gunicorn_args(port, workers)]
    env = hermetic_env(
        {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "hms_otel_agent.sample.settings",
            **shown,
        }
    )
    with (log_dir / f"{mode}.stdout").open("wb") as out, (log_dir / f"{mode}.stderr").open("wb") as err:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=log_dir,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Server(mode, port, command, shown, proc, log_dir)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{mode} server exited ({proc.returncode}):\n{server.tail()}")
        try:
            status, _ = loadgen.get("127.0.0.1", port, "/health/", timeout=5)
            if status == 200 and len(server.workers) >= workers:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{mode} server did not answer /health/ within 60 s:\n{server.tail()}")
        time.sleep(0.2)


# --- scenarios ------------------------------------------------------------------------------------


def path_function(scenario: str, patient_ids: list[int]) -> loadgen.PathFor:
    if scenario == "encounters":
        return lambda i: "/encounters/"
    if scenario == "encounters_optimized":
        return lambda i: "/encounters/optimized/"
    if scenario == "cached":
        return lambda i: "/patients/cached/"
    sequence = [path for path, weight in MIX_WEIGHTS for _ in range(weight)]
    random.Random(7).shuffle(sequence)
    pks = patient_ids[: min(len(patient_ids), 50)] or [1]

    def mix(i: int) -> str:
        return sequence[i % len(sequence)].replace("{pk}", str(pks[(i * 7) % len(pks)]))

    return mix


@dataclass
class Phase:
    scenario: str
    mode: str
    round: int
    serial: loadgen.LoadResult
    loaded: loadgen.LoadResult
    cpu_s: float
    spans: int
    workers_changed: bool
    wall_s: float

    @property
    def requests(self) -> int:
        return self.serial.requests + self.loaded.requests


def settle(sink: Sink | None, mode: str, bsp_delay_ms: int) -> None:
    """Wait until the mode's batch processors have exported what the phase produced."""
    if sink is None or mode == "none":
        return
    time.sleep(bsp_delay_ms / 1000 + 0.1)
    last, stable = sink.spans(mode), 0
    deadline = time.monotonic() + 10
    while stable < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = sink.spans(mode)
        stable = stable + 1 if now == last else 0
        last = now


def run_phase(
    server: Server, sink: Sink | None, scenario: str, path_for: loadgen.PathFor, round_: int, args: Any
) -> Phase:
    began = time.perf_counter()
    cpu0, pids0 = server.cpu()
    spans0 = sink.spans(server.mode) if sink and server.mode != "none" else 0
    # A mix must send the same paths in every mode: its serial pass is bounded by count only.
    cap = args.serial_max_seconds if scenario != "mix" else max(30.0, args.serial_max_seconds)
    serial = loadgen.serial(
        "127.0.0.1", server.port, path_for, args.requests, cap, start=round_ * args.requests
    )
    loaded = loadgen.concurrent(
        "127.0.0.1",
        server.port,
        path_for,
        args.concurrency,
        args.duration,
        args.max_requests,
        start=1_000_000 + round_ * args.max_requests,
    )
    settle(sink, server.mode, args.bsp_delay_ms)
    cpu1, pids1 = server.cpu()
    spans1 = sink.spans(server.mode) if sink and server.mode != "none" else 0
    return Phase(
        scenario,
        server.mode,
        round_,
        serial,
        loaded,
        cpu1 - cpu0,
        spans1 - spans0,
        pids0 != pids1,
        time.perf_counter() - began,
    )


def warm_up(server: Server, path_for: loadgen.PathFor, requests: int, seconds: float) -> None:
    loadgen.serial("127.0.0.1", server.port, path_for, requests, seconds)
    loadgen.concurrent("127.0.0.1", server.port, path_for, 4, seconds / 2, requests * 2)


# --- aggregation ----------------------------------------------------------------------------------


def aggregate(phases: list[Phase]) -> dict[str, Any]:
    serial_ms = [ns / 1e6 for p in phases for ns in p.serial.latencies_ns]
    loaded_ms = [ns / 1e6 for p in phases for ns in p.loaded.latencies_ns]
    requests = sum(p.requests for p in phases)
    loaded_requests = sum(p.loaded.requests for p in phases)
    loaded_seconds = sum(p.loaded.elapsed_s for p in phases)
    cpu = sum(p.cpu_s for p in phases)
    spans = sum(p.spans for p in phases)
    per_round = [
        {
            "round": p.round,
            "latency_p50_ms": round(percentile([ns / 1e6 for ns in p.serial.latencies_ns], 50), 3),
            "cpu_ms_per_request": round(p.cpu_s / p.requests * 1e3, 3) if p.requests else None,
            "throughput_rps": round(p.loaded.requests / p.loaded.elapsed_s, 2)
            if p.loaded.elapsed_s
            else None,
            "spans_per_request": round(p.spans / p.requests, 2) if p.requests else None,
            "requests": p.requests,
            "errors": p.serial.errors + p.loaded.errors,
            "wall_s": round(p.wall_s, 2),
        }
        for p in phases
    ]
    return {
        "latency_ms": {
            "p50": round(percentile(serial_ms, 50), 3),
            "p99": round(percentile(serial_ms, 99), 3),
            "mean": round(statistics.fmean(serial_ms), 3) if serial_ms else None,
            "n": len(serial_ms),
        },
        "loaded_latency_ms": {
            "p50": round(percentile(loaded_ms, 50), 3),
            "p99": round(percentile(loaded_ms, 99), 3),
            "n": len(loaded_ms),
        },
        "cpu_ms_per_request": round(cpu / requests * 1e3, 3) if requests else None,
        "throughput_rps": round(loaded_requests / loaded_seconds, 2) if loaded_seconds else None,
        "spans_per_request": round(spans / requests, 2) if requests else None,
        "requests": requests,
        "errors": sum(p.serial.errors + p.loaded.errors for p in phases),
        "first_error": next(
            (e for p in phases for e in (p.serial.first_error, p.loaded.first_error) if e), ""
        ),
        "workers_changed": any(p.workers_changed for p in phases),
        "per_round": per_round,
    }


METRICS = (
    # key, label, extractor, better ("lower" / "higher")
    ("latency_p50_ms", "latency p50 (ms)", lambda a: a["latency_ms"]["p50"], "lower"),
    ("latency_p99_ms", "latency p99 (ms)", lambda a: a["latency_ms"]["p99"], "lower"),
    ("cpu_ms_per_request", "CPU / request (ms)", lambda a: a["cpu_ms_per_request"], "lower"),
    ("throughput_rps", "throughput (req/s)", lambda a: a["throughput_rps"], "higher"),
    ("spans_per_request", "spans / request", lambda a: a["spans_per_request"], "lower"),
)


def ratios(scenario_results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for key, _label, get, _better in METRICS:
        values = {mode: get(result) for mode, result in scenario_results.items()}
        out[key] = {
            "hms/none": ratio(values.get("hms"), values.get("none")),
            "hms/otel": ratio(values.get("hms"), values.get("otel")),
            "otel/none": ratio(values.get("otel"), values.get("none")),
        }
    # Per-round ratios (the phases of one round ran next to each other): their spread says how
    # noisy the machine was; their median is a second estimate, robust to one disturbed round.
    per_round: dict[str, dict[str, list[float]]] = {}
    for metric in ("cpu_ms_per_request", "latency_p50_ms", "throughput_rps"):
        by_round: dict[int, dict[str, float]] = {}
        for mode, result in scenario_results.items():
            for row in result["per_round"]:
                if row.get(metric):
                    by_round.setdefault(row["round"], {})[mode] = row[metric]
        pairs: dict[str, list[float]] = {"hms/otel": [], "hms/none": [], "otel/none": []}
        for values in by_round.values():
            for name, found in pairs.items():
                a, b = name.split("/")
                if a in values and b in values:
                    found.append(round(values[a] / values[b], 3))
        per_round[metric] = pairs
    out["per_round"] = per_round  # type: ignore[assignment]
    out["median_of_round_ratios"] = {  # type: ignore[assignment]
        metric: {name: round(statistics.median(v), 3) if v else None for name, v in pairs.items()}
        for metric, pairs in per_round.items()
    }
    out["cpu_ratio_per_round"] = per_round["cpu_ms_per_request"]  # type: ignore[assignment]
    return out


# --- output ------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(results: dict[str, Any]) -> str:
    modes = [m for m in MODES if m in results["modes"]]
    lines = []
    head = f"{'scenario':<24} {'metric':<20}" + "".join(f"{MODE_TITLES[m]:>16}" for m in modes)
    head += f"{'hms/none':>10}{'hms/otel':>10}{'otel/none':>11}"
    lines.append(head)
    lines.append("-" * len(head))
    for scenario in results["scenarios"]:
        by_mode = results["scenarios"][scenario]["modes"]
        rat = results["scenarios"][scenario]["ratios"]
        for index, (key, label, get, _better) in enumerate(METRICS):
            title = SCENARIO_TITLES[scenario] if index == 0 else ""
            row = f"{title:<24} {label:<20}"
            for mode in modes:
                row += f"{_fmt(get(by_mode[mode])) if mode in by_mode else '-':>16}"
            r = rat[key]
            row += f"{_x(r['hms/none']):>10}{_x(r['hms/otel']):>10}{_x(r['otel/none']):>11}"
            lines.append(row)
        spread = rat["cpu_ratio_per_round"]["hms/otel"]
        if spread:
            lines.append(
                f"{'':<24} {'(CPU hms/otel per round: ' + ', '.join(f'{v:.2f}' for v in spread) + ')'}"
            )
        lines.append("")
    memory = results.get("memory", {})
    if memory:
        row = f"{'all':<24} {'peak RSS (MB/worker)':<20}"
        values = {m: memory[m]["peak_rss_mb_per_worker"] for m in modes if m in memory}
        for mode in modes:
            row += f"{_fmt(values.get(mode), 1):>16}"
        row += f"{_x(ratio(values.get('hms'), values.get('none'))):>10}"
        row += f"{_x(ratio(values.get('hms'), values.get('otel'))):>10}"
        row += f"{_x(ratio(values.get('otel'), values.get('none'))):>11}"
        lines.append(row)
        row = f"{'':<24} {'RSS growth (MB/wkr)':<20}"
        for mode in modes:
            row += f"{_fmt(memory.get(mode, {}).get('rss_growth_mb_per_worker'), 1):>16}"
        lines.append(row)
    return "\n".join(lines)


def machine_info(args: Any, db_server_url: str, redis_url: str) -> dict[str, Any]:
    from importlib.metadata import version

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": "",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as handle:
        info["mem_total_mb"] = int(handle.readline().split()[1]) // 1024
    packages = {}
    for name in (
        "Django",
        "gunicorn",
        "psycopg",
        "redis",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation",
        "opentelemetry-instrumentation-django",
        "opentelemetry-exporter-otlp-proto-http",
        "protobuf",
        "hms-otel-agent",
    ):
        with contextlib.suppress(Exception):
            packages[name] = version(name)
    info["packages"] = packages
    with contextlib.suppress(Exception):
        import psycopg
        import redis

        with psycopg.connect(db_server_url) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        info["redis"] = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    git: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "hms_otel_agent"], cwd=ROOT, capture_output=True, text=True
        ).stdout.splitlines()
        git["working_tree_changes_in_hms_otel_agent"] = [line[3:] for line in dirty]
    info["git"] = git
    return info


# --- verification and profile -------------------------------------------------------------------------


def verify_modes(servers: dict[str, Server], sink: Sink) -> dict[str, Any]:
    """Send one of each request to every instrumented mode with the sink looking inside the spans;
    fail if a mode is not what it claims to be (no DB/Redis/Django spans, the wrong distro)."""
    sink.inspect(True)
    try:
        before = sink.stats()
        for server in servers.values():
            for path in ("/stats/", "/encounters/", "/patients/cached/"):
                loadgen.get("127.0.0.1", server.port, path)
        time.sleep(0.2)
        for mode in servers:
            settle(sink, mode, 500)
        after = sink.stats()
    finally:
        sink.inspect(False)
    report: dict[str, Any] = {}
    problems = []
    for mode in servers:
        if mode == "none":
            continue
        stats = after[mode]
        report[mode] = {
            "spans": stats["spans"] - before[mode]["spans"],
            "scopes": stats["scopes"],
            "distros": stats["distros"],
            "hms_span_attributes": sorted(stats["hms_span_attributes"]),
            "events": stats["events"],
        }
        scopes = stats["scopes"]
        for scope in (
            "opentelemetry.instrumentation.django",
            "opentelemetry.instrumentation.psycopg",
            "opentelemetry.instrumentation.redis",
        ):
            if not scopes.get(scope):
                problems.append(f"{mode}: no spans from {scope}")
        if mode == "otel" and (set(stats["distros"]) != {""} or stats["hms_span_attributes"]):
            problems.append(f"otel: the hms_otel distro/agent is active (distros {stats['distros']})")
        if mode == "hms" and (
            set(stats["distros"]) != {"hms-otel-agent"} or not stats["events"].get("hms.n_plus_one")
        ):
            problems.append(f"hms: agent not active or no N+1 finding (distros {stats['distros']})")
    report["problems"] = problems
    return report


def profile(
    servers: dict[str, Server],
    sink: Sink | None,
    modes: list[str],
    seconds: float,
    rate: int,
    rounds: int,
    args: Any,
    log_dir: Path,
    cpu_ms: dict[str, float],
) -> dict[str, Any]:
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    scenario = getattr(args, "profile_scenario", "encounters")
    path_for = path_function(scenario, [])
    files: dict[str, list[str]] = {m: [] for m in modes}
    requests: dict[str, int] = dict.fromkeys(modes, 0)
    for round_ in range(rounds):
        for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:
            server = servers[mode]
            spies = []
            for pid in server.workers:
                out = log_dir / f"profile-{mode}-{round_}-{pid}.txt"
                spies.append(
                    subprocess.Popen(
                        [
                            spy,
                            *("record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"),
                            *("--full-filenames", "--nonblocking", "--gil", "-o", str(out)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                files[mode].append(str(out))
            time.sleep(0.7)  # py-spy attaches
            result = loadgen.concurrent("127.0.0.1", server.port, path_for, args.concurrency, seconds, 10**6)
            for proc in spies:
                proc.send_signal(signal.SIGINT)
            for proc in spies:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            requests[mode] += result.requests
            settle(sink, mode, args.bsp_delay_ms)
    summaries = {}
    for mode in modes:
        existing = [f for f in files[mode] if os.path.exists(f)]
        if existing:
            summaries[mode] = profile_modes.summarize(existing, rate, requests[mode])
    # py-spy --gil counts a GIL-holding thread the OS has descheduled, so on a busy machine its
    # totals exceed the CPU the workers used. Scaled: each mode's layers rescaled so that they add
    # up to the CPU per request measured for the profiled scenario in the interleaved rounds.
    for mode, summary in summaries.items():
        measured = cpu_ms.get(mode)
        total = summary["cpu_us_per_request"]
        if measured and total:
            factor = measured * 1e3 / total
            summary["scale_to_measured_cpu"] = round(factor, 3)
            summary["layers_scaled"] = {k: round(v * factor, 1) for k, v in summary["layers"].items()}
            summary["export_thread_scaled"] = {
                k: round(v * factor, 1) for k, v in summary["export_thread"].items()
            }
            summary["agent_inclusive_scaled"] = {
                k: round(v * factor, 1) for k, v in summary["agent_inclusive"].items()
            }
            summary["functions_scaled"] = {
                k: {"us": round(v["us"] * factor, 1), "layer": v["layer"]}
                for k, v in summary["functions"].items()
            }
    out: dict[str, Any] = {
        "endpoint": path_for(0),
        "rate_hz": rate,
        "seconds": seconds * rounds,
        "modes": summaries,
    }
    if "otel" in summaries and "hms" in summaries:
        key = "functions_scaled" if all("functions_scaled" in s for s in summaries.values()) else "functions"
        out["hms_vs_otel_functions"] = profile_modes.compare(summaries["otel"], summaries["hms"], 20, key)
        out["hms_vs_otel_functions_scaled"] = key == "functions_scaled"
    return out


def render_profile(prof: dict[str, Any]) -> str:
    if "modes" not in prof:
        return f"profile: {prof.get('skipped', 'not run')}"
    modes = prof["modes"]
    scaled = all("layers_scaled" in modes[m] for m in modes)
    key = "layers_scaled" if scaled else "layers"
    lines = [
        f"Profile of the workers under {prof['endpoint']} load (py-spy --gil), CPU us per request"
        + (" (scaled to the measured CPU per request)" if scaled else "")
    ]
    layer_names = list(profile_modes.APP_LAYERS) + list(profile_modes.TELEMETRY_LAYERS) + ["stdlib", "other"]
    lines.append(f"  {'layer':<38}" + "".join(f"{MODE_TITLES[m]:>16}" for m in modes))
    for layer in layer_names:
        lines.append(f"  {layer:<38}" + "".join(f"{modes[m][key].get(layer, 0.0):>16.0f}" for m in modes))
    for title, names in (
        ("= app", profile_modes.APP_LAYERS),
        ("= telemetry", profile_modes.TELEMETRY_LAYERS),
    ):
        lines.append(
            f"  {title:<38}"
            + "".join(f"{sum(modes[m][key].get(n, 0.0) for n in names):>16.0f}" for m in modes)
        )
    export_key = "export_thread_scaled" if scaled else "export_thread"
    parts = sorted({p for m in modes for p in modes[m].get(export_key, {})})
    if parts:
        lines.append("  export thread(s):")
        for part in parts:
            lines.append(
                f"    {part:<36}"
                + "".join(f"{modes[m].get(export_key, {}).get(part, 0.0):>16.0f}" for m in modes)
            )
    if "hms" in modes:
        agent_key = "agent_inclusive_scaled" if scaled else "agent_inclusive"
        lines.append("  agent functions (hms-otel-run), inclusive of what they call, without app work below:")
        for name, value in list(modes["hms"][agent_key].items())[:15]:
            lines.append(f"    {value:8.0f}  {name}")
    if "hms_vs_otel_functions" in prof:
        how = "scaled" if prof.get("hms_vs_otel_functions_scaled") else "unscaled"
        lines.append(
            f"  telemetry functions, self time ({how}): otel-instrument -> hms-otel-run, us/request:"
        )
        for row in prof["hms_vs_otel_functions"][:15]:
            lines.append(
                f"    {row['base_us']:8.0f} -> {row['us']:8.0f}  ({row['diff_us']:+.0f})  {row['function']}"
            )
    return "\n".join(lines)


def run_micro(quick: bool, database_url: str, log_dir: Path) -> dict[str, Any]:
    """Run each micro-benchmark script in its own process (they patch SDK classes)."""
    out: dict[str, Any] = {}
    scripts = [
        ("signals", HERE / "micro_signals.py", True),
        ("pipeline", HERE / "micro_pipeline.py", True),
        # Written alongside the ORM instrumentation: included when present, in the full run only
        # (it runs real queries and takes a minute). micro_cache.py is run on its own.
        ("orm_context", HERE / "micro_orm_context.py", False),
    ]
    for name, script, ours in scripts:
        if SOURCE_ROOT is not None:
            script = SOURCE_ROOT / "benchmarks" / script.name
        if not script.exists():
            continue
        if quick and not ours:
            out[name] = {
                "skipped": "--quick",
                "returncode": 0,
                "stdout": f"(skipped in --quick: {script.name})",
            }
            continue
        source = script.read_text(encoding="utf-8")
        json_path = log_dir / f"micro-{name}.json"
        command = [sys.executable, str(script)]
        if '"--json"' in source:
            command += ["--json", str(json_path)]
        if quick and '"--quick"' in source:
            command.append("--quick")
        if name == "orm_context" and '"--repeat"' in source:
            command += ["--repeat", "10"]
        log(f"micro-benchmark {script.name}")
        began = time.perf_counter()
        env = hermetic_env({"HMS_OTEL_TEST_DATABASE_URL": database_url})
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=300, cwd=SOURCE_ROOT or ROOT, env=env
            )
        except subprocess.TimeoutExpired as exc:
            out[name] = {"returncode": -1, "stdout": str(exc.stdout or ""), "stderr": "timed out after 300 s"}
            continue
        entry: dict[str, Any] = {
            "command": command[1:],
            "returncode": proc.returncode,
            "stdout": proc.stdout,
            "elapsed_s": round(time.perf_counter() - began, 1),
        }
        if proc.returncode != 0:
            entry["stderr"] = proc.stderr[-4000:]
        if json_path.exists():
            entry["results"] = json.loads(json_path.read_text())
        out[name] = entry
    return out


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="End-to-end overhead of hms-otel-run vs opentelemetry-instrument vs no instrumentation.",
        epilog="Full run: about 8-10 minutes; --quick: about 2. See docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds, short phases, no profile")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 4; quick 2)")
    parser.add_argument(
        "--requests", type=int, help="serial (latency) requests per phase (default 40; quick 10)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds of the fixed-concurrency (throughput) pass per phase (default 2.5; quick 1)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="client connections in the throughput pass"
    )
    parser.add_argument("--max-requests", type=int, default=5000, help="cap on requests per throughput pass")
    parser.add_argument(
        "--serial-max-seconds",
        type=float,
        help="seconds the serial pass may take at most (default 3; quick 1)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of none,otel,hms")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="subset of " + ",".join(SCENARIOS))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HMS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server (and maintenance db) where hms_bench_<random> may be created",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("HMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        help="a Redis database the benchmark may flush",
    )
    parser.add_argument("--patients", type=int, default=200, help="patients to seed")
    parser.add_argument("--bsp-delay-ms", type=int, default=500, help="OTEL_BSP_SCHEDULE_DELAY of both modes")
    parser.add_argument(
        "--profile", dest="profile", action="store_true", default=None, help="run the profile"
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profile")
    parser.add_argument("--profile-seconds", type=float, default=5.0, help="per mode and profile round")
    parser.add_argument("--profile-rounds", type=int, default=2)
    parser.add_argument(
        "--profile-scenario",
        default="encounters",
        choices=["encounters", "encounters_optimized", "cached"],
        help="the endpoint the profile drives (default: the N+1 list)",
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second per worker")
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    parser.add_argument("--output", help="JSON file (default benchmarks/results/<date>.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs and raw profiles")
    parser.add_argument(
        "--agent-ref",
        help="measure the agent (and sample app) of this git commit instead of the working tree",
    )
    parser.add_argument(
        "--hms-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an agent setting for the hms-otel-run mode only (repeatable): HMS_OTEL_COMPRESS_SPANS=true",
    )
    parser.add_argument(
        "--ignore-verification",
        action="store_true",
        help="go on when a mode is not what it should be (no spans, agent inactive)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 4)
    args.requests = args.requests or (10 if quick else 40)
    args.duration = args.duration or (1.0 if quick else 2.5)
    args.serial_max_seconds = args.serial_max_seconds or (1.0 if quick else 3.0)
    if args.profile is None:
        args.profile = not quick
    args.modes = [m for m in MODES if m in args.modes.split(",")]
    args.scenarios = [s for s in SCENARIOS if s in args.scenarios.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now()
    log_dir = Path(tempfile.mkdtemp(prefix="hms-bench-"))
    results: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url")},
        "machine": machine_info(args, args.database_url, args.redis_url),
        "modes": {},
        "scenarios": {},
    }
    hms_env = dict(item.split("=", 1) for item in args.hms_env)
    global SOURCE_ROOT
    if args.agent_ref:
        SOURCE_ROOT, sha = snapshot(args.agent_ref, log_dir / "src")
        results["machine"]["git"]["measured"] = {"ref": args.agent_ref, "commit": sha}
    else:
        results["machine"]["git"]["measured"] = "working tree"
    log(f"logs in {log_dir}; agent from {SOURCE_ROOT or 'the working tree'}")
    servers: dict[str, Server] = {}
    sink: Sink | None = None
    try:
        with bench_database(args.database_url, args.redis_url, args.patients) as (db_url, patient_ids):
            instrumented = [m for m in args.modes if m != "none"]
            sink = Sink(instrumented, log_dir) if instrumented else None
            for mode in args.modes:
                servers[mode] = start_server(
                    mode, sink, db_url, args.redis_url, args.workers, args.bsp_delay_ms, log_dir, hms_env
                )
                results["modes"][mode] = {
                    "title": MODE_TITLES[mode],
                    "command": servers[mode].command,
                    "env": servers[mode].env_shown,
                }
                log(f"{mode}: gunicorn on port {servers[mode].port}, workers {servers[mode].workers}")
            path_fns = {s: path_function(s, patient_ids) for s in args.scenarios}
            for scenario in args.scenarios:
                for server in servers.values():
                    warm_up(server, path_fns[scenario], 5 if args.quick else 15, 1.0 if args.quick else 2.0)
            log("warmed up")
            if sink is not None:
                results["verification"] = verify_modes(servers, sink)
                for problem in results["verification"]["problems"]:
                    log(f"VERIFICATION PROBLEM: {problem}")
                if results["verification"]["problems"] and not args.ignore_verification:
                    for server in servers.values():
                        log(f"{server.mode} stderr (tail):\n{server.tail()}")
                    raise SystemExit(
                        "a mode is not what it should be: stopped (--ignore-verification to go on)"
                    )
            for server in servers.values():
                server.rss_after_warmup_kb = {pid: proc_status_kb(pid, "VmRSS") for pid in server.workers}
            phases: list[Phase] = []
            for round_ in range(args.rounds):
                for s_index, scenario in enumerate(args.scenarios):
                    shift = (round_ + s_index) % len(args.modes)
                    for mode in args.modes[shift:] + args.modes[:shift]:
                        phase = run_phase(servers[mode], sink, scenario, path_fns[scenario], round_, args)
                        phases.append(phase)
                        p50 = percentile([n / 1e6 for n in phase.serial.latencies_ns], 50)
                        log(
                            f"round {round_ + 1}/{args.rounds} {scenario:<21} {mode:<5} "
                            f"{phase.requests:5d} req  p50 {p50:7.2f} ms  "
                            f"cpu {phase.cpu_s / max(phase.requests, 1) * 1e3:7.2f} ms/req  "
                            f"{phase.loaded.requests / max(phase.loaded.elapsed_s, 1e-9):6.1f} req/s  "
                            f"{phase.spans / max(phase.requests, 1):6.1f} spans/req"
                        )
            for scenario in args.scenarios:
                by_mode = {
                    mode: aggregate([p for p in phases if p.scenario == scenario and p.mode == mode])
                    for mode in args.modes
                }
                results["scenarios"][scenario] = {
                    "title": SCENARIO_TITLES[scenario],
                    "modes": by_mode,
                    "ratios": ratios(by_mode),
                }
            memory = {}
            for mode, server in servers.items():
                workers = server.workers
                hwm = [proc_status_kb(pid, "VmHWM") for pid in workers]
                rss = {pid: proc_status_kb(pid, "VmRSS") for pid in workers}
                growth = [rss[pid] - server.rss_after_warmup_kb.get(pid, rss[pid]) for pid in workers]
                memory[mode] = {
                    "peak_rss_mb_per_worker": round(max(hwm) / 1024, 1) if hwm else None,
                    "peak_rss_mb_workers_total": round(sum(hwm) / 1024, 1),
                    "arbiter_peak_rss_mb": round(proc_status_kb(server.proc.pid, "VmHWM") / 1024, 1),
                    "rss_growth_mb_per_worker": round(max(growth) / 1024, 1) if growth else None,
                    "requests_served": sum(p.requests for p in phases if p.mode == mode),
                }
            results["memory"] = memory
            if sink is not None:
                results["sink"] = sink.stats()
            if args.profile:
                log(f"profile (py-spy) of {path_function(args.profile_scenario, [])(0)}")
                results["profile"] = profile(
                    servers,
                    sink,
                    list(args.modes),
                    args.profile_seconds,
                    args.profile_rate,
                    args.profile_rounds,
                    args,
                    log_dir,
                    {
                        m: a["cpu_ms_per_request"]
                        for m, a in results["scenarios"]
                        .get(args.profile_scenario, {})
                        .get("modes", {})
                        .items()
                    },
                )
            for server in servers.values():
                server.stop()
            servers.clear()
            if sink is not None:
                sink.stop()
                sink = None
    finally:
        for server in servers.values():
            server.stop()
        if sink is not None:
            sink.stop()
    if not args.no_micro:
        results["micro"] = run_micro(args.quick, args.database_url, log_dir)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    results["elapsed_s"] = round((dt.datetime.now() - started).total_seconds(), 1)
    output = Path(args.output) if args.output else HERE / "results" / f"{started:%Y-%m-%d_%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    machine = results["machine"]
    print()
    print(
        f"hms-otel-agent overhead — {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"Python {machine['python']}, gunicorn {args.workers} sync workers, concurrency {args.concurrency}, "
        f"{args.rounds} interleaved rounds; load average "
        f"{machine['loadavg_start'][0]:.2f} -> {machine['loadavg_end'][0]:.2f}"
    )
    print(render_table(results))
    if "profile" in results:
        print()
        print(render_profile(results["profile"]))
    for name, entry in results.get("micro", {}).items():
        print()
        print(
            f"micro-benchmarks: {name}"
            + ("" if entry["returncode"] == 0 else f" (exit {entry['returncode']})")
        )
        print(entry["stdout"].rstrip())
    problems = results.get("verification", {}).get("problems", [])
    if problems:
        print("\nVERIFICATION PROBLEMS:\n  " + "\n  ".join(problems))
    print(f"\nresults: {output} ({results['elapsed_s']:.0f} s)")
    if args.keep_logs:
        print(f"logs and raw profiles: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
