"""The request thread of peers.py's modes, in-process: interleaved CPU per request, then cProfile.

``python benchmarks/profile_peers.py [--agents none,otel-http,hms-http] [--rates 1.0] [--pages ...]
[--rounds 3] [--requests 30] [--profile-requests 30] [--out DIR]``

Every mode is ``peers_worker.py`` under its launcher, exactly as in ``peers.py`` (same sink, same
environment). After a warm-up, ``--rounds`` interleaved rounds of ``--requests`` requests per page
and mode print the request thread's CPU per request (median of rounds, ratio to the first mode);
then each mode profiles ``--profile-requests`` requests per page with cProfile on the thread's CPU
clock (waits for PostgreSQL and Redis not counted) into ``DIR/<mode>_<page>.prof``, and a summary
of self time per layer (Django, psycopg, the SDK's traces and metrics, contrib, the agent, ...) is
printed per file. cProfile's overhead inflates every number (about 4x on the N+1 list): compare
shares and modes, not absolute times. See docs/benchmarks.md ("Where the request thread's extra
CPU goes").
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
import run  # noqa: E402

LAYERS = (
    ("hms_otel_agent/", "agent"),
    ("opentelemetry/sdk/metrics", "sdk metrics"),
    ("opentelemetry/sdk/trace", "sdk traces"),
    ("opentelemetry/instrumentation", "contrib"),
    ("opentelemetry/", "otel api/other"),
    ("django/", "django"),
    ("psycopg", "psycopg"),
    ("redis/", "redis-py"),
    ("wrapt", "wrapt"),
)


def layer(filename: str) -> str:
    for needle, name in LAYERS:
        if needle in filename:
            return name
    return "built-ins" if filename == "~" else "stdlib/other"


def summarize(path: Path, requests: int) -> dict[str, float]:
    """Self time per layer, ms per request."""
    stats: Any = pstats.Stats(str(path))
    totals: collections.Counter[str] = collections.Counter()
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        totals[layer(filename)] += tottime
    return {name: round(seconds / requests * 1e3, 2) for name, seconds in totals.most_common()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", default="none,otel-http,hms-http")
    parser.add_argument("--rates", default="1.0")
    parser.add_argument("--pages", default=",".join(peers.PAGES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--profile-requests", type=int, default=30, help="0: no profile")
    parser.add_argument(
        "--out", default=None, help="directory for the .prof files (default: a temporary one)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HMS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("HMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    args = parser.parse_args(argv)
    modes = peers.modes_for(args.agents.split(","), [float(r) for r in args.rates.split(",")])
    pages = [p for p in peers.PAGES if p in args.pages.split(",")]
    out = Path(args.out or tempfile.mkdtemp(prefix="hms-profile-peers-"))
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="hms-profile-peers-logs-"))
    workers: dict[str, peers.WsgiWorker] = {}
    with run.bench_database(args.database_url, args.redis_url, 200) as (db_url, _ids):
        sink = peers.PeerSink(modes, log_dir)
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            for mode in modes:
                launcher, env = peers.mode_command(mode, sink.ports, log_dir)
                env.update(
                    {
                        "DATABASE_URL": db_url,
                        "REDIS_URL": args.redis_url,
                        "DJANGO_SETTINGS_MODULE": "peers_site.settings",
                        "HMS_PEERS_CONTROL": str(listener.getsockname()[1]),
                    }
                )
                env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(HERE)) if p)
                workers[mode.name] = peers.WsgiWorker(
                    mode, listener, run.hermetic_env(env), launcher, log_dir
                )
            for mode in modes:
                for page in pages:
                    workers[mode.name].run(peers.PAGES[page][0], 20)
            thread_ms: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
            for round_ in range(args.rounds):
                for page in pages:
                    shift = round_ % len(modes)
                    for mode in modes[shift:] + modes[:shift]:
                        result = workers[mode.name].run(peers.PAGES[page][0], args.requests)
                        assert result.cpu_request_thread_s is not None
                        thread_ms[(page, mode.name)].append(result.cpu_request_thread_s / args.requests * 1e3)
            print(f"load average {os.getloadavg()[0]:.1f}; request thread CPU per request, median of rounds")
            for page in pages:
                base = statistics.median(thread_ms[(page, modes[0].name)])
                for mode in modes:
                    rounds = thread_ms[(page, mode.name)]
                    value = statistics.median(rounds)
                    print(
                        f"{page:12} {mode.name:20} {value:8.3f} ms  {value / base:5.2f}x"
                        f"  rounds {[round(r, 2) for r in rounds]}"
                    )
            if args.profile_requests:
                for mode in modes:
                    for page in pages:
                        path = out / f"{mode.name}_{page}.prof"
                        worker = workers[mode.name]
                        command = {
                            "cmd": "profile",
                            "path": peers.PAGES[page][0],
                            "n": args.profile_requests,
                            "out": str(path),
                            "tool": "cprofile",
                            "timer": "cpu",
                        }
                        worker.writer.write(json.dumps(command) + "\n")
                        worker.writer.flush()
                        worker.reader.readline()
                        print(f"{path}: {summarize(path, args.profile_requests)}")
        finally:
            for worker in workers.values():
                worker.stop()
            sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
