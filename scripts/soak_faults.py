"""Memory under every backend failure: each failure mode for N minutes under load, RSS sampled.

    python scripts/soak_faults.py --minutes 2 --write-doc docs/reliability.md
    python scripts/soak_faults.py --load spans --seconds 20 --modes tls,refused   # quick look

Failure modes, for OTLP over HTTP (http/protobuf) and gRPC, traces and metrics alike:

  healthy   the backend answers at once (the baseline)
  tls       an https:// endpoint against a plain-HTTP server: every TLS handshake fails
  refused   nothing listens on the port
  slow      the backend answers, but after twice the exporter's timeout
  retry     503 / 429 with Retry-After (gRPC: UNAVAILABLE / RESOURCE_EXHAUSTED), retried until the timeout
  stall     the backend accepts and never answers

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
import os
import platform
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
PROTOCOLS = ("http/protobuf", "grpc")
EXPORT_TIMEOUT_MS = 2000
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
        self._stop = threading.Event()
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers = backend._http_answer()
                if status == 0:
                    return  # stall: the connection stays open until the backend stops
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

        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
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
            return b""  # an empty Export*ServiceResponse

        class Generic(grpc.GenericRpcHandler):
            def service(self, details):  # type: ignore[no-untyped-def]
                if details.method.endswith("/Export"):
                    return grpc.unary_unary_rpc_method_handler(handler)
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
    app_requests: int = 0
    exit_s: float = 0.0

    def growth_mib(self) -> list[float]:
        """RSS growth per process from the end of the warm-up (first fifth) to the end."""
        start = next((s for s in self.samples if s[0] >= self.seconds / 5), self.samples[0])
        end = self.samples[-1]
        return [(b - a) / 1024 for a, b in zip(start[1], end[1], strict=False)]

    def peak_mib(self) -> float:
        return max((max(s[1]) for s in self.samples if s[1]), default=0) / 1024


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
    backend = FaultBackend(mode, delay_s=2 * EXPORT_TIMEOUT_MS / 1000)
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
        backend.stop()
    return run


def run_app(mode: str, protocol: str, seconds: float, sample_every: float, args: argparse.Namespace) -> Run:
    sys.path.insert(0, str(ROOT / "scripts"))
    import psycopg
    import redis
    from soak import URLS, free_port, get, manage, with_database

    backend = FaultBackend(mode, delay_s=2 * EXPORT_TIMEOUT_MS / 1000)
    run = Run(mode, protocol, seconds)
    name = f"hms_soak_faults_{os.getpid()}_{mode}_{protocol.split('/')[0]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    app = None
    try:
        env = agent_env(
            backend,
            protocol,
            {
                "DATABASE_URL": with_database(args.database_url, name),
                "REDIS_URL": args.redis_url,
                "DJANGO_SETTINGS_MODULE": "hms_otel_agent.sample.settings",
            },
        )
        redis.Redis.from_url(args.redis_url).flushdb()
        manage(env, "migrate", "--noinput")
        manage(env, "seed_hms", "--patients", "100", "--seed", "1")
        port = free_port()
        cmd = [tool("hms-otel-run"), "--", tool("gunicorn"), "hms_otel_agent.sample.wsgi"]
        cmd += ["-b", f"127.0.0.1:{port}", "-w", "2"]
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
        backend.stop()
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
    lines = [
        f"<!-- {args.marker}:begin -->",
        f"Run: `python scripts/soak_faults.py --load {args.load} --seconds {args.seconds:g}` "
        f"(Python {platform.python_version()}, {os.cpu_count()} CPUs, shared with other work): {what}; "
        f"exporter timeout {EXPORT_TIMEOUT_MS} ms, the queue at its default ({QUEUE_SIZE} spans), "
        f"batches every 200 ms, metrics every 2 s, `HMS_OTEL_SHUTDOWN_TIMEOUT_MS=3000`. RSS per "
        f"{'worker' if args.load == 'app' else 'process'}: after the first fifth of the run "
        "(warm-up) and at the end.",
        "",
        "| mode | protocol | export requests seen | RSS after warm-up (MiB) | RSS at the end (MiB) "
        "| growth (MiB) | peak (MiB) | exit after SIGTERM (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        start = next((s for s in run.samples if s[0] >= run.seconds / 5), run.samples[0])
        end = run.samples[-1]
        lines.append(
            f"| {run.mode} | {run.protocol} | {run.requests} | "
            f"{' / '.join(f'{r / 1024:.1f}' for r in start[1])} | "
            f"{' / '.join(f'{r / 1024:.1f}' for r in end[1])} | "
            f"{' / '.join(f'{g:+.1f}' for g in run.growth_mib())} | {run.peak_mib():.1f} | "
            f"{run.exit_s:.1f} |"
        )
    lines.append(f"<!-- {args.marker}:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load", choices=("app", "spans"), default="app")
    parser.add_argument("--seconds", type=float, default=120.0, help="per mode and protocol")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HMS_OTEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--write-doc", type=Path, help="replace the <!-- MARKER:begin/end --> section")
    parser.add_argument("--marker", default="soak-faults")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("soak_faults: reads /proc; Linux only", file=sys.stderr)
        return 2
    runs = []
    for mode in args.modes.split(","):
        for protocol in args.protocols.split(","):
            if args.load == "app":
                run = run_app(mode, protocol, args.seconds, args.sample_every, args)
            else:
                run = run_spans(mode, protocol, args.seconds, args.sample_every)
            print(
                f"soak_faults: {mode:8} {protocol:14} growth {run.growth_mib()} MiB, peak "
                f"{run.peak_mib():.1f} MiB, {run.requests} export requests, exit {run.exit_s:.1f} s",
                flush=True,
            )
            runs.append(run)
    section = markdown(runs, args)
    print(section)
    if args.write_doc:
        sys.path.insert(0, str(ROOT / "scripts"))
        from soak import write_doc

        write_doc(args.write_doc, section, args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
