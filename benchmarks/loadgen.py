"""A small HTTP load generator for the benchmarks: raw sockets, one request per connection.

gunicorn's sync workers close the connection after every response, so a request is: connect, send a
``GET``, read to EOF. Raw sockets keep the client's own CPU per request low (a few tens of
microseconds), which matters on a 2-core machine where the client shares the CPUs with the server,
PostgreSQL and Redis.

* :func:`serial` — one request at a time: per-request latency without queueing (median, p99).
* :func:`concurrent` — ``concurrency`` client threads for ``duration`` seconds (and at most
  ``max_requests`` requests): throughput at fixed concurrency, plus the latencies under load.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PathFor = Callable[[int], str]  # request index -> path; the same sequence in every mode


@dataclass
class LoadResult:
    requests: int = 0  # answered with 2xx
    errors: int = 0  # anything else: non-2xx, refused, reset, timed out
    elapsed_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    first_error: str = ""

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latencies_ns.extend(other.latencies_ns)
        self.first_error = self.first_error or other.first_error


def get(host: str, port: int, path: str, timeout: float = 30.0) -> tuple[int, int]:
    """One ``GET``; returns (HTTP status, latency in ns). Raises OSError on connection problems."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode("ascii")
    start = time.perf_counter_ns()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    latency = time.perf_counter_ns() - start
    head = chunks[0] if chunks else b""
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, latency


def _one(host: str, port: int, path: str, result: LoadResult) -> None:
    try:
        status, latency = get(host, port, path)
    except OSError as exc:
        result.errors += 1
        result.first_error = result.first_error or f"{path}: {exc!r}"
        return
    if 200 <= status < 300:
        result.requests += 1
        result.latencies_ns.append(latency)
    else:
        result.errors += 1
        result.first_error = result.first_error or f"{path}: HTTP {status}"


def serial(
    host: str, port: int, path_for: PathFor, count: int, max_seconds: float, start: int = 0
) -> LoadResult:
    """``count`` requests one after the other (fewer if ``max_seconds`` runs out)."""
    result = LoadResult()
    began = time.perf_counter()
    deadline = began + max_seconds
    for index in range(start, start + count):
        _one(host, port, path_for(index), result)
        if time.perf_counter() >= deadline:
            break
    result.elapsed_s = time.perf_counter() - began
    return result


def concurrent(
    host: str,
    port: int,
    path_for: PathFor,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    start: int = 0,
) -> LoadResult:
    """``concurrency`` closed-loop clients for ``duration_s`` seconds or ``max_requests`` requests."""
    counter = itertools.count(start)  # next() on itertools.count is atomic under the GIL
    last = start + max_requests
    results = [LoadResult() for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(result: LoadResult) -> None:
        barrier.wait()
        end = deadline[0]
        while time.perf_counter() < end:
            index = next(counter)
            if index >= last:
                break
            _one(host, port, path_for(index), result)

    threads = [threading.Thread(target=client, args=(r,), daemon=True) for r in results]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + duration_s
    barrier.wait()
    for thread in threads:
        thread.join(duration_s + 60)
    total = LoadResult()
    total.elapsed_s = time.perf_counter() - began
    for result in results:
        total.merge(result)
    return total
