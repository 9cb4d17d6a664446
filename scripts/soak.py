"""Soak test: the sample app under gunicorn with the agent, N requests at concurrency C, RSS of
every worker sampled over time. Not part of the test suite (it takes minutes); its figures are
recorded in docs/reliability.md.

    python scripts/soak.py --requests 100000 --concurrency 8 --write-doc docs/reliability.md

Needs PostgreSQL and Redis: --database-url names a server and a maintenance database (a fresh
database is created there, migrated, seeded and dropped at the end), --redis-url a Redis
database (flushed). Telemetry goes over OTLP/HTTP to a sink in this process that counts and
discards it (and reads the agent's own metrics: dropped spans, internal errors).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
MARKER = "soak"  # the doc section is between <!-- soak:begin --> and <!-- soak:end --> (--marker)

# A mix of every kind of endpoint: N+1 and optimized twins, cache reads and writes, raw SQL,
# failing requests (500, 404, 400) and identifying query strings.
URLS = (
    "/health/",
    "/stats/",
    "/patients/?limit=10",
    "/patients/optimized/?limit=10",
    "/encounters/?limit=10",
    "/encounters/optimized/?limit=10",
    "/appointments/schedule/?limit=4",
    "/patients/records/?limit=8",
    "/notes/?limit=8",
    "/patients/birthdays/?limit=8",
    "/patients/lookup/?ids=1,2,3,4,5",
    "/facilities/",
    "/facilities/optimized/",
    "/reports/raw-encounters/?limit=6",
    "/patients/{n}/summary/",
    "/patients/cached/?limit=8",
    "/patients/cached/optimized/?limit=8",
    "/encounters/recent/?limit=5",
    "/patients/{n}/flaky-summary/",
    "/patients/search/?q=Okafor&mrn=MRN-0000{n}",
    "/boom/?mrn=MRN-0000{n}",
    "/patients/999999/summary/",
    "/patients/?limit=abc",
)


# --- an OTLP/HTTP sink ----------------------------------------------------------------------------


@dataclass
class Sink:
    requests: Counter[str] = field(default_factory=Counter)
    received_bytes: int = 0
    dropped: dict[str, float] = field(default_factory=dict)  # hms.agent.dropped_spans, summed
    errors: dict[str, float] = field(default_factory=dict)  # hms.agent.errors, summed
    _latest: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def metrics(self, body: bytes) -> None:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

        request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
        for rm in request.resource_metrics:
            instance = next(
                (a.value.string_value for a in rm.resource.attributes if a.key == "service.instance.id"), ""
            )
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name not in ("hms.agent.dropped_spans", "hms.agent.errors"):
                        continue
                    for point in metric.sum.data_points:
                        label = next((a.value.string_value for a in point.attributes), "")
                        self._latest[(metric.name, instance, label)] = float(point.as_int or point.as_double)
        for name, target in (("hms.agent.dropped_spans", self.dropped), ("hms.agent.errors", self.errors)):
            target.clear()
            for (metric, _, label), value in self._latest.items():
                if metric == name:
                    target[label] = target.get(label, 0.0) + value


def start_sink() -> tuple[ThreadingHTTPServer, Sink]:
    sink = Sink()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sink._lock:
                sink.requests[self.path] += 1
                sink.received_bytes += len(body)
                if self.path.endswith("/v1/metrics"):
                    try:
                        sink.metrics(body)
                    except Exception as exc:  # a sink never fails the exporter
                        print(f"soak: could not read metrics: {exc}", file=sys.stderr)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, sink


# --- processes ----------------------------------------------------------------------------------------


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
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return sorted(int(p) for p in f.read().split())
    except OSError:
        return []


def gunicorn_master(launcher_pid: int) -> int:
    """hms-otel-run execs gunicorn: the launcher's pid is gunicorn's master."""
    return launcher_pid


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "hms_otel_agent.sample", *args], env=env, check=True, capture_output=True
    )


# --- load ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    done: int
    seconds: float
    workers: list[int]  # RSS KiB per worker
    master: int
    dropped: dict[str, float]
    errors: float


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def soak(args: argparse.Namespace) -> tuple[list[Sample], Counter[int], float, Sink]:
    import psycopg

    name = f"hms_soak_{secrets.token_hex(4)}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    sink_server, sink = start_sink()
    sink_url = f"http://127.0.0.1:{sink_server.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HMS_OTEL_"))}
    env.update(
        DATABASE_URL=with_database(args.database_url, name),
        REDIS_URL=args.redis_url,
        DJANGO_SETTINGS_MODULE="hms_otel_agent.sample.settings",
        OTEL_EXPORTER_OTLP_ENDPOINT=sink_url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRIC_EXPORT_INTERVAL="5000",
        HMS_OTEL_LIVE_LOG="false",
    )
    app: subprocess.Popen[bytes] | None = None
    try:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
        manage(env, "migrate", "--noinput")
        manage(env, "seed_hms", "--patients", "200", "--seed", "1")
        port = free_port()
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
        cmd = [gunicorn, "hms_otel_agent.sample.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(args.workers)]
        if not args.no_agent:
            launcher = shutil.which("hms-otel-run", path=str(Path(sys.executable).parent)) or "hms-otel-run"
            cmd = [launcher, "--", *cmd]
        log = open(args.log, "wb") if args.log else subprocess.DEVNULL  # noqa: SIM115
        app = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                get(port, "/health/")
                break
            except OSError:
                if time.monotonic() > deadline or app.poll() is not None:
                    raise SystemExit("soak: the app did not start") from None
                time.sleep(0.1)
        master = gunicorn_master(app.pid)
        statuses: Counter[int] = Counter()
        samples: list[Sample] = []
        lock = threading.Lock()
        done = 0
        started = time.monotonic()

        def sample() -> None:
            workers = children(master)
            samples.append(
                Sample(
                    done,
                    time.monotonic() - started,
                    [rss_kib(w) for w in workers],
                    rss_kib(master),
                    dict(sink.dropped),
                    sum(sink.errors.values()),
                )
            )

        def one(index: int) -> None:
            nonlocal done
            path = URLS[index % len(URLS)].format(n=index % 9 + 1)
            status = get(port, path)
            with lock:
                statuses[status] += 1
                done += 1

        sample()
        every = max(1, args.requests // args.samples)
        with ThreadPoolExecutor(args.concurrency) as pool:
            for start in range(0, args.requests, every):
                list(pool.map(one, range(start, min(args.requests, start + every))))
                sample()
                last = samples[-1]
                print(
                    f"soak: {last.done:>7} requests {last.seconds:7.1f} s  workers RSS "
                    f"{' '.join(f'{r / 1024:6.1f}' for r in last.workers)} MiB  dropped {last.dropped}",
                    flush=True,
                )
        elapsed = time.monotonic() - started
        time.sleep(6)  # one more metrics export
        sample()
        return samples, statuses, elapsed, sink
    finally:
        if app is not None and app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)
            try:
                app.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(app.pid, signal.SIGKILL)
        sink_server.shutdown()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def markdown(
    args: argparse.Namespace, samples: list[Sample], statuses: Counter[int], elapsed: float, sink: Sink
) -> str:
    import platform

    first_full = next((s for s in samples if s.done >= args.requests * 0.1), samples[1])
    last = samples[-2] if len(samples) > 2 else samples[-1]
    mid = next(s for s in samples if s.done >= args.requests / 2)
    workers = len(last.workers)
    lines = [
        f"<!-- {args.marker}:begin -->",
        f"Run: `python scripts/soak.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--workers {args.workers}` ({'without' if args.no_agent else 'with'} the agent; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; gunicorn sync workers; OTLP/HTTP to a "
        f"local sink). {args.requests} requests in {elapsed:.0f} s ({args.requests / elapsed:.0f} req/s), "
        f"statuses {dict(sorted(statuses.items()))}; {sum(sink.requests.values())} OTLP requests, "
        f"{sink.received_bytes / 1e6:.0f} MB.",
        "",
        "| requests | seconds | " + " | ".join(f"worker {i + 1} RSS (MiB)" for i in range(workers)) + " |",
        "|---:|---:|" + "---:|" * workers,
    ]
    step = max(1, (len(samples) - 1) // 20)
    for s in samples[:-1][::step] + ([samples[-2]] if (len(samples) - 2) % step else []):
        rss = " | ".join(f"{r / 1024:.1f}" for r in s.workers)
        lines.append(f"| {s.done} | {s.seconds:.0f} | {rss} |")
    growth = [(b - a) / 1024 for a, b in zip(first_full.workers, last.workers, strict=False)]
    late = [(b - a) / 1024 for a, b in zip(mid.workers, last.workers, strict=False)]
    lines += [
        "",
        f"Growth per worker after the first 10% of requests: {', '.join(f'{g:+.1f} MiB' for g in growth)}; "
        f"over the second half: {', '.join(f'{g:+.1f} MiB' for g in late)}.",
        f"Agent metrics at the end: hms.agent.dropped_spans {samples[-1].dropped or '{}'}, "
        f"hms.agent.errors {samples[-1].errors:.0f}.",
        f"<!-- {args.marker}:end -->",
    ]
    return "\n".join(lines)


def write_doc(path: Path, section: str, marker: str) -> None:
    text = path.read_text(encoding="utf-8")
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text += "\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=50, help="RSS samples over the run")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HMS_OTEL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument(
        "--no-agent", action="store_true", help="the same run without the agent, for comparison"
    )
    parser.add_argument("--log", help="write the app's output here")
    parser.add_argument(
        "--write-doc", type=Path, help="replace the <!-- MARKER:begin/end --> section of this file"
    )
    parser.add_argument("--marker", default=MARKER, help="the doc section's marker (default: soak)")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("soak: reads /proc; Linux only", file=sys.stderr)
        return 2
    samples, statuses, elapsed, sink = soak(args)
    section = markdown(args, samples, statuses, elapsed, sink)
    print(section)
    if args.write_doc:
        write_doc(args.write_doc, section, args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
