"""The agent's wrapper of ``redis.Redis.execute_command`` (instrument/redis.py) makes the spans
the contrib's wrapper would, with the same hooks.

Each scenario runs on real Redis twice — through the agent's wrapper and through the contrib's
(`_traced_execute_factory`, given the same tracer and the agent's hooks) — and the spans must
match in name, kind, scope, parent, status, events and every attribute, ``hms.*`` included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import wrapt

from hms_otel_agent.instrument import cache_hooks


def _describe(span: Any, job_id: int) -> tuple[Any, ...]:
    parent = span.parent.span_id == job_id if span.parent is not None else None
    events = [(e.name, (e.attributes or {}).get("exception.type")) for e in span.events]
    scope = span.instrumentation_scope
    return (
        span.name,
        span.kind,
        (scope.name, scope.version, scope.schema_url),
        parent,
        span.status.status_code,
        span.status.description,
        events,
        dict(span.attributes or {}),
    )


def _run_both_ways(traced: Any, monkeypatch: pytest.MonkeyPatch, scenario: Callable[[], None]) -> Any:
    import redis
    from opentelemetry.instrumentation.redis import RedisInstrumentor, _traced_execute_factory

    ours = redis.Redis.__dict__["execute_command"]
    assert ours._self_wrapper.__module__ == "hms_otel_agent.instrument.redis", (
        "the agent's wrapper is not installed"
    )
    settings = traced.base_settings
    contrib = wrapt.FunctionWrapper(
        ours.__wrapped__,
        _traced_execute_factory(
            RedisInstrumentor._get_tracer(tracer_provider=traced.tracer_provider),
            cache_hooks.redis_request_hook(settings),
            cache_hooks.redis_response_hook(settings),
        ),
    )
    results = []
    for wrapper in (ours, contrib):
        monkeypatch.setattr(redis.Redis, "execute_command", wrapper)
        traced.clear()
        with traced.tracer.start_as_current_span("job") as job:
            scenario()
        job_id = job.get_span_context().span_id
        spans = sorted((s for s in traced.spans() if s.name != "job"), key=lambda s: s.start_time or 0)
        assert spans
        results.append([_describe(s, job_id) for s in spans])
    return results


def test_commands(traced_session: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    def scenario() -> None:
        redis_client.set("patient:7:summary", b"{}", ex=60)
        redis_client.get("patient:7:summary")
        redis_client.get("patient:8:summary")
        redis_client.mget("patient:7:summary", "patient:9:summary")
        redis_client.hset("ward:3", mapping={"beds": 4})
        redis_client.hgetall("ward:3")
        redis_client.delete("patient:7:summary")
        with pytest.raises(redis.ResponseError):
            redis_client.incr("ward:3")  # a hash: WRONGTYPE

    ours, contrib = _run_both_ways(traced_session, monkeypatch, scenario)
    assert ours == contrib
    names = [d[0] for d in ours]
    assert names == ["SET", "GET", "GET", "MGET", "HSET", "HGETALL", "DEL", "INCRBY"]
    assert ours[2][7]["hms.cache.hit"] is False  # the agent's hooks ran
    assert ours[-1][4].name == "ERROR"


def test_commands_under_a_django_cache_call(
    traced: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.cache import cache

    from hms_otel_agent.instrument import django_cache

    # The command spans (HMS_OTEL_CACHE_COMMAND_SPANS=true) are what is compared here.
    monkeypatch.setitem(django_cache._state, "command_spans", True)

    def scenario() -> None:
        cache.set("patient:5:summary", {"name": "x"}, 30)
        cache.get("patient:5:summary")
        cache.get_many(["patient:5:summary", "patient:6:summary"])

    ours, contrib = _run_both_ways(traced, monkeypatch, scenario)
    assert ours == contrib
    assert [d[0] for d in ours] == ["cache.set", "SET", "cache.get", "GET", "cache.get_many", "MGET"]
