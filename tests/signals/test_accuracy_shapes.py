"""The code shapes behind the wrong hints of docs/accuracy.md ("Code shapes behind the wrong
hints"), as detector fixtures: each shape's records in, the exact findings out, and for each
positive a negative that differs in the one thing the shape is about.

The records are what the ORM instrumentation leaves for that code (``tests/instrument/`` and
``tests/integration/`` check that it does, on real Django); here the detectors alone decide.
Shape 16 (management commands) is issue 16's. Shape 6's location (the line that read the
descriptor, not its ``__get__``) is the instrumentation's: tests/instrument/test_django_orm.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from hms_otel_agent import config
from hms_otel_agent.signals import cache_signals, fixes, n_plus_one
from hms_otel_agent.signals import records as a
from hms_otel_agent.signals.records import (
    CacheCall,
    CodeLocation,
    DbCall,
    Finding,
    FixFacts,
    OrmContext,
    OwnerActivity,
    Step,
)

SETTINGS = config.load({}).settings
MS = 1_000_000
VIEWS = "app/views.py"
TEMPLATE = "app/list.html"


@pytest.fixture(autouse=True)
def django_5(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Offline-style: no fix checker; GenericPrefetch available (Django 5.0+)."""
    monkeypatch.setattr(fixes, "features", frozenset((fixes.FEATURE_GENERIC_PREFETCH,)))
    monkeypatch.setattr(fixes, "checker", None)
    cache_signals.reset_evidence()
    yield
    cache_signals.reset_evidence()


def loc(file: str, line: int, function: str = "") -> CodeLocation:
    return CodeLocation(file, line, function)


def lazy(
    model: str,
    name: str,
    kind: str,
    route: tuple[Step, ...],
    root: str,
    *,
    location: CodeLocation | None = None,
    origin: CodeLocation | None = None,
    **facts: Any,
) -> OrmContext:
    path = "__".join(s.name for s in route)
    return OrmContext(
        model,
        kind,
        f"{model}.{name}",
        True,
        path,
        root,
        location=location,
        origin=origin,
        facts=FixFacts(route=route, **facts),
    )


def calls(
    orm: OrmContext | None,
    n: int,
    *,
    fingerprint: str = "f" * 16,
    statement: str = 'SELECT "t"."id" FROM "t" WHERE "t"."id" = ?',
    params: Any = "varying",
    texts: Any = "same",
    start: int = 0,
    duration: int = MS,
) -> list[DbCall]:
    """`n` executions; `params` / `texts` "varying" (one per execution) or "same"."""
    return [
        DbCall(
            fingerprint=fingerprint,
            statement=statement,
            start_ns=start + i * 2 * duration,
            duration_ns=duration,
            table="t",
            params_hash=i if params == "varying" else 1,
            text_hash=i if texts == "varying" else 7,
            orm=orm,
        )
        for i in range(n)
    ]


def owner(db: list[DbCall], cache: list[CacheCall] | None = None, route: str = "items/") -> OwnerActivity:
    return OwnerActivity(name=f"GET {route}", route=route, db_calls=db, cache_calls=cache or [])


def detect(activity: OwnerActivity, **settings: Any) -> list[Finding]:
    return n_plus_one.detect(activity, dataclasses.replace(SETTINGS, **settings))


def only(findings: list[Finding], kind: str = n_plus_one.N_PLUS_ONE) -> list[Finding]:
    return [f for f in findings if f.kind == kind]


# -- 1. select_related across a reverse FK and a GenericForeignKey (NetBox N1) -------------------

CABLES = loc("dcim/api/views.py", 577, "CableViewSet")
TERMINATIONS = Step("terminations", a.REVERSE_FK, "dcim.CableTermination", "cable")


def test_1_a_path_through_a_reverse_fk_and_a_gfk_is_a_prefetch_never_select_related() -> None:
    route = (
        TERMINATIONS,
        Step("termination", a.GENERIC_FK, "dcim.Interface"),
        Step("device", a.FORWARD, "dcim.Device"),
    )
    orm = lazy("dcim.Interface", "device", a.FORWARD, route, "dcim.Cable", origin=CABLES)
    [finding] = only(detect(owner(calls(orm, 8))))
    assert finding.fix == (
        ".prefetch_related(GenericPrefetch('terminations__termination', "
        "[Interface.objects.select_related('device')]))"
    )
    assert finding.fix_kind == fixes.GENERIC_PREFETCH
    assert "select_related('terminations" not in finding.fix
    assert finding.origin == CABLES
    assert finding.hint.endswith(
        " — add " + finding.fix + " to the Cable queryset at dcim/api/views.py:577 in CableViewSet"
    )


def test_1_negative_forward_steps_only_are_one_select_related() -> None:
    route = (
        Step("termination_a", a.FORWARD, "dcim.CableTermination"),
        Step("device", a.FORWARD, "dcim.Device"),
    )
    orm = lazy("dcim.CableTermination", "device", a.FORWARD, route, "dcim.Cable", origin=CABLES)
    [finding] = only(detect(owner(calls(orm, 8))))
    assert (finding.fix, finding.fix_kind) == (
        ".select_related('termination_a__device')",
        fixes.SELECT_RELATED,
    )


# -- 2. select_related through a GenericForeignKey at the root (NetBox N3) ------------------------


def test_2_a_gfk_at_the_root_is_a_generic_prefetch_with_the_rest_inside() -> None:
    route = (Step("object", a.GENERIC_FK, "dcim.Device"), Step("rack", a.FORWARD, "dcim.Rack"))
    orm = lazy("dcim.Device", "rack", a.FORWARD, route, "extras.CachedValue")
    [finding] = only(detect(owner(calls(orm, 6))))
    assert (
        finding.fix == ".prefetch_related(GenericPrefetch('object', [Device.objects.select_related('rack')]))"
    )


def test_2_negative_before_generic_prefetch_nothing_is_offered_past_a_gfk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django 4.2: the objects' types behind a GenericForeignKey are known only at run time, so a
    path past it cannot be proven by the fix check; no fix rather than an unproven one."""
    monkeypatch.setattr(fixes, "features", frozenset())  # Django 4.2
    route = (Step("object", a.GENERIC_FK, "dcim.Device"), Step("rack", a.FORWARD, "dcim.Rack"))
    orm = lazy("dcim.Device", "rack", a.FORWARD, route, "extras.CachedValue")
    [finding] = only(detect(owner(calls(orm, 6))))
    assert finding.fix == ""
    assert "no fix shown" in finding.hint


# -- 3. two paths to one relation, one shared __str__ (NetBox N2) --------------------------------

CIRCUITS = loc("circuits/api/views.py", 44, "CircuitViewSet")
STR = loc("circuits/models/circuits.py", 365, "CircuitTermination.__str__")


def _termination(end: str) -> OrmContext:
    route = (
        Step(end, a.FORWARD, "circuits.CircuitTermination"),
        Step("circuit", a.FORWARD, "circuits.Circuit"),
    )
    return lazy(
        "circuits.CircuitTermination",
        "circuit",
        a.FORWARD,
        route,
        "circuits.Circuit",
        location=STR,
        origin=CIRCUITS,
    )


def test_3_two_paths_are_two_findings_each_with_the_fix_of_both() -> None:
    db = calls(_termination("termination_a"), 6, params="varying") + calls(
        _termination("termination_z"), 6, start=100 * MS
    )
    found = only(detect(owner(db)))
    assert len(found) == 2
    assert len({f.fingerprint for f in found}) == 2
    for finding in found:
        assert finding.fix == ".select_related('termination_a__circuit', 'termination_z__circuit')"
        assert finding.location == STR and finding.origin == CIRCUITS


def test_3_negative_the_same_relation_from_another_queryset_is_another_cause() -> None:
    """NetBox N1's cables reach CircuitTermination.circuit through the same __str__: another
    origin (another place to fix) is another finding, never N2's row."""
    cables = dataclasses.replace(_termination("termination_a"), origin=CABLES)
    one = only(detect(owner(calls(_termination("termination_a"), 6))))[0]
    other = only(detect(owner(calls(cables, 6))))[0]
    assert one.fingerprint != other.fingerprint
    same = only(detect(owner(calls(_termination("termination_a"), 9), route="circuits/other/")))[0]
    assert same.fingerprint == one.fingerprint  # another page, the same cause: one row


# -- 4. in_bulk for natural keys (NetBox N9) ------------------------------------------------------


def _get(unique: str, lookups: tuple[str, ...]) -> OrmContext:
    return OrmContext(
        "core.ObjectType",
        a.GET,
        location=loc("extras/dashboard/widgets.py", 87, "get_models_from_content_types"),
        facts=FixFacts(lookups=lookups, unique_field=unique),
    )


def test_4_get_by_a_non_unique_key_is_one_query_building_a_dict() -> None:
    [finding] = only(detect(owner(calls(_get("", ("app_label", "model")), 6))))
    assert finding.fix_kind == fixes.DICT_QUERY
    assert "in_bulk" not in finding.fix
    assert finding.fix.startswith("{(o.app_label, o.model): o for o in ObjectType.objects.filter(")


def test_4_negative_get_by_a_unique_field_is_in_bulk_on_it() -> None:
    [finding] = only(detect(owner(calls(_get("slug", ("slug",)), 6))))
    assert (finding.fix, finding.fix_kind) == (
        "ObjectType.objects.in_bulk(values, field_name='slug')",
        fixes.IN_BULK,
    )


# -- 5. a joined table's column offered as a lookup (Baby Buddy B2: django-taggit) ---------------

TAGS = Step("tags", a.MANY_TO_MANY, "core.Tag")


def test_5_a_taggit_manager_is_a_many_to_many_prefetch() -> None:
    orm = lazy("core.Feeding", "tags", a.MANY_TO_MANY, (TAGS,), "core.Feeding")
    statement = (
        'SELECT "core_tag"."id" FROM "core_tag" INNER JOIN "core_tagged" ON ... '
        'WHERE ("django_content_type"."app_label" = ? AND "core_tagged"."object_id" = ?)'
    )
    [finding] = only(detect(owner(calls(orm, 25, statement=statement))))
    assert (finding.fix, finding.relation) == (".prefetch_related('tags')", "core.Feeding.tags")
    assert "app_label__in" not in finding.hint


def test_5_negative_without_the_orm_the_batch_fix_names_the_table_not_a_model_lookup() -> None:
    [finding] = only(detect(owner(calls(None, 25))))
    assert finding.fix == "one query for all values: SELECT ... FROM t WHERE id = ANY(%s)"


# -- 6. a custom field's descriptor runs get() per object (NetBox N6) -----------------------------


def test_6_a_get_run_by_a_descriptor_offers_no_in_bulk() -> None:
    orm = OrmContext(
        "dcim.Interface",
        a.GET,
        location=loc("dcim/tables/template_code.py", 40, "CablePathColumn.render"),
        facts=FixFacts(lookups=("pk",), unique_field="pk", descriptor="GenericArrayForeignKey.__get__"),
    )
    [finding] = only(detect(owner(calls(orm, 12))))
    assert (finding.fix, finding.fix_kind) == ("", "")
    assert finding.hint.endswith(
        "at dcim/tables/template_code.py:40 in CablePathColumn.render — no fix shown:"
        " GenericArrayForeignKey.__get__ loads one Interface per object; prefetch them on the list's"
        " queryset if the field supports prefetching"
    )


def test_6_negative_the_same_get_in_the_users_loop_is_in_bulk() -> None:
    orm = OrmContext("dcim.Interface", a.GET, facts=FixFacts(lookups=("pk",), unique_field="pk"))
    [finding] = only(detect(owner(calls(orm, 12))))
    assert (finding.fix, finding.fix_kind) == ("Interface.objects.in_bulk(ids)", fixes.IN_BULK)


# -- 7. a filtered related manager read in a model method (NetBox N4) -----------------------------

RACK_METHOD = loc("dcim/models/racks.py", 573, "Rack.get_available_units")
RACK_VIEW = loc("dcim/views.py", 1042, "RackListView")
DEVICES = Step("devices", a.REVERSE_FK, "dcim.Device", "rack")


def test_7_a_filtered_manager_in_a_model_method_names_both_places() -> None:
    orm = dataclasses.replace(
        lazy(
            "dcim.Rack",
            "devices",
            a.REVERSE_FK,
            (DEVICES,),
            "dcim.Rack",
            location=RACK_METHOD,
            origin=RACK_VIEW,
            filters=("position__gte",),
        ),
        filtered=True,
    )
    [finding] = only(detect(owner(calls(orm, 10))))
    assert finding.fix_kind == fixes.PREFETCH_QUERYSET
    prefetch = (
        ".prefetch_related(Prefetch('devices', queryset=Device.objects.filter(position__gte=...),"
        " to_attr='prefetched_devices'))"
    )
    change = "read .prefetched_devices (a list) instead of .devices.filter(...)"
    assert finding.fix == f"{prefetch}, and {change}"
    # the Prefetch goes on the list's queryset, the change in the method that reads the manager
    assert finding.hint.endswith(
        f"— add {prefetch} to the Rack queryset at {RACK_VIEW}, and {change} at {RACK_METHOD}"
    )


def test_7_negative_an_unfiltered_manager_needs_no_code_change() -> None:
    orm = lazy(
        "dcim.Rack", "devices", a.REVERSE_FK, (DEVICES,), "dcim.Rack", location=RACK_METHOD, origin=RACK_VIEW
    )
    [finding] = only(detect(owner(calls(orm, 10))))
    assert finding.fix == ".prefetch_related('devices')"
    assert finding.hint.endswith(f"— add .prefetch_related('devices') to the Rack queryset at {RACK_VIEW}")


# -- 8. a bound method in a template context: trivial duplicates (NetBox N10) ---------------------


def _counts(n_models: int, duration: int) -> list[DbCall]:
    db: list[DbCall] = []
    for m in range(n_models):
        orm = OrmContext(f"app.M{m}", "count", location=loc("app/views.py", 40, "render"))
        db += calls(
            orm,
            2,
            fingerprint=f"{m:016x}",
            statement=f'SELECT COUNT(*) FROM "m{m}"',
            params="same",
            start=m * 10 * MS,
            duration=duration,
        )
    return db


def test_8_trivial_duplicates_of_many_models_are_one_summary_finding() -> None:
    [finding] = detect(owner(_counts(20, MS // 10)))
    assert finding.kind == n_plus_one.DUPLICATE_QUERY
    assert finding.repetitions == 40
    assert finding.subject == "20 statement(s) run twice with the same parameters, each under 1 ms"
    assert len(finding.members) == n_plus_one.MAX_TRIVIAL_MEMBERS
    assert finding.fingerprint == detect(owner(_counts(3, MS // 10), route="other/"))[0].fingerprint


def test_8_negative_each_when_asked_and_when_they_cost() -> None:
    assert len(detect(owner(_counts(20, MS // 10)), trivial_duplicates=True)) == 20
    assert len(detect(owner(_counts(3, MS)))) == 3  # 2 ms each: not trivial


# -- 9. template-driven lazy loads: the template line, the view's queryset ------------------------


def test_9_a_load_triggered_by_a_template_names_the_line_and_the_queryset() -> None:
    route = (Step("tags", a.MANY_TO_MANY, "core.Tag"),)
    orm = lazy(
        "core.Feeding",
        "tags",
        a.MANY_TO_MANY,
        route,
        "core.Feeding",
        location=loc(TEMPLATE, 36, "template"),
        origin=loc(VIEWS, 12, "FeedingList.get_queryset"),
    )
    [finding] = only(detect(owner(calls(orm, 10))))
    assert finding.hint.endswith(
        "at app/list.html:36 in template — add .prefetch_related('tags') to the Feeding queryset"
        " at app/views.py:12 in FeedingList.get_queryset"
    )


def test_9_negative_without_an_origin_the_action_names_no_place() -> None:
    orm = lazy(
        "core.Feeding",
        "tags",
        a.MANY_TO_MANY,
        (TAGS,),
        "core.Feeding",
        location=loc(TEMPLATE, 36, "template"),
    )
    [finding] = only(detect(owner(calls(orm, 10))))
    assert finding.hint.endswith("— add .prefetch_related('tags') to the Feeding queryset")


# -- 10. a shared base view: one finding per subclass's queryset ----------------------------------

BASE = loc("babybuddy/views.py", 87, "BabyBuddyFilterView.get_context_data")


def test_10_the_same_shared_line_for_two_models_is_two_findings() -> None:
    feeding = lazy(
        "core.Feeding",
        "child",
        a.FORWARD,
        (Step("child", a.FORWARD, "core.Child"),),
        "core.Feeding",
        location=BASE,
    )
    sleep = lazy(
        "core.Sleep",
        "child",
        a.FORWARD,
        (Step("child", a.FORWARD, "core.Child"),),
        "core.Sleep",
        location=BASE,
    )
    one = only(detect(owner(calls(feeding, 6), route="feedings/")))[0]
    two = only(detect(owner(calls(sleep, 6), route="sleep/")))[0]
    assert one.fingerprint != two.fingerprint
    assert (one.fix, two.fix) == (".select_related('child')", ".select_related('child')")


def test_10_negative_one_model_on_two_routes_from_one_origin_is_one_cause() -> None:
    origin = loc("babybuddy/views.py", 80, "BabyBuddyFilterView.get_queryset")
    feeding = lazy(
        "core.Feeding",
        "child",
        a.FORWARD,
        (Step("child", a.FORWARD, "core.Child"),),
        "core.Feeding",
        location=BASE,
        origin=origin,
    )
    one = only(detect(owner(calls(feeding, 6), route="feedings/")))[0]
    two = only(detect(owner(calls(feeding, 6), route="feedings/old/")))[0]
    assert one.fingerprint == two.fingerprint


# -- 11. the admin's two counts (Baby Buddy B7) ---------------------------------------------------


def test_11_the_changelist_second_count_gets_the_admin_option() -> None:
    orm = OrmContext("core.Feeding", "count", facts=FixFacts(admin="FeedingAdmin"))
    [finding] = detect(
        owner(calls(orm, 2, params="same", statement='SELECT COUNT(*) AS "__count" FROM "core_feeding"'))
    )
    assert (finding.kind, finding.fix) == (
        n_plus_one.DUPLICATE_QUERY,
        "show_full_result_count = False on FeedingAdmin",
    )


def test_11_negative_a_count_twice_elsewhere_is_a_trivial_duplicate() -> None:
    orm = OrmContext("core.Feeding", "count")
    [finding] = detect(owner(calls(orm, 2, params="same", duration=MS // 10)))
    assert finding.fingerprint == n_plus_one.hints.finding_fingerprint(n_plus_one.DUPLICATE_QUERY, "trivial")


# -- 12. DatabaseCache SQL is the cache's (Baby Buddy B5) -----------------------------------------


def _cache_gets(n: int) -> list[CacheCall]:
    return [
        CacheCall("get", "dbsettings:{value}", start_ns=i * 4 * MS, duration_ns=3 * MS, reads=1, hits=1)
        for i in range(n)
    ]


def test_12_sql_inside_cache_calls_is_not_an_n_plus_one() -> None:
    db = calls(None, 6, start=MS, duration=MS // 2)  # each inside its cache.get (4 ms apart)
    for i, call in enumerate(db):
        call.start_ns = i * 4 * MS + MS
    assert detect(owner(db, _cache_gets(6))) == []


def test_12_negative_the_same_sql_outside_cache_calls_is() -> None:
    db = calls(None, 6, start=100 * MS)
    assert [f.kind for f in detect(owner(db, _cache_gets(6)))] == [n_plus_one.N_PLUS_ONE]


# -- 13. a cold ContentType cache (Baby Buddy B8) -------------------------------------------------


def test_13_content_type_lookups_are_a_per_process_cache_warming_once() -> None:
    orm = OrmContext("contenttypes.ContentType", a.GET, facts=FixFacts(lookups=("app_label", "model")))
    assert detect(owner(calls(orm, 9))) == []


def test_13_negative_other_models_get_in_a_loop_is() -> None:
    orm = OrmContext("core.Tag", a.GET, facts=FixFacts(lookups=("name",)))
    assert [f.kind for f in detect(owner(calls(orm, 9)))] == [n_plus_one.N_PLUS_ONE]


# -- 14. the model named in a duplicate (NetBox N11) ----------------------------------------------


def test_14_a_related_managers_duplicate_is_named_by_its_relation() -> None:
    orm = OrmContext("users.User", a.RELATED_EXISTS, "users.User.notifications", True)
    [finding] = detect(owner(calls(orm, 2, params="same", duration=2 * MS)))
    assert "the same User.notifications query with the same parameters run 2x" in finding.hint


def test_14_negative_a_plain_duplicate_is_named_by_its_model() -> None:
    orm = OrmContext("users.User", "get")
    [finding] = detect(owner(calls(orm, 2, params="same", duration=2 * MS)))
    assert "the same User query with the same parameters run 2x" in finding.hint


# -- misclassified (issue 15): duplicates vs N+1, LIMIT/OFFSET slices ----------------------------

PAGE = 'SELECT "v"."id" FROM "v" ORDER BY "v"."id" ASC LIMIT ? OFFSET ?'


def test_the_same_get_with_the_same_parameters_is_a_duplicate_not_an_n_plus_one() -> None:
    orm = OrmContext(
        "clinic.Site",
        a.GET,
        location=loc(VIEWS, 221, "_home_site"),
        facts=FixFacts(lookups=("code",), unique_field="code"),
    )
    [finding] = detect(owner(calls(orm, 6, params="same", duration=2 * MS)))
    assert (finding.kind, finding.repetitions) == (n_plus_one.DUPLICATE_QUERY, 6)
    assert "in_bulk" not in finding.fix


def test_negative_varying_parameters_are_an_n_plus_one_and_not_also_a_duplicate() -> None:
    orm = OrmContext("clinic.Site", a.GET, facts=FixFacts(lookups=("code",), unique_field="code"))
    db = calls(orm, 3) + calls(orm, 3, start=50 * MS)  # 3 values, each twice
    assert [f.kind for f in detect(owner(db))] == [n_plus_one.N_PLUS_ONE]


def test_limit_offset_slices_of_one_list_are_neither() -> None:
    orm = OrmContext("clinic.Visit", "query")
    assert detect(owner(calls(orm, 6, statement=PAGE, params="same", texts="varying"))) == []


def test_negative_a_limit_per_item_with_varying_parameters_is_an_n_plus_one() -> None:
    orm = OrmContext("clinic.Visit", "query")
    statement = 'SELECT "v"."id" FROM "v" WHERE "v"."patient_id" = ? LIMIT ?'
    assert [f.kind for f in detect(owner(calls(orm, 6, statement=statement)))] == [n_plus_one.N_PLUS_ONE]


# -- 15. cache keys filled elsewhere (NetBox N13) -------------------------------------------------


def _feed_request() -> OwnerActivity:
    miss = CacheCall(
        "get", "feed:{token}", start_ns=0, duration_ns=MS, reads=1, misses=1, key_hash=1, django_api=True
    )
    return owner(calls(None, 1, start=2 * MS), [miss], route="home/")


def test_15_a_key_a_job_fills_is_never_a_miss_without_fill() -> None:
    job = OwnerActivity(
        name="job",
        cache_calls=[
            CacheCall(
                "set",
                "feed:{token}",
                start_ns=0,
                duration_ns=MS,
                writes=1,
                ttl_s=60.0,
                key_hash=2,
                django_api=True,
            )
        ],
    )
    cache_signals.detect(job, SETTINGS)
    for _ in range(SETTINGS.cache_miss_min_requests + 1):
        assert cache_signals.detect(_feed_request(), SETTINGS) == []


def test_15_negative_a_key_never_written_is_one_after_enough_requests() -> None:
    found = [cache_signals.detect(_feed_request(), SETTINGS) for _ in range(SETTINGS.cache_miss_min_requests)]
    assert found[:-1] == [[]] * (SETTINGS.cache_miss_min_requests - 1)
    assert [f.kind for f in found[-1]] == [cache_signals.CACHE_MISS_WITHOUT_FILL]
