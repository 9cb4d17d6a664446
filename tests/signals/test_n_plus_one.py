"""The N+1 and duplicate-query detector on plain records: exact findings, a negative for each positive."""

from __future__ import annotations

import dataclasses

import pytest
from harness.records import db_call
from harness.records import owner as build_owner

from hms_otel_agent import config
from hms_otel_agent.signals import records as a
from hms_otel_agent.signals.n_plus_one import detect
from hms_otel_agent.signals.records import CodeLocation, DbCall, OrmContext, OwnerActivity

SETTINGS = config.load({}).settings
VIEWS = CodeLocation("hms/views.py", 87, "encounter_list")
PATIENT_SQL = (
    'SELECT "hms_patient"."id", "hms_patient"."mrn" FROM "hms_patient" WHERE "hms_patient"."id" = %s LIMIT 21'
)
FACILITY_SQL = 'SELECT "hms_facility"."id" FROM "hms_facility" WHERE "hms_facility"."id" = %s LIMIT 21'
INSURANCE_SQL = 'SELECT "hms_insurance"."id" FROM "hms_insurance" WHERE "hms_insurance"."id" = %s LIMIT 21'
LIST_SQL = 'SELECT "hms_encounter"."id" FROM "hms_encounter" LIMIT 50'


def call(
    sql: str, orm: OrmContext | None = None, ms: float = 1.0, params: int | None = None, at: int = 0
) -> DbCall:
    return db_call(sql, ms, start_ns=at, orm=orm, params_hash=params)


def lazy(
    relation: str, kind: str = a.FORWARD, path: str = "", root: str = "hms.Encounter", **kw: object
) -> OrmContext:
    model = relation.rpartition(".")[0]
    return OrmContext(
        model=model,
        kind=kind,
        relation=relation,
        lazy=True,
        path=path or relation.rpartition(".")[2],
        root_model=root,
        location=kw.pop("location", VIEWS),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def owner(*calls: DbCall) -> OwnerActivity:
    return build_owner("encounters/", calls, db_count=True)


def test_forward_fk_loaded_in_a_loop() -> None:
    calls = [call(LIST_SQL)] + [
        call(PATIENT_SQL, lazy("hms.Encounter.patient"), ms=0.76, params=i) for i in range(50)
    ]
    [finding] = detect(owner(*calls), SETTINGS)
    assert finding.kind == "n_plus_one"
    assert finding.repetitions == 50
    assert finding.relation == "hms.Encounter.patient" and finding.relation_kind == "forward"
    assert finding.fix == ".select_related('patient')"
    assert finding.location == VIEWS
    assert finding.hint == (
        "GET encounters/: Encounter.patient loaded lazily 50x (38.0 ms) at hms/views.py:87 in encounter_list"
        " — add .select_related('patient') to the Encounter queryset"
    )
    assert "%s" not in finding.statement and "?" in finding.statement


def test_fewer_than_the_threshold_is_no_finding() -> None:
    calls = [call(PATIENT_SQL, lazy("hms.Encounter.patient"), params=i) for i in range(4)]
    assert detect(owner(*calls), SETTINGS) == []
    lowered = dataclasses.replace(SETTINGS, n_plus_one_threshold=2)
    assert len(detect(owner(*calls), lowered)) == 1


def test_minimum_total_duration() -> None:
    calls = [call(PATIENT_SQL, lazy("hms.Encounter.patient"), ms=0.1, params=i) for i in range(10)]
    assert detect(owner(*calls), dataclasses.replace(SETTINGS, n_plus_one_min_duration_ms=5)) == []
    assert len(detect(owner(*calls), dataclasses.replace(SETTINGS, n_plus_one_min_duration_ms=0.5))) == 1


def test_interleaved_relations_are_two_findings() -> None:
    calls: list[DbCall] = [call(LIST_SQL)]
    for i in range(10):
        calls.append(call(PATIENT_SQL, lazy("hms.Encounter.patient"), params=i))
        calls.append(call(FACILITY_SQL, lazy("hms.Encounter.facility"), ms=2, params=i))
    findings = detect(owner(*calls), SETTINGS)
    assert [(f.relation, f.repetitions) for f in findings] == [
        ("hms.Encounter.facility", 10),  # worst first: 20 ms
        ("hms.Encounter.patient", 10),
    ]


def test_nested_path_gives_the_double_underscore_path() -> None:
    insurance = lazy("hms.Patient.insurance", path="patient__insurance", root="hms.Encounter")
    calls = [call(INSURANCE_SQL, insurance, params=i) for i in range(6)]
    [finding] = detect(owner(*calls), SETTINGS)
    assert finding.fix == ".select_related('patient__insurance')"
    assert finding.hint.endswith("add .select_related('patient__insurance') to the Encounter queryset")
    assert finding.hint.startswith("GET encounters/: Patient.insurance loaded lazily 6x")


def test_same_sql_behind_two_relations_is_two_findings() -> None:
    calls = [call(PATIENT_SQL, lazy("hms.Encounter.patient"), params=i) for i in range(5)]
    calls += [
        call(PATIENT_SQL, lazy("hms.Appointment.patient", root="hms.Appointment"), params=i) for i in range(5)
    ]
    findings = detect(owner(*calls), SETTINGS)
    assert sorted(f.relation for f in findings) == ["hms.Appointment.patient", "hms.Encounter.patient"]


def test_generic_foreign_key_over_several_tables_is_one_finding() -> None:
    subject = lazy("hms.Note.subject", kind=a.GENERIC_FK, root="hms.Note")
    calls = [call(PATIENT_SQL, subject, params=i) for i in range(3)]
    calls += [call(FACILITY_SQL, subject, params=i) for i in range(3)]
    [finding] = detect(owner(*calls), SETTINGS)
    assert finding.relation == "hms.Note.subject" and finding.repetitions == 6


@pytest.mark.parametrize(
    ("kind", "relation", "filtered", "fix"),
    [
        (a.REVERSE_ONE_TO_ONE, "hms.Patient.medical_record", False, ".select_related('medical_record')"),
        (a.REVERSE_FK, "hms.Patient.emergency_contacts", False, ".prefetch_related('emergency_contacts')"),
        (
            a.REVERSE_FK,
            "hms.Practitioner.appointments",
            True,
            ".prefetch_related(Prefetch('appointments', queryset=<the filtered queryset>, "
            "to_attr='appointments_list'))",
        ),
        (a.MANY_TO_MANY, "hms.Practitioner.departments", False, ".prefetch_related('departments')"),
        (a.GENERIC_RELATION, "hms.Patient.notes", False, ".prefetch_related('notes')"),
        (
            a.GENERIC_FK,
            "hms.Note.subject",
            False,
            ".prefetch_related('subject')  # or GenericPrefetch('subject', [...]) per type",
        ),
        (
            a.DEFERRED,
            "hms.Patient.date_of_birth",
            False,
            "add 'date_of_birth' to .only(...) or drop it from .defer(...)",
        ),
        (
            a.RELATED_COUNT,
            "hms.Facility.encounters",
            False,
            ".annotate(encounters_count=Count('encounters'))",
        ),
    ],
)
def test_fix_per_relation_kind(kind: str, relation: str, filtered: bool, fix: str) -> None:
    orm = lazy(relation, kind=kind, root=relation.rpartition(".")[0], filtered=filtered)
    calls = [call(PATIENT_SQL, orm, params=i) for i in range(5)]
    [finding] = detect(owner(*calls), SETTINGS)
    assert finding.fix == fix
    assert finding.relation_kind == kind


def test_get_in_a_loop() -> None:
    orm = OrmContext(model="hms.Patient", kind=a.GET, location=VIEWS)
    calls = [call(PATIENT_SQL, orm, params=i) for i in range(8)]
    [finding] = detect(owner(*calls), SETTINGS)
    # Without the get()'s lookups (spans of another agent, offline) no batch can be written:
    # in_bulk() would be wrong for a natural key.
    assert finding.fix == ""
    assert finding.hint.endswith("fetch the Patient rows in one query before the loop")
    assert "Patient.objects.get() run 8x" in finding.hint


def test_raw_sql_without_orm_gets_a_batching_hint() -> None:
    raw = CodeLocation("hms/reports.py", 12, "raw_encounters")
    orm = OrmContext(model="", kind="raw", location=raw)
    sql = "SELECT id, reason FROM hms_encounter WHERE patient_id = %s"
    calls = [call(sql, orm, params=i) for i in range(7)]
    [finding] = detect(owner(*calls), SETTINGS)
    assert finding.relation == "" and finding.model == ""
    assert finding.fix == "one query for all values: SELECT ... FROM hms_encounter WHERE patient_id = ANY(%s)"
    assert finding.location == raw


def test_inserts_in_a_loop_suggest_bulk_create() -> None:
    orm = OrmContext(model="hms.Note", kind="query", location=VIEWS)
    sql = 'INSERT INTO "hms_note" ("text", "object_id") VALUES (%s, %s) RETURNING "hms_note"."id"'
    [finding] = detect(owner(*[call(sql, orm, params=i) for i in range(5)]), SETTINGS)
    assert finding.fix == "Note.objects.bulk_create([...])"


def test_savepoints_are_not_n_plus_one() -> None:
    calls = [call(f'SAVEPOINT "s1_x{i}"', None) for i in range(10)]
    calls += [call(f'RELEASE SAVEPOINT "s1_x{i}"', None) for i in range(10)]
    assert detect(owner(*calls), SETTINGS) == []


def test_exact_duplicates_are_their_own_kind() -> None:
    orm = OrmContext(model="hms.Facility", kind="query", location=VIEWS)
    calls = [
        call(FACILITY_SQL, orm, params=7),
        call(FACILITY_SQL, orm, params=7),
        call(FACILITY_SQL, orm, params=8),
    ]
    [finding] = detect(owner(*calls), SETTINGS)
    assert finding.kind == "duplicate_query"
    assert finding.repetitions == 2
    assert finding.fix.startswith("run it once and reuse the result")


def test_different_parameters_are_not_duplicates() -> None:
    calls = [call(FACILITY_SQL, None, params=i) for i in range(3)]
    assert detect(owner(*calls), SETTINGS) == []


def test_duplicates_inside_an_n_plus_one_are_not_reported_twice() -> None:
    # Encounters sharing a patient repeat the same lazy load with the same id.
    calls = [call(PATIENT_SQL, lazy("hms.Encounter.patient"), params=i % 2) for i in range(10)]
    findings = detect(owner(*calls), SETTINGS)
    assert [f.kind for f in findings] == ["n_plus_one"]


def test_fingerprint_is_stable_and_ignores_counts_and_lines() -> None:
    a_calls = [call(PATIENT_SQL, lazy("hms.Encounter.patient"), params=i) for i in range(5)]
    moved = CodeLocation("hms/views.py", 99, "encounter_list")
    b_calls = [call(PATIENT_SQL, lazy("hms.Encounter.patient", location=moved), params=i) for i in range(9)]
    [first] = detect(owner(*a_calls), SETTINGS)
    [second] = detect(owner(*b_calls), SETTINGS)
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 16
