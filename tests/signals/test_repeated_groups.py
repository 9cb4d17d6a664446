"""Repeated query groups (MN+1) on plain records, and how they replace their members' findings."""

from __future__ import annotations

import dataclasses

from harness.records import db_call
from hypothesis import given
from hypothesis import strategies as st

from hms_otel_agent import config
from hms_otel_agent.signals import records as a
from hms_otel_agent.signals import registry, repeated_groups
from hms_otel_agent.signals.records import (
    CacheCall,
    CodeLocation,
    DbCall,
    Finding,
    OrmContext,
    OwnerActivity,
)
from hms_otel_agent.signals.repeated_groups import consolidate, detect, find_groups

SETTINGS = config.load({}).settings
VIEW = CodeLocation("hms/views.py", 40, "cached_lookup")
MS = 1_000_000
PATIENT = 'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."id" = %s'
NOTES = 'SELECT "hms_note"."id" FROM "hms_note" WHERE "hms_note"."object_id" = %s'


def sql(at: int, statement: str = PATIENT, orm: OrmContext | None = None) -> DbCall:
    orm = orm if orm is not None else OrmContext(model="hms.Patient", kind=a.GET, location=VIEW)
    return db_call(statement, 0.5, start_ns=at * MS, orm=orm)


def cache(at: int, operation: str = "get", key_hash: int | None = None, **counts: int) -> CacheCall:
    return CacheCall(
        operation=operation,
        key_pattern="patient:{id}:summary",
        start_ns=at * MS,
        duration_ns=MS // 2,
        location=VIEW,
        django_api=True,
        key_hash=key_hash,
        ttl_s=3600.0 if operation == "set" else None,
        **counts,  # type: ignore[arg-type]
    )


def cache_aside(items: int) -> OwnerActivity:
    """cache.get (miss) -> SELECT -> cache.set, per item."""
    activity = OwnerActivity(name="GET patients/cached/lookup/", route="patients/cached/lookup/")
    for i in range(items):
        activity.cache_calls.append(cache(3 * i, reads=1, misses=1, key_hash=i))
        activity.db_calls.append(sql(3 * i + 1))
        activity.cache_calls.append(cache(3 * i + 2, "set", writes=1, key_hash=i))
    return activity


def test_find_groups() -> None:
    assert find_groups("xABCABCABCy", 3) == [(1, 3, 3)]
    assert find_groups("ABABABAB", 3) == [(0, 2, 4)]  # the smallest period that covers most
    assert find_groups("AAAAAAAA", 3) == []  # one signature: an N+1, not a group
    assert find_groups("ABCABD", 2) == []
    assert find_groups("ABABABxCDCDCD", 3) == [(0, 2, 3), (7, 2, 3)]


def _find_groups_by_windows(signatures: str, min_repeats: int, max_period: int) -> list[tuple[int, int, int]]:
    """The definition, window by window (what find_groups computed before it skipped windows of
    one value without looking at them)."""
    n, found, i = len(signatures), [], 0
    while i < n:
        best = None
        for k in range(2, max_period + 1):
            if i + k * min_repeats > n:
                break
            if len(set(signatures[i : i + k])) < 2:
                continue
            j = i + k
            while j < n and signatures[j] == signatures[j - k]:
                j += 1
            repeats = (j - i) // k
            if repeats >= min_repeats and (best is None or repeats * k > best[0] * best[1]):
                best = (k, repeats)
        if best is None:
            i += 1
            continue
        found.append((i, *best))
        i += best[0] * best[1]
    return found


@given(st.text(alphabet="AABBC", max_size=60), st.integers(2, 5), st.integers(2, 8))
def test_find_groups_matches_the_window_by_window_definition(
    signatures: str, repeats: int, period: int
) -> None:
    assert find_groups(signatures, repeats, period) == _find_groups_by_windows(signatures, repeats, period)


def test_cache_get_select_cache_set_per_item_is_one_group() -> None:
    activity = cache_aside(6)
    [finding] = detect(activity, SETTINGS)
    fix = (
        "cache.get_many(keys); Patient.objects.in_bulk(ids)  # or .filter(pk__in=ids); "
        "cache.set_many({...}, timeout=...)"
    )
    assert finding == Finding(
        kind="repeated_group",
        fingerprint=finding.fingerprint,
        repetitions=6,
        duration_ms=9.0,
        statement=activity.db_calls[0].statement,
        model="hms.Patient",
        key_pattern="patient:{id}:summary",
        location=VIEW,
        fix=fix,
        hint=(
            "GET patients/cached/lookup/: 3 calls repeated together per item (cache.get patient:{id}:summary "
            "-> Patient.objects.get() -> cache.set patient:{id}:summary) 6x (9.0 ms) at hms/views.py:40 in "
            f"cached_lookup — batch each step over all items: {fix}"
        ),
        route="patients/cached/lookup/",
        subject="cache.get patient:{id}:summary + Patient.objects.get() + cache.set patient:{id}:summary",
        members=("cache.get patient:{id}:summary", "Patient.objects.get()", "cache.set patient:{id}:summary"),
        covers=("key_pattern:patient:{id}:summary", "statement:" + activity.db_calls[0].statement),
        cover_fixes=(
            ("key_pattern:patient:{id}:summary", "cache.get_many(keys)"),
            (
                "statement:" + activity.db_calls[0].statement,
                "Patient.objects.in_bulk(ids)  # or .filter(pk__in=ids)",
            ),
            ("key_pattern:patient:{id}:summary", "cache.set_many({...}, timeout=...)"),
        ),
    )


def test_below_the_threshold_or_irregular_loops_are_not_groups() -> None:
    assert detect(cache_aside(4), SETTINGS) == []
    assert detect(cache_aside(4), dataclasses.replace(SETTINGS, repeated_group_threshold=4)) != []
    irregular = cache_aside(6)
    irregular.db_calls.pop(2)  # a hit for the third patient: the body differs
    irregular.cache_calls.pop(5)
    assert detect(irregular, SETTINGS) == []


def test_cache_only_and_lazy_only_loops_are_left_to_their_own_findings() -> None:
    cache_only = OwnerActivity(name="GET patients/cached/")
    for i in range(6):
        cache_only.cache_calls += [cache(2 * i, reads=1, misses=1), cache(2 * i + 1, "set", writes=1)]
    assert detect(cache_only, SETTINGS) == []
    lazy_only = OwnerActivity(name="GET encounters/")
    for i in range(6):
        for j, relation in enumerate(("hms.Encounter.patient", "hms.Encounter.facility")):
            orm = OrmContext(
                "hms.Encounter", a.FORWARD, relation, True, relation.rpartition(".")[2], "hms.Encounter"
            )
            lazy_only.db_calls.append(sql(2 * i + j, orm=orm))
    assert detect(lazy_only, SETTINGS) == []


def test_two_raw_statements_per_item_are_a_group() -> None:
    activity = OwnerActivity(name="GET reports/")
    raw = OrmContext(model="", kind="raw", location=VIEW)
    for i in range(5):
        activity.db_calls += [sql(2 * i, PATIENT, raw), sql(2 * i + 1, NOTES, raw)]
    [finding] = detect(activity, SETTINGS)
    assert finding.members == ("SELECT on hms_patient", "SELECT on hms_note")
    assert finding.fix == (
        "one query for all values: SELECT ... FROM hms_patient WHERE id = ANY(%s); "
        "one query for all values: SELECT ... FROM hms_note WHERE object_id = ANY(%s)"
    )


def test_sql_run_inside_a_cache_call_is_not_a_step() -> None:
    activity = cache_aside(6)
    for call in activity.cache_calls:  # DatabaseCache: its own SELECT inside each cache call
        inner = sql(0, "SELECT cache_key FROM cache_table WHERE cache_key = %s")
        inner.start_ns = call.start_ns + 1
        activity.db_calls.append(inner)
    [finding] = detect(activity, SETTINGS)
    assert len(finding.members) == 3


def test_a_group_takes_in_its_members_findings_and_keeps_what_they_said() -> None:
    activity = cache_aside(6)
    findings = [f for detector in registry.DETECTORS for f in detector(activity, SETTINGS)]
    assert sorted(f.kind for f in findings) == ["cache_n_plus_one", "n_plus_one", "repeated_group"]
    [group] = registry.consolidate(findings)
    [query] = [f for f in findings if f.kind == "n_plus_one"]
    assert group.kind == "repeated_group"
    assert group.includes == ("cache_n_plus_one", "n_plus_one")  # pytest --hms-otel fails on it
    # the query's step: the N+1's own (checked) fix or its reason, not the generic batch text
    assert group.fix == "cache.get_many(keys); cache.set_many({...}, timeout=...)"
    assert group.hint.endswith(
        "— batch each step over all items: cache.get_many(keys); fetch the Patient rows in one query"
        " before the loop; cache.set_many({...}, timeout=...)"
    )
    assert query.hint.endswith("— fetch the Patient rows in one query before the loop")
    unrelated = [f for f in findings if f.kind != "repeated_group"]
    assert consolidate(unrelated) is unrelated  # nothing to take in: untouched


def test_a_members_relation_fix_and_origin_become_the_groups() -> None:
    origin = CodeLocation("hms/views.py", 30, "PatientList.get_queryset")
    insurance = OrmContext(
        "hms.Patient",
        a.FORWARD,
        "hms.Patient.insurance",
        True,
        "insurance",
        "hms.Patient",
        location=VIEW,
        origin=origin,
    )
    activity = OwnerActivity(name="GET patients/", route="patients/")
    for i in range(6):  # per patient: cache.get (miss), patient.insurance, cache.set
        activity.cache_calls.append(cache(3 * i, reads=1, misses=1, key_hash=i))
        activity.db_calls.append(sql(3 * i + 1, orm=insurance))
        activity.cache_calls.append(cache(3 * i + 2, "set", writes=1, key_hash=i))
    findings = [f for detector in registry.DETECTORS for f in detector(activity, SETTINGS)]
    [query] = [f for f in findings if f.kind == "n_plus_one"]
    [group] = registry.consolidate(findings)
    assert (group.kind, group.relation, group.origin) == ("repeated_group", "hms.Patient.insurance", origin)
    assert query.fix == ".select_related('insurance')"
    assert group.fix == f"cache.get_many(keys); {query.fix}; cache.set_many({{...}}, timeout=...)"
    assert "add .select_related('insurance') to the Patient queryset at hms/views.py:30" in group.hint
    assert "n_plus_one" in group.includes


FRAGMENT = CodeLocation("clinic/_ward_summary.html", 1, "template")
WARDS = 'SELECT "clinic_site"."id" FROM "clinic_site" WHERE "clinic_site"."id" = %s'


def _included_twice() -> OwnerActivity:
    """A fragment included twice in one page, each time listing 3 wards and their site."""
    site = OrmContext(
        "clinic.Ward", a.FORWARD, "clinic.Ward.site", True, "site", "clinic.Ward", location=FRAGMENT
    )
    activity = OwnerActivity(name="GET wards/board/", route="wards/board/")
    for include in range(2):
        for ward in range(3):
            call = db_call(WARDS, 0.5, start_ns=(include * 3 + ward) * MS, orm=site)
            call.params_hash = ward  # the second include loads the same sites again
            activity.db_calls.append(call)
    return activity


def _counts_from_one_line() -> OwnerActivity:
    """A template line that evaluates a bound ``qs.count`` of each of 4 models, twice."""
    activity = OwnerActivity(name="GET home/", route="home/")
    for model in range(4):
        for _ in range(2):
            orm = OrmContext(f"app.M{model}", "count", location=FRAGMENT)
            call = db_call(
                f'SELECT COUNT(*) FROM "m{model}"', 2.0, start_ns=len(activity.db_calls) * 3 * MS, orm=orm
            )
            call.params_hash = 1
            activity.db_calls.append(call)
    return activity


def _all(activity: OwnerActivity) -> list[Finding]:
    return registry.consolidate([f for detector in registry.DETECTORS for f in detector(activity, SETTINGS)])


def test_one_cause_one_finding_a_template_included_twice_and_a_repeated_group() -> None:
    [fragment] = _all(_included_twice())
    assert (fragment.kind, fragment.relation, fragment.repetitions) == ("n_plus_one", "clinic.Ward.site", 6)
    assert fragment.location == FRAGMENT  # not also 3 duplicates of the sites loaded again
    [counts] = _all(_counts_from_one_line())
    assert (counts.kind, counts.repetitions, counts.location) == ("duplicate_query", 8, FRAGMENT)
    assert len(counts.members) == 4
    [group] = _all(cache_aside(6))
    assert group.kind == "repeated_group" and "n_plus_one" in group.includes


def test_one_cause_one_finding_negatives() -> None:
    # the counts from two template lines (two causes) stay two findings
    activity = _counts_from_one_line()
    for call in activity.db_calls[4:]:
        assert call.orm is not None
        call.orm = dataclasses.replace(call.orm, location=CodeLocation("clinic/other.html", 9, "template"))
    assert sorted(f.location.file for f in _all(activity) if f.location) == [
        "clinic/_ward_summary.html",
        "clinic/other.html",
    ]
    # a query per item without the cache steps is the N+1 alone, no group
    lone = cache_aside(6)
    lone.cache_calls.clear()
    assert [f.kind for f in _all(lone)] == ["n_plus_one"]


def test_registered() -> None:
    assert repeated_groups.detect in registry.DETECTORS


def test_one_loop_seen_from_two_phases_is_one_group() -> None:
    """``cache.get -> SELECT`` per item, then (after an item that differed) ``SELECT ->
    cache.get``: the same loop body, rotated (Baby Buddy's feeding list, docs/accuracy.md B5)."""
    activity = OwnerActivity(name="GET feedings/", route="feedings/")
    raw = OrmContext(model="", kind="raw", location=VIEW)
    at = 0
    for _ in range(6):
        activity.cache_calls.append(cache(at, reads=1, hits=1))
        activity.db_calls.append(sql(at + 1, NOTES, raw))
        at += 2
    activity.db_calls.append(sql(at, PATIENT, raw))  # an item that differed
    at += 1
    for _ in range(6):
        activity.db_calls.append(sql(at, NOTES, raw))
        activity.cache_calls.append(cache(at + 1, reads=1, hits=1))
        at += 2
    [group] = detect(activity, SETTINGS)
    assert group.repetitions == 12
    assert group.members == ("cache.get patient:{id}:summary", "SELECT on hms_note")


def test_one_loop_from_two_phases_in_two_requests_has_one_fingerprint() -> None:
    def request(cache_first: bool) -> Finding:
        activity = OwnerActivity(name="GET feedings/", route="feedings/")
        raw = OrmContext(model="", kind="raw", location=CodeLocation("core/list.html", 1, "template"))
        for i in range(6):
            get = cache(4 * i + (0 if cache_first else 1), reads=1, hits=1)
            get.location = CodeLocation("core/templatetags/misc.py", 38, "feeding_time_diff_base")
            activity.cache_calls.append(get)
            activity.db_calls.append(sql(4 * i + (1 if cache_first else 0), NOTES, raw))
        [group] = detect(activity, SETTINGS)
        return group

    one, two = request(True), request(False)
    assert one.members != two.members  # seen from two phases
    assert one.fingerprint == two.fingerprint  # one cause: one report row


def test_a_cache_read_of_one_key_per_item_is_read_once_not_batched() -> None:
    """A setting read through the cache for every row (django-dbsettings, docs/accuracy.md A4):
    the same key each time, so the step's fix is to read it once, not get_many."""
    activity = OwnerActivity(name="GET feedings/", route="feedings/")
    raw = OrmContext(model="", kind="raw", location=VIEW)
    for i in range(6):
        activity.cache_calls.append(cache(2 * i, reads=1, hits=1, key_hash=42))
        activity.db_calls.append(sql(2 * i + 1, NOTES, raw))
    [group] = detect(activity, SETTINGS)
    once = "read patient:{id}:summary once before the loop (the same key for every item)"
    assert group.fix.startswith(once + "; ")
    varying = cache_aside(6)  # one key per patient: batched
    [other] = detect(varying, SETTINGS)
    assert other.fix.startswith("cache.get_many(keys); ")
