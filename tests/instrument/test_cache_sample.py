"""Cache signals on the sample app's cache endpoints (Django's RedisCache on real Redis, in-process).

Every finding kind on its naive endpoint, none on its twin; exact hit/miss counts and key
patterns; the metrics; and no patient identifier from a key in anything exported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan

from hms_otel_agent.sample.hms.markers import marker_line

SCOPE = "hms_otel_agent.django_cache"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"
VIEWS = "hms_otel_agent/sample/hms/views.py"


@pytest.fixture
def cache(traced: Traced) -> Iterator[Any]:
    from django.core.cache import cache as django_cache
    from django.db import connections

    # A connection opened before the agent was installed (by an earlier, untraced test) would run
    # untraced SQL: open a fresh one.
    connections.close_all()
    django_cache.clear()
    traced.clear()
    yield django_cache
    django_cache.clear()


def hms(span: ReadableSpan) -> dict[str, Any]:
    """The span's hms.* attributes but the folded Redis command names (asserted on their own)."""
    return {
        k: v for k, v in (span.attributes or {}).items() if k.startswith("hms.") and k != "hms.cache.commands"
    }


def commands(span: ReadableSpan) -> tuple[str, ...]:
    return tuple((span.attributes or {}).get("hms.cache.commands", ()))


def cache_calls(traced: Traced, server: ReadableSpan) -> list[dict[str, Any]]:
    spans = [s for s in traced.children_of(server) if s.instrumentation_scope.name == SCOPE]
    return [hms(s) for s in sorted(spans, key=lambda s: s.start_time or 0)]


def call(operation: str, pattern: str = "patient:{id}:summary", **extra: Any) -> dict[str, Any]:
    attributes = {
        "hms.cache.operation": operation,
        "hms.cache.backend": "redis",
        "hms.cache.key_pattern": pattern,
    }
    attributes.update({f"hms.cache.{k}": v for k, v in extra.items()})
    return attributes


def findings(traced: Traced, server: ReadableSpan) -> dict[str, dict[str, Any]]:
    events = traced.events(server, "hms.cache")
    by_kind = {e["hms.finding.kind"]: e for e in events}
    assert len(by_kind) == len(events), events
    return by_kind


def counts(server: ReadableSpan) -> tuple[Any, Any, Any]:
    attributes = server.attributes or {}
    return (
        attributes.get("hms.cache.hit_count"),
        attributes.get("hms.cache.miss_count"),
        attributes.get("hms.cache.hit_ratio"),
    )


def without_timing(hint: str) -> str:
    return re.sub(r"\(\d+\.\d ms\)", "(… ms)", hint)


# --- /patients/<pk>/summary/: correct cache-aside ----------------------------------------------


def test_cache_aside_misses_once_then_hits_and_is_clean(traced: Traced, cache: Any) -> None:
    response, server = traced.request("/patients/1/summary/")
    assert response.status_code == 200
    assert cache_calls(traced, server) == [call("get", hit=False), call("set", ttl_s=3600.0)]
    get, set_ = sorted(
        (s for s in traced.children_of(server) if s.instrumentation_scope.name == SCOPE),
        key=lambda s: s.start_time or 0,
    )
    # One span per call: the Redis command is folded into it (its name, never the key).
    assert traced.children_of(get) == traced.children_of(set_) == []
    assert (commands(get), commands(set_)) == (("GET",), ("SET",))
    assert counts(server) == (0, 1, 0.0)
    assert findings(traced, server) == {}  # filled after the query: no miss without fill

    _, server = traced.request("/patients/1/summary/")
    assert cache_calls(traced, server) == [call("get", hit=True)]
    assert counts(server) == (1, 0, 1.0)
    assert findings(traced, server) == {}


# --- /patients/cached/: cache N+1 ------------------------------------------------------------------


def test_reading_summaries_one_by_one_is_a_cache_n_plus_one(traced: Traced, cache: Any) -> None:
    line = marker_line("cached_patients_naive", "patient:{id}:summary", kind="cache-read")
    _, cold = traced.request("/patients/cached/?limit=6")
    assert cache_calls(traced, cold) == [call("get", hit=False), call("set", ttl_s=3600.0)] * 6
    assert counts(cold) == (0, 6, 0.0)
    finding = findings(traced, cold)["cache_n_plus_one"]
    assert set(findings(traced, cold)) == {"cache_n_plus_one"}  # each miss is filled
    assert finding["hms.finding.repetitions"] == 6
    assert finding["hms.cache.key_pattern"] == "patient:{id}:summary"
    assert finding["code.file.path"].endswith(VIEWS)
    assert (finding["code.line.number"], finding["code.function.name"]) == (line, "cached_patients_naive")
    assert finding["hms.hint.fix"] == "cache.get_many([...])"
    assert without_timing(finding["hms.hint"]) == (
        f"GET patients/cached/: 6 cache reads of patient:{{id}}:summary one key at a time (… ms) at "
        f"{finding['code.file.path']}:{line} in cached_patients_naive — read them with cache.get_many() "
        "(one MGET)"
    )
    assert list((cold.attributes or {})["hms.hints"]) == [finding["hms.hint"]]

    _, warm = traced.request("/patients/cached/?limit=6")
    assert cache_calls(traced, warm) == [call("get", hit=True)] * 6
    assert counts(warm) == (6, 0, 1.0)
    warm_finding = findings(traced, warm)["cache_n_plus_one"]
    assert warm_finding["hms.finding.fingerprint"] == finding["hms.finding.fingerprint"]


def test_the_get_many_twin_is_clean(traced: Traced, cache: Any) -> None:
    _, cold = traced.request("/patients/cached/optimized/?limit=6")
    assert cache_calls(traced, cold) == [call("get_many", hits=0, misses=6), call("set_many", ttl_s=3600.0)]
    assert counts(cold) == (0, 6, 0.0)
    assert findings(traced, cold) == {}
    _, warm = traced.request("/patients/cached/optimized/?limit=6")
    assert cache_calls(traced, warm) == [call("get_many", hits=6, misses=0)]
    assert counts(warm) == (6, 0, 1.0)
    assert findings(traced, warm) == {}


def test_the_threshold_is_a_setting(traced: Traced, cache: Any) -> None:
    with traced.use_settings(cache_n_plus_one_threshold=7):
        _, server = traced.request("/patients/cached/?limit=6")
    assert findings(traced, server) == {}
    with traced.use_settings(cache_n_plus_one_threshold=3):
        _, server = traced.request("/patients/cached/?limit=3")
    assert findings(traced, server)["cache_n_plus_one"]["hms.finding.repetitions"] == 3


# --- /encounters/recent/: write without expiry -------------------------------------------------


def test_a_write_without_expiry(traced: Traced, cache: Any) -> None:
    _, server = traced.request("/encounters/recent/")
    assert cache_calls(traced, server) == [call("set", "encounters:recent")]
    set_ = next(s for s in traced.children_of(server) if s.instrumentation_scope.name == SCOPE)
    assert traced.children_of(set_) == [] and commands(set_) == ("SET",)
    finding = findings(traced, server)["cache_write_without_ttl"]
    assert set(findings(traced, server)) == {"cache_write_without_ttl"}
    assert finding["hms.cache.key_pattern"] == "encounters:recent"
    assert finding["code.function.name"] == "recent_encounters_naive"
    assert finding["hms.hint.fix"] == "cache.set(key, value, timeout=<seconds>)"
    assert counts(server) == (None, None, None)  # no reads


def test_the_twin_with_a_timeout_is_clean(traced: Traced, cache: Any) -> None:
    _, server = traced.request("/encounters/recent/optimized/")
    assert cache_calls(traced, server) == [call("set", "encounters:recent", ttl_s=1800.0)]
    assert findings(traced, server) == {}


# --- /patients/<pk>/flaky-summary/: repeated miss, miss without fill ------------------------


def test_a_value_that_is_never_stored(traced: Traced, cache: Any) -> None:
    from hms_otel_agent.signals import cache_signals

    line = marker_line("flaky_summary", "patient:{id}:profile", kind="cache-read")
    cache_signals.reset_evidence()
    with traced.use_settings(cache_miss_min_requests=2):
        traced.request("/patients/3/flaky-summary/")  # evidence: one request is not enough
        _, first = traced.request("/patients/3/flaky-summary/")
    assert "cache_miss_without_fill" in findings(traced, first)
    with traced.use_settings(cache_miss_min_requests=1):
        _, server = traced.request("/patients/3/flaky-summary/")
    assert cache_calls(traced, server) == [call("get", "patient:{id}:profile", hit=False)] * 2
    assert counts(server) == (0, 2, 0.0)
    found = findings(traced, server)
    assert set(found) == {"cache_repeated_miss", "cache_miss_without_fill"}
    for finding in found.values():
        assert finding["hms.finding.repetitions"] == 2
        assert finding["hms.cache.key_pattern"] == "patient:{id}:profile"
        assert (finding["code.line.number"], finding["code.function.name"]) == (line, "flaky_summary")
    assert found["cache_repeated_miss"]["hms.hint.fix"] == "cache.get_or_set(key, compute, timeout=...)"
    assert (
        found["cache_miss_without_fill"]["hms.hint.fix"]
        == "cache.set(key, value, timeout=...) after the query"
    )
    assert without_timing(found["cache_miss_without_fill"]["hms.hint"]).startswith(
        "GET patients/<int:pk>/flaky-summary/: 2 misses of patient:{id}:profile then SQL, and the result is "
        f"not cached (… ms) at {found['cache_miss_without_fill']['code.file.path']}:{line} in flaky_summary"
    )
    hints = list((server.attributes or {})["hms.hints"])
    assert hints == [found["cache_repeated_miss"]["hms.hint"], found["cache_miss_without_fill"]["hms.hint"]]


# --- POST /patients/<pk>/touch/: invalidation storm ---------------------------------------------


def test_deleting_keys_one_by_one_is_an_invalidation_storm(traced: Traced, cache: Any) -> None:
    _, server = traced.request("/patients/3/touch/", method="post")
    calls = cache_calls(traced, server)
    assert [c["hms.cache.operation"] for c in calls] == ["delete"] * 10
    assert calls[0] == call("delete")
    assert calls[1] == call("delete", "patient:{id}:profile")
    finding = findings(traced, server)["cache_invalidation_storm"]
    assert set(findings(traced, server)) == {"cache_invalidation_storm"}
    assert finding["hms.finding.repetitions"] == 10
    assert finding["hms.cache.key_pattern"] == "patient:{id}:*"
    assert finding["code.function.name"] == "touch_patient_naive"
    assert finding["hms.hint.fix"] == "cache.delete_many([...])"
    with traced.use_settings(cache_invalidation_threshold=11):
        _, server = traced.request("/patients/3/touch/", method="post")
    assert findings(traced, server) == {}


def test_the_delete_many_twin_is_clean(traced: Traced, cache: Any) -> None:
    _, server = traced.request("/patients/3/touch/optimized/", method="post")
    assert cache_calls(traced, server) == [call("delete_many", "patient:{id}:*")]
    assert findings(traced, server) == {}


# --- metrics -----------------------------------------------------------------------------------


def metric_total(traced: Traced, name: str, field: str = "value", **attributes: Any) -> float:
    total = 0.0
    for point in traced.metric_points(name):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            total += getattr(point, field)
    return total


def test_reads_and_write_ttls_are_counted_by_pattern_and_route(traced: Traced, cache: Any) -> None:
    route = {"http.route": "patients/cached/", "hms.cache.key_pattern": "patient:{id}:summary"}
    ttl = {"hms.cache.key_pattern": "patient:{id}:summary"}
    finding = {"http.route": "patients/cached/", "hms.finding.kind": "cache_n_plus_one"}
    before = (
        metric_total(traced, "hms.cache.reads", **route, **{"hms.cache.result": "hit"}),
        metric_total(traced, "hms.cache.reads", **route, **{"hms.cache.result": "miss"}),
        metric_total(traced, "hms.cache.write_ttl", "count", **ttl),
        metric_total(traced, "hms.cache.write_ttl", "sum", **ttl),
        metric_total(traced, "hms.findings", **finding),
    )
    traced.request("/patients/cached/?limit=5")  # 5 misses, 5 writes of 3600 s
    traced.request("/patients/cached/?limit=8")  # 5 hits, 3 misses, 3 writes
    after = (
        metric_total(traced, "hms.cache.reads", **route, **{"hms.cache.result": "hit"}),
        metric_total(traced, "hms.cache.reads", **route, **{"hms.cache.result": "miss"}),
        metric_total(traced, "hms.cache.write_ttl", "count", **ttl),
        metric_total(traced, "hms.cache.write_ttl", "sum", **ttl),
        metric_total(traced, "hms.findings", **finding),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [5, 8, 8, 8 * 3600.0, 2]


# --- no patient identifier leaves the process --------------------------------------------------


def exported_text(traced: Traced) -> str:
    parts = []
    for span in traced.spans():
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
    data = traced.reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    parts.extend(f"{k}={v}" for k, v in point.attributes.items())
    return "\n".join(parts)


def test_keys_holding_an_mrn_never_leave_the_process(traced: Traced, cache: Any, redis_client: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    mrn = Patient.objects.order_by("id").values_list("mrn", flat=True).first()
    assert mrn and re.fullmatch(r"MRN-\d{6}", mrn)
    key = f"patient:{mrn}:summary"
    raw = f":1:{key}".encode()
    with traced.tracer.start_as_current_span("job"):
        for _ in range(5):
            cache.get(key)
        cache.set(key, {"mrn": mrn}, timeout=None)
        cache.get_many([key, f"patient:{mrn}:profile"])
        cache.get_or_set(f"patient:{mrn}:notes", list, 60)
        cache.delete(key)
        redis_client.set(raw, b"x")
        redis_client.get(raw)
        redis_client.mget([raw, b"patient:" + mrn.encode()])
        pipe = redis_client.pipeline()
        pipe.get(raw).delete(raw)
        pipe.execute()
    text = exported_text(traced)
    assert "hms.cache.key_pattern=patient:{mrn}:summary" in text
    assert "cache_write_without_ttl" in text and "cache_n_plus_one" in text  # findings were written
    assert "hms.cache.key=" not in text
    assert mrn not in text
    assert mrn.split("-")[1] not in text
