"""A realistic mix of requests for the sample hospital app, with a progress bar.

Every endpoint is requested once first (naive views and their optimized twins, the cache
endpoints), then the mix is drawn at random with weights: list views are the busiest, writes
the rarest. Patient ids are drawn from the seeded range, so cache keys repeat and some hit.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

Endpoint = tuple[str, Callable[[random.Random, int], str], int]  # method, path(rng, patients), weight

FLAKY_SUMMARY: Endpoint = ("GET", lambda r, n: f"/patients/{_pk(r, n)}/flaky-summary/", 2)

# Naive views and their optimized twins get the same weight, so the report compares like with like.
ENDPOINTS: tuple[Endpoint, ...] = (
    ("GET", lambda r, n: "/patients/?limit=20", 4),
    ("GET", lambda r, n: "/patients/optimized/?limit=20", 4),
    ("GET", lambda r, n: "/encounters/?limit=20", 4),
    ("GET", lambda r, n: "/encounters/optimized/?limit=20", 4),
    ("GET", lambda r, n: "/appointments/schedule/?limit=10", 2),
    ("GET", lambda r, n: "/appointments/schedule/optimized/?limit=10", 2),
    ("GET", lambda r, n: "/patients/records/?limit=20", 2),
    ("GET", lambda r, n: "/patients/records/optimized/?limit=20", 2),
    ("GET", lambda r, n: "/notes/?limit=20", 2),
    ("GET", lambda r, n: "/notes/optimized/?limit=20", 2),
    ("GET", lambda r, n: "/patients/birthdays/?limit=20", 2),
    ("GET", lambda r, n: "/patients/birthdays/optimized/?limit=20", 2),
    ("GET", lambda r, n: "/patients/lookup/?ids=" + _ids(r, n, 10), 2),
    ("GET", lambda r, n: "/patients/lookup/optimized/?ids=" + _ids(r, n, 10), 2),
    ("GET", lambda r, n: "/facilities/", 2),
    ("GET", lambda r, n: "/facilities/optimized/", 2),
    ("GET", lambda r, n: "/reports/raw-encounters/?limit=20", 1),
    ("GET", lambda r, n: "/reports/raw-encounters/optimized/?limit=20", 1),
    ("GET", lambda r, n: "/patients/cached/?limit=20", 3),
    ("GET", lambda r, n: "/patients/cached/optimized/?limit=20", 3),
    ("GET", lambda r, n: "/encounters/recent/?limit=20", 1),
    ("GET", lambda r, n: "/encounters/recent/optimized/?limit=20", 1),
    ("GET", lambda r, n: f"/patients/{_pk(r, n)}/summary/", 4),
    FLAKY_SUMMARY,
    ("POST", lambda r, n: f"/patients/{_pk(r, n)}/touch/", 1),
    ("POST", lambda r, n: f"/patients/{_pk(r, n)}/touch/optimized/", 1),
    ("GET", lambda r, n: "/stats/", 1),
    # outbound calls to the demo's fake FHIR server (hms_otel_agent/demo/fhir_server.py)
    ("GET", lambda r, n: "/patients/fhir/?limit=10", 1),
    ("GET", lambda r, n: "/patients/fhir/optimized/?limit=10", 1),
)  # (not /health/: the demo's readiness probe, left out of the telemetry so the report counts these)


# The opening requests: every endpoint once, and the ones whose finding needs evidence from
# several requests (a miss never filled: HMS_OTEL_CACHE_MISS_MIN_REQUESTS, default 3) as often as
# that, so that a short demo shows every finding.
OPENING: tuple[Endpoint, ...] = (*ENDPOINTS, FLAKY_SUMMARY, FLAKY_SUMMARY)


def _pk(rng: random.Random, patients: int) -> int:
    return rng.randint(1, max(1, min(patients, 40)))  # a hot set: summaries get cache hits


def _ids(rng: random.Random, patients: int, count: int) -> str:
    return ",".join(str(rng.randint(1, max(1, patients))) for _ in range(count))


def plan(count: int | None, seed: int, patients: int) -> Callable[[int], tuple[str, str] | None]:
    """The i-th request (method, path); None when `count` requests were planned."""
    rng = random.Random(seed)
    weights = [w for _, _, w in ENDPOINTS]
    lock = threading.Lock()

    def nth(i: int) -> tuple[str, str] | None:
        if count is not None and i >= count:
            return None
        with lock:
            endpoint = OPENING[i] if i < len(OPENING) else rng.choices(ENDPOINTS, weights)[0]
            method, path, _ = endpoint
            return method, path(rng, patients)

    return nth


@dataclass
class TrafficResult:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + sum(n for s, n in self.statuses.items() if s >= 500)


def request(base_url: str, method: str, path: str, timeout: float = 30) -> int:
    req = urllib.request.Request(base_url + path, data=b"" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code)


def drive(
    base_url: str,
    *,
    requests: int | None,
    duration_s: float | None,
    concurrency: int,
    seed: int,
    patients: int,
    stream: IO[str] | None,
) -> TrafficResult:
    """Send the mix; `requests` or `duration_s` decides how much. Progress goes to `stream`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    nth = plan(requests, seed, patients)
    result = TrafficResult()
    console = Console(file=stream, quiet=stream is None)
    total = float(requests) if requests is not None else float(duration_s or 0)
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn()
        if requests is not None
        else TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
    ]
    start = time.monotonic()
    deadline = start + duration_s if duration_s is not None else None
    indexes = itertools.count()
    outcomes: queue.SimpleQueue[int | str | None] = queue.SimpleQueue()  # status, error name, or done
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            item = nth(next(indexes))
            if item is None:
                break
            try:
                outcomes.put(request(base_url, *item))
            except Exception as exc:
                outcomes.put(type(exc).__name__)
        outcomes.put(None)

    # Daemon threads and a C-level queue, not an executor: a Ctrl-C raised in the main thread
    # can then never leave a lock held that a client waits on, and exit never waits for them
    # (the server is stopped next, which ends any request in flight).
    clients = max(1, concurrency)
    for n in range(clients):
        threading.Thread(target=client, name=f"hms-demo-client-{n}", daemon=True).start()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sending requests", total=total)
        try:
            while clients:
                try:
                    outcome = outcomes.get(timeout=0.2)
                except queue.Empty:
                    outcome = ""  # nothing finished: only the elapsed time moves
                if outcome is None:
                    clients -= 1
                elif outcome != "":
                    result.sent += 1
                    if isinstance(outcome, int):
                        result.statuses[outcome] += 1
                    else:
                        result.errors[outcome] += 1
                    if requests is not None:
                        progress.advance(task)
                if deadline is not None:
                    progress.update(task, completed=min(total, time.monotonic() - start))
        finally:
            stop.set()
    result.seconds = time.monotonic() - start
    return result
