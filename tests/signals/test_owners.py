"""The owner rule and the per-owner cap, shared by the live processor and the offline report."""

from __future__ import annotations

from hms_otel_agent.signals.owners import CACHE, DB, OWNER, counted, is_client, scope_role
from hms_otel_agent.signals.records import MAX_CALLS_PER_OWNER, CacheCall, ConnectCall, DbCall, OwnerActivity
from hms_otel_agent.signals.vocabulary import DJANGO_CACHE_SCOPE

REDIS = "opentelemetry.instrumentation.redis"
PSYCOPG = "opentelemetry.instrumentation.psycopg"


def test_roles_by_scope() -> None:
    assert scope_role(PSYCOPG) == DB
    assert scope_role(REDIS) == CACHE
    assert scope_role(DJANGO_CACHE_SCOPE) == CACHE
    assert scope_role("opentelemetry.instrumentation.django") == OWNER
    assert is_client(PSYCOPG) and is_client(REDIS) and not is_client("tests")


def test_redis_under_a_django_cache_call_is_not_counted_again() -> None:
    assert not counted(CACHE, REDIS, parent_role=CACHE)
    assert counted(CACHE, REDIS, parent_role=OWNER)
    assert counted(CACHE, DJANGO_CACHE_SCOPE, parent_role=CACHE)  # a call inside a call
    assert counted(DB, PSYCOPG, parent_role=CACHE)  # DatabaseCache SQL under a cache call


def test_the_cap_counts_what_it_drops() -> None:
    activity = OwnerActivity(name="GET /")
    for n in range(MAX_CALLS_PER_OWNER + 3):
        activity.count_db(1_000)
        activity.add_db(DbCall("fp", "SELECT ?", n, 1_000))
    activity.add_cache(CacheCall("get", "k", 0, 1))
    assert activity.db_count == MAX_CALLS_PER_OWNER + 3
    assert activity.db_duration_ns == (MAX_CALLS_PER_OWNER + 3) * 1_000
    assert len(activity.db_calls) == MAX_CALLS_PER_OWNER and activity.dropped == 3
    assert len(activity.cache_calls) == 1  # each kind has its own room
    activity.add_connects([ConnectCall("default", 0, 1)] * 2)
    assert len(activity.connects) == 2
