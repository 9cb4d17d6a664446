"""Django's cache API through the agent on real backends: Django's RedisCache (with a key prefix),
django-redis, LocMemCache, DatabaseCache (table created in-process) and FileBasedCache.

Every call is one ``cache.<operation>`` CLIENT span (scope ``hms_otel_agent.django_cache``) under
the caller's span, never one per internal call; hit or miss never changes what the caller gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from hms_otel_agent.instrument import django_cache

SCOPE = "hms_otel_agent.django_cache"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"
TIMEOUT = 300
BACKENDS = ["redis", "django_redis", "locmem", "db", "file"]


def backend_settings(name: str, redis_url: str, tmp_path: Path) -> dict[str, Any]:
    common = {"TIMEOUT": TIMEOUT}
    if name == "redis":
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": "hms",
            **common,
        }
    if name == "django_redis":
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url, **common}
    if name == "locmem":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "t", **common}
    if name == "db":
        return {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "hms_cache", **common}
    return {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(tmp_path),
        **common,
    }


@pytest.fixture
def use_backend(
    traced: Traced, redis_client: Any, redis_url: str, tmp_path: Path
) -> Iterator[Callable[[str], Any]]:
    """use_backend(name) -> the cache ``caches["under_test"]`` of that backend, cleared."""
    from django.conf import settings
    from django.core.cache import caches
    from django.core.management import call_command
    from django.db import connections
    from django.test import override_settings

    connections.close_all()  # no connection opened before the agent was installed (untraced SQL)
    overrides: list[Any] = []

    def use(name: str) -> Any:
        config = {**settings.CACHES, "under_test": backend_settings(name, redis_url, tmp_path)}
        override = override_settings(CACHES=config)
        override.enable()
        overrides.append(override)
        if name == "db":
            call_command("createcachetable", "hms_cache", verbosity=0)
        backend = caches["under_test"]
        backend.clear()
        traced.clear()
        return backend

    yield use
    for override in reversed(overrides):
        override.disable()


def owner(traced: Traced, name: str = "job") -> ReadableSpan:
    [span] = [s for s in traced.spans() if s.name == name]
    return span


def cache_spans(traced: Traced) -> list[ReadableSpan]:
    spans = [s for s in traced.spans() if s.instrumentation_scope.name == SCOPE]
    return sorted(spans, key=lambda s: s.start_time or 0)


def hms(span: ReadableSpan) -> dict[str, Any]:
    """The span's hms.* attributes but the folded Redis command names (their own tests below)."""
    return {
        k: v for k, v in (span.attributes or {}).items() if k.startswith("hms.") and k != "hms.cache.commands"
    }


def expect(operation: str, backend: str, pattern: str | None = "patient:{id}:summary", **extra: Any) -> dict:
    attributes: dict[str, Any] = {"hms.cache.operation": operation, "hms.cache.backend": backend}
    if pattern:
        attributes["hms.cache.key_pattern"] = pattern
    attributes.update({f"hms.cache.{k}": v for k, v in extra.items()})
    return attributes


def assert_one_span_per_call(traced: Traced, job: ReadableSpan, calls: int) -> list[ReadableSpan]:
    spans = cache_spans(traced)
    assert len(spans) == calls, [s.name for s in spans]
    assert all(s.parent is not None and s.parent.span_id == job.context.span_id for s in spans)
    assert all(
        s.kind is SpanKind.CLIENT and s.name == f"cache.{hms(s)['hms.cache.operation']}" for s in spans
    )
    return spans


@pytest.mark.parametrize("name", BACKENDS)
def test_get_and_set(name: str, traced: Traced, use_backend: Callable[[str], Any]) -> None:
    cache = use_backend(name)
    with traced.tracer.start_as_current_span("job"):
        assert cache.get("patient:1:summary") is None
        assert cache.get("patient:1:summary", "fallback") == "fallback"
        assert cache.get("patient:1:summary", default=0) == 0
        cache.set("patient:1:summary", {"id": 1}, 60)
        assert cache.get("patient:1:summary") == {"id": 1}
        cache.set("patient:2:summary", None, timeout=60)
        assert cache.get("patient:2:summary", "fallback") is None  # a stored None is a hit
    job = owner(traced)
    spans = assert_one_span_per_call(traced, job, 7)
    assert [hms(s) for s in spans] == [
        expect("get", name, hit=False),
        expect("get", name, hit=False),
        expect("get", name, hit=False),
        expect("set", name, ttl_s=60.0),
        expect("get", name, hit=True),
        expect("set", name, ttl_s=60.0),
        expect("get", name, hit=True),
    ]
    attributes = job.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (2, 3)
    # Five single-key reads of one pattern, and patient:1:summary missed three times.
    events = traced.events(job, "hms.cache")
    assert [(e["hms.finding.kind"], e["hms.finding.repetitions"]) for e in events] == [
        ("cache_n_plus_one", 5),
        ("cache_repeated_miss", 3),
    ]


@pytest.mark.parametrize("name", BACKENDS)
def test_multi_key_calls(name: str, traced: Traced, use_backend: Callable[[str], Any]) -> None:
    cache = use_backend(name)
    keys = ["patient:1:summary", "patient:2:summary", "patient:3:summary"]
    with traced.tracer.start_as_current_span("job"):
        cache.set_many({keys[0]: 1, keys[1]: 2}, timeout=120)
        assert cache.get_many(keys) == {keys[0]: 1, keys[1]: 2}
        assert cache.get_many(iter(keys)) == {keys[0]: 1, keys[1]: 2}  # an iterator: left alone
        cache.delete_many(keys)
        assert cache.get_many(set(keys)) == {}
    spans = assert_one_span_per_call(traced, owner(traced), 5)
    assert [hms(s) for s in spans] == [
        expect("set_many", name, ttl_s=120.0),
        expect("get_many", name, hits=2, misses=1),
        expect("get_many", name, pattern=None),
        expect("delete_many", name),
        expect("get_many", name, hits=0, misses=3),
    ]


@pytest.mark.parametrize("name", BACKENDS)
def test_get_or_set_is_one_span(name: str, traced: Traced, use_backend: Callable[[str], Any]) -> None:
    cache = use_backend(name)
    computed = []

    def compute() -> dict[str, int]:
        computed.append(1)
        return {"id": 1}

    with traced.tracer.start_as_current_span("job"):
        assert cache.get_or_set("patient:1:summary", compute) == {"id": 1}
        assert cache.get_or_set("patient:1:summary", compute) == {"id": 1}
        assert cache.get_or_set("patient:2:summary", "value", timeout=60) == "value"
    assert computed == [1]
    spans = assert_one_span_per_call(traced, owner(traced), 3)
    assert [hms(s) for s in spans] == [
        expect("get_or_set", name, hit=False, ttl_s=float(TIMEOUT)),
        expect("get_or_set", name, hit=True),
        expect("get_or_set", name, hit=False, ttl_s=60.0),
    ]


@pytest.mark.parametrize("name", BACKENDS)
def test_the_other_operations(name: str, traced: Traced, use_backend: Callable[[str], Any]) -> None:
    cache = use_backend(name)
    with traced.tracer.start_as_current_span("job"):
        assert cache.has_key("patient:1:visits") is False
        assert cache.add("patient:1:visits", 1) is True
        assert cache.add("patient:1:visits", 5) is False
        assert "patient:1:visits" in cache  # __contains__ -> has_key
        assert cache.incr("patient:1:visits") == 2
        assert cache.decr("patient:1:visits", 2) == 0
        assert cache.touch("patient:1:visits", 30) is True
        assert cache.delete("patient:1:visits") is True
        cache.clear()
    spans = assert_one_span_per_call(traced, owner(traced), 9)
    pattern = "patient:{id}:visits"
    assert [hms(s) for s in spans] == [
        expect("has_key", name, pattern, hit=False),
        expect("add", name, pattern, ttl_s=float(TIMEOUT)),
        expect("add", name, pattern, ttl_s=float(TIMEOUT)),
        expect("has_key", name, pattern, hit=True),
        expect("incr", name, pattern),
        expect("decr", name, pattern),
        expect("touch", name, pattern, ttl_s=30.0),
        expect("delete", name, pattern),
        expect("clear", name, None),
    ]


@pytest.mark.parametrize("name", BACKENDS)
def test_timeouts(name: str, traced: Traced, use_backend: Callable[[str], Any]) -> None:
    from django.core.cache.backends.base import DEFAULT_TIMEOUT

    cache = use_backend(name)
    with traced.tracer.start_as_current_span("job"):
        cache.set("patient:1:summary", 1)
        cache.set("patient:2:summary", 1, DEFAULT_TIMEOUT)
        cache.set("patient:3:summary", 1, timeout=0)  # expires at once
        cache.set("encounters:recent", [], timeout=None)  # never expires
    job = owner(traced)
    spans = assert_one_span_per_call(traced, job, 4)
    assert [hms(s) for s in spans] == [
        expect("set", name, ttl_s=float(TIMEOUT)),
        expect("set", name, ttl_s=float(TIMEOUT)),
        expect("set", name, ttl_s=0.0),
        expect("set", name, "encounters:recent"),
    ]
    [event] = traced.events(job, "hms.cache")
    assert event["hms.finding.kind"] == "cache_write_without_ttl"
    assert event["hms.cache.key_pattern"] == "encounters:recent"
    assert event["hms.hint.fix"] == "cache.set(key, value, timeout=<seconds>)"
    assert event["code.function.name"] == "test_timeouts"


@pytest.mark.parametrize("name", ["redis", "locmem"])
def test_errors_propagate_unchanged(name: str, traced: Traced, use_backend: Callable[[str], Any]) -> None:
    cache = use_backend(name)
    with traced.tracer.start_as_current_span("job"), pytest.raises(ValueError):
        cache.incr("patient:404:visits")
    [span] = assert_one_span_per_call(traced, owner(traced), 1)
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


@pytest.mark.parametrize("name, prefix", [("redis", "hms:1:"), ("django_redis", ":1:")])
def test_redis_commands_are_children_of_the_django_span(
    name: str,
    prefix: str,
    traced: Traced,
    use_backend: Callable[[str], Any],
    redis_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HMS_OTEL_CACHE_COMMAND_SPANS=true: a span per command under the call's span."""
    cache = use_backend(name)
    monkeypatch.setitem(django_cache._state, "command_spans", True)
    cache.set("patient:1:summary", 1, 60)
    traced.clear()
    with traced.tracer.start_as_current_span("job"):
        assert cache.get_many(["patient:1:summary", "patient:2:summary"]) == {"patient:1:summary": 1}
        assert cache.get("patient:2:summary") is None
        cache.set_many({"patient:3:summary": 3, "patient:4:summary": 4}, 60)  # a pipeline
    job = owner(traced)
    get_many, get, set_many = assert_one_span_per_call(traced, job, 3)
    [mget] = traced.children_of(get_many)
    [redis_get] = traced.children_of(get)
    redis_writes = traced.children_of(set_many)
    assert redis_writes
    for span in (mget, redis_get, *redis_writes):
        assert span.instrumentation_scope.name == REDIS_SCOPE
        # Their parent has the pattern (without Django's prefix and version) and the hits.
        assert hms(span) == {}, span.name
    assert hms(get_many) == expect("get_many", name, hits=1, misses=1)
    assert hms(get) == expect("get", name, hit=False)
    assert redis_client.exists(f"{prefix}patient:1:summary") == 1
    # Counted once, from the Django calls.
    attributes = job.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (1, 2)
    assert all("hms.cache.commands" not in (s.attributes or {}) for s in (get_many, get, set_many))


@pytest.mark.parametrize("name, prefix", [("redis", "hms:1:"), ("django_redis", ":1:")])
def test_redis_commands_are_folded_into_the_django_span_by_default(
    name: str, prefix: str, traced: Traced, use_backend: Callable[[str], Any], redis_client: Any
) -> None:
    """The default: one span per call, no span below it, the command names (never their
    arguments) on it; the same cache attributes and counts as with command spans."""
    cache = use_backend(name)
    cache.set("patient:1:summary", 1, 60)
    traced.clear()
    with traced.tracer.start_as_current_span("job"):
        assert cache.get_many(["patient:1:summary", "patient:2:summary"]) == {"patient:1:summary": 1}
        assert cache.get("patient:2:summary") is None
        cache.set_many({"patient:3:summary": 3, "patient:4:summary": 4}, 60)  # a pipeline
        assert cache.get_or_set("patient:5:summary", 5, 60) == 5
    job = owner(traced)
    get_many, get, set_many, get_or_set = assert_one_span_per_call(traced, job, 4)
    assert [s for s in traced.spans() if s.instrumentation_scope.name == REDIS_SCOPE] == []
    assert hms(get_many) == expect("get_many", name, hits=1, misses=1)
    assert hms(get) == expect("get", name, hit=False)
    commands = {
        s.name: tuple((s.attributes or {})["hms.cache.commands"]) for s in (get_many, get, get_or_set)
    }
    assert commands["cache.get_many"] == ("MGET",)
    assert commands["cache.get"] == ("GET",)
    assert commands["cache.get_or_set"][0] == "GET" and len(commands["cache.get_or_set"]) >= 2
    written = tuple((set_many.attributes or {})["hms.cache.commands"])
    assert written and all(
        c in ("SET", "MSET", "SETEX", "PSETEX", "EXPIRE", "PEXPIRE", "MULTI", "EXEC") for c in written
    )
    assert not any("patient" in c for c in (*written, *commands["cache.get"]))
    assert redis_client.exists(f"{prefix}patient:3:summary") == 1
    attributes = job.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (1, 3)


def test_database_cache_sql_is_not_the_applications(
    traced: Traced, use_backend: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = use_backend("db")
    monkeypatch.setitem(django_cache._state, "command_spans", True)  # its SQL gets spans
    with traced.tracer.start_as_current_span("job"):
        assert cache.get("patient:1:summary") is None  # a miss, then only the cache's own SQL
        cache.set("encounters:recent", [], 60)
    job = owner(traced)
    get, _set = assert_one_span_per_call(traced, job, 2)
    assert traced.children_of(get) and all(
        (c.attributes or {}).get("db.system") == "postgresql" for c in traced.children_of(get)
    )
    assert (job.attributes or {})["hms.db.query_count"] >= 2
    assert traced.events(job, "hms.cache") == []


def test_subclasses_get_one_span_per_call(traced: Traced) -> None:
    from django.core.cache.backends.locmem import LocMemCache

    class TenantCache(LocMemCache):
        def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
            return super().get(f"tenant-a:{key}", default, version)

        def set(self, key: Any, value: Any, timeout: Any = None, version: Any = None) -> None:
            super().set(f"tenant-a:{key}", value, timeout, version)

    cache = TenantCache("tenant", {})
    with traced.tracer.start_as_current_span("job"):
        cache.set("patient:1:summary", 1, 10)
        assert cache.get("patient:1:summary") == 1
        assert cache.get_or_set("patient:2:summary", 2, 10) == 2
    spans = assert_one_span_per_call(traced, owner(traced), 3)
    assert [hms(s) for s in spans] == [
        expect("set", "locmem", ttl_s=10.0),
        expect("get", "locmem", hit=True),
        expect("get_or_set", "locmem", hit=False, ttl_s=10.0),
    ]
    assert django_cache.backend_name(TenantCache) == "locmem"


def test_a_get_without_a_default_parameter_is_called_as_written(traced: Traced) -> None:
    from django.core.cache.backends.locmem import LocMemCache

    class NoDefault(LocMemCache):
        def get(self, key: Any, version: Any = None) -> Any:  # type: ignore[override]
            return super().get(key, None, version)

    cache = NoDefault("no-default", {})
    with traced.tracer.start_as_current_span("job"):
        assert cache.get("patient:1:summary") is None
        cache.set("patient:1:summary", 1, 10)
        assert cache.get("patient:1:summary") == 1
    spans = assert_one_span_per_call(traced, owner(traced), 3)
    assert [hms(s) for s in spans] == [
        expect("get", "locmem", hit=False),
        expect("set", "locmem", ttl_s=10.0),
        expect("get", "locmem", hit=True),
    ]


def test_cache_calls_inside_a_get_or_set_default_get_their_own_spans(
    traced: Traced, use_backend: Callable[[str], Any]
) -> None:
    cache = use_backend("locmem")

    def compute() -> int:
        return int(cache.get("patient:1:version", 0)) + 1

    with traced.tracer.start_as_current_span("job"):
        assert cache.get_or_set("patient:1:summary", compute, 60) == 1
    outer, inner = cache_spans(traced)
    assert (outer.name, inner.name) == ("cache.get_or_set", "cache.get")
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert hms(outer) == expect("get_or_set", "locmem", hit=False, ttl_s=60.0)
    # The application's own read inside the default counts too: two misses on the owner.
    job = owner(traced)
    assert (job.attributes["hms.cache.hit_count"], job.attributes["hms.cache.miss_count"]) == (0, 2)


@pytest.mark.parametrize("name", ["redis", "db"])
def test_without_command_spans_a_call_has_no_spans_below(
    name: str, traced: Traced, use_backend: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HMS_OTEL_CACHE_COMMAND_SPANS=false: no Redis command or DatabaseCache SQL span, the same
    cache attributes and counts; the application's query in a get_or_set default is traced."""
    from hms_otel_agent.sample.hms.models import Patient

    cache = use_backend(name)
    monkeypatch.setitem(django_cache._state, "command_spans", False)
    with traced.tracer.start_as_current_span("job"):
        cache.set("patient:1:summary", 1, 60)
        assert cache.get("patient:1:summary") == 1
        assert cache.get_or_set("patient:2:summary", Patient.objects.count, 60) == 40
    calls = cache_spans(traced)
    assert [hms(s) for s in calls] == [
        expect("set", name, ttl_s=60.0),
        expect("get", name, hit=True),
        expect("get_or_set", name, hit=False, ttl_s=60.0),
    ]
    below = [
        s
        for s in traced.spans()
        if s.parent is not None and s.parent.span_id in {c.context.span_id for c in calls}
    ]
    assert [(s.name.split()[0], s.parent.span_id) for s in below] == [("SELECT", calls[2].context.span_id)]
    assert "COUNT(*)" in below[0].attributes["db.statement"]
    job = owner(traced)
    assert (job.attributes["hms.cache.hit_count"], job.attributes["hms.cache.miss_count"]) == (1, 1)
    assert job.attributes["hms.db.query_count"] == 1


def test_async_api(traced: Traced, use_backend: Callable[[str], Any]) -> None:
    cache = use_backend("locmem")

    async def job() -> None:
        with traced.tracer.start_as_current_span("job"):
            await cache.aset("patient:1:summary", 1, 60)
            assert await cache.aget("patient:1:summary") == 1
            assert await cache.aget("patient:2:summary", "fallback") == "fallback"

    asyncio.run(job())
    spans = assert_one_span_per_call(traced, owner(traced), 3)
    assert [hms(s) for s in spans] == [
        expect("set", "locmem", ttl_s=60.0),
        expect("get", "locmem", hit=True),
        expect("get", "locmem", hit=False),
    ]


def test_backend_names() -> None:
    from django.core.cache.backends.base import BaseCache
    from django.core.cache.backends.db import DatabaseCache
    from django.core.cache.backends.filebased import FileBasedCache
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.backends.memcached import PyMemcacheCache
    from django.core.cache.backends.redis import RedisCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    class Custom(BaseCache):
        pass

    names = [
        django_cache.backend_name(c)
        for c in (
            RedisCache,
            DjangoRedisCache,
            LocMemCache,
            DatabaseCache,
            FileBasedCache,
            PyMemcacheCache,
            Custom,
        )
    ]
    assert names == ["redis", "django_redis", "locmem", "db", "file", "memcached", "Custom"]
