"""Micro-benchmarks of the cache signals: ``python benchmarks/micro_cache.py``.

Prints microseconds (best of several timeit repeats; no assertions) for

* the Redis hooks: request + response hook on one live SDK span (GET, MGET of 10 keys,
  SET EX), and the pipeline response hook for 10 queued commands, each next to the cost of
  the bare span (start + end) they are added to;
* a Django cache API call (LocMemCache ``get`` hit and ``set``): the backend alone, and
  instrumented (span, key pattern, code location, CacheCall) through the agent's span
  processor;
* the detector (`cache_signals.detect`) over a request with 10 mixed calls, a cache N+1
  of 50 reads, and the per-owner cap of 5000 calls;

plus the calibration line of micro_signals.py, so numbers from different machines compare.
No Redis or database needed.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hms_otel_agent import config
from hms_otel_agent.instrument import cache_hooks
from hms_otel_agent.signals import cache_signals
from hms_otel_agent.signals.records import CacheCall, CodeLocation, DbCall, OwnerActivity

SETTINGS = config.load({}).settings


def _best_us(func: Callable[[], object] | str, number: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=7)) / number * 1e6


def _row(name: str, us: float, base: float | None = None) -> None:
    extra = f"   (+{us - base:.2f} µs over the bare span)" if base is not None else ""
    print(f"  {name:<52} {us:9.2f} µs{extra}")


# --- Redis hooks ---------------------------------------------------------------------------------


def redis_hooks() -> None:
    from hms_otel_agent import pipeline

    built = pipeline.build(SETTINGS, span_exporters=[], metric_readers=[]).install()
    tracer = built.tracer_provider.get_tracer("opentelemetry.instrumentation.redis")
    request = cache_hooks.redis_request_hook(SETTINGS)
    response = cache_hooks.redis_response_hook(SETTINGS)
    assert request is not None and response is not None

    def bare() -> None:
        tracer.start_span("GET").end()

    def command(args: tuple[Any, ...], reply: Any) -> Callable[[], None]:
        def run() -> None:
            span = tracer.start_span(str(args[0]))
            request(span, None, args, {})
            response(span, None, reply)
            span.end()

        return run

    keys = tuple(f"patient:{i}:summary" for i in range(10))
    stack = [("GET", key) for key in keys]

    def pipe() -> None:
        token = cache_hooks.pipeline_commands.set(stack)
        span = tracer.start_span("GET " * 10)
        response(span, None, [b"x", None] * 5)
        span.end()
        cache_hooks.pipeline_commands.reset(token)

    print("Redis hooks (request + response) on one span under an owner, through the agent's span processor")
    owner = built.tracer_provider.get_tracer("bench").start_as_current_span("owner")
    owner.__enter__()
    base = _best_us(bare, 20_000)
    _row("bare span: start + end", base)
    _row("GET (miss)", _best_us(command(("GET", ":1:patient:12345:summary"), None), 20_000), base)
    _row("MGET of 10 keys", _best_us(command(("MGET", *keys), [b"x", None] * 5), 20_000), base)
    _row("SET EX 3600", _best_us(command(("SET", "patient:7:summary", b"v", "EX", 3600), True), 20_000), base)
    _row("pipeline of 10 GETs (response hook)", _best_us(pipe, 10_000), base)
    _row("parse_command(GET) alone", _best_us(lambda: cache_hooks.parse_command(("GET", "k")), 200_000))
    owner.__exit__(None, None, None)


# --- Django cache API ----------------------------------------------------------------------------


def django_cache_api() -> None:
    import django
    from django.conf import settings

    settings.configure(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        INSTALLED_APPS=[],
    )
    django.setup()
    from django.core.cache.backends.locmem import LocMemCache

    from hms_otel_agent import pipeline
    from hms_otel_agent.instrument import django_cache

    plain = LocMemCache("plain", {})
    plain.set("patient:7:summary", {"id": 7})
    print("Django cache API (LocMemCache), one call")
    get_plain = _best_us(lambda: plain.get("patient:7:summary"), 50_000)
    set_plain = _best_us(lambda: plain.set("patient:7:summary", {"id": 7}, 60), 50_000)
    _row("get (hit), not instrumented", get_plain)
    _row("set, not instrumented", set_plain)

    built = pipeline.build(SETTINGS, span_exporters=[], metric_readers=[]).install()
    tracer = built.tracer_provider.get_tracer("bench")
    django_cache.install(SETTINGS, built.tracer_provider)
    cache = LocMemCache("instrumented", {})
    cache.set("patient:7:summary", {"id": 7})
    owner = tracer.start_as_current_span("owner")
    owner.__enter__()
    bare = _best_us(lambda: tracer.start_span("cache.get").end(), 20_000)
    _row("bare span: start + end", bare)
    _row(
        "get (hit), instrumented", _best_us(lambda: cache.get("patient:7:summary"), 20_000), bare + get_plain
    )
    _row(
        "get (miss), instrumented", _best_us(lambda: cache.get("patient:8:summary"), 20_000), bare + get_plain
    )
    _row(
        "set, instrumented",
        _best_us(lambda: cache.set("patient:7:summary", {"id": 7}, 60), 20_000),
        bare + set_plain,
    )
    owner.__exit__(None, None, None)
    django_cache.uninstall()


# --- the detector --------------------------------------------------------------------------------

MS = 1_000_000
HERE = CodeLocation("hms/views.py", 120, "cached_patients")


def _activity(calls: list[CacheCall], db: int = 1) -> OwnerActivity:
    return OwnerActivity(
        name="GET patients/cached/",
        route="patients/cached/",
        cache_calls=calls,
        db_calls=[
            DbCall("f" * 16, "SELECT ...", start_ns=i * 3 * MS + MS // 2, duration_ns=MS) for i in range(db)
        ],
    )


def _call(i: int, **fields: Any) -> CacheCall:
    base: dict[str, Any] = dict(
        operation="get",
        key_pattern="patient:{id}:summary",
        start_ns=i * MS,
        duration_ns=MS // 2,
        backend="redis",
        key_hash=i,
        location=HERE,
        django_api=True,
    )
    base.update(fields)
    return CacheCall(**base)


def detector() -> None:
    mixed = [
        _call(0, reads=1, hits=1),
        _call(1, reads=1, misses=1),
        _call(2, operation="set", writes=1, ttl_s=3600.0, key_hash=1),
        _call(3, operation="get_many", reads=10, hits=8, misses=2, key_hash=99),
        _call(4, operation="set_many", writes=2, ttl_s=3600.0, key_hash=98),
        _call(5, operation="set", key_pattern="encounters:recent", writes=1, ttl_s=None, key_hash=50),
        _call(6, operation="delete", deletes=1, key_hash=7),
        _call(7, reads=1, hits=1, key_pattern="patient:{id}:profile", key_hash=8),
        _call(8, operation="incr", key_pattern="hms:stats:hits", key_hash=9),
        _call(9, operation="has_key", reads=1, hits=1, key_hash=10),
    ]
    n_plus_one = [_call(i, reads=1, hits=i % 2, misses=1 - i % 2) for i in range(50)]
    cap = [
        _call(i, reads=1, hits=i % 2, misses=1 - i % 2, key_hash=i % 700, key_pattern=f"k{i % 40}:{{id}}")
        for i in range(5000)
    ]
    print("cache_signals.detect, one owner")
    _row(
        "10 mixed calls, 3 SQL (1 finding)",
        _best_us(lambda: cache_signals.detect(_activity(mixed, 3), SETTINGS), 5_000),
    )
    _row(
        "cache N+1: 50 gets (1 finding)",
        _best_us(lambda: cache_signals.detect(_activity(n_plus_one), SETTINGS), 2_000),
    )
    capped = _activity(cap, 200)
    _row(
        "5000 calls, 200 SQL (the per-owner cap)",
        _best_us(lambda: cache_signals.detect(capped, SETTINGS), 20),
    )
    _row(
        "no cache calls",
        _best_us(
            lambda: cache_signals.detect(dataclasses.replace(_activity([]), cache_calls=[]), SETTINGS),
            200_000,
        ),
    )


def main() -> None:
    print(f"Python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}")
    _row("calibration: `for i in range(1000): pass`", _best_us("for _ in range(1000): pass", 2_000))
    redis_hooks()
    django_cache_api()
    detector()


if __name__ == "__main__":
    main()
