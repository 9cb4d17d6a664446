"""The agent next to its peers: no agent, plain OpenTelemetry, hms-otel-run, ddtrace, Sentry, Elastic APM.

``python benchmarks/peers.py [--quick] [--driver wsgi|gunicorn] [--rates 1.0,0.1] [--modes ...]``

The four page types of issue 18 (``peers_site/``): a 50-row list with an N+1 (51 queries), its
``select_related`` twin (1 query), 10 cache reads on Redis, and ``/stats/`` (3 SQL + 2 Redis
commands), on the sample hospital's models, PostgreSQL and Redis on loopback. Every agent exports
to a loopback sink (``peer_sink.py``, its own process) that answers as its backend would.

Modes (each at every sampling rate of ``--rates``; ``none`` once):

``none``         no agent
``otel-grpc``    ``opentelemetry-instrument`` with the plain SDK (as in ``run.py``: only the django,
``otel-http``    psycopg, psycopg2 and redis instrumentations), OTLP gRPC / HTTP-protobuf
``hms-grpc``     ``hms-otel-run`` (defaults: every detector, live log, redaction), OTLP gRPC /
``hms-http``     HTTP-protobuf / its local-file default (OTLP-JSON lines in a temporary directory)
``hms-file``
``ddtrace``      ``ddtrace-run``, the trace agent URL on the sink

Two more modes, not in the default set (``--agents`` names them):

``otel-stable-http``    ``otel-http`` with the agent's default ``OTEL_SEMCONV_STABILITY_OPT_IN=database,http``
                        (the stable names, and the contrib's two DB metrics recorded per statement)
``hms-http-cmdspans``   ``hms-http`` with ``HMS_OTEL_CACHE_COMMAND_SPANS=true`` (a span per Redis command
                        under a Django cache call: the default before the commands were folded)
``sentry``       ``sentry_sdk.init`` in settings (Django + Redis integrations), DSN on the sink
``elastic``      ``elasticapm.contrib.django`` + its tracing middleware, SERVER_URL on the sink

Sampling below 1.0: ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` with the rate as its argument,
ddtrace's ``DD_TRACE_SAMPLING_RULES``, Sentry's ``traces_sample_rate``, Elastic's
``TRANSACTION_SAMPLE_RATE``.

Drivers:

``wsgi`` (default; the method of the issue's table) — one long-lived process per mode
    (``peers_worker.py`` under the mode's launcher) calls Django's WSGI application in-process with
    a prepared environ, one request at a time; after each phase it calls the agent's own flush.
    Latency: per request, around the WSGI call. CPU: the process's CPU time (all threads, so the
    export threads count) over the phase's requests and the flush, per request.
``gunicorn`` — each mode is ``[launcher] gunicorn peers_site.wsgi`` with ``--workers`` sync
    workers, driven over HTTP one request at a time by ``loadgen.py``; CPU is the workers'
    ``utime + stime`` from ``/proc`` over the phase, after the sink stopped receiving.

Interleaving: rounds; in each round every page runs in every mode back to back, the order of modes
rotating from page to page and round to round. Ratios are to ``none`` of the same run: of the
pooled median latency, of CPU per request, and the median of per-round ratios.

The peers are not test dependencies: with ``--venv`` (the default when ddtrace, sentry_sdk or
elasticapm cannot be imported) the script creates ``benchmarks/.venv-peers`` (the running
environment's package versions as constraints, then ``pip install -e .[test] ddtrace sentry-sdk
elastic-apm``) and runs itself again there. Results: a table on stdout (markdown with
``--markdown``), ``benchmarks/results/peers_<date>.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402

PEERS_VENV = HERE / ".venv-peers"
PEER_PACKAGES = ("ddtrace", "sentry-sdk", "elastic-apm")
PAGES = {
    "n_plus_one": ("/bench/list/", "N+1 list (51 SQL)"),
    "optimized": ("/bench/list/optimized/", "optimized (1 SQL)"),
    "cache": ("/bench/cache/", "10 cache reads"),
    "mixed": ("/stats/", "3 SQL + 2 Redis"),
}
AGENTS = (
    "none",
    "otel-grpc",
    "otel-http",
    "hms-grpc",
    "hms-http",
    "hms-file",
    "ddtrace",
    "sentry",
    "elastic",
)
EXTRA_AGENTS = ("otel-stable-http", "hms-http-cmdspans")  # only when named in --agents
TITLES = {
    "none": "no agent",
    "otel-grpc": "opentelemetry-instrument, OTLP gRPC",
    "otel-http": "opentelemetry-instrument, OTLP HTTP/protobuf",
    "hms-grpc": "hms-otel-run, OTLP gRPC",
    "hms-http": "hms-otel-run, OTLP HTTP/protobuf",
    "hms-file": "hms-otel-run, local file (default)",
    "otel-stable-http": "opentelemetry-instrument, OTLP HTTP/protobuf, stable semconv (database,http)",
    "hms-http-cmdspans": "hms-otel-run, OTLP HTTP/protobuf, HMS_OTEL_CACHE_COMMAND_SPANS=true",
    "ddtrace": "ddtrace-run",
    "sentry": "sentry-sdk (Django + Redis)",
    "elastic": "Elastic APM (elasticapm.contrib.django)",
}
log = run.log


# --- the peers' environment ---------------------------------------------------------------------


def have_peers() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("ddtrace", "sentry_sdk", "elasticapm"))


def ensure_venv(venv: Path) -> Path:
    """``venv`` with the agent, its test extras and the peers, at this environment's versions."""
    python = venv / "bin" / "python"
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import ddtrace, sentry_sdk, elasticapm, hms_otel_agent, django"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return python
    log(f"creating {venv} (pip install -e .[test] {' '.join(PEER_PACKAGES)}; a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(line for line in freeze.splitlines() if "==" in line) + "\n")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(constraints),
            "-e",
            f"{ROOT}[test]",
            *PEER_PACKAGES,
        ],
        check=True,
    )
    return python


# --- modes ----------------------------------------------------------------------------------------


@dataclass
class Mode:
    agent: str
    rate: float

    @property
    def name(self) -> str:
        return self.agent if self.agent == "none" or self.rate == 1.0 else f"{self.agent}@{self.rate:g}"

    @property
    def family(self) -> str:
        return self.agent.split("-")[0]


def modes_for(agents: list[str], rates: list[float]) -> list[Mode]:
    out = [Mode("none", 1.0)] if "none" in agents else []
    for rate in rates:
        out.extend(Mode(agent, rate) for agent in agents if agent != "none")
    return out


@dataclass
class Ports:
    http: dict[str, int] = field(default_factory=dict)
    grpc: dict[str, int] = field(default_factory=dict)


def mode_command(mode: Mode, ports: Ports, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The launcher (before the program) and the environment of one mode."""
    bin_dir = run.VENV_BIN
    env: dict[str, str] = {"HMS_PEERS_MODE": mode.name}
    launcher: list[str] = []
    sampled = mode.rate < 1.0
    if mode.family in ("otel", "hms"):
        env["HMS_PEERS_FLUSH"] = "otel"
        env["OTEL_SERVICE_NAME"] = f"hms-bench-{mode.name}"
        if sampled:
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = f"{mode.rate:g}"
        if mode.agent != "hms-file":
            grpc = mode.agent.endswith("grpc")
            port = ports.grpc[mode.name] if grpc else ports.http[mode.name]
            env.update(
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if grpc else "http/protobuf",
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_METRICS_EXPORTER": "otlp",
                    "OTEL_LOGS_EXPORTER": "none",
                }
            )
        else:
            env["HMS_OTEL_LOCAL_DIR"] = str(tmp / f"local-{mode.name}")
        if mode.agent == "otel-stable-http":
            env["OTEL_SEMCONV_STABILITY_OPT_IN"] = "database,http"
        if mode.agent == "hms-http-cmdspans":
            env["HMS_OTEL_CACHE_COMMAND_SPANS"] = "true"
        if mode.family == "otel":
            disabled = [n for n in run.installed_instrumentations() if n not in run.WANTED_INSTRUMENTATIONS]
            env.update(
                {
                    "OTEL_PYTHON_DISTRO": run.BASELINE_SDK_NAME,
                    "OTEL_PYTHON_CONFIGURATOR": run.BASELINE_SDK_NAME,
                    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(disabled),
                    "PYTHONPATH": str(run.BASELINE_SDK_DIR),
                }
            )
            launcher = [str(bin_dir / "opentelemetry-instrument")]
        else:
            launcher = [str(bin_dir / "hms-otel-run"), "--"]
    elif mode.agent == "ddtrace":
        env.update(
            {
                "HMS_PEERS_FLUSH": "ddtrace",
                "DD_TRACE_AGENT_URL": f"http://127.0.0.1:{ports.http[mode.name]}",
                "DD_DOGSTATSD_URL": f"udp://127.0.0.1:{ports.http[mode.name]}",
                "DD_SERVICE": f"hms-bench-{mode.name}",
                "DD_ENV": "bench",
            }
        )
        if sampled:
            env["DD_TRACE_SAMPLING_RULES"] = json.dumps([{"sample_rate": mode.rate}])
        launcher = [str(bin_dir / "ddtrace-run")]
    elif mode.agent in ("sentry", "elastic"):
        env.update(
            {
                "HMS_PEERS_FLUSH": mode.agent,
                "HMS_PEERS_AGENT": mode.agent,
                "HMS_PEERS_SINK": f"http://127.0.0.1:{ports.http[mode.name]}",
                "HMS_PEERS_SAMPLE_RATE": f"{mode.rate:g}",
            }
        )
    return launcher, env


# --- the sink --------------------------------------------------------------------------------------


class PeerSink:
    def __init__(self, modes: list[Mode], log_dir: Path) -> None:
        self.ports = Ports()
        for mode in modes:
            if mode.agent in ("none", "hms-file"):
                continue
            if mode.agent.endswith("grpc"):
                self.ports.grpc[mode.name] = run.free_port()
            else:
                self.ports.http[mode.name] = run.free_port()
        self.control = run.free_port()
        args = [f"--http=_control={self.control}"]
        args += [f"--http={n}={p}" for n, p in self.ports.http.items()]
        args += [f"--grpc={n}={p}" for n, p in self.ports.grpc.items()]
        self.log = (log_dir / "sink.stderr").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "peer_sink.py"), *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            env=run.hermetic_env({}),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready"):
            raise RuntimeError(f"peer sink did not start: {line!r}")

    def stats(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control}/stats", timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def requests(self, name: str) -> int:
        return int(self.stats().get(name, {}).get("requests", 0))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.log.close()


# --- the two drivers --------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    latencies_ns: list[int]
    cpu_s: float
    requests: int
    errors: int
    cpu_request_thread_s: float | None = None  # wsgi driver: the request thread alone


class WsgiWorker:
    """``peers_worker.py`` under the mode's launcher, driven over a control socket."""

    def __init__(
        self, mode: Mode, listener: socket.socket, env: dict[str, str], launcher: list[str], log_dir: Path
    ):
        self.mode = mode
        self.stderr = log_dir / f"{mode.name}.stderr"
        with (log_dir / f"{mode.name}.stdout").open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [*launcher, sys.executable, str(HERE / "peers_worker.py")],
                env=env,
                cwd=log_dir,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        listener.settimeout(120)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{mode.name} did not start within 120 s:\n{self.tail()}") from None
        conn.settimeout(None)
        self.conn = conn
        self.reader = conn.makefile("r", encoding="utf-8")
        self.writer = conn.makefile("w", encoding="utf-8")
        hello = json.loads(self.reader.readline())
        self.pid = int(hello["ready"])

    def tail(self) -> str:
        return (
            "\n".join(self.stderr.read_text(errors="replace").splitlines()[-30:])
            if self.stderr.exists()
            else ""
        )

    def run(self, path: str, n: int) -> PhaseResult:
        self.writer.write(json.dumps({"cmd": "run", "path": path, "n": n}) + "\n")
        self.writer.flush()
        line = self.reader.readline()
        if not line:
            raise RuntimeError(f"{self.mode.name} died:\n{self.tail()}")
        answer = json.loads(line)
        ok = sum(c for s, c in answer["statuses"].items() if s.startswith("2"))
        return PhaseResult(
            answer["latencies_ns"], answer["cpu_s"], n, n - ok, answer.get("cpu_request_thread_s")
        )

    def rss_kb(self) -> dict[str, int]:
        return {k: run.proc_status_kb(self.pid, k) for k in ("VmRSS", "VmHWM")}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write('{"cmd": "quit"}\n')
            self.writer.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class GunicornWorker:
    """``[launcher] gunicorn peers_site.wsgi`` with sync workers, driven by ``loadgen.serial``."""

    def __init__(
        self,
        mode: Mode,
        env: dict[str, str],
        launcher: list[str],
        log_dir: Path,
        workers: int,
        sink: PeerSink,
    ):
        self.mode = mode
        self.sink = sink
        self.port = run.free_port()
        self.stderr = log_dir / f"{mode.name}.stderr"
        args = [
            a.replace(run.APP, "peers_site.wsgi:application") for a in run.gunicorn_args(self.port, workers)
        ]
        with (log_dir / f"{mode.name}.stdout").open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [*launcher, str(run.VENV_BIN / "gunicorn"), *args, "--chdir", str(HERE)],
                env=env,
                cwd=log_dir,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{mode.name} exited:\n{self.tail()}")
            with contextlib.suppress(OSError):
                status, _ = loadgen.get("127.0.0.1", self.port, "/health/", timeout=5)
                if status == 200 and len(run.children_of(self.proc.pid)) >= workers:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{mode.name} did not answer within 120 s:\n{self.tail()}")
            time.sleep(0.2)

    tail = WsgiWorker.tail

    def _cpu(self) -> float:
        total = 0.0
        for pid in run.children_of(self.proc.pid):
            with contextlib.suppress(OSError):
                total += run.proc_cpu_seconds(pid)
        return total

    def _settle(self) -> None:
        """Until the sink has received nothing new for 1.5 s (agents export on timers of 0.5-10 s)."""
        if self.mode.agent in ("none", "hms-file"):
            time.sleep(0.6 if self.mode.agent == "hms-file" else 0)
            return
        last, quiet_since = self.sink.requests(self.mode.name), time.monotonic()
        deadline = time.monotonic() + 15
        while time.monotonic() - quiet_since < 1.5 and time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.sink.requests(self.mode.name)
            if now != last:
                last, quiet_since = now, time.monotonic()

    def run(self, path: str, n: int) -> PhaseResult:
        cpu0 = self._cpu()
        result = loadgen.serial("127.0.0.1", self.port, lambda i: path, n, 10**6)
        self._settle()
        return PhaseResult(result.latencies_ns, self._cpu() - cpu0, n, result.errors)

    def rss_kb(self) -> dict[str, int]:
        pids = run.children_of(self.proc.pid)
        return {k: max((run.proc_status_kb(p, k) for p in pids), default=0) for k in ("VmRSS", "VmHWM")}

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


# --- aggregation and output ---------------------------------------------------------------------------


def aggregate(phases: list[dict[str, Any]], modes: list[Mode], pages: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for page in pages:
        per_mode: dict[str, Any] = {}
        for mode in modes:
            mine = [p for p in phases if p["page"] == page and p["mode"] == mode.name]
            lat = [ns / 1e6 for p in mine for ns in p["latencies_ns"]]
            requests = sum(p["requests"] for p in mine)
            per_mode[mode.name] = {
                "latency_ms_p50": round(statistics.median(lat), 4) if lat else None,
                "latency_ms_p99": round(run.percentile(lat, 99), 4) if lat else None,
                "cpu_ms_per_request": round(sum(p["cpu_s"] for p in mine) / requests * 1e3, 4)
                if requests
                else None,
                "request_thread_cpu_ms_per_request": round(
                    sum(p["cpu_request_thread_s"] for p in mine) / requests * 1e3, 4
                )
                if requests and all(p.get("cpu_request_thread_s") is not None for p in mine)
                else None,
                "requests": requests,
                "errors": sum(p["errors"] for p in mine),
                "per_round": {
                    p["round"]: {
                        "latency_ms_p50": round(statistics.median(p["latencies_ns"]) / 1e6, 4),
                        "cpu_ms_per_request": round(p["cpu_s"] / p["requests"] * 1e3, 4),
                    }
                    for p in mine
                },
            }
        base = per_mode.get("none")
        for name, entry in per_mode.items():
            if base is None or name == "none":
                continue
            entry["latency_ratio"] = run.ratio(entry["latency_ms_p50"], base["latency_ms_p50"])
            entry["cpu_ratio"] = run.ratio(entry["cpu_ms_per_request"], base["cpu_ms_per_request"])
            for metric in ("latency_ms_p50", "cpu_ms_per_request"):
                rounds = [
                    row[metric] / base["per_round"][r][metric]
                    for r, row in entry["per_round"].items()
                    if r in base["per_round"] and base["per_round"][r][metric]
                ]
                entry[f"{metric}_round_ratios"] = [round(x, 3) for x in rounds]
                entry[f"{metric}_median_round_ratio"] = (
                    round(statistics.median(rounds), 3) if rounds else None
                )
        out[page] = per_mode
    return out


def render(results: dict[str, Any], markdown: bool) -> str:
    pages = list(results["pages"])
    lines = []
    rates = sorted({m["rate"] for m in results["modes"].values() if m["agent"] != "none"}, reverse=True)
    base = {p: results["pages"][p].get("none", {}) for p in pages}
    if markdown:
        lines.append(
            "| no agent: latency p50 / CPU per request (ms) | "
            + " | ".join(
                f"{_f(base[p].get('latency_ms_p50'))} / {_f(base[p].get('cpu_ms_per_request'))}"
                for p in pages
            )
            + " |"
        )
    for rate in rates:
        names = [n for n, m in results["modes"].items() if m["agent"] != "none" and m["rate"] == rate]
        title = f"sampling {rate:g}: latency / CPU per request, ratio to no agent"
        if markdown:
            lines.append("")
            lines.append(f"| {title} | " + " | ".join(PAGES[p][1] for p in pages) + " |")
            lines.append("|---|" + "---:|" * len(pages))
        else:
            lines.append("")
            lines.append(f"{title:<60}" + "".join(f"{PAGES[p][1]:>22}" for p in pages))
        for name in names:
            cells = []
            for page in pages:
                entry = results["pages"][page].get(name, {})
                cells.append(f"{_x(entry.get('latency_ratio'))} / {_x(entry.get('cpu_ratio'))}")
            label = TITLES[results["modes"][name]["agent"]]
            if markdown:
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            else:
                lines.append(f"{label:<60}" + "".join(f"{c:>22}" for c in cells))
    if not markdown:
        lines.append("")
        lines.append(
            f"{'no agent: latency p50 / CPU per request (ms)':<60}"
            + "".join(
                f"{_f(base[p].get('latency_ms_p50')) + ' / ' + _f(base[p].get('cpu_ms_per_request')):>22}"
                for p in pages
            )
        )
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for name in (
        "Django",
        "psycopg",
        "redis",
        "gunicorn",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-django",
        "opentelemetry-exporter-otlp-proto-grpc",
        "grpcio",
        "protobuf",
        "hms-otel-agent",
        *PEER_PACKAGES,
    ):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    return out


def check_delivery(sink: PeerSink, modes: list[Mode], tmp: Path) -> list[str]:
    """Every instrumented mode must have delivered something after the warm-up."""
    stats = sink.stats()
    problems = []
    for mode in modes:
        if mode.agent == "none":
            continue
        if mode.agent == "hms-file":
            files = list((tmp / f"local-{mode.name}").rglob("*"))
            if not any(f.is_file() and f.stat().st_size for f in files):
                problems.append(f"{mode.name}: nothing written to its local directory")
            continue
        got = stats.get(mode.name, {})
        if not got.get("bytes"):
            problems.append(f"{mode.name}: nothing arrived at the sink ({got})")
        elif mode.family in ("otel", "hms") and not got.get("spans"):
            problems.append(f"{mode.name}: no OTLP spans arrived ({got})")
    return problems


# --- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The agent next to ddtrace, sentry-sdk, Elastic APM and plain OpenTelemetry.",
        epilog="--quick: a few minutes; the default 6-10 minutes on a quiet machine. See docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 25 requests per page and mode")
    parser.add_argument("--driver", choices=("wsgi", "gunicorn"), default="wsgi")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument(
        "--requests", type=int, help="requests per page, mode and round (default 100; quick 25)"
    )
    parser.add_argument(
        "--agents", default=",".join(AGENTS), help="subset of " + ",".join((*AGENTS, *EXTRA_AGENTS))
    )
    parser.add_argument("--rates", default="1.0,0.1", help="head sampling rates (1.0 = every request traced)")
    parser.add_argument("--pages", default=",".join(PAGES), help="subset of " + ",".join(PAGES))
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (--driver gunicorn)")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HMS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("HMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    parser.add_argument(
        "--venv", default=str(PEERS_VENV), help="where the peers' venv is (created if missing)"
    )
    parser.add_argument(
        "--no-venv", action="store_true", help="run in this interpreter (modes without peers)"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--output", help="JSON file (default benchmarks/results/peers_<date>.json)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.requests = args.requests or (25 if args.quick else 100)
    args.agents = [a for a in (*AGENTS, *EXTRA_AGENTS) if a in args.agents.split(",")]
    args.rates = [float(r) for r in args.rates.split(",")]
    args.pages = [p for p in PAGES if p in args.pages.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(argv if argv is not None else sys.argv[1:])
    args = parse_args(raw_argv)
    peers_wanted = any(a in ("ddtrace", "sentry", "elastic") for a in args.agents)
    if peers_wanted and not args.no_venv and not have_peers():
        python = ensure_venv(Path(args.venv))
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *raw_argv])
    if not have_peers():
        args.agents = [a for a in args.agents if a not in ("ddtrace", "sentry", "elastic")]
    started = dt.datetime.now()
    log_dir = Path(tempfile.mkdtemp(prefix="hms-peers-"))
    modes = modes_for(args.agents, args.rates)
    results: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/peers.py", *raw_argv]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url")},
        "machine": run.machine_info(args, args.database_url, args.redis_url),
        "versions": versions(),
        "modes": {},
        "pages": {},
    }
    workers: dict[str, Any] = {}
    sink: PeerSink | None = None
    try:
        with run.bench_database(args.database_url, args.redis_url, args.patients) as (db_url, _ids):
            sink = PeerSink(modes, log_dir)
            listener = socket.create_server(("127.0.0.1", 0))
            for mode in modes:
                launcher, env = mode_command(mode, sink.ports, log_dir)
                env.update(
                    {
                        "DATABASE_URL": db_url,
                        "REDIS_URL": args.redis_url,
                        "DJANGO_SETTINGS_MODULE": "peers_site.settings",
                    }
                )
                # The settings module must be importable when a launcher's instrumentation first
                # reads the settings (before the program runs).
                env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(HERE)) if p)
                env["HMS_PEERS_CONTROL"] = str(listener.getsockname()[1])
                full_env = run.hermetic_env(dict(env))
                if args.driver == "wsgi":
                    workers[mode.name] = WsgiWorker(mode, listener, full_env, launcher, log_dir)
                else:
                    workers[mode.name] = GunicornWorker(mode, full_env, launcher, log_dir, args.workers, sink)
                results["modes"][mode.name] = {
                    "agent": mode.agent,
                    "rate": mode.rate,
                    "title": TITLES[mode.agent],
                    "launcher": launcher,
                    "env": {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")},
                }
                log(f"started {mode.name}")
            for mode in modes:
                for page in args.pages:
                    workers[mode.name].run(PAGES[page][0], 5 if args.quick else 20)
            time.sleep(1.0)
            results["warm_up_rss_kb"] = {n: w.rss_kb() for n, w in workers.items()}
            problems = check_delivery(sink, modes, log_dir)
            for problem in problems:
                log(f"DELIVERY PROBLEM: {problem}")
            results["problems"] = problems
            log(f"warmed up; {len(modes)} modes x {len(args.pages)} pages x {args.rounds} rounds")
            phases: list[dict[str, Any]] = []
            for round_ in range(args.rounds):
                for p_index, page in enumerate(args.pages):
                    shift = (round_ * len(args.pages) + p_index) % len(modes)
                    for mode in modes[shift:] + modes[:shift]:
                        result = workers[mode.name].run(PAGES[page][0], args.requests)
                        phases.append(
                            {
                                "round": round_,
                                "page": page,
                                "mode": mode.name,
                                "latencies_ns": result.latencies_ns,
                                "cpu_s": result.cpu_s,
                                "cpu_request_thread_s": result.cpu_request_thread_s,
                                "requests": result.requests,
                                "errors": result.errors,
                            }
                        )
                        if result.errors:
                            log(f"{mode.name} {page}: {result.errors} errors")
                log(f"round {round_ + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})")
            results["pages"] = aggregate(phases, modes, args.pages)
            results["rss_kb"] = {n: w.rss_kb() for n, w in workers.items()}
            results["sink"] = sink.stats()
    finally:
        for worker in workers.values():
            worker.stop()
        if sink is not None:
            sink.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = round((dt.datetime.now() - started).total_seconds(), 1)
    output = Path(args.output) if args.output else HERE / "results" / f"peers_{started:%Y-%m-%d_%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    machine = results["machine"]
    print(
        f"\npeers, driver {args.driver}, {args.rounds} interleaved rounds x {args.requests} requests per page"
        f" and mode; {machine['nproc']} CPUs, Python {machine['python']}; load average "
        f"{machine['loadavg_start'][0]:.2f} -> {machine['loadavg_end'][0]:.2f}"
    )
    print(render(results, args.markdown))
    if results.get("problems"):
        print("\nDELIVERY PROBLEMS:\n  " + "\n  ".join(results["problems"]))
    print(f"\nresults: {output} ({results['elapsed_s']:.0f} s)")
    if args.keep_logs:
        print(f"logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if results.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
