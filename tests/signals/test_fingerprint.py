# ruff: noqa: E501
"""Table and property tests for ``hms_otel_agent.signals.fingerprint``."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import fingerprint as fp_module
from hms_otel_agent.signals.fingerprint import (
    CACHE_MAX_CHARS,
    LONG_CACHE_MAX_CHARS,
    MAX_SQL_CHARS,
    TRUNCATION_MARK,
    SqlFingerprint,
    fingerprint_sql,
)

# Guards against catastrophic (super-linear) scanning only: a correct scanner takes milliseconds
# here, a backtracking one would take minutes. Speed itself is measured in
# benchmarks/micro_signals.py, not asserted.
TERMINATION_GUARD_S = 10.0

# --------------------------------------------------------------------------------------------
# Normalization: one row per rule (input, expected normalized text).

NORMALIZE = [
    pytest.param("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = ?", id="string"),
    pytest.param(
        "SELECT * FROM t WHERE a = 'it''s'", "SELECT * FROM t WHERE a = ?", id="string-doubled-quote"
    ),
    pytest.param("SELECT * FROM t WHERE a = ''", "SELECT * FROM t WHERE a = ?", id="string-empty"),
    pytest.param("SELECT * FROM t WHERE a = ''''", "SELECT * FROM t WHERE a = ?", id="string-only-quotes"),
    pytest.param(
        "SELECT * FROM t WHERE a = 'say \"hi\"'", "SELECT * FROM t WHERE a = ?", id="string-with-double-quote"
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = 'a; DROP TABLE t'",
        "SELECT * FROM t WHERE a = ?",
        id="string-with-semicolon",
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = 'x -- y' AND b = 1",
        "SELECT * FROM t WHERE a = ? AND b = ?",
        id="string-with-dashdash",
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = '/* x' AND b = 1",
        "SELECT * FROM t WHERE a = ? AND b = ?",
        id="string-with-comment-open",
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = 'line1\nline2'", "SELECT * FROM t WHERE a = ?", id="string-with-newline"
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = 'C:\\' AND b = 'x'",
        "SELECT * FROM t WHERE a = ?",  # the string's end depends on standard_conforming_strings
        id="string-backslash-std",
    ),
    pytest.param("SELECT * FROM t WHERE a = E'it\\'s'", "SELECT * FROM t WHERE a = ?", id="e-string"),
    pytest.param("SELECT * FROM t WHERE a = e'\\n'", "SELECT * FROM t WHERE a = ?", id="e-string-lower"),
    pytest.param(
        "SELECT * FROM t WHERE a = E'\\\\' AND b = 1",
        "SELECT * FROM t WHERE a = ? AND b = ?",
        id="e-string-escaped-backslash",
    ),
    pytest.param("SELECT B'1010', X'1F'", "SELECT ?, ?", id="bit-string"),
    pytest.param("SELECT N'abc'", "SELECT ?", id="national-string"),
    pytest.param("SELECT U&'d\\0061t'", "SELECT ?", id="unicode-string"),
    pytest.param("SELECT $$it's$$", "SELECT ?", id="dollar-quoted"),
    pytest.param("SELECT $fn$ a $$ b $fn$", "SELECT ?", id="dollar-tag"),
    pytest.param("SELECT $a$ $b$ x $b$ $a$, 1", "SELECT ?, ?", id="dollar-tag-nested-other"),
    pytest.param(
        "SELECT * FROM t WHERE name = 'Zoë Ünïcødé'", "SELECT * FROM t WHERE name = ?", id="string-unicode"
    ),
    pytest.param(
        "SELECT * FROM t WHERE d > '2024-01-01'::date", "SELECT * FROM t WHERE d > ?::date", id="string-cast"
    ),
    pytest.param(
        "SELECT * FROM t WHERE d > DATE '2024-01-01'", "SELECT * FROM t WHERE d > date ?", id="typed-literal"
    ),
    pytest.param("SELECT now() - INTERVAL '1 day'", "SELECT now() - INTERVAL ?", id="interval"),
    pytest.param("SELECT 'a' 'b'", "SELECT ? ?", id="adjacent-strings"),
    pytest.param("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?", id="int"),
    pytest.param("SELECT * FROM t WHERE x = 3.14", "SELECT * FROM t WHERE x = ?", id="decimal"),
    pytest.param("SELECT * FROM t WHERE x = .5", "SELECT * FROM t WHERE x = ?", id="leading-dot"),
    pytest.param("SELECT * FROM t WHERE x = 5.", "SELECT * FROM t WHERE x = ?", id="trailing-dot"),
    pytest.param("SELECT * FROM t WHERE x = 1e5", "SELECT * FROM t WHERE x = ?", id="exponent"),
    pytest.param("SELECT * FROM t WHERE x = 1.5E-3", "SELECT * FROM t WHERE x = ?", id="exponent-signed"),
    pytest.param("SELECT * FROM t WHERE x = -7", "SELECT * FROM t WHERE x = ?", id="negative"),
    pytest.param("SELECT * FROM t WHERE x=-7", "SELECT * FROM t WHERE x=?", id="negative-nospace"),
    pytest.param("SELECT * FROM t WHERE x = +7", "SELECT * FROM t WHERE x = ?", id="plus-sign"),
    pytest.param(
        "SELECT * FROM t WHERE x IN (-1, -2)", "SELECT * FROM t WHERE x IN (...)", id="negative-in-list"
    ),
    pytest.param("SELECT a - 1 FROM t", "SELECT a - ? FROM t", id="binary-minus"),
    pytest.param("SELECT (a) - 1 FROM t", "SELECT (a) - ? FROM t", id="binary-minus-paren"),
    pytest.param("SELECT -1", "SELECT ?", id="leading-negative"),
    pytest.param("SELECT * FROM t WHERE x = 0x1F", "SELECT * FROM t WHERE x = ?", id="hex"),
    pytest.param("SELECT 0o17, 0b101", "SELECT ?, ?", id="octal-binary"),
    pytest.param("SELECT 1_000_000", "SELECT ?", id="underscore-number"),
    pytest.param("SELECT col1, t2.c3 FROM t2", "SELECT col1, t2.c3 FROM t2", id="number-in-identifier"),
    pytest.param('SELECT "col1" FROM "t2"', 'SELECT "col1" FROM "t2"', id="quoted-identifier-digits"),
    pytest.param("SELECT a$1 FROM t", "SELECT ? FROM t", id="identifier-with-dollar"),
    pytest.param("SELECT * FROM t WHERE active = TRUE", "SELECT * FROM t WHERE active = ?", id="true"),
    pytest.param(
        "select * from t where active = false", "SELECT * FROM t WHERE active = ?", id="false-lower"
    ),
    pytest.param("SELECT * FROM t WHERE x IS NULL", "SELECT * FROM t WHERE x IS NULL", id="null-kept"),
    pytest.param(
        "SELECT * FROM t WHERE x IS NOT NULL", "SELECT * FROM t WHERE x IS NOT NULL", id="not-null-kept"
    ),
    pytest.param("UPDATE t SET x = NULL WHERE id = 1", "UPDATE t SET x = NULL WHERE id = ?", id="null-value"),
    pytest.param('SELECT "true" FROM t', 'SELECT "true" FROM t', id="true-identifier-quoted"),
    pytest.param(
        "SELECT true_flag, is_false FROM t", "SELECT true_flag, is_false FROM t", id="true-prefix-identifier"
    ),
    pytest.param("SELECT * FROM t WHERE a = %s", "SELECT * FROM t WHERE a = ?", id="pyformat"),
    pytest.param(
        "SELECT * FROM t WHERE a = %(patient_id)s", "SELECT * FROM t WHERE a = ?", id="pyformat-named"
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = $1 AND b = $12", "SELECT * FROM t WHERE a = ? AND b = ?", id="numbered"
    ),
    pytest.param("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = ?", id="qmark"),
    pytest.param("SELECT * FROM t WHERE a = :patient", "SELECT * FROM t WHERE a = ?", id="named-colon"),
    pytest.param("SELECT a::text FROM t", "SELECT a::text FROM t", id="cast-not-placeholder"),
    pytest.param(
        "SELECT * FROM t WHERE a = %s::uuid", "SELECT * FROM t WHERE a = ?::uuid", id="cast-after-placeholder"
    ),
    pytest.param(
        "SELECT * FROM t WHERE a LIKE 'x%%' AND b = c %% 2",
        "SELECT * FROM t WHERE a LIKE ? AND b = c %% ?",
        id="percent-percent",
    ),
    pytest.param("SELECT * FROM t WHERE tags ?| %s", "SELECT * FROM t WHERE tags ?| ?", id="jsonb-qmark-op"),
    pytest.param("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (...)", id="in-list"),
    pytest.param("SELECT * FROM t WHERE id IN (1)", "SELECT * FROM t WHERE id IN (...)", id="in-list-one"),
    pytest.param(
        "SELECT * FROM t WHERE id IN (%s, %s, %s, %s)",
        "SELECT * FROM t WHERE id IN (...)",
        id="in-list-placeholders",
    ),
    pytest.param(
        "SELECT * FROM t WHERE code IN ('a', 'b')",
        "SELECT * FROM t WHERE code IN (...)",
        id="in-list-strings",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id IN(1,2)", "SELECT * FROM t WHERE id IN(...)", id="in-list-nospace"
    ),
    pytest.param(
        "SELECT * FROM t WHERE id NOT IN (1, 2)", "SELECT * FROM t WHERE id NOT IN (...)", id="not-in-list"
    ),
    pytest.param(
        "SELECT * FROM t WHERE id IN (1, NULL)", "SELECT * FROM t WHERE id IN (...)", id="in-list-with-null"
    ),
    pytest.param(
        "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
        "SELECT * FROM t WHERE (a, b) IN (...)",
        id="in-tuples",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id IN (SELECT t_id FROM u WHERE x = 1)",
        "SELECT * FROM t WHERE id IN (SELECT t_id FROM u WHERE x = ?)",
        id="in-subquery-kept",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id IN (a + 1, 2)",
        "SELECT * FROM t WHERE id IN (a + ?, ?)",
        id="in-expression-kept",
    ),
    pytest.param("SELECT * FROM t WHERE id IN ()", "SELECT * FROM t WHERE id IN ()", id="in-empty-kept"),
    pytest.param(
        "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])",
        "SELECT * FROM t WHERE id = ANY(...)",
        id="any-array",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id = ANY(%s)", "SELECT * FROM t WHERE id = ANY(...)", id="any-placeholder"
    ),
    pytest.param(
        "SELECT * FROM t WHERE id = ANY(%s::integer[])",
        "SELECT * FROM t WHERE id = ANY(...)",
        id="any-placeholder-cast",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2]::bigint[])",
        "SELECT * FROM t WHERE id = ANY(...)",
        id="any-array-cast",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id <> ALL(ARRAY[1, 2])", "SELECT * FROM t WHERE id <> ALL(...)", id="all-array"
    ),
    pytest.param(
        "SELECT * FROM t WHERE id = ANY(SELECT t_id FROM u)",
        "SELECT * FROM t WHERE id = ANY(SELECT t_id FROM u)",
        id="any-subquery-kept",
    ),
    pytest.param("SELECT ARRAY[1, 2, 3]", "SELECT ARRAY[?, ?, ?]", id="array-literal"),
    pytest.param(
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
        "INSERT INTO t (a, b) VALUES (...)",
        id="values-rows",
    ),
    pytest.param(
        "INSERT INTO t (a, b) VALUES (1, 'x')", "INSERT INTO t (a, b) VALUES (...)", id="values-one-row"
    ),
    pytest.param(
        "INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s)",
        "INSERT INTO t (a, b) VALUES (...)",
        id="values-placeholders",
    ),
    pytest.param(
        "INSERT INTO t (a, b) VALUES (DEFAULT, NULL), (1, NULL)",
        "INSERT INTO t (a, b) VALUES (...)",
        id="values-default-null",
    ),
    pytest.param(
        "INSERT INTO t (a, b) VALUES (now(), 1)",
        "INSERT INTO t (a, b) VALUES (now(), ?)",
        id="values-function-kept",
    ),
    pytest.param(
        "INSERT INTO t (a) VALUES (1), (2) ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a",
        "INSERT INTO t (a) VALUES (...) ON CONFLICT (a) DO UPDATE SET a = excluded.a",
        id="values-on-conflict",
    ),
    pytest.param(
        "SELECT   *\n\tFROM  t\r\n WHERE a =   1", "SELECT * FROM t WHERE a = ?", id="whitespace-runs"
    ),
    pytest.param("  \n SELECT 1  \n", "SELECT ?", id="leading-trailing-ws"),
    pytest.param(
        "select a from t where b = 1 order by a desc limit 10",
        "SELECT a FROM t WHERE b = ? ORDER BY a DESC LIMIT ?",
        id="lowercase-keywords",
    ),
    pytest.param("SeLeCt a FrOm t", "SELECT a FROM t", id="mixed-case-keywords"),
    pytest.param("SELECT MyCol FROM MyTable", "SELECT mycol FROM mytable", id="unquoted-ident-lowered"),
    pytest.param('SELECT "MyCol" FROM "MyTable"', 'SELECT "?" FROM "?"', id="quoted-ident-not-lower-masked"),
    pytest.param('SELECT "T".Col FROM "T"', 'SELECT "T".col FROM "T"', id="qualified-mixed"),
    pytest.param("SELECT /* hello 'x' */ a FROM t", "SELECT a FROM t", id="block-comment"),
    pytest.param("SELECT a /* line1\nline2 */ FROM t", "SELECT a FROM t", id="block-comment-multiline"),
    pytest.param("SELECT a/**/FROM t", "SELECT a FROM t", id="block-comment-no-space"),
    pytest.param("SELECT a -- the a column\nFROM t", "SELECT a FROM t", id="line-comment"),
    pytest.param("SELECT a FROM t -- trailing", "SELECT a FROM t", id="line-comment-end"),
    pytest.param(
        "SELECT a FROM t /*controller='patients',framework='django%3A5.2',route='patients/%3Cint%3Apk%3E/',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/",
        "SELECT a FROM t",
        id="sqlcommenter",
    ),
    pytest.param("/* app */ SELECT 1", "SELECT ?", id="leading-comment"),
    pytest.param("SELECT a FROM t /* never closed 'x' 1", "SELECT a FROM t ?", id="unterminated-comment"),
    pytest.param("SELECT 1;", "SELECT ?", id="trailing-semicolon"),
    pytest.param("SELECT 1; SELECT 'b'", "SELECT ?; SELECT ?", id="two-statements"),
    pytest.param("SELECT * FROM t LIMIT 10 OFFSET 20", "SELECT * FROM t LIMIT ? OFFSET ?", id="limit-offset"),
    pytest.param("SELECT * FROM t LIMIT %s", "SELECT * FROM t LIMIT ?", id="limit-placeholder"),
    pytest.param(
        "SELECT * FROM t FETCH FIRST 5 ROWS ONLY", "SELECT * FROM t FETCH FIRST ? ROWS ONLY", id="fetch-first"
    ),
    pytest.param('SAVEPOINT "s140234_x1"', "SAVEPOINT ?", id="savepoint"),
    pytest.param('SAVEPOINT "s139871_x12"', "SAVEPOINT ?", id="savepoint-other"),
    pytest.param("SAVEPOINT sp1", "SAVEPOINT ?", id="savepoint-unquoted"),
    pytest.param('RELEASE SAVEPOINT "s140234_x1"', "RELEASE SAVEPOINT ?", id="release"),
    pytest.param("RELEASE sp1", "RELEASE ?", id="release-short"),
    pytest.param('ROLLBACK TO SAVEPOINT "s140234_x1"', "ROLLBACK TO SAVEPOINT ?", id="rollback-to"),
    pytest.param("ROLLBACK TO sp1", "ROLLBACK TO ?", id="rollback-to-short"),
    pytest.param("ROLLBACK", "ROLLBACK", id="rollback"),
    pytest.param("BEGIN", "BEGIN", id="begin"),
    pytest.param("COMMIT", "COMMIT", id="commit"),
    pytest.param("SET TIME ZONE 'UTC'", "SET time zone ?", id="set-timezone"),
    pytest.param("SELECT set_config('TimeZone', %s, false)", "SELECT set_config(?, ?, ?)", id="set-config"),
    pytest.param(
        'SELECT "we""ird" FROM t WHERE a = \'x\'',
        'SELECT "?" FROM t WHERE a = ?',
        id="quoted-ident-with-quote",
    ),
    pytest.param(
        'SELECT "it\'s" FROM t WHERE a = 1',
        'SELECT "?" FROM t WHERE a = ?',
        id="quoted-ident-with-apostrophe",
    ),
    pytest.param('SELECT "a;b" FROM t', 'SELECT "?" FROM t', id="quoted-ident-with-semicolon"),
    pytest.param(
        'SELECT "a--b" FROM t WHERE x = 1', 'SELECT "?" FROM t WHERE x = ?', id="quoted-ident-with-dashes"
    ),
    pytest.param('SELECT U&"d\\0061t" FROM t', 'SELECT "?" FROM t', id="unicode-quoted-ident"),
    pytest.param("SELECT \"abc FROM t WHERE name = 'John'", "SELECT ?", id="unterminated-quoted-ident"),
    pytest.param(
        "SELECT * FROM t WHERE name = 'John", "SELECT * FROM t WHERE name = ?", id="unterminated-string"
    ),
    pytest.param("SELECT $$ secret", "SELECT ?", id="unterminated-dollar"),
    pytest.param(
        "SELECT * FROM t WHERE a >= 1 AND b <> 2 AND c != 3 AND d <= 4",
        "SELECT * FROM t WHERE a >= ? AND b <> ? AND c != ? AND d <= ?",
        id="operators",
    ),
    pytest.param(
        "SELECT data->>'name', data->'a'->'b', data #>> '{a,b}' FROM t WHERE data @> '{\"a\": 1}'",
        "SELECT data->>?, data->?->?, data #>> ? FROM t WHERE data @> ?",
        id="json-operators",
    ),
    pytest.param("SELECT a || 'x' FROM t", "SELECT a || ? FROM t", id="concat"),
    pytest.param(
        "SELECT * FROM t WHERE d BETWEEN '2024-01-01' AND '2024-12-31'",
        "SELECT * FROM t WHERE d BETWEEN ? AND ?",
        id="between",
    ),
    pytest.param(
        "SELECT * FROM t WHERE a LIKE 'x\\_%' ESCAPE '\\'",
        "SELECT * FROM t WHERE a LIKE ?",  # a backslash in a standard string: the rest masked
        id="like-escape",
    ),
    pytest.param(
        "SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END FROM t",
        "SELECT CASE WHEN a > ? THEN ? ELSE ? END FROM t",
        id="case-when",
    ),
    pytest.param(
        "SELECT coalesce(a, 0), round(b, 2) FROM t",
        "SELECT COALESCE(a, ?), round(b, ?) FROM t",
        id="function-args",
    ),
    pytest.param("SELECT COUNT(DISTINCT a) FROM t", "SELECT COUNT(DISTINCT a) FROM t", id="count-distinct"),
    pytest.param(
        'SELECT * FROM "public"."hms_patient" WHERE "hms_patient"."id" = 1',
        'SELECT * FROM "public"."hms_patient" WHERE "hms_patient"."id" = ?',
        id="schema-qualified",
    ),
    pytest.param("SELECT t.* FROM t", "SELECT t.* FROM t", id="star-qualified"),
]


@pytest.mark.parametrize(("sql", "expected"), NORMALIZE)
def test_normalized(sql: str, expected: str) -> None:
    assert fingerprint_sql(sql).normalized == expected


@pytest.mark.parametrize(("sql", "expected"), NORMALIZE)
def test_normalizing_is_idempotent(sql: str, expected: str) -> None:
    assert fingerprint_sql(expected).normalized == expected


@pytest.mark.parametrize(("sql", "expected"), NORMALIZE)
def test_digest_is_blake2b_of_normalized(sql: str, expected: str) -> None:
    fp = fingerprint_sql(sql)
    assert re.fullmatch(r"[0-9a-f]{16}", fp.digest)
    assert fp.digest == hashlib.blake2b(expected.encode(), digest_size=8).hexdigest()


def test_digest_is_stable_across_processes_and_versions() -> None:
    # A fixed value: BLAKE2b does not depend on PYTHONHASHSEED or the Python version.
    assert fingerprint_sql("SELECT 1").digest == hashlib.blake2b(b"SELECT ?", digest_size=8).hexdigest()
    assert fingerprint_sql("SELECT 1").digest == "c148796e1220075a"


# --------------------------------------------------------------------------------------------
# Same shape, different literals => same digest; different shape => different digest.

SAME_DIGEST = [
    pytest.param("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 99999", id="int"),
    pytest.param("SELECT * FROM t WHERE id = 1", "select *\n  from T\twhere ID = 2", id="case-whitespace"),
    pytest.param(
        "SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = 'it''s; -- \"q\"'", id="strings"
    ),
    pytest.param("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = $$x$$", id="string-vs-dollar"),
    pytest.param("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = %s", id="literal-vs-placeholder"),
    pytest.param("SELECT * FROM t WHERE a = $1", "SELECT * FROM t WHERE a = %(a)s", id="placeholder-styles"),
    pytest.param("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = -1.5e3", id="number-forms"),
    pytest.param("SELECT * FROM t WHERE a = TRUE", "SELECT * FROM t WHERE a = false", id="booleans"),
    pytest.param(
        "SELECT * FROM t WHERE id IN (1)",
        "SELECT * FROM t WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8)",
        id="in-list-length",
    ),
    pytest.param(
        "SELECT * FROM t WHERE id IN (%s)", "SELECT * FROM t WHERE id IN (%s, %s)", id="in-placeholders"
    ),
    pytest.param(
        "SELECT * FROM t WHERE id = ANY(%s)", "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])", id="any"
    ),
    pytest.param(
        "INSERT INTO t (a) VALUES (%s)", "INSERT INTO t (a) VALUES (%s), (%s), (%s)", id="values-rows"
    ),
    pytest.param("SELECT * FROM t LIMIT 21", "SELECT * FROM t LIMIT 1000", id="limit"),
    pytest.param("SELECT * FROM t LIMIT 10 OFFSET 0", "SELECT * FROM t LIMIT 10 OFFSET 990", id="offset"),
    pytest.param('SAVEPOINT "s140234_x1"', 'SAVEPOINT "s99_x1234"', id="savepoint"),
    pytest.param('RELEASE SAVEPOINT "s140234_x1"', 'RELEASE SAVEPOINT "s1_x2"', id="release"),
    pytest.param('ROLLBACK TO SAVEPOINT "s140234_x1"', 'ROLLBACK TO SAVEPOINT "s7_x7"', id="rollback-to"),
    pytest.param("SELECT a FROM t", "SELECT a FROM t /*traceparent='00-abc-def-01'*/", id="sqlcommenter"),
    pytest.param("SELECT a FROM t", "-- header\nSELECT a /* inline */ FROM t;", id="comments-semicolon"),
]


@pytest.mark.parametrize(("a", "b"), SAME_DIGEST)
def test_same_shape_same_digest(a: str, b: str) -> None:
    assert fingerprint_sql(a).digest == fingerprint_sql(b).digest


DIFFERENT_DIGEST = [
    pytest.param("SELECT * FROM t WHERE id = 1", "SELECT * FROM u WHERE id = 1", id="table"),
    pytest.param("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE pk = 1", id="column"),
    pytest.param("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id > 1", id="operator"),
    pytest.param("SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id IS NULL", id="null-vs-value"),
    pytest.param(
        "SELECT * FROM t WHERE id IS NULL", "SELECT * FROM t WHERE id IS NOT NULL", id="is-not-null"
    ),
    pytest.param('SELECT "T" FROM t', 'SELECT "t" FROM t', id="quoted-case"),
    pytest.param("SELECT * FROM t WHERE id IN (1, 2)", "SELECT * FROM t WHERE id NOT IN (1, 2)", id="not-in"),
    pytest.param(
        "SELECT * FROM t WHERE id IN (1)", "SELECT * FROM t WHERE id IN (SELECT id FROM u)", id="in-subquery"
    ),
    pytest.param("SELECT a FROM t", "SELECT a, b FROM t", id="columns"),
    pytest.param("SELECT a FROM t ORDER BY a", "SELECT a FROM t ORDER BY a DESC", id="order"),
    pytest.param("SELECT a FROM t", "SELECT a FROM t FOR UPDATE", id="locking"),
    pytest.param("SELECT a FROM t", "DELETE FROM t", id="verb"),
    pytest.param('SAVEPOINT "x"', 'RELEASE SAVEPOINT "x"', id="savepoint-verbs"),
    pytest.param("SELECT 'a' FROM t", 'SELECT "a" FROM t', id="string-vs-identifier"),
]


@pytest.mark.parametrize(("a", "b"), DIFFERENT_DIGEST)
def test_different_shape_different_digest(a: str, b: str) -> None:
    assert fingerprint_sql(a).digest != fingerprint_sql(b).digest


# --------------------------------------------------------------------------------------------
# operation / table / filter_columns

METADATA = [
    pytest.param(
        'SELECT "hms_encounter"."id", "hms_encounter"."patient_id", "hms_patient"."id", "hms_patient"."mrn" FROM "hms_encounter" INNER JOIN "hms_patient" ON ("hms_encounter"."patient_id" = "hms_patient"."id") WHERE "hms_encounter"."patient_id" = %s',
        "SELECT",
        "hms_encounter",
        ("patient_id",),
        id="django-select-join",
    ),
    pytest.param(
        'SELECT "hms_patient"."id", "hms_patient"."mrn" FROM "hms_patient" WHERE "hms_patient"."id" IN (%s, %s, %s)',
        "SELECT",
        "hms_patient",
        ("id",),
        id="django-select-in",
    ),
    pytest.param(
        'INSERT INTO "hms_patient" ("mrn", "name", "created_at") VALUES (%s, %s, %s) RETURNING "hms_patient"."id"',
        "INSERT",
        "hms_patient",
        (),
        id="django-insert-returning",
    ),
    pytest.param(
        'INSERT INTO "hms_vital" ("encounter_id", "kind", "value") VALUES (%s, %s, %s), (%s, %s, %s) RETURNING "hms_vital"."id"',
        "INSERT",
        "hms_vital",
        (),
        id="django-bulk-insert",
    ),
    pytest.param(
        'UPDATE "hms_patient" SET "name" = %s, "updated_at" = %s WHERE "hms_patient"."id" = %s',
        "UPDATE",
        "hms_patient",
        ("id",),
        id="django-update",
    ),
    pytest.param(
        'DELETE FROM "hms_vital" WHERE "hms_vital"."id" IN (%s, %s)',
        "DELETE",
        "hms_vital",
        ("id",),
        id="django-delete-in",
    ),
    pytest.param(
        'SELECT COUNT(*) AS "__count" FROM "hms_encounter" WHERE "hms_encounter"."ward_id" = %s',
        "SELECT",
        "hms_encounter",
        ("ward_id",),
        id="django-count",
    ),
    pytest.param(
        'SELECT 1 AS "a" FROM "hms_patient" WHERE "hms_patient"."mrn" = %s LIMIT 1',
        "SELECT",
        "hms_patient",
        ("mrn",),
        id="django-exists",
    ),
    pytest.param(
        'SELECT "hms_patient"."id" FROM "hms_patient" WHERE ("hms_patient"."mrn" = %s AND "hms_patient"."active") LIMIT 21',
        "SELECT",
        "hms_patient",
        ("mrn",),
        id="django-get-limit-21",
    ),
    pytest.param(
        'SELECT "auth_user"."id" FROM "auth_user" WHERE UPPER("auth_user"."email"::text) = UPPER(%s)',
        "SELECT",
        "auth_user",
        ("email",),
        id="django-iexact",
    ),
    pytest.param(
        'SELECT "hms_patient"."id" FROM "hms_patient" WHERE UPPER("hms_patient"."name"::text) LIKE UPPER(%s)',
        "SELECT",
        "hms_patient",
        ("name",),
        id="django-icontains",
    ),
    pytest.param(
        'SELECT "hms_encounter"."id" FROM "hms_encounter" WHERE "hms_encounter"."admitted_at" BETWEEN %s AND %s',
        "SELECT",
        "hms_encounter",
        ("admitted_at",),
        id="django-range",
    ),
    pytest.param(
        'SELECT "hms_encounter"."id" FROM "hms_encounter" WHERE "hms_encounter"."discharged_at" IS NULL',
        "SELECT",
        "hms_encounter",
        (),
        id="django-isnull",
    ),
    pytest.param(
        'SELECT "hms_encounter"."id" FROM "hms_encounter" WHERE ("hms_encounter"."patient_id" = %s AND "hms_encounter"."ward_id" = %s AND NOT ("hms_encounter"."status" IN (%s, %s)))',
        "SELECT",
        "hms_encounter",
        ("patient_id", "ward_id", "status"),
        id="django-multi",
    ),
    pytest.param(
        'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."id" IN (SELECT U0."patient_id" FROM "hms_encounter" U0 WHERE U0."ward_id" = %s)',
        "SELECT",
        "hms_patient",
        (),
        id="django-subquery",
    ),
    pytest.param(
        'SELECT "hms_bed"."id" FROM "hms_bed" WHERE "hms_bed"."ward_id" = %s FOR UPDATE',
        "SELECT",
        "hms_bed",
        ("ward_id",),
        id="django-for-update",
    ),
    pytest.param(
        'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."active" = %s ORDER BY "hms_patient"."name" ASC LIMIT 20 OFFSET 40',
        "SELECT",
        "hms_patient",
        ("active",),
        id="django-order-offset",
    ),
    pytest.param(
        'SELECT "django_session"."session_key", "django_session"."session_data", "django_session"."expire_date" FROM "django_session" WHERE ("django_session"."expire_date" > %s AND "django_session"."session_key" = %s) LIMIT 21',
        "SELECT",
        "django_session",
        ("expire_date", "session_key"),
        id="django-session",
    ),
    pytest.param(
        "SELECT * FROM a JOIN b ON a.id = b.a_id WHERE b.x = 1 AND a.y = b.y",
        "SELECT",
        "a",
        (),  # b.x is the joined table's: no index or lookup on a
        id="join-condition-not-filter",
    ),
    pytest.param(
        "SELECT * FROM a JOIN b ON a.id = b.a_id WHERE a.x = 1 AND b.y = 2",
        "SELECT",
        "a",
        ("x",),
        id="main-table-column-kept",
    ),
    pytest.param(
        "WITH recent AS (SELECT * FROM hms_encounter WHERE admitted_at > %s) SELECT patient_id FROM recent WHERE ward_id = %s",
        "SELECT",
        "recent",
        ("ward_id",),
        id="with-select",
    ),
    pytest.param(
        "WITH src AS (SELECT 1 AS a) INSERT INTO dst (a) SELECT a FROM src",
        "INSERT",
        "dst",
        (),
        id="with-insert",
    ),
    pytest.param("WITH x AS (SELECT 1)", "WITH", "", (), id="with-no-verb"),
    pytest.param(
        "(SELECT a FROM t1 WHERE x = 1) UNION (SELECT a FROM t2)", "SELECT", "", (), id="union-parens"
    ),
    pytest.param(
        "UPDATE ONLY public.hms_patient SET a = 1 WHERE id = 2",
        "UPDATE",
        "public.hms_patient",
        ("id",),
        id="update-only",
    ),
    pytest.param(
        "DELETE FROM hms_vital USING hms_encounter WHERE hms_vital.encounter_id = hms_encounter.id AND hms_encounter.ward_id = 3",
        "DELETE",
        "hms_vital",
        (),  # ward_id is hms_encounter's
        id="delete-using",
    ),
    pytest.param("SELECT count(*) FROM (SELECT 1 FROM t) sub", "SELECT", "", (), id="select-subquery-from"),
    pytest.param("SELECT 1", "SELECT", "", (), id="select-no-from"),
    pytest.param(
        'SELECT * FROM "public"."hms_patient" WHERE "hms_patient"."id" = 1',
        "SELECT",
        "public.hms_patient",
        ("id",),
        id="schema-table",
    ),
    pytest.param(
        'SELECT * FROM "HmsPatient" WHERE "HmsPatient"."Id" = 1',
        "SELECT",
        "",  # a quoted identifier that is not a lower-case word is masked: it could be a name
        (),
        id="quoted-mixed-case-table",
    ),
    pytest.param("SELECT * FROM t WHERE %s = a", "SELECT", "t", (), id="cmp-reversed"),
    pytest.param("SELECT * FROM t WHERE id = ANY(%s)", "SELECT", "t", ("id",), id="any-filter"),
    pytest.param("SELECT * FROM t WHERE id NOT IN (1, 2)", "SELECT", "t", ("id",), id="not-in-filter"),
    pytest.param('SELECT * FROM t WHERE "t"."data" @> %s', "SELECT", "t", ("data",), id="json-contains"),
    pytest.param('SAVEPOINT "s140234_x1"', "SAVEPOINT", "", (), id="savepoint"),
    pytest.param('RELEASE SAVEPOINT "s140234_x1"', "RELEASE", "", (), id="release"),
    pytest.param('ROLLBACK TO SAVEPOINT "s140234_x1"', "ROLLBACK", "", (), id="rollback-to"),
    pytest.param("BEGIN", "BEGIN", "", (), id="begin"),
    pytest.param("COMMIT", "COMMIT", "", (), id="commit"),
    pytest.param("SET TIME ZONE 'UTC'", "SET", "", (), id="set"),
    pytest.param("SHOW server_version", "SHOW", "", (), id="show"),
    pytest.param("EXPLAIN SELECT 1", "EXPLAIN", "", (), id="explain"),
    pytest.param("frobnicate the database", "", "", (), id="unknown-first-word"),
    pytest.param("", "", "", (), id="empty"),
    pytest.param("-- nothing", "", "", (), id="only-comment"),
    pytest.param("((SELECT a FROM t))", "SELECT", "", (), id="leading-paren-select"),
    pytest.param(
        "INSERT INTO archive SELECT * FROM live WHERE created < %s",
        "INSERT",
        "archive",
        ("created",),
        id="insert-select",
    ),
    pytest.param(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
        "MERGE",
        "t",
        (),
        id="merge",
    ),
]


@pytest.mark.parametrize(("sql", "operation", "table", "filter_columns"), METADATA)
def test_metadata(sql: str, operation: str, table: str, filter_columns: tuple[str, ...]) -> None:
    fp = fingerprint_sql(sql)
    assert (fp.operation, fp.table, fp.filter_columns) == (operation, table, filter_columns)


# --------------------------------------------------------------------------------------------
# Input types, robustness, limits


def test_result_type_is_frozen_with_slots() -> None:
    fp = fingerprint_sql("SELECT 1")
    assert isinstance(fp, SqlFingerprint)
    assert not hasattr(fp, "__dict__")
    with pytest.raises(AttributeError):
        fp.digest = "0" * 16  # type: ignore[misc]


def test_bytes_are_decoded() -> None:
    assert fingerprint_sql(b"SELECT * FROM t WHERE a = 'x'") == fingerprint_sql(
        "SELECT * FROM t WHERE a = 'x'"
    )


def test_invalid_utf8_bytes_are_replaced() -> None:
    fp = fingerprint_sql(b"SELECT '\xff\xfe' FROM \"t\xff\"")
    assert fp.normalized == 'SELECT ? FROM "?"'


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param("", id="empty"),
        pytest.param("   \n\t ", id="whitespace"),
        pytest.param("'", id="lone-quote"),
        pytest.param('"', id="lone-double-quote"),
        pytest.param("$$", id="lone-dollar-quote"),
        pytest.param("/*", id="open-comment"),
        pytest.param(")))(((", id="parens"),
        pytest.param("\x00\x01\x02", id="control-chars"),
        pytest.param("\ud800 SELECT", id="lone-surrogate"),
        pytest.param("SELECT " + "(" * 5000 + "1" + ")" * 5000, id="deep-nesting"),
        pytest.param(bytearray(b"SELECT 1"), id="bytearray"),
        pytest.param(memoryview(b"SELECT 1"), id="memoryview"),
        pytest.param(None, id="none"),
        pytest.param(12345, id="int"),
    ],
)
def test_garbage_never_raises(garbage: object) -> None:
    fp = fingerprint_sql(garbage)  # type: ignore[arg-type]
    assert isinstance(fp.normalized, str)
    assert re.fullmatch(r"[0-9a-f]{16}", fp.digest)


def test_literals_after_garbage_do_not_leak() -> None:
    fp = fingerprint_sql("SELECT \"abc FROM t WHERE name = 'John Smith' AND ssn = 123456789")
    assert "John" not in fp.normalized
    assert "123456789" not in fp.normalized


def test_long_statement_is_truncated_and_marked() -> None:
    sql = "SELECT * FROM t WHERE a IN (" + ", ".join(["%s"] * 200_000) + ")"
    assert len(sql) > MAX_SQL_CHARS
    start = time.perf_counter()
    fp = fingerprint_sql(sql)
    elapsed = time.perf_counter() - start
    assert fp.normalized.endswith(TRUNCATION_MARK)
    assert fp.normalized.startswith("SELECT * FROM t WHERE a IN (?, ?")
    assert len(fp.normalized) <= MAX_SQL_CHARS
    assert elapsed < TERMINATION_GUARD_S


def test_truncation_is_part_of_the_digest() -> None:
    head = "SELECT * FROM t WHERE a = 1 OR " + " OR ".join(["b = 2"] * 20_000)
    assert len(head) > MAX_SQL_CHARS
    assert fingerprint_sql(head).digest != fingerprint_sql(head[:MAX_SQL_CHARS]).digest


def test_truncation_inside_a_string_does_not_leak() -> None:
    sql = "SELECT * FROM t WHERE a = '" + "secret " * 20_000 + "'"
    fp = fingerprint_sql(sql)
    assert fp.normalized == "SELECT * FROM t WHERE a = ?" + TRUNCATION_MARK


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("'" * 1_000_000, id="quotes"),
        pytest.param("'\"" * 500_000, id="alternating-quotes"),
        pytest.param("$a$" * 333_333, id="dollar-tags"),
        pytest.param("/*" * 500_000, id="comment-openers"),
        pytest.param("E'\\" * 333_333, id="e-string-escapes"),
        pytest.param('"' + '""' * 500_000, id="doubled-identifier-quotes"),
        pytest.param("(" * 1_000_000, id="open-parens"),
        pytest.param("1" * 1_000_000, id="digits"),
    ],
)
def test_pathological_input_is_fast(sql: str) -> None:
    start = time.perf_counter()
    fingerprint_sql(sql)
    assert time.perf_counter() - start < TERMINATION_GUARD_S


def test_cache_is_bounded_and_hit() -> None:
    info = fp_module._fingerprint_cached.cache_info()
    assert info.maxsize is not None and info.maxsize <= 4096
    sql = "SELECT * FROM cache_probe WHERE x = 1"
    first = fingerprint_sql(sql)
    assert fingerprint_sql(sql) is first


def test_statements_over_the_cache_limit_are_not_cached() -> None:
    sql = "SELECT * FROM t WHERE a IN (" + ", ".join(["1"] * CACHE_MAX_CHARS) + ")"
    assert len(sql) > LONG_CACHE_MAX_CHARS
    before = fp_module._fingerprint_cached.cache_info().currsize
    before_long = fp_module._fingerprint_long_cached.cache_info().currsize
    fingerprint_sql(sql)
    assert fp_module._fingerprint_cached.cache_info().currsize == before
    assert fp_module._fingerprint_long_cached.cache_info().currsize == before_long


def _wide_select(tables: int) -> str:
    """What Django sends for a wide model with select_related: every column of every table."""
    columns = ", ".join(f'"t{t}"."column_number_{c}"' for t in range(tables) for c in range(40))
    joins = " ".join(f'INNER JOIN "t{t}" ON ("t0"."ref_{t}_id" = "t{t}"."id")' for t in range(1, tables))
    return f'SELECT {columns} FROM "t0" {joins} WHERE "t0"."id" IN (%s, %s) ORDER BY "t0"."id" LIMIT 50'


def test_long_statements_are_memoised_in_the_second_cache() -> None:
    sql = _wide_select(8)
    assert CACHE_MAX_CHARS < len(sql) <= LONG_CACHE_MAX_CHARS
    again = "".join(list(sql))  # equal, but another object: as the ORM builds it per query
    assert again is not sql
    first = fingerprint_sql(sql)
    assert first == fp_module._fingerprint_uncached(sql)
    assert fingerprint_sql(again) is first
    info = fp_module._fingerprint_long_cached.cache_info()
    assert info.maxsize is not None and info.maxsize * LONG_CACHE_MAX_CHARS <= 4 * 1024 * 1024


def test_signals_modules_import_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "import hms_otel_agent.signals.fingerprint, hms_otel_agent.signals.sql_mask, "
        "hms_otel_agent.signals.key_pattern\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'opentelemetry'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# Properties

_TEMPLATES = [
    'SELECT "hms_patient"."id", "hms_patient"."mrn" FROM "hms_patient" WHERE "hms_patient"."id" = {0} LIMIT {1}',
    'UPDATE "hms_patient" SET "name" = {0}, "age" = {1} WHERE "hms_patient"."id" IN ({list})',
    'INSERT INTO "hms_vital" ("encounter_id", "kind") VALUES {rows} RETURNING "hms_vital"."id"',
    "SELECT a, b FROM t WHERE a > {0} AND b LIKE {1} AND c = ANY(ARRAY[{list}]) ORDER BY a OFFSET {1}",
    "DELETE FROM t WHERE (x, y) IN (({0}, {1}), ({1}, {0})) AND z BETWEEN {0} AND {1}",
]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_SECRET = "ZqXw"
# (a backslash in a standard string masks the rest of the statement: see string-backslash-std)
_string_literals = st.text(max_size=30).filter(lambda s: "\\" not in s).map(lambda s: _quote(_SECRET + s))
_e_string_literals = st.text(max_size=30).map(
    lambda s: "E'" + _SECRET + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
)
_dollar_literals = (
    st.text(max_size=30)
    .filter(lambda s: "$$" not in s and not s.endswith("$"))
    .map(lambda s: f"$${_SECRET}{s}$$")
)
_number_literals = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)
_literals = st.one_of(
    _string_literals,
    _e_string_literals,
    _dollar_literals,
    _number_literals,
    st.sampled_from(["TRUE", "false", "%s", "%(pk)s", "$1", "$42", "?"]),
)


def _fill(template: str, data: st.DataObject) -> str:
    values = [data.draw(_literals) for _ in range(2)]
    items = data.draw(st.lists(_literals, min_size=1, max_size=6))
    rows = data.draw(st.lists(st.tuples(_literals, _literals), min_size=1, max_size=5))
    return template.format(
        *values,
        list=", ".join(items),
        rows=", ".join(f"({a}, {b})" for a, b in rows),
    )


@settings(max_examples=300, deadline=None)
@given(template=st.sampled_from(_TEMPLATES), data=st.data())
def test_property_same_shape_same_digest(template: str, data: st.DataObject) -> None:
    a = fingerprint_sql(_fill(template, data))
    b = fingerprint_sql(_fill(template, data))
    assert a.digest == b.digest
    assert a == b


@settings(max_examples=300, deadline=None)
@given(template=st.sampled_from(_TEMPLATES), data=st.data())
def test_property_no_literal_in_normalized(template: str, data: st.DataObject) -> None:
    normalized = fingerprint_sql(_fill(template, data)).normalized
    assert _SECRET not in normalized
    assert not re.search(r"[0-9]", normalized)  # the templates hold no digits outside literals
    assert "'" not in normalized and "$$" not in normalized


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_property_arbitrary_text_never_raises(sql: str) -> None:
    fp = fingerprint_sql(sql)
    assert re.fullmatch(r"[0-9a-f]{16}", fp.digest)
    assert fp.normalized == fp.normalized.strip()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_never_raise(sql: bytes) -> None:
    assert isinstance(fingerprint_sql(sql).normalized, str)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_property_string_content_never_survives(content: str) -> None:
    sql = f"SELECT * FROM t WHERE a = {_quote(_SECRET + content)} AND b = 1"
    tail = "" if "\\" in content else " AND b = ?"
    assert fingerprint_sql(sql).normalized == "SELECT * FROM t WHERE a = ?" + tail
