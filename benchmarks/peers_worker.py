"""One mode of the peer benchmark: Django's WSGI application called in-process, under an agent.

Started by ``peers.py`` as ``[LAUNCHER ...] python benchmarks/peers_worker.py`` (the launcher is
``hms-otel-run``, ``opentelemetry-instrument``, ``ddtrace-run`` or none), it loads
``peers_site.wsgi``, connects to the runner's control port (``HMS_PEERS_CONTROL``) and answers one
JSON command per line:

``{"cmd": "run", "path": P, "n": N}``  N requests to P through the WSGI application, one at a time
    (a prepared environ per request, the response iterated and closed as a WSGI server does); then
    the agent's own flush, so that its export work is done before the CPU clock is read. Returns
    the per-request latencies (ns), the process CPU time (every thread: the export threads run
    in this process) over requests and flush, the request thread's share of it (without the flush), the
    time in the garbage collector and its collections per generation, and the status codes.
``{"cmd": "profile", "path": P, "n": N, "out": FILE, "tool": "cprofile"|"pyinstrument"}``  the same
    N requests under a profiler of the request thread, saved to FILE (``real_app.py`` uses it);
    ``"timer": "cpu"`` makes cProfile count the thread's CPU time instead of wall time.
``{"cmd": "quit"}``

No HTTP server, so the numbers are the agent's cost on the request path and its export threads,
with nothing of a server's (socket, parsing, worker model) around them.
"""

from __future__ import annotations

import gc
import io
import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peers_site.settings")

AGENT = os.environ.get("HMS_PEERS_FLUSH", "")


def _flusher() -> Any:
    """The agent's own "export what you have now", or nothing to do."""
    if AGENT == "otel":
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        return flush or (lambda: None)
    if AGENT == "ddtrace":
        from ddtrace.trace import tracer

        return tracer.flush
    if AGENT == "sentry":
        import sentry_sdk

        return lambda: sentry_sdk.flush(timeout=10)
    if AGENT == "elastic":
        import elasticapm

        def flush() -> None:
            client = elasticapm.get_client()
            if client is not None and client._transport is not None:
                client._transport.flush()

        return flush
    return lambda: None


def _environ(path: str) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "hms-peers-bench",
        "HTTP_ACCEPT": "application/json",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def profile(command: dict[str, Any], request: Any) -> None:
    path, n, out = command["path"], command["n"], command["out"]
    if command.get("tool") == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(n):
            request(path)
        profiler.stop()
        Path(out).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        Path(out + ".html").write_text(profiler.output_html())
        return
    import cProfile

    # "timer": "cpu" profiles the thread's CPU time (waits for PostgreSQL and Redis not counted).
    timer = (time.thread_time,) if command.get("timer") == "cpu" else ()
    with cProfile.Profile(*timer) as prof:
        for _ in range(n):
            request(path)
    prof.dump_stats(out)


class GcClock:
    """Time spent in the garbage collector and collections per generation (``gc.callbacks``):
    on a large heap a collection costs in proportion to the live objects, and telemetry that
    allocates makes the collector run more often."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def snapshot(self) -> tuple[float, list[int]]:
        return self.seconds, list(self.collections)


def main() -> int:
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    flush = _flusher()
    gc_clock = GcClock()
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status.split(" ", 1)[0])
        return lambda data: None

    def request(path: str) -> int:
        start = time.perf_counter_ns()
        result = application(_environ(path), start_response)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return time.perf_counter_ns() - start

    control = socket.create_connection(("127.0.0.1", int(os.environ["HMS_PEERS_CONTROL"])))
    reader = control.makefile("r", encoding="utf-8")
    writer = control.makefile("w", encoding="utf-8")
    writer.write(json.dumps({"ready": os.getpid()}) + "\n")
    writer.flush()
    for line in reader:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "profile":
            profile(command, request)
            writer.write(json.dumps({"saved": command["out"]}) + "\n")
            writer.flush()
            continue
        statuses.clear()
        gc0, collections0 = gc_clock.snapshot()
        cpu0, main0 = time.process_time(), time.thread_time()
        latencies = [request(command["path"]) for _ in range(command["n"])]
        # The request thread's CPU without the flush (which exports in the calling thread):
        # the rest of the process's CPU is export (background threads and the final flush).
        main = time.thread_time() - main0
        flush_start = time.perf_counter_ns()
        flush()
        flush_ns = time.perf_counter_ns() - flush_start
        cpu = time.process_time() - cpu0
        gc1, collections1 = gc_clock.snapshot()
        answer = {
            "latencies_ns": latencies,
            "cpu_s": cpu,
            "cpu_request_thread_s": main,
            "gc_s": gc1 - gc0,
            "gc_collections": [b - a for a, b in zip(collections0, collections1, strict=True)],
            "flush_ns": flush_ns,
            "statuses": dict(Counter(statuses)),
        }
        writer.write(json.dumps(answer) + "\n")
        writer.flush()
    flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
