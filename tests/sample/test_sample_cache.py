"""Cache endpoints on real Redis: the exact commands the Django cache connection sends (MONITOR)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

N = 5


def test_stats_runs_exactly_3_queries_and_2_redis_commands(
    hms_client: Any, hms_cache: Any, count_queries: Callable[[], Any], redis_commands: Any
) -> None:
    first = hms_client.get("/stats/").json()  # also connects the pool's connection
    with count_queries() as queries, redis_commands.record():
        response = hms_client.get("/stats/")
    assert response.status_code == 200
    assert len(queries) == 3
    assert all(q["sql"].startswith('SELECT COUNT(*) AS "__count"') for q in queries)
    assert redis_commands.commands == ["INCRBY hms:stats:hits 1", "GET hms:stats:last"]  # redis-py incr()
    body = response.json()
    assert body == {
        "patients": 40,
        "encounters": 120,
        "appointments": 80,
        "hits": first["hits"] + 1,
        "last": None,
    }


def test_stats_works_on_locmem(hms_client: Any) -> None:
    from django.test import override_settings

    from hms_otel_agent.sample.settings import cache_from_env

    with override_settings(CACHES={"default": cache_from_env("locmem", "")}):
        hits = [hms_client.get("/stats/").json()["hits"] for _ in range(2)]
    assert hits == [1, 2]


def test_summary_is_cache_aside(
    hms_client: Any, hms_cache: Any, count_queries: Callable[[], Any], redis_commands: Any, raw_redis: Any
) -> None:
    with count_queries() as miss_queries, redis_commands.record():
        miss = hms_client.get("/patients/1/summary/").json()
    assert len(miss_queries) == 1
    assert redis_commands.names == ["GET", "SET"]
    assert redis_commands.commands[0] == "GET :1:patient:1:summary"
    assert 3590 < raw_redis.ttl(":1:patient:1:summary") <= 3600

    with count_queries() as hit_queries, redis_commands.record():
        hit = hms_client.get("/patients/1/summary/").json()
    assert len(hit_queries) == 0 and redis_commands.names == ["GET"]
    assert hit == miss and miss["id"] == 1


def test_cached_list_reads_key_by_key_and_its_twin_in_one_mget(
    hms_client: Any, hms_cache: Any, redis_commands: Any, raw_redis: Any
) -> None:
    with redis_commands.record():
        cold = hms_client.get(f"/patients/cached/?limit={N}").json()
    assert redis_commands.names == ["GET", "SET"] * N
    with redis_commands.record():
        warm = hms_client.get(f"/patients/cached/?limit={N}").json()
    assert redis_commands.names == ["GET"] * N
    with redis_commands.record():
        optimized = hms_client.get(f"/patients/cached/optimized/?limit={N}").json()
    assert redis_commands.names == ["MGET"]
    assert cold == warm == optimized
    # The summaries are the ones /patients/<pk>/summary/ serves, under the same keys.
    assert hms_client.get("/patients/2/summary/").json() == cold["results"][1]

    hms_cache.clear()
    with redis_commands.record():
        assert hms_client.get(f"/patients/cached/optimized/?limit={N}").json() == cold
    assert redis_commands.names.count("MGET") == 1 and "GET" not in redis_commands.names
    assert 3590 < raw_redis.ttl(f":1:patient:{N}:summary") <= 3600


def test_recent_encounters_write_without_and_with_expiry(
    hms_client: Any, hms_cache: Any, redis_commands: Any, raw_redis: Any
) -> None:
    with redis_commands.record():
        naive = hms_client.get("/encounters/recent/?limit=3").json()
    assert redis_commands.names == ["SET"]
    assert raw_redis.ttl(":1:encounters:recent") == -1  # no expiry
    with redis_commands.record():
        optimized = hms_client.get("/encounters/recent/optimized/?limit=3").json()
    assert redis_commands.names == ["SET"]
    assert 1790 < raw_redis.ttl(":1:encounters:recent") <= 1800
    assert naive == optimized and len(naive["results"]) == 3


def test_flaky_summary_misses_twice_and_never_fills(
    hms_client: Any, hms_cache: Any, count_queries: Callable[[], Any], redis_commands: Any, raw_redis: Any
) -> None:
    for _ in range(2):
        with count_queries() as queries, redis_commands.record():
            body = hms_client.get("/patients/3/flaky-summary/").json()
        assert redis_commands.commands == ["GET :1:patient:3:profile"] * 2
        assert len(queries) == 1
    assert raw_redis.exists(":1:patient:3:profile") == 0
    assert body["id"] == 3


@pytest.mark.parametrize(
    ("path", "expected"), [("/patients/4/touch/", ["DEL"] * 10), ("/patients/4/touch/optimized/", ["DEL"])]
)
def test_touch_invalidates_ten_keys(
    hms_client: Any,
    hms_cache: Any,
    count_queries: Callable[[], Any],
    redis_commands: Any,
    raw_redis: Any,
    path: str,
    expected: list[str],
) -> None:
    hms_client.get("/patients/4/summary/")
    assert raw_redis.exists(":1:patient:4:summary") == 1
    with count_queries() as queries, redis_commands.record():
        body = hms_client.post(path).json()
    assert redis_commands.names == expected
    assert len(queries) == 1
    assert len(body["invalidated"]) == 10 and "patient:4:summary" in body["invalidated"]
    assert raw_redis.exists(":1:patient:4:summary") == 0
    assert hms_client.get(path).status_code == 405


def test_health_sends_no_redis_command(hms_client: Any, redis_commands: Any) -> None:
    with redis_commands.record():
        assert hms_client.get("/health/").status_code == 200
    assert redis_commands.commands == []
