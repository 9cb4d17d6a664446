"""Memory under every backend failure: each failure mode for N minutes under load, RSS sampled.

    python scripts/soak_faults.py --minutes 2 --write-doc docs/reliability.md
    python scripts/soak_faults.py --load spans --seconds 20 --modes tls,refused   # quick look

Failure modes, for OTLP over HTTP (http/protobuf) and gRPC, traces and metrics alike:

  healthy   the backend answers at once (the baseline)
  tls       an https:// endpoint against a plain-HTTP server: every TLS handshake fails
  refused   nothing listens on the port
  slow      the backend answers, but late: after 1.5 times the exporter's timeout (the exporters wait
            up to twice it, so these spans count as delivered)
  retry     503 / 429 with Retry-After (gRPC: UNAVAILABLE / RESOURCE_EXHAUSTED), retried until the timeout
  stall     the backend accepts and never answers
  baseline  (``--load app`` only) the same app and load without the agent: the RSS and the time
            gunicorn takes to stop on its own, against which the agent's exit is read

``--jobs 2`` runs two modes at a time (each with its own database, Redis database and backend).
The backend counts the spans it answered with success ("delivered"); with ``--load app`` each worker
writes, after the agent's shutdown, what it dropped by reason (queue_full, export_failed, shutdown).

Load: ``--load app`` (default) runs the sample app under gunicorn (2 sync workers) with the agent
and sends the mix of scripts/soak.py at concurrency 4 (needs PostgreSQL and Redis, see soak.py);
``--load spans`` runs a script under hms-otel-run that ends request-like spans (a server span with
10 SQL children) as fast as one thread can, the worst case for the export queue. The RSS of every
worker (or of the span script) is sampled every few seconds; the growth after the first fifth of the
run (imports, connections, the queue filling up) is what must stay bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("healthy", "tls", "refused", "slow", "retry", "stall")
BASELINE = "baseline"  # no agent (app load only)
PROTOCOLS = ("http/protobuf", "grpc")
EXPORT_TIMEOUT_MS = 2000
SLOW_DELAY_S = 1.5 * EXPORT_TIMEOUT_MS / 1000
QUEUE_SIZE = 2048  # OTEL_BSP_MAX_QUEUE_SIZE's default: what the queue may hold
SPAN_SCRIPT = """
import sys, time
from opentelemetry import trace
tracer = trace.get_tracer("soak")
end = time.monotonic() + float(sys.argv[1])
text = "SELECT p.id, p.name FROM hms_patient p WHERE p.ward_id = ? AND p.active ORDER BY p.id LIMIT ?"
while time.monotonic() < end:
    with tracer.start_as_current_span("GET /patients/{pk}/", kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("http.route", "/patients/{pk}/")
        for i in range(10):
            with tracer.start_as_current_span("SELECT hms_patient", kind=trace.SpanKind.CLIENT) as q:
                q.set_attribute("db.query.text", text)
                q.set_attribute("db.system.name", "postgresql")
    time.sleep(0.001)
"""


# --- fault backends -------------------------------------------------------------------------------


class FaultBackend:
    """An OTLP backend failing in one mode, over HTTP and gRPC; keeps nothing it receives."""

    def __init__(self, mode: str, delay_s: float) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.requests = 0
        self.delivered_spans = 0  # spans in trace exports answered with success
        self._stop = threading.Event()
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers = backend._http_answer()
                if status == 0:
                    return  # stall: the connection stays open until the backend stops
                if status == 200 and self.path.endswith("/v1/traces"):
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    backend._delivered(body)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # TLS handshakes sent to this plain-HTTP server, clients giving up

        self._http = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._grpc = self._start_grpc()
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            self._closed_port = sock.getsockname()[1]

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _delivered(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        count = sum(
            len(scope.spans)
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope in resource.scope_spans
        )
        with self._lock:
            self.delivered_spans += count

    def _http_answer(self) -> tuple[int, list[tuple[str, str]]]:
        self._count()
        if self.mode == "slow":
            self._stop.wait(self.delay_s)
        elif self.mode == "stall":
            self._stop.wait()
            return 0, []
        elif self.mode == "retry":
            return (429, [("Retry-After", "1")]) if self.requests % 2 else (503, [])
        return 200, []

    def _start_grpc(self):  # type: ignore[no-untyped-def]
        import grpc

        backend = self

        def handler(request: bytes, context: grpc.ServicerContext, traces: bool) -> bytes:
            backend._count()
            if backend.mode == "slow":
                backend._stop.wait(backend.delay_s)
            elif backend.mode == "stall":
                while context.is_active() and not backend._stop.wait(0.1):
                    pass
                context.abort(grpc.StatusCode.UNAVAILABLE, "stalled")
            elif backend.mode == "retry":
                code = (
                    grpc.StatusCode.RESOURCE_EXHAUSTED
                    if backend.requests % 2
                    else grpc.StatusCode.UNAVAILABLE
                )
                context.abort(code, "try again")
            if traces:
                backend._delivered(request)
            return b""  # an empty Export*ServiceResponse

        class Generic(grpc.GenericRpcHandler):
            def service(self, details):  # type: ignore[no-untyped-def]
                if details.method.endswith("/Export"):
                    traces = details.method.endswith("TraceService/Export")
                    return grpc.unary_unary_rpc_method_handler(
                        lambda request, context: handler(request, context, traces)
                    )
                return None

        server = grpc.server(ThreadPoolExecutor(16))
        server.add_generic_rpc_handlers((Generic(),))
        self._grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server

    def endpoint(self, protocol: str) -> str:
        if self.mode == "tls":
            return f"https://127.0.0.1:{self._http.server_address[1]}"  # plain HTTP behind https://
        if self.mode == "refused":
            return f"http://127.0.0.1:{self._closed_port}"
        port = self._grpc_port if protocol == "grpc" else self._http.server_address[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._grpc.stop(0)


# --- measuring ------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return sorted(int(p) for p in handle.read().split())
    except OSError:
        return []


@dataclass
class Run:
    mode: str
    protocol: str
    seconds: float
    samples: list[tuple[float, list[int]]] = field(default_factory=list)  # (t, RSS KiB per process)
    requests: int = 0  # export requests the backend saw
    delivered: int = 0  # spans the backend answered with success
    dropped: dict[str, int] = field(default_factory=dict)  # the agent's counts, summed over workers
    app_requests: int = 0
    exit_s: float = 0.0

    def growth_mib(self) -> list[float]:
        """RSS growth per process from the end of the warm-up (first fifth) to the end."""
        start = next((s for s in self.samples if s[0] >= self.seconds / 5), self.samples[0])
        end = self.samples[-1]
        return [(b - a) / 1024 for a, b in zip(start[1], end[1], strict=False)]

    def peak_mib(self) -> float:
        return max((max(s[1]) for s in self.samples if s[1]), default=0) / 1024


GUNICORN_CONFIG = """
import json, os

def worker_exit(server, worker):
    # Runs before the interpreter's exit handlers, where the agent shuts down: wrap the trace
    # processor's shutdown so its counts are written after its final flush.
    from hms_otel_agent import agent
    pipeline = agent.current_pipeline()
    if pipeline is None:
        return
    batch = pipeline.batch_processors[0]
    shutdown = batch.shutdown

    def counted(*args, **kwargs):
        try:
            return shutdown(*args, **kwargs)
        finally:
            path = os.path.join(os.environ["SOAK_FAULTS_COUNTS"], f"{os.getpid()}.json")
            with open(path, "w") as out:
                json.dump(dict(batch.dropped), out)

    batch.shutdown = counted
"""


def agent_env(backend: FaultBackend, protocol: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HMS_OTEL_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=backend.endpoint(protocol),
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_TIMEOUT=str(EXPORT_TIMEOUT_MS),
        OTEL_METRIC_EXPORT_INTERVAL="2000",
        OTEL_BSP_SCHEDULE_DELAY="200",
        HMS_OTEL_LIVE_LOG="false",
        HMS_OTEL_SHUTDOWN_TIMEOUT_MS="3000",
    )
    env.update(extra)
    return env


def tool(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def run_spans(mode: str, protocol: str, seconds: float, sample_every: float) -> Run:
    backend = FaultBackend(mode, delay_s=SLOW_DELAY_S)
    run = Run(mode, protocol, seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(SPAN_SCRIPT)
    try:
        proc = subprocess.Popen(
            [tool("hms-otel-run"), sys.executable, script.name, str(seconds)],
            env=agent_env(backend, protocol, {}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() - started < seconds:
            run.samples.append((time.monotonic() - started, [rss_kib(proc.pid)]))
            time.sleep(sample_every)
        exit_started = time.monotonic()
        proc.wait(60)
        run.exit_s = time.monotonic() - exit_started
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0 or "Traceback" in stderr:
            raise SystemExit(f"soak_faults: the span script failed in mode {mode}:\n{stderr}")
    finally:
        os.unlink(script.name)
        run.requests = backend.requests
        run.delivered = backend.delivered_spans
        backend.stop()
    return run


_TEMPLATE_LOCK = threading.Lock()  # one copy of the template database at a time


def app_template(args: argparse.Namespace) -> str:
    """A database migrated and seeded once, copied for each run (CREATE DATABASE ... TEMPLATE)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import psycopg
    from soak import manage, with_database

    name = f"hms_soak_faults_{os.getpid()}_template"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HMS_OTEL_"))}
    env.update(DATABASE_URL=with_database(args.database_url, name), HMS_SAMPLE_CACHE_BACKEND="locmem")
    env["DJANGO_SETTINGS_MODULE"] = "hms_otel_agent.sample.settings"
    manage(env, "migrate", "--noinput")
    manage(env, "seed_hms", "--patients", "100", "--seed", "1")
    return name


def drop_database(args: argparse.Namespace, name: str) -> None:
    import psycopg

    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def run_app(
    mode: str, protocol: str, seconds: float, sample_every: float, args: argparse.Namespace, redis_url: str
) -> Run:
    sys.path.insert(0, str(ROOT / "scripts"))
    import psycopg
    import redis
    from soak import URLS, free_port, get, with_database

    backend = FaultBackend("healthy" if mode == BASELINE else mode, delay_s=SLOW_DELAY_S)
    run = Run(mode, protocol, seconds)
    name = f"hms_soak_faults_{os.getpid()}_{mode}_{protocol.split('/')[0]}"
    counts = Path(tempfile.mkdtemp(prefix="soak_faults_"))
    (counts / "gunicorn.conf.py").write_text(GUNICORN_CONFIG)
    with _TEMPLATE_LOCK, psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{args.template}"'.encode())
    app = None
    try:
        env = agent_env(
            backend,
            protocol,
            {
                "DATABASE_URL": with_database(args.database_url, name),
                "REDIS_URL": redis_url,
                "DJANGO_SETTINGS_MODULE": "hms_otel_agent.sample.settings",
                "SOAK_FAULTS_COUNTS": str(counts),
            },
        )
        redis.Redis.from_url(redis_url).flushdb()
        port = free_port()
        cmd = [tool("gunicorn"), "hms_otel_agent.sample.wsgi", "-c", str(counts / "gunicorn.conf.py")]
        cmd += ["-b", f"127.0.0.1:{port}", "-w", "2"]
        if mode != BASELINE:
            cmd = [tool("hms-otel-run"), "--", *cmd]
        app = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                get(port, "/health/")
                break
            except OSError:
                if time.monotonic() > deadline or app.poll() is not None:
                    raise SystemExit("soak_faults: the app did not start") from None
                time.sleep(0.1)
        started = time.monotonic()
        done = 0
        lock = threading.Lock()

        def load(worker: int) -> None:
            nonlocal done
            index = worker
            while time.monotonic() - started < seconds:
                with contextlib.suppress(OSError):
                    get(port, URLS[index % len(URLS)].format(n=index % 9 + 1))
                index += 4
                with lock:
                    done += 1

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load, w) for w in range(4)]
            while time.monotonic() - started < seconds:
                run.samples.append((time.monotonic() - started, [rss_kib(p) for p in children(app.pid)]))
                time.sleep(sample_every)
            for future in futures:
                future.result()
        run.samples.append((time.monotonic() - started, [rss_kib(p) for p in children(app.pid)]))
        run.app_requests = done
        exit_started = time.monotonic()
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(60)
        run.exit_s = time.monotonic() - exit_started
    finally:
        if app is not None and app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
        run.requests = backend.requests
        run.delivered = backend.delivered_spans
        backend.stop()
        for path in counts.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                for reason, count in json.loads(path.read_text()).items():
                    run.dropped[reason] = run.dropped.get(reason, 0) + int(count)
        shutil.rmtree(counts, ignore_errors=True)
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    return run


# --- the report -----------------------------------------------------------------------------------


def markdown(runs: list[Run], args: argparse.Namespace) -> str:
    what = (
        "the sample app under gunicorn (2 sync workers), 4 clients sending the mix of scripts/soak.py"
        if args.load == "app"
        else "a script ending a server span with 10 SQL children every ~1 ms"
    )
    jobs = f" --jobs {args.jobs}" if args.jobs > 1 else ""
    lines = [
        f"<!-- {args.marker}:begin -->",
        f"Run: `python scripts/soak_faults.py --load {args.load} --seconds {args.seconds:g}{jobs}` "
        f"(Python {platform.python_version()}, {os.cpu_count()} CPUs, shared with other work): {what}; "
        f"exporter timeout {EXPORT_TIMEOUT_MS} ms, the queue at its default ({QUEUE_SIZE} spans), "
        f"batches every 200 ms, metrics every 2 s, `HMS_OTEL_SHUTDOWN_TIMEOUT_MS=3000`. RSS per "
        f"{'worker' if args.load == 'app' else 'process'}: after the first fifth of the run "
        "(warm-up), at the end, and the highest sample; spans delivered are those the backend answered "
        "with success, dropped are the agent's own counts (all workers, by reason).",
        "",
        "| mode | protocol | app requests | export requests seen | RSS after warm-up (MiB) "
        "| RSS at the end (MiB) | growth (MiB) | peak (MiB) | spans delivered | spans dropped "
        "(queue full / export failed / shutdown) | exit after SIGTERM (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        start = next((s for s in run.samples if s[0] >= run.seconds / 5), run.samples[0])
        end = run.samples[-1]
        agent = run.mode != BASELINE
        dropped = (
            " / ".join(str(run.dropped.get(r, 0)) for r in ("queue_full", "export_failed", "shutdown"))
            if agent and run.dropped
            else "-"
        )
        lines.append(
            f"| {run.mode} | {run.protocol if agent else '(no agent)'} | {run.app_requests or '-'} | "
            f"{run.requests if agent else '-'} | "
            f"{' / '.join(f'{r / 1024:.1f}' for r in start[1])} | "
            f"{' / '.join(f'{r / 1024:.1f}' for r in end[1])} | "
            f"{' / '.join(f'{g:+.1f}' for g in run.growth_mib())} | {run.peak_mib():.1f} | "
            f"{run.delivered if agent else '-'} | {dropped} | {run.exit_s:.1f} |"
        )
    lines.append(f"<!-- {args.marker}:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load", choices=("app", "spans"), default="app")
    parser.add_argument("--seconds", type=float, default=120.0, help="per mode and protocol")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join((*MODES, BASELINE))}")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=1, help="modes run at the same time (each its own app)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HMS_OTEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--write-doc", type=Path, help="replace the <!-- MARKER:begin/end --> section")
    parser.add_argument("--marker", default="soak-faults")
    parser.add_argument("--json", type=Path, help="write every run (RSS samples, counts, exit time) here")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("soak_faults: reads /proc; Linux only", file=sys.stderr)
        return 2
    pairs = []
    for mode in args.modes.split(","):
        if mode == BASELINE:
            if args.load == "app":
                pairs.append((mode, "-"))
            continue
        pairs.extend((mode, protocol) for protocol in args.protocols.split(","))
    # One Redis database per concurrent run (the app's cache is flushed at each run's start).
    base = args.redis_url.rstrip("/").rsplit("/", 1)
    redis_urls: queue.Queue[str] = queue.Queue()
    for slot in range(args.jobs):
        db = (int(base[1]) + slot) % 16 if base[1].isdigit() else slot
        redis_urls.put(f"{base[0]}/{db}")

    def one(mode: str, protocol: str) -> Run:
        redis_url = redis_urls.get()
        try:
            if args.load == "app":
                run = run_app(mode, protocol, args.seconds, args.sample_every, args, redis_url)
            else:
                run = run_spans(mode, protocol, args.seconds, args.sample_every)
        finally:
            redis_urls.put(redis_url)
        print(
            f"soak_faults: {mode:8} {protocol:14} growth {run.growth_mib()} MiB, peak "
            f"{run.peak_mib():.1f} MiB, {run.requests} export requests, {run.delivered} spans "
            f"delivered, dropped {run.dropped}, exit {run.exit_s:.1f} s",
            flush=True,
        )
        return run

    args.template = app_template(args) if args.load == "app" else ""
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda pair: one(*pair), pairs))
    finally:
        if args.template:
            drop_database(args, args.template)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(run) for run in runs]))
    section = markdown(runs, args)
    print(section)
    if args.write_doc:
        sys.path.insert(0, str(ROOT / "scripts"))
        from soak import write_doc

        write_doc(args.write_doc, section, args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
