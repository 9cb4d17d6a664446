"""The Redis hooks on their own: what each command family means, opt-in raw keys, guards.

The hooks run on real SDK spans of a private tracer provider (no Redis needed here; the
commands against a real server are in test_cache_redis.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hms_otel_agent import config, guard
from hms_otel_agent.instrument import cache_hooks
from hms_otel_agent.instrument.cache_hooks import parse_command
from hms_otel_agent.processors import grouping
from hms_otel_agent.signals.records import CacheCall

SETTINGS = config.load({}).settings

# args -> (operation, keys, read mode, writes, ttl_s, deletes)
COMMANDS: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = [
    (("GET", "k"), ("GET", ("k",), cache_hooks.NIL, 0, None, 0)),
    ((b"get", b"k"), ("GET", (b"k",), cache_hooks.NIL, 0, None, 0)),
    (("GETDEL", "k"), ("GETDEL", ("k",), cache_hooks.NIL, 0, None, 1)),
    (("GETEX", "k"), ("GETEX", ("k",), cache_hooks.NIL, 0, None, 0)),
    (("GETEX", "k", "EX", 30), ("GETEX", ("k",), cache_hooks.NIL, 1, 30.0, 0)),
    (("GETEX", "k", "PX", 1500), ("GETEX", ("k",), cache_hooks.NIL, 1, 1.5, 0)),
    (("GETEX", "k", "PERSIST"), ("GETEX", ("k",), cache_hooks.NIL, 1, None, 0)),
    (("HGET", "h", "f"), ("HGET", ("h",), cache_hooks.NIL, 0, None, 0)),
    (("LINDEX", "l", 0), ("LINDEX", ("l",), cache_hooks.NIL, 0, None, 0)),
    (("HGETALL", "h"), ("HGETALL", ("h",), cache_hooks.EMPTY, 0, None, 0)),
    (("LRANGE", "l", 0, -1), ("LRANGE", ("l",), cache_hooks.EMPTY, 0, None, 0)),
    (("SMEMBERS", "s"), ("SMEMBERS", ("s",), cache_hooks.EMPTY, 0, None, 0)),
    (("HEXISTS", "h", "f"), ("HEXISTS", ("h",), cache_hooks.TRUTHY, 0, None, 0)),
    (("EXISTS", "a"), ("EXISTS", ("a",), cache_hooks.TRUTHY, 0, None, 0)),
    (("EXISTS", "a", "b"), ("EXISTS", ("a", "b"), cache_hooks.COUNT, 0, None, 0)),
    (("MGET", "a", "b", "c"), ("MGET", ("a", "b", "c"), cache_hooks.PER_KEY, 0, None, 0)),
    (("HMGET", "h", "f1", "f2"), ("HMGET", ("h",), cache_hooks.PER_KEY, 0, None, 0)),
    (("SET", "k", "v"), ("SET", ("k",), cache_hooks.NO_READ, 1, None, 0)),
    (("SET", "k", "v", "EX", 60), ("SET", ("k",), cache_hooks.NO_READ, 1, 60.0, 0)),
    (("SET", "k", "v", b"px", b"2500"), ("SET", ("k",), cache_hooks.NO_READ, 1, 2.5, 0)),
    (("SET", "k", "v", "NX", "GET", "EX", 5), ("SET", ("k",), cache_hooks.NIL, 1, 5.0, 0)),
    (("SET", "k", "v", "IFEQ", "EX", "EX", 9), ("SET", ("k",), cache_hooks.NO_READ, 1, 9.0, 0)),
    (("SET", "k", "v", "KEEPTTL"), ("SET", ("k",), cache_hooks.NO_READ, 0, None, 0)),
    (("SETEX", "k", 120, "v"), ("SETEX", ("k",), cache_hooks.NO_READ, 1, 120.0, 0)),
    (("PSETEX", "k", 500, "v"), ("PSETEX", ("k",), cache_hooks.NO_READ, 1, 0.5, 0)),
    (("SETNX", "k", "v"), ("SETNX", ("k",), cache_hooks.NO_READ, 1, None, 0)),
    (("GETSET", "k", "v"), ("GETSET", ("k",), cache_hooks.NIL, 1, None, 0)),
    (("MSET", "a", 1, "b", 2), ("MSET", ("a", "b"), cache_hooks.NO_READ, 2, None, 0)),
    (("EXPIRE", "k", 60), ("EXPIRE", ("k",), cache_hooks.NO_READ, 1, 60.0, 0)),
    (("EXPIRE", "k", 60, "NX"), ("EXPIRE", ("k",), cache_hooks.NO_READ, 1, 60.0, 0)),
    (("PEXPIRE", "k", 60000), ("PEXPIRE", ("k",), cache_hooks.NO_READ, 1, 60.0, 0)),
    (("PERSIST", "k"), ("PERSIST", ("k",), cache_hooks.NO_READ, 1, None, 0)),
    (("DEL", "a", "b", "c"), ("DEL", ("a", "b", "c"), cache_hooks.NO_READ, 0, None, 3)),
    (("UNLINK", "a"), ("UNLINK", ("a",), cache_hooks.NO_READ, 0, None, 1)),
    (("INCRBY", "k", 1), ("INCRBY", ("k",), cache_hooks.NO_READ, 0, None, 0)),
    (("HSET", "h", "f", "v"), ("HSET", ("h",), cache_hooks.NO_READ, 0, None, 0)),
    (("TTL", "k"), ("TTL", ("k",), cache_hooks.NO_READ, 0, None, 0)),
    (("PING",), ("PING", (), cache_hooks.NO_READ, 0, None, 0)),
    (("CLIENT SETNAME", "x"), ("CLIENT SETNAME", (), cache_hooks.NO_READ, 0, None, 0)),
    (("FLUSHDB",), ("FLUSHDB", (), cache_hooks.NO_READ, 0, None, 0)),
    ((), ("", (), cache_hooks.NO_READ, 0, None, 0)),
]


@pytest.mark.parametrize("args, expected", COMMANDS, ids=[" ".join(map(str, a)) or "-" for a, _ in COMMANDS])
def test_parse_command(args: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    c = parse_command(args)
    assert (c.operation, tuple(c.keys), c.read, c.writes, c.ttl_s, c.deletes) == expected


def test_absolute_expiries_become_seconds_from_now() -> None:
    in_an_hour = int(time.time()) + 3600
    assert 3590 <= (parse_command(("SET", "k", "v", "EXAT", in_an_hour)).ttl_s or 0) <= 3600
    assert 3590 <= (parse_command(("EXPIREAT", "k", in_an_hour)).ttl_s or 0) <= 3600
    assert 3590 <= (parse_command(("PEXPIREAT", "k", in_an_hour * 1000)).ttl_s or 0) <= 3600
    assert parse_command(("EXPIREAT", "k", 1)).ttl_s == 0.0  # in the past: expires now


@pytest.mark.parametrize(
    "args, reply, counted",
    [
        (("GET", "k"), None, (1, 0, 1)),
        (("GET", "k"), b"", (1, 1, 0)),  # an empty string is a stored value
        (("HGETALL", "h"), {}, (1, 0, 1)),
        (("HGETALL", "h"), {b"f": b"v"}, (1, 1, 0)),
        (("LRANGE", "l", 0, -1), [], (1, 0, 1)),
        (("HEXISTS", "h", "f"), 0, (1, 0, 1)),
        (("EXISTS", "a"), 1, (1, 1, 0)),
        (("EXISTS", "a", "b", "c"), 2, (3, 2, 1)),
        (("MGET", "a", "b", "c"), [b"1", None, b"3"], (3, 2, 1)),
        (("HMGET", "h", "f1", "f2"), [None, None], (2, 0, 2)),
        (("SET", "k", "v", "GET"), None, (1, 0, 1)),
        (("SET", "k", "v"), True, (0, 0, 0)),
        (("GET", "k"), ValueError("WRONGTYPE"), (0, 0, 0)),  # pipeline error reply
        (("MGET", "a"), "not a list", (0, 0, 0)),
    ],
)
def test_reply_counting(args: tuple[Any, ...], reply: Any, counted: tuple[int, int, int]) -> None:
    assert parse_command(args).count(reply) == counted


@pytest.fixture
def spans() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("opentelemetry.instrumentation.redis"), exporter
    provider.shutdown()


def run_command(tracer: Any, args: tuple[Any, ...], reply: Any, capture: bool) -> tuple[Any, CacheCall]:
    settings = dataclasses.replace(SETTINGS, capture_cache_keys=capture)
    request = cache_hooks.redis_request_hook(settings)
    response = cache_hooks.redis_response_hook(settings)
    assert request is not None and response is not None
    with tracer.start_as_current_span(str(args[0])) as span:
        request(span, None, args, {})
        response(span, None, reply)
    return span, getattr(span, cache_hooks.CACHE_RECORD)


MRN_KEY = ":1:patient:MRN-000123:summary"


def test_raw_keys_are_exported_only_when_opted_in(spans: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    run_command(tracer, ("GET", MRN_KEY), None, capture=False)
    run_command(tracer, ("MGET", MRN_KEY, b":1:patient:MRN-000124:summary"), [None, b"x"], capture=True)
    default, opted_in = exporter.get_finished_spans()

    def hms(span: Any) -> dict[str, Any]:
        return {k: v for k, v in (span.attributes or {}).items() if k.startswith("hms.")}

    assert default.attributes["code.function.name"] == "run_command"
    assert hms(default) == {
        "hms.cache.operation": "GET",
        "hms.cache.key_pattern": "patient:{mrn}:summary",
        "hms.cache.hit": False,
    }
    assert hms(opted_in) == {
        "hms.cache.operation": "MGET",
        "hms.cache.key_pattern": "patient:{mrn}:summary",
        "hms.cache.key": ":1:patient:MRN-000123:summary :1:patient:MRN-000124:summary",
        "hms.cache.hits": 1,
        "hms.cache.misses": 1,
    }


def test_the_cache_call_left_on_the_span(spans: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, _ = spans
    _, call = run_command(tracer, ("SET", "patient:7:summary", "v", "EX", 3600), True, capture=False)
    assert call == CacheCall(
        operation="SET",
        key_pattern="patient:{id}:summary",
        start_ns=0,
        duration_ns=0,
        backend="redis",
        writes=1,
        ttl_s=3600.0,
        key_hash=hash("patient:7:summary"),
        location=call.location,
    )
    assert call.location is not None and call.location.file.endswith("test_cache_hooks.py")
    assert call.location.function == "run_command"
    _, read = run_command(tracer, ("GET", b"patient:7:summary"), b"v", capture=False)
    assert (read.reads, read.hits, read.misses, read.key_hash) == (1, 1, 0, hash("patient:7:summary"))


def test_pipeline_commands_are_summed_into_one_call(spans: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    response = cache_hooks.redis_response_hook(SETTINGS)
    assert response is not None
    stack = [
        ("GET", "patient:1:summary"),
        ("GET", "patient:2:summary"),
        ("MSET", "patient:3:summary", "a", "patient:4:summary", "b"),
        ("EXPIRE", "patient:3:summary", 600),
        ("EXPIRE", "patient:4:summary", 300),
        ("DEL", "patient:5:summary"),
    ]
    token = cache_hooks.pipeline_commands.set(stack)
    try:
        with tracer.start_as_current_span("GET GET MSET EXPIRE EXPIRE DEL") as span:
            response(span, None, [b"x", None, True, 1, 1, 1])
    finally:
        cache_hooks.pipeline_commands.reset(token)
    call = getattr(span, cache_hooks.CACHE_RECORD)
    assert (call.operation, call.reads, call.hits, call.misses, call.writes, call.ttl_s, call.deletes) == (
        "PIPELINE",
        2,
        1,
        1,
        2,
        300.0,
        1,
    )
    assert dict(exporter.get_finished_spans()[0].attributes or {}) == {
        "hms.cache.operation": "PIPELINE",
        "hms.cache.key_pattern": "patient:{id}:summary",
        "hms.cache.ttl_s": 300.0,
        "hms.cache.hits": 1,
        "hms.cache.misses": 1,
    }


def test_the_record_is_where_the_processor_reads_it() -> None:
    assert cache_hooks.CACHE_RECORD == grouping.CACHE_RECORD


def test_hooks_never_raise_into_the_application(spans: tuple[Any, InMemorySpanExporter]) -> None:
    tracer, _ = spans
    guard.reset_for_tests()

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    request = cache_hooks.redis_request_hook(SETTINGS)
    response = cache_hooks.redis_response_hook(SETTINGS)
    assert request is not None and response is not None
    with tracer.start_as_current_span("x") as span:
        request(span, None, (Unprintable(), "k"), {})
        request(span, None, ("SETEX", "k", "not a number", "v"), {})
        response(span, None, None)
    assert guard.error_counts().get("redis request hook") == 2
    guard.reset_for_tests()
