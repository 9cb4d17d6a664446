"""The attribute vocabulary both ways: what the live agent writes is what the report reads back."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from hms_otel_agent.signals.records import CodeLocation, Finding, PlanSummary
from hms_otel_agent.signals.vocabulary import (
    finding_attributes,
    finding_event,
    finding_of,
    location_of,
    plan_attributes,
    plan_of,
)

# Finding fields that never become attributes: the route is the owner span's http.route, and
# `covers` stays in the process (registry.consolidate).
NOT_EXPORTED = {"route", "covers", "cover_fixes"}

texts = st.text(min_size=1, max_size=20)
locations = st.builds(CodeLocation, texts, st.integers(0, 10**6), texts)


def _full_finding() -> Finding:
    """A value in every field, none equal to its default."""
    return Finding(
        kind="n_plus_one",
        fingerprint="abc123",
        repetitions=7,
        duration_ms=12.345,
        statement='SELECT "a" FROM "b" WHERE "id" = ?',
        model="hms.Encounter",
        relation="hms.Encounter.patient",
        relation_kind="forward",
        key_pattern="patient:{id}",
        location=CodeLocation("hms/views.py", 42, "encounter_list"),
        fix='Encounter.objects.select_related("patient")',
        hint="7 queries for hms.Encounter.patient",
        route="/encounters/",
        subject="encounters",
        rows=1000,
        table="hms_encounter",
        columns=("a", "b"),
        members=("statement:SELECT 1", "relation:hms.Encounter.patient"),
        fix_kind="select_related",
        origin=CodeLocation("hms/views.py", 40, "encounter_list"),
        includes=("n_plus_one",),
        covers=("statement:SELECT 1",),
        cover_fixes=(("statement:SELECT 1", "one query"),),
    )


def test_every_finding_field_round_trips() -> None:
    finding = _full_finding()
    defaults = Finding(kind="k", fingerprint="", repetitions=0, duration_ms=0.0)
    for f in dataclasses.fields(Finding):
        assert getattr(finding, f.name) != getattr(defaults, f.name), f"{f.name} left at its default"
    back = finding_of(finding_attributes(finding), route=finding.route)
    assert back == dataclasses.replace(finding, covers=(), cover_fixes=())
    exported = {f.name for f in dataclasses.fields(Finding)} - NOT_EXPORTED
    for name in exported:  # each field on its own: none is read from another's attribute
        only = dataclasses.replace(defaults, **{name: getattr(finding, name)})
        assert finding_of(finding_attributes(only)) == only, name


@given(
    kind=texts,
    fingerprint=st.text(max_size=20),
    repetitions=st.integers(0, 10**6),
    duration_ms=st.integers(0, 10**9).map(lambda n: n / 1000),
    text=st.text(max_size=30),
    location=st.none() | locations,
    rows=st.integers(0, 10**9),
    columns=st.lists(texts, max_size=4).map(tuple),
)
def test_round_trip_of_any_finding(
    kind: str,
    fingerprint: str,
    repetitions: int,
    duration_ms: float,
    text: str,
    location: CodeLocation | None,
    rows: int,
    columns: tuple[str, ...],
) -> None:
    finding = Finding(
        kind=kind,
        fingerprint=fingerprint,
        repetitions=repetitions,
        duration_ms=duration_ms,
        statement=text,
        model=text,
        relation=text,
        relation_kind=text,
        key_pattern=text,
        location=location,
        fix=text,
        fix_kind=text,
        hint=text,
        subject=text,
        rows=rows,
        table=text,
        columns=columns,
        members=columns,
    )
    assert finding_of(finding_attributes(finding)) == finding


def test_attributes_without_a_kind_are_no_finding() -> None:
    assert finding_of({"hms.finding.fingerprint": "x"}) is None
    assert finding_of({"hms.finding.kind": ""}) is None
    assert finding_of({"hms.finding.kind": 3}) is None


def test_event_names() -> None:
    assert finding_event("n_plus_one") == "hms.n_plus_one"
    assert finding_event("wide_result") == finding_event("unbounded_result") == "hms.result_set"
    assert finding_event("cache_n_plus_one") == "hms.cache"
    assert finding_event("something_new") == "hms.finding"


def test_plan_round_trips() -> None:
    plan = PlanSummary("fp", 1234.5, 12, ("Seq Scan on t",), "t", ("a", "b"))
    assert plan_of(plan_attributes(plan)) == plan
    bare = PlanSummary("fp", 1.0, 1, ())
    assert plan_of(plan_attributes(bare)) == bare
    assert plan_of({"hms.explain.total_cost": 1.0}) is None


def test_location_reads_both_generations_of_code_attributes() -> None:
    old = {"code.filepath": "a.py", "code.lineno": "7", "code.function": "f"}
    assert location_of(old) == CodeLocation("a.py", 7, "f")
    assert location_of({"code.file.path": "a.py", "code.line.number": "x"}) == CodeLocation("a.py", 0, "")
    assert location_of({}) is None
