"""Cache signals end to end: the sample app under hms-otel-run (gunicorn, Django's RedisCache on a
real Redis), exporting OTLP to a real receiver.

The findings, the owner's hit/miss counts and the cache spans must arrive in the exported
payload; no raw key (``:1:patient:...``) and no patient MRN may appear in any byte sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess

from .conftest import gunicorn, otlp_env, server_span_for

pytestmark = pytest.mark.e2e

SCOPE = "hms_otel_agent.django_cache"
LIMIT = 8


def cache_events(span: ReceivedSpan) -> dict[str, dict[str, Any]]:
    return {str(e.attributes["hms.finding.kind"]): e.attributes for e in span.events if e.name == "hms.cache"}


def test_cache_signals_arrive_in_the_otlp_payload(
    otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess], redis_client: Any
) -> None:
    # redis_client flushed the sample app's Redis database: the first request misses.
    app = run_sample(lambda port: gunicorn(port, "-w", "1"), otlp_env(otlp_receiver, "http/protobuf"))
    cold = app.request("GET", f"/patients/cached/?limit={LIMIT}")
    assert cold.status == 200, cold.text
    mrns = [row["mrn"] for row in cold.json()["results"]]
    recent = app.request("GET", "/encounters/recent/")
    assert recent.status == 200, recent.text
    mrns += [row["patient"]["mrn"] for row in recent.json()["results"]]

    server = server_span_for(otlp_receiver, "/patients/cached/")
    attributes = server.attributes
    assert (attributes["hms.cache.hit_count"], attributes["hms.cache.miss_count"]) == (0, LIMIT)
    assert attributes["hms.cache.hit_ratio"] == 0.0
    [n_plus_one] = cache_events(server).values()
    assert n_plus_one["hms.finding.kind"] == "cache_n_plus_one"
    assert n_plus_one["hms.finding.repetitions"] == LIMIT
    assert n_plus_one["hms.cache.key_pattern"] == "patient:{id}:summary"
    assert n_plus_one["code.function.name"] == "cached_patients_naive"
    assert n_plus_one["hms.hint.fix"] == "cache.get_many([...])"
    assert (
        isinstance(n_plus_one["hms.finding.fingerprint"], str)
        and len(n_plus_one["hms.finding.fingerprint"]) == 16
    )
    assert str(n_plus_one["hms.hint"]).startswith(
        f"GET patients/cached/: {LIMIT} cache reads of patient:{{id}}"
    )
    assert list(attributes["hms.hints"]) == [n_plus_one["hms.hint"]]  # type: ignore[arg-type]

    otlp_receiver.wait_for_spans(
        lambda s: s.parent_span_id == server.span_id and s.scope_name == SCOPE, count=2 * LIMIT
    )
    gets = [c for c in otlp_receiver.children_of(server) if c.name == "cache.get"]
    assert len(gets) == LIMIT
    assert {(g.kind, g.attributes["hms.cache.backend"], g.attributes["hms.cache.hit"]) for g in gets} == {
        ("SPAN_KIND_CLIENT", "redis", False)
    }
    # The Redis command under a Django cache call is folded into the call's span (one span per
    # call by default): its name, never its key.
    assert {tuple(g.attributes["hms.cache.commands"]) for g in gets} == {("GET",)}
    assert not [s for s in otlp_receiver.spans() if s.parent_span_id in {g.span_id for g in gets}]

    recent_server = server_span_for(otlp_receiver, "/encounters/recent/")
    [write] = cache_events(recent_server).values()
    assert write["hms.finding.kind"] == "cache_write_without_ttl"
    assert write["hms.cache.key_pattern"] == "encounters:recent"
    assert write["code.function.name"] == "recent_encounters_naive"

    reads = otlp_receiver.wait_for_metrics(
        lambda p: (
            p.name == "hms.cache.reads"
            and p.attributes.get("http.route") == "patients/cached/"
            and p.attributes.get("hms.cache.result") == "miss"
        )
    )
    assert reads[-1].value == LIMIT
    assert reads[-1].attributes["hms.cache.key_pattern"] == "patient:{id}:summary"
    ttls = otlp_receiver.wait_for_metrics(
        lambda p: (
            p.name == "hms.cache.write_ttl"
            and p.attributes.get("hms.cache.key_pattern") == "patient:{id}:summary"
        )
    )
    assert (ttls[-1].count, ttls[-1].sum) == (LIMIT, LIMIT * 3600.0)

    payloads = otlp_receiver.raw_payloads()
    assert payloads
    for payload in payloads:
        assert b":1:patient:" not in payload and b":1:encounters:" not in payload
        for mrn in mrns:
            assert mrn.encode() not in payload, mrn
