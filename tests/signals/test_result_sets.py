"""Unbounded and wide results on plain records: exact findings, a negative for each positive."""

from __future__ import annotations

import dataclasses

import pytest
from harness.records import db_call
from harness.records import owner as build_owner

from hms_otel_agent import config
from hms_otel_agent.signals import registry, result_sets
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.hints import finding_fingerprint
from hms_otel_agent.signals.records import CodeLocation, DbCall, Finding, OrmContext, OwnerActivity
from hms_otel_agent.signals.result_sets import detect, is_bounded, select_width

SETTINGS = dataclasses.replace(config.load({}).settings, large_result_rows=100, wide_result_columns=5)
VIEW = CodeLocation("hms/views.py", 12, "export")
NARROW = 'SELECT "hms_patient"."id", "hms_patient"."mrn" FROM "hms_patient" ORDER BY "hms_patient"."id" ASC'
WIDE = (
    'SELECT "hms_patient"."id", "hms_patient"."mrn", "hms_patient"."given_name", '
    '"hms_patient"."family_name", "hms_patient"."date_of_birth", "hms_patient"."email" FROM "hms_patient"'
)


def call(sql: str, rows: int, ms: float = 5.0, model: str = "hms.Patient") -> DbCall:
    orm = OrmContext(model=model, kind="query", location=VIEW) if model else None
    return db_call(sql, ms, orm=orm, rows=rows)


def owner(*calls: DbCall) -> OwnerActivity:
    return build_owner("patients/export/", calls)


def test_a_select_without_limit_returning_many_rows_is_unbounded() -> None:
    first = call(NARROW, 150)
    [finding] = detect(owner(first, call(NARROW, 120)), SETTINGS)
    fix = (
        "paginate: Patient.objects.order_by('pk').filter(pk__gt=last_pk)[:page_size] (keyset), "
        "or django.core.paginator.Paginator"
    )
    assert finding == Finding(
        kind="unbounded_result",
        fingerprint=finding_fingerprint("unbounded_result", first.fingerprint, VIEW.file, VIEW.function),
        repetitions=2,
        duration_ms=10.0,
        statement=first.statement,
        model="hms.Patient",
        location=VIEW,
        fix=fix,
        hint=(
            "GET patients/export/: an unbounded Patient query (150 rows, no LIMIT) run 2x (10.0 ms) "
            f"at hms/views.py:12 in export — {fix}"
        ),
        route="patients/export/",
        rows=150,
        table="hms_patient",
    )


def test_fewer_rows_a_limit_or_no_row_count_are_not() -> None:
    assert detect(owner(call(NARROW, 99)), SETTINGS) == []
    assert detect(owner(call(NARROW + " LIMIT 500", 500)), SETTINGS) == []
    assert detect(owner(call(NARROW + " FETCH FIRST 500 ROWS ONLY", 500)), SETTINGS) == []
    assert detect(owner(call(NARROW, -1)), SETTINGS) == []  # server-side cursor: unknown


def test_rows_for_a_list_of_keys_are_bounded_by_it() -> None:
    prefetch = (
        'SELECT "c"."id", "c"."patient_id" FROM "hms_emergencycontact" c WHERE "c"."patient_id" IN (1, 2, 3)'
    )
    assert detect(owner(call(prefetch, 5000)), SETTINGS) == []
    assert detect(owner(call("SELECT id FROM t WHERE id = ANY(%s)", 5000)), SETTINGS) == []
    [wide] = detect(
        owner(call(WIDE.replace('FROM "hms_patient"', 'FROM "hms_patient" WHERE id IN (1, 2)'), 500)),
        SETTINGS,
    )
    assert wide.kind == "wide_result"


def test_writes_returning_rows_are_not_result_sets() -> None:
    assert detect(owner(call("INSERT INTO t (a) SELECT a FROM u RETURNING id", 500)), SETTINGS) == []


def test_many_columns_add_only_or_values_to_the_pagination_fix() -> None:
    [finding] = detect(owner(call(WIDE, 150)), SETTINGS)
    assert finding.kind == "unbounded_result"
    assert finding.fix.endswith(
        "; and .only('field', ...) or .values('field', ...) with just the fields the code reads"
    )
    assert "(150 rows, no LIMIT, 6 columns)" in finding.hint


def test_a_large_limited_result_of_many_columns_is_wide() -> None:
    [finding] = detect(owner(call(WIDE + " LIMIT 200", 200)), SETTINGS)
    assert finding.kind == "wide_result" and finding.rows == 200
    assert finding.fix == ".only('field', ...) or .values('field', ...) with just the fields the code reads"
    assert "a wide Patient query (200 rows of 6 columns) run 1x" in finding.hint
    narrow = dataclasses.replace(SETTINGS, wide_result_columns=7)
    assert detect(owner(call(WIDE + " LIMIT 200", 200)), narrow) == []


def test_raw_sql_gets_a_sql_fix() -> None:
    [finding] = detect(owner(call("SELECT id, reason FROM hms_encounter", 100, model="")), SETTINGS)
    assert (
        finding.fix == "paginate: SELECT ... FROM hms_encounter WHERE id > %s ORDER BY id LIMIT %s (keyset)"
    )
    assert finding.location is None and finding.model == ""


@pytest.mark.parametrize(
    ("sql", "width"),
    [
        ('SELECT "t"."a", "t"."b", COALESCE("t"."c", ?) FROM "t"', 3),
        ("SELECT DISTINCT a, b FROM t", 2),
        ("SELECT (SELECT x FROM y LIMIT ?), z FROM t", 2),
        ('SELECT "a,b" FROM t', 1),
        ("SELECT * FROM t", None),
        ("SELECT t.* FROM t", None),
        ("SELECT ?", None),
        ("UPDATE t SET a = ?", None),
    ],
)
def test_select_width(sql: str, width: int | None) -> None:
    assert select_width(fingerprint_sql(sql).normalized) == width


def test_bounded() -> None:
    assert is_bounded(fingerprint_sql("select a from t limit 5").normalized)
    assert not is_bounded(fingerprint_sql("select limited from t").normalized)


def test_registered() -> None:
    assert result_sets.detect in registry.DETECTORS
