"""redis-py on a real Redis through the agent's pipeline: sync, asyncio and pipelines.

Each test runs its commands under an owner span ("job"), as a task would, and reads what the
in-memory exporter got: the command spans' ``hms.cache.*`` attributes, the owner's counts and
findings, and the metrics.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan

REDIS_SCOPE = "opentelemetry.instrumentation.redis"


@pytest.fixture
def traced_redis(traced_session: Traced, redis_client: Any) -> Iterator[Traced]:
    traced_session.clear()
    yield traced_session
    traced_session.clear()


def hms(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("hms.")}


def commands(traced: Traced, owner: ReadableSpan) -> list[ReadableSpan]:
    spans = [s for s in traced.children_of(owner) if s.instrumentation_scope.name == REDIS_SCOPE]
    return sorted(spans, key=lambda s: s.start_time or 0)


def owner_span(traced: Traced, name: str = "job") -> ReadableSpan:
    [owner] = [s for s in traced.spans() if s.name == name]
    return owner


def line_of(marker: str) -> int:
    lines = inspect.getsource(inspect.getmodule(line_of)).splitlines()  # type: ignore[arg-type]
    [number] = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    return number


def reads_total(traced: Traced, pattern: str, result: str) -> int:
    return sum(
        p.value
        for p in traced.metric_points("hms.cache.reads")
        if p.attributes.get("hms.cache.key_pattern") == pattern
        and p.attributes.get("hms.cache.result") == result
    )


def test_single_key_reads_hit_or_miss(traced_redis: Traced, redis_client: Any) -> None:
    redis_client.set("patient:1:summary", b"{}")
    redis_client.hset("patient:1:profile", mapping={"name": "x"})
    redis_client.rpush("patient:1:visits", "a")
    traced_redis.clear()
    with traced_redis.tracer.start_as_current_span("job"):
        assert redis_client.get("patient:1:summary") == b"{}"
        assert redis_client.get("patient:2:summary") is None
        assert redis_client.hget("patient:1:profile", "name") == b"x"
        assert redis_client.hget("patient:1:profile", "phone") is None
        assert redis_client.hgetall("patient:1:profile") == {b"name": b"x"}
        assert redis_client.hgetall("patient:2:profile") == {}
        assert redis_client.lrange("patient:1:visits", 0, -1) == [b"a"]
        assert redis_client.exists("patient:2:summary") == 0
        assert redis_client.getex("patient:1:summary", ex=90) == b"{}"
        assert redis_client.getdel("patient:1:summary") == b"{}"
    owner = owner_span(traced_redis)
    assert [hms(s) for s in commands(traced_redis, owner)] == [
        {
            "hms.cache.operation": "GET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": True,
        },
        {
            "hms.cache.operation": "GET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": False,
        },
        {
            "hms.cache.operation": "HGET",
            "hms.cache.key_pattern": "patient:{id}:profile",
            "hms.cache.hit": True,
        },
        {
            "hms.cache.operation": "HGET",
            "hms.cache.key_pattern": "patient:{id}:profile",
            "hms.cache.hit": False,
        },
        {
            "hms.cache.operation": "HGETALL",
            "hms.cache.key_pattern": "patient:{id}:profile",
            "hms.cache.hit": True,
        },
        {
            "hms.cache.operation": "HGETALL",
            "hms.cache.key_pattern": "patient:{id}:profile",
            "hms.cache.hit": False,
        },
        {
            "hms.cache.operation": "LRANGE",
            "hms.cache.key_pattern": "patient:{id}:visits",
            "hms.cache.hit": True,
        },
        {
            "hms.cache.operation": "EXISTS",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": False,
        },
        {
            "hms.cache.operation": "GETEX",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.ttl_s": 90.0,
            "hms.cache.hit": True,
        },
        {
            "hms.cache.operation": "GETDEL",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": True,
        },
    ]
    attributes = owner.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (6, 4)
    assert attributes["hms.cache.hit_ratio"] == 0.6


def test_multi_key_reads_count_hits_and_misses(traced_redis: Traced, redis_client: Any) -> None:
    redis_client.mset({"encounter:1": b"a", "encounter:3": b"c"})
    redis_client.hset("patient:1:profile", mapping={"name": "x", "mrn": "y"})
    traced_redis.clear()
    with traced_redis.tracer.start_as_current_span("job"):
        assert redis_client.mget(["encounter:1", "encounter:2", "encounter:3"]) == [b"a", None, b"c"]
        assert redis_client.hmget("patient:1:profile", ["name", "phone", "mrn"]) == [b"x", None, b"y"]
        assert redis_client.exists("encounter:1", "encounter:2", "encounter:3", "encounter:4") == 2
        assert redis_client.mget(["encounter:1", "patient:1:profile"]) == [b"a", None]
    owner = owner_span(traced_redis)
    assert [hms(s) for s in commands(traced_redis, owner)] == [
        {
            "hms.cache.operation": "MGET",
            "hms.cache.key_pattern": "encounter:{id}",
            "hms.cache.hits": 2,
            "hms.cache.misses": 1,
        },
        {
            "hms.cache.operation": "HMGET",
            "hms.cache.key_pattern": "patient:{id}:profile",
            "hms.cache.hits": 2,
            "hms.cache.misses": 1,
        },
        {
            "hms.cache.operation": "EXISTS",
            "hms.cache.key_pattern": "encounter:{id}",
            "hms.cache.hits": 2,
            "hms.cache.misses": 2,
        },
        {
            "hms.cache.operation": "MGET",
            "hms.cache.key_pattern": "encounter:{id}",  # keys of different patterns: the first
            "hms.cache.hits": 1,
            "hms.cache.misses": 1,
        },
    ]
    attributes = owner.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (7, 5)


@pytest.mark.filterwarnings("ignore:Call to deprecated setex")
def test_writes_carry_their_expiry(traced_redis: Traced, redis_client: Any) -> None:
    with traced_redis.tracer.start_as_current_span("job"):
        redis_client.set("patient:1:summary", b"{}", ex=3600)
        redis_client.set("patient:2:summary", b"{}", px=1500)
        redis_client.setex("encounter:9", 1800, b"{}")
        redis_client.set("patient:3:summary", b"{}")
        redis_client.expire("patient:3:summary", 60)
        redis_client.set("patient:1:summary", b"{}", keepttl=True)
        redis_client.incr("hms:stats:hits")
        redis_client.delete("encounter:9", "encounter:10")
    owner = owner_span(traced_redis)
    assert [hms(s) for s in commands(traced_redis, owner)] == [
        {
            "hms.cache.operation": "SET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.ttl_s": 3600.0,
        },
        {
            "hms.cache.operation": "SET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.ttl_s": 1.5,
        },
        {
            "hms.cache.operation": "SETEX",
            "hms.cache.key_pattern": "encounter:{id}",
            "hms.cache.ttl_s": 1800.0,
        },
        {"hms.cache.operation": "SET", "hms.cache.key_pattern": "patient:{id}:summary"},
        {
            "hms.cache.operation": "EXPIRE",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.ttl_s": 60.0,
        },
        {"hms.cache.operation": "SET", "hms.cache.key_pattern": "patient:{id}:summary"},
        {"hms.cache.operation": "INCRBY", "hms.cache.key_pattern": "{value}:stats:hits"},
        {"hms.cache.operation": "DEL", "hms.cache.key_pattern": "encounter:{id}"},
    ]
    # The SET without expiry got one from EXPIRE right after; KEEPTTL and INCR keep theirs.
    assert traced_redis.events(owner, "hms.cache") == []
    assert 3590 < redis_client.ttl("patient:1:summary") <= 3600


def test_a_set_without_expiry_is_a_finding(traced_redis: Traced, redis_client: Any) -> None:
    with traced_redis.tracer.start_as_current_span("job"):
        redis_client.set("encounters:recent", b"[]")  # write-without-ttl
    [event] = traced_redis.events(owner_span(traced_redis), "hms.cache")
    assert event["hms.finding.kind"] == "cache_write_without_ttl"
    assert event["hms.cache.key_pattern"] == "encounters:recent"
    assert event["hms.hint.fix"] == "SET key value EX <seconds>"
    assert event["code.line.number"] == line_of("write-without-ttl")
    assert event["code.function.name"] == "test_a_set_without_expiry_is_a_finding"


def test_gets_in_a_loop_are_a_cache_n_plus_one(traced_redis: Traced, redis_client: Any) -> None:
    redis_client.mset({f"patient:{pk}:summary": b"{}" for pk in (1, 2, 3)})
    traced_redis.clear()
    before = (
        reads_total(traced_redis, "patient:{id}:summary", "hit"),
        reads_total(traced_redis, "patient:{id}:summary", "miss"),
    )
    with traced_redis.tracer.start_as_current_span("job"):
        for pk in range(1, 7):
            redis_client.get(f"patient:{pk}:summary")  # cache-n-plus-one
    owner = owner_span(traced_redis)
    [event] = traced_redis.events(owner, "hms.cache")
    assert event["hms.finding.kind"] == "cache_n_plus_one"
    assert event["hms.finding.repetitions"] == 6
    assert event["hms.cache.key_pattern"] == "patient:{id}:summary"
    assert event["hms.hint.fix"] == "client.mget([...])"
    assert event["code.line.number"] == line_of("cache-n-plus-one")
    assert event["hms.hint"].startswith("job: 6 cache reads of patient:{id}:summary one key at a time (")
    assert list((owner.attributes or {})["hms.hints"]) == [event["hms.hint"]]
    after = (
        reads_total(traced_redis, "patient:{id}:summary", "hit"),
        reads_total(traced_redis, "patient:{id}:summary", "miss"),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3)


def test_one_mget_is_not_a_cache_n_plus_one(traced_redis: Traced, redis_client: Any) -> None:
    with traced_redis.tracer.start_as_current_span("job"):
        redis_client.mget([f"patient:{pk}:summary" for pk in range(1, 7)])
    assert traced_redis.events(owner_span(traced_redis), "hms.cache") == []


def test_pipelines_report_every_command(traced_redis: Traced, redis_client: Any) -> None:
    redis_client.set("patient:1:summary", b"{}")
    traced_redis.clear()
    with traced_redis.tracer.start_as_current_span("job"):
        pipe = redis_client.pipeline(transaction=False)
        pipe.get("patient:1:summary").get("patient:2:summary").set("patient:3:summary", b"{}", ex=30)
        assert pipe.execute() == [b"{}", None, True]
        with redis_client.pipeline() as tx:  # MULTI/EXEC
            tx.mset({"patient:4:summary": b"a", "patient:5:summary": b"b"})
            tx.expire("patient:4:summary", 600).expire("patient:5:summary", 600)
            tx.mget(["patient:4:summary", "patient:6:summary"])
            assert tx.execute() == [True, True, True, [b"a", None]]
    owner = owner_span(traced_redis)
    first, second = commands(traced_redis, owner)
    assert hms(first) == {
        "hms.cache.operation": "PIPELINE",
        "hms.cache.key_pattern": "patient:{id}:summary",
        "hms.cache.ttl_s": 30.0,
        "hms.cache.hits": 1,
        "hms.cache.misses": 1,
    }
    assert hms(second) == {
        "hms.cache.operation": "PIPELINE",
        "hms.cache.key_pattern": "patient:{id}:summary",
        "hms.cache.ttl_s": 600.0,
        "hms.cache.hits": 1,
        "hms.cache.misses": 1,
    }
    attributes = owner.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (2, 2)
    assert traced_redis.events(owner, "hms.cache") == []  # MSET + EXPIRE: every key expires


def test_a_pipeline_that_writes_without_expiry_is_a_finding(traced_redis: Traced, redis_client: Any) -> None:
    with traced_redis.tracer.start_as_current_span("job"):
        pipe = redis_client.pipeline()
        pipe.set("patient:1:summary", b"{}").set("patient:2:summary", b"{}", ex=5)
        pipe.execute()
        single = redis_client.pipeline()
        single.get("patient:1:summary")
        single.execute()
    owner = owner_span(traced_redis)
    first, second = commands(traced_redis, owner)
    assert hms(first) == {"hms.cache.operation": "SET", "hms.cache.key_pattern": "patient:{id}:summary"}
    assert hms(second) == {
        "hms.cache.operation": "GET",
        "hms.cache.key_pattern": "patient:{id}:summary",
        "hms.cache.hit": True,
    }
    [event] = traced_redis.events(owner, "hms.cache")
    assert (event["hms.finding.kind"], event["hms.finding.repetitions"]) == ("cache_write_without_ttl", 1)


def test_a_watched_transaction(traced_redis: Traced, redis_client: Any) -> None:
    redis_client.set("patient:1:version", 1)
    traced_redis.clear()
    with traced_redis.tracer.start_as_current_span("job"), redis_client.pipeline() as pipe:
        pipe.watch("patient:1:version")
        version = int(pipe.get("patient:1:version"))  # immediate command: request hook
        pipe.multi()
        pipe.set("patient:1:version", version + 1, ex=60)
        assert pipe.execute() == [True]
    spans = commands(traced_redis, owner_span(traced_redis))
    assert [hms(s) for s in spans] == [
        {"hms.cache.operation": "WATCH"},
        {
            "hms.cache.operation": "GET",
            "hms.cache.key_pattern": "patient:{id}:version",
            "hms.cache.hit": True,
        },
        {  # the MULTI/EXEC pipeline of one command
            "hms.cache.operation": "SET",
            "hms.cache.key_pattern": "patient:{id}:version",
            "hms.cache.ttl_s": 60.0,
        },
    ]


def test_asyncio_commands_and_pipelines(traced_redis: Traced, redis_url: str, redis_client: Any) -> None:
    import redis.asyncio as aioredis

    redis_client.set("patient:1:summary", b"{}")
    traced_redis.clear()

    async def job() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            with traced_redis.tracer.start_as_current_span("job"):
                assert await client.get("patient:1:summary") == b"{}"
                assert await client.get("patient:2:summary") is None
                assert await client.mget(["patient:1:summary", "patient:2:summary"]) == [b"{}", None]
                await client.set("patient:3:summary", b"{}", ex=120)
                async with client.pipeline(transaction=False) as pipe:
                    pipe.get("patient:3:summary").get("patient:4:summary").delete("patient:3:summary")
                    assert await pipe.execute() == [b"{}", None, 1]
        finally:
            await client.aclose()

    asyncio.run(job())
    owner = owner_span(traced_redis)
    assert [hms(s) for s in commands(traced_redis, owner)] == [
        {
            "hms.cache.operation": "GET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": True,
        },
        {
            "hms.cache.operation": "GET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hit": False,
        },
        {
            "hms.cache.operation": "MGET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hits": 1,
            "hms.cache.misses": 1,
        },
        {
            "hms.cache.operation": "SET",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.ttl_s": 120.0,
        },
        {
            "hms.cache.operation": "PIPELINE",
            "hms.cache.key_pattern": "patient:{id}:summary",
            "hms.cache.hits": 1,
            "hms.cache.misses": 1,
        },
    ]
    attributes = owner.attributes or {}
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (3, 3)


@pytest.mark.filterwarnings("ignore:Call to deprecated setex")
def test_write_ttl_metric(traced_redis: Traced, redis_client: Any) -> None:
    def ttl_points() -> tuple[int, float]:
        points = [
            p
            for p in traced_redis.metric_points("hms.cache.write_ttl")
            if p.attributes.get("hms.cache.key_pattern") == "report:{date}"
        ]
        return sum(p.count for p in points), sum(p.sum for p in points)

    before = ttl_points()
    with traced_redis.tracer.start_as_current_span("job"):
        redis_client.set("report:2024-01-31", b"{}", ex=900)
        redis_client.setex("report:2024-02-01", 60, b"{}")
        redis_client.set("report:2024-02-02", b"{}")  # no expiry: no TTL point
    count, total = ttl_points()
    assert (count - before[0], total - before[1]) == (2, 960.0)


def test_commands_without_an_owner_are_still_annotated(traced_redis: Traced, redis_client: Any) -> None:
    assert redis_client.get("patient:1:summary") is None
    [span] = traced_redis.spans()
    assert hms(span) == {
        "hms.cache.operation": "GET",
        "hms.cache.key_pattern": "patient:{id}:summary",
        "hms.cache.hit": False,
    }
