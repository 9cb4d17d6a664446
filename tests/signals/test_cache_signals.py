"""The cache detector on hand-built activity records: exact findings, one negative per positive."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import pytest

from hms_otel_agent import config
from hms_otel_agent.signals import cache_signals, registry
from hms_otel_agent.signals.activity import CacheCall, CodeLocation, DbCall, Finding, OwnerActivity
from hms_otel_agent.signals.cache_signals import common_pattern, detect

# One owner is evidence enough here; the decision across owners is tested on its own below.
SETTINGS = dataclasses.replace(config.load({}).settings, cache_miss_min_requests=1)


@pytest.fixture(autouse=True)
def fresh_evidence() -> None:
    cache_signals.reset_evidence()


VIEW = CodeLocation("hms/views.py", 120, "cached_patients")
LOOP = CodeLocation("hms/views.py", 140, "touch_patient")
MS = 1_000_000


def call(
    operation: str = "get",
    pattern: str = "patient:{id}:summary",
    start: int = 0,
    duration: int = MS,
    key: int | None = 1,
    location: CodeLocation | None = VIEW,
    django_api: bool = True,
    **fields: object,
) -> CacheCall:
    return CacheCall(
        operation=operation,
        key_pattern=pattern,
        start_ns=start,
        duration_ns=duration,
        backend="redis" if not django_api else "locmem",
        key_hash=key,
        location=location,
        django_api=django_api,
        **fields,  # type: ignore[arg-type]
    )


def miss(start: int, key: int = 1, **kw: object) -> CacheCall:
    return call(start=start, key=key, reads=1, misses=1, **kw)  # type: ignore[arg-type]


def hit(start: int, key: int = 1, **kw: object) -> CacheCall:
    return call(start=start, key=key, reads=1, hits=1, **kw)  # type: ignore[arg-type]


def write(
    start: int, key: int = 1, ttl: float | None = 3600.0, operation: str = "set", **kw: object
) -> CacheCall:
    return call(operation, start=start, key=key, writes=1, ttl_s=ttl, **kw)  # type: ignore[arg-type]


def sql(start: int, duration: int = MS) -> DbCall:
    return DbCall(fingerprint="f" * 16, statement="SELECT ...", start_ns=start, duration_ns=duration)


def activity(cache: list[CacheCall], db: list[DbCall] | None = None) -> OwnerActivity:
    return OwnerActivity(
        name="GET patients/cached/", route="patients/cached/", cache_calls=cache, db_calls=db or []
    )


def fingerprint(kind: str, pattern: str, location: CodeLocation | None) -> str:
    parts = (kind, pattern, location.file if location else "", location.function if location else "")
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


# --- cache N+1 -------------------------------------------------------------------------------------


def test_single_key_reads_of_one_pattern_are_a_cache_n_plus_one() -> None:
    reads = [hit(i * 2 * MS, key=i, duration=2 * MS) for i in range(4)] + [miss(10 * MS, key=9)]
    [finding] = detect(activity(reads), SETTINGS)
    assert finding == Finding(
        kind="cache_n_plus_one",
        fingerprint=fingerprint("cache_n_plus_one", "patient:{id}:summary", VIEW),
        repetitions=5,
        duration_ms=9.0,
        key_pattern="patient:{id}:summary",
        location=VIEW,
        fix="cache.get_many([...])",
        hint=(
            "GET patients/cached/: 5 cache reads of patient:{id}:summary one key at a time (9.0 ms) "
            "at hms/views.py:120 in cached_patients — read them with cache.get_many() (one MGET)"
        ),
        route="patients/cached/",
    )


def test_fewer_single_key_reads_than_the_threshold_are_not() -> None:
    reads = [hit(i * MS, key=i) for i in range(SETTINGS.cache_n_plus_one_threshold - 1)]
    assert detect(activity(reads), SETTINGS) == []


def test_the_threshold_comes_from_the_settings() -> None:
    reads = [hit(i * MS, key=i) for i in range(3)]
    lowered = dataclasses.replace(SETTINGS, cache_n_plus_one_threshold=3)
    assert kinds(detect(activity(reads), lowered)) == ["cache_n_plus_one"]
    assert detect(activity(reads), SETTINGS) == []


def test_reads_of_different_patterns_do_not_add_up() -> None:
    # (Words that are not structural are masked: report:a and report:b are one pattern, report:{value}.)
    words = ("patient", "encounter", "ward", "bed", "visit", "note", "lab", "claim")
    reads = [hit(i * MS, key=i, pattern=f"{word}:{{id}}") for i, word in enumerate(words)]
    assert detect(activity(reads), SETTINGS) == []


def test_multi_key_reads_are_not_a_cache_n_plus_one() -> None:
    reads = [call("get_many", start=i * MS, key=i, reads=10, hits=10) for i in range(6)]
    assert detect(activity(reads), SETTINGS) == []


def test_raw_redis_gets_are_fixed_with_mget_and_other_commands_with_a_pipeline() -> None:
    gets = [hit(i * MS, key=i, operation="GET", django_api=False) for i in range(5)]
    [finding] = detect(activity(gets), SETTINGS)
    assert finding.fix == "client.mget([...])"
    assert finding.hint.endswith("read them with one MGET: client.mget([...])")
    hgets = [hit(i * MS, key=i, operation="HGETALL", django_api=False) for i in range(5)]
    [finding] = detect(activity(hgets), SETTINGS)
    assert finding.fix == "client.pipeline()"
    assert "send the HGETALL commands in one round trip" in finding.hint


# --- repeated miss ---------------------------------------------------------------------------------


def test_the_same_key_missed_twice_is_a_repeated_miss() -> None:
    [finding] = detect(activity([miss(0, duration=MS), miss(5 * MS, duration=3 * MS)]), SETTINGS)
    assert finding == Finding(
        kind="cache_repeated_miss",
        fingerprint=fingerprint("cache_repeated_miss", "patient:{id}:summary", VIEW),
        repetitions=2,
        duration_ms=4.0,
        key_pattern="patient:{id}:summary",
        location=VIEW,
        fix="cache.get_or_set(key, compute, timeout=...)",
        hint=(
            "GET patients/cached/: patient:{id}:summary missed 2 times (4.0 ms) at hms/views.py:120 "
            "in cached_patients — the value is never stored: cache.get_or_set(key, compute, timeout=...)"
        ),
        route="patients/cached/",
    )


def test_two_keys_of_one_pattern_missed_once_each_are_not() -> None:
    assert detect(activity([miss(0, key=1), miss(MS, key=2)]), SETTINGS) == []


def test_a_miss_then_a_hit_of_the_same_key_is_not() -> None:
    assert detect(activity([miss(0), hit(MS)]), SETTINGS) == []


def test_several_keys_missed_repeatedly_at_one_place_are_one_finding() -> None:
    calls = [miss(i * MS, key=i % 2) for i in range(4)]  # below the cache N+1 threshold
    [finding] = detect(activity(calls), SETTINGS)
    assert (finding.kind, finding.repetitions) == ("cache_repeated_miss", 4)
    assert "2 keys of patient:{id}:summary missed 4 times" in finding.hint


# --- miss without fill -----------------------------------------------------------------------------


def test_a_miss_followed_by_sql_and_no_write_is_a_miss_without_fill() -> None:
    [finding] = detect(activity([miss(0, duration=2 * MS)], [sql(3 * MS)]), SETTINGS)
    assert finding == Finding(
        kind="cache_miss_without_fill",
        fingerprint=fingerprint("cache_miss_without_fill", "patient:{id}:summary", VIEW),
        repetitions=1,
        duration_ms=2.0,
        key_pattern="patient:{id}:summary",
        location=VIEW,
        fix="cache.set(key, value, timeout=...) after the query",
        hint=(
            "GET patients/cached/: 1 miss of patient:{id}:summary then SQL, and the result is not cached "
            "(2.0 ms) at hms/views.py:120 in cached_patients — the cache-aside path does not populate "
            "the cache: cache.set(key, value, timeout=...) after the query"
        ),
        route="patients/cached/",
    )


def test_a_miss_filled_after_the_query_is_not() -> None:
    assert detect(activity([miss(0), write(5 * MS)], [sql(2 * MS)]), SETTINGS) == []


def test_a_write_of_another_key_of_the_pattern_means_it_is_filled_by_design() -> None:
    """The pattern is written in the process (here: under the same owner): the miss is not
    evidence of a cache-aside path that never fills; a write of another pattern is no fill."""
    other = write(5 * MS, key=2, pattern="encounter:{id}")
    found = detect(activity([miss(0, key=1), other], [sql(2 * MS)]), SETTINGS)
    assert kinds(found) == ["cache_miss_without_fill"]
    assert detect(activity([miss(0, key=1), write(5 * MS, key=2)], [sql(2 * MS)]), SETTINGS) == []


def test_a_write_before_the_miss_is_a_fill_of_the_pattern() -> None:
    assert detect(activity([write(0), miss(2 * MS)], [sql(4 * MS)]), SETTINGS) == []


def test_a_miss_with_no_sql_after_it_is_not() -> None:
    assert detect(activity([miss(5 * MS)], [sql(0)]), SETTINGS) == []


def test_sql_run_by_a_cache_call_itself_does_not_count() -> None:
    # DatabaseCache: the SELECT of a later cache.get runs inside that call's span.
    calls = [miss(0, key=1), hit(10 * MS, key=2, duration=5 * MS)]
    assert detect(activity(calls, [sql(11 * MS, duration=MS)]), SETTINGS) == []
    assert kinds(detect(activity(calls, [sql(16 * MS)]), SETTINGS)) == ["cache_miss_without_fill"]


def test_a_multi_key_miss_is_filled_by_a_write_of_the_same_pattern() -> None:
    get_many = call("get_many", start=0, key=77, reads=10, hits=7, misses=3)
    set_many = call("set_many", start=5 * MS, key=78, writes=3, ttl_s=3600.0)
    assert detect(activity([get_many, set_many], [sql(2 * MS)]), SETTINGS) == []
    cache_signals.reset_evidence()
    other = call("set_many", pattern="encounter:{id}", start=5 * MS, key=79, writes=3, ttl_s=60.0)
    assert kinds(detect(activity([get_many, other], [sql(2 * MS)]), SETTINGS)) == ["cache_miss_without_fill"]


# --- write without expiry --------------------------------------------------------------------------


def test_a_write_without_expiry_is_flagged() -> None:
    [finding] = detect(activity([write(0, ttl=None, pattern="encounters:recent")]), SETTINGS)
    assert finding == Finding(
        kind="cache_write_without_ttl",
        fingerprint=fingerprint("cache_write_without_ttl", "encounters:recent", VIEW),
        repetitions=1,
        duration_ms=1.0,
        key_pattern="encounters:recent",
        location=VIEW,
        fix="cache.set(key, value, timeout=<seconds>)",
        hint=(
            "GET patients/cached/: 1 cache write of encounters:recent without an expiry (1.0 ms) at "
            "hms/views.py:120 in cached_patients — the entries never expire and go stale: pass a "
            "timeout: cache.set(key, value, timeout=<seconds>)"
        ),
        route="patients/cached/",
    )


def test_a_write_with_an_expiry_is_not() -> None:
    assert detect(activity([write(0, ttl=1800.0)]), SETTINGS) == []


def test_an_expiry_set_right_after_the_write_is_enough() -> None:
    set_ = write(0, ttl=None, operation="SET", django_api=False)
    expire = write(MS, ttl=60.0, operation="EXPIRE", django_api=False)
    assert detect(activity([set_, expire]), SETTINGS) == []
    [finding] = detect(activity([set_]), SETTINGS)
    assert finding.fix == "SET key value EX <seconds>"


# --- invalidation storm ----------------------------------------------------------------------------


PARTS = ("summary", "profile", "encounters", "appointments", "notes", "contacts", "record", "insurance")


def deletes(count: int) -> list[CacheCall]:
    return [
        call("delete", pattern=f"patient:{{id}}:{PARTS[i % len(PARTS)]}", start=i * MS, key=i, deletes=1)
        for i in range(count)
    ]


def test_many_deletes_in_one_request_are_an_invalidation_storm() -> None:
    calls = [dataclasses.replace(c, location=LOOP) for c in deletes(SETTINGS.cache_invalidation_threshold)]
    [finding] = detect(activity(calls), SETTINGS)
    assert finding == Finding(
        kind="cache_invalidation_storm",
        fingerprint=fingerprint("cache_invalidation_storm", "patient:{id}:*", LOOP),
        repetitions=10,
        duration_ms=10.0,
        key_pattern="patient:{id}:*",
        location=LOOP,
        fix="cache.delete_many([...])",
        hint=(
            "GET patients/cached/: 10 cache deletes one call at a time (10 keys) of patient:{id}:* "
            "(10.0 ms) at hms/views.py:140 in touch_patient — delete them in one call with "
            "cache.delete_many([...]), or version the keys (cache.incr_version / a version segment in "
            "the key) instead of deleting each"
        ),
        route="patients/cached/",
    )


def test_fewer_deletes_than_the_threshold_are_not() -> None:
    assert detect(activity(deletes(SETTINGS.cache_invalidation_threshold - 1)), SETTINGS) == []


def test_one_delete_many_of_many_keys_is_not() -> None:
    calls = [call("delete_many", pattern="patient:{id}:*", deletes=50)]
    assert detect(activity(calls), SETTINGS) == []


def test_raw_redis_deletes_are_fixed_with_one_del() -> None:
    calls = [dataclasses.replace(c, operation="DEL", django_api=False) for c in deletes(12)]
    [finding] = detect(activity(calls), SETTINGS)
    assert (finding.fix, finding.repetitions) == ("client.delete(*keys)", 12)


# --- everything together, and the rest ---------------------------------------------------------


def test_findings_come_in_a_fixed_order() -> None:
    calls = [
        *[hit(i * MS, key=100 + i) for i in range(5)],
        miss(10 * MS, key=7, pattern="patient:{id}:profile"),
        miss(11 * MS, key=7, pattern="patient:{id}:profile"),
        write(20 * MS, key=8, ttl=None, pattern="encounters:recent"),
        *[dataclasses.replace(c, start_ns=30 * MS + c.start_ns) for c in deletes(10)],
    ]
    found = detect(activity(calls, [sql(15 * MS)]), SETTINGS)
    assert kinds(found) == list(cache_signals.KINDS)


def test_no_cache_calls_no_findings() -> None:
    assert detect(activity([], [sql(0)]), SETTINGS) == []


def test_fingerprints_ignore_the_line_and_follow_the_function() -> None:
    moved = CodeLocation(VIEW.file, VIEW.line + 30, VIEW.function)
    renamed = CodeLocation(VIEW.file, VIEW.line, "other_view")
    base = detect(activity([hit(i * MS, key=i) for i in range(5)]), SETTINGS)[0].fingerprint
    same = detect(activity([hit(i * MS, key=i, location=moved) for i in range(5)]), SETTINGS)
    other = detect(activity([hit(i * MS, key=i, location=renamed) for i in range(5)]), SETTINGS)
    assert same[0].fingerprint == base != other[0].fingerprint
    assert len(base) == 16 and int(base, 16) >= 0


def test_no_location_and_no_route() -> None:
    reads = [hit(i * MS, key=i, location=None) for i in range(5)]
    owner = OwnerActivity(name="celery.task", cache_calls=reads)
    [finding] = detect(owner, SETTINGS)
    assert finding.location is None and finding.route == ""
    assert finding.hint.startswith("celery.task: 5 cache reads of patient:{id}:summary one key at a time (")
    assert finding.hint.partition(" ms)")[2].startswith(" — read them")


@pytest.mark.parametrize(
    "patterns, expected",
    [
        ([], ""),
        (["patient:{id}:summary"], "patient:{id}:summary"),
        (["patient:{id}:summary", "patient:{id}:summary"], "patient:{id}:summary"),
        (["patient:{id}:summary", "patient:{id}:notes"], "patient:{id}:*"),
        (["patient:{id}:summary", "patient:{id}:summary:v2"], "patient:{id}:summary:*"),
        (["patient:{id}", "encounter:{id}"], "patient:{id}"),
        (["a:b", "c:d"], "a:b"),
        (["", "x"], "x"),
    ],
)
def test_common_pattern(patterns: list[str], expected: str) -> None:
    assert common_pattern(patterns) == expected


def test_the_detector_is_registered() -> None:
    assert cache_signals.detect in registry.DETECTORS


def test_the_detector_imports_neither_django_nor_the_sdk() -> None:
    code = (
        "import sys; import hms_otel_agent.signals.cache_signals; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- miss without fill: decided across owners ---------------------------------------------------


def _unfilled_request() -> OwnerActivity:
    return activity([miss(0, duration=2 * MS)], [sql(3 * MS)])


def test_a_miss_without_fill_needs_the_evidence_of_several_requests() -> None:
    settings = dataclasses.replace(SETTINGS, cache_miss_min_requests=3)
    assert detect(_unfilled_request(), settings) == []
    assert detect(_unfilled_request(), settings) == []
    [finding] = detect(_unfilled_request(), settings)
    assert finding.kind == cache_signals.CACHE_MISS_WITHOUT_FILL


def test_a_pattern_written_by_another_owner_is_filled_by_design() -> None:
    """A background job (another owner) fills the key: the request's miss is expected."""
    settings = dataclasses.replace(SETTINGS, cache_miss_min_requests=2)
    job = activity([write(0, key=7)])
    assert detect(job, settings) == []
    for _ in range(3):
        assert detect(_unfilled_request(), settings) == []


def test_a_pattern_written_later_by_another_owner_stops_the_finding() -> None:
    assert [f.kind for f in detect(_unfilled_request(), SETTINGS)] == [cache_signals.CACHE_MISS_WITHOUT_FILL]
    detect(activity([write(0, key=9)]), SETTINGS)
    assert detect(_unfilled_request(), SETTINGS) == []


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        ("rq:job:{uuid}", ()),
        ("celery-task-meta-{uuid}", ()),
        ("django.contrib.sessions.cache{token}", ()),
        ("jobs:{id}:state", ("jobs:",)),
    ],
)
def test_keys_of_job_queues_and_libraries_are_not_cache_reads(key: str, extra: tuple[str, ...]) -> None:
    settings = dataclasses.replace(SETTINGS, cache_ignore_key_prefixes=extra)
    reads = [dataclasses.replace(miss(i * MS, key=i), key_pattern=key) for i in range(6)]
    assert detect(activity(reads, [sql(10 * MS)]), settings) == []
    # the same calls of an application pattern are findings (the negative)
    app = [dataclasses.replace(r, key_pattern="patient:{id}:summary") for r in reads]
    assert detect(activity(app, [sql(10 * MS)]), settings) != []
