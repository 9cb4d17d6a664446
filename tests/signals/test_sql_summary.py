"""signals/sql_summary.py: the statement summary that names DB spans (db.query.summary form) and
the proof EXPLAIN needs that a statement is one read-only SELECT."""

from __future__ import annotations

import pytest

from hms_otel_agent.signals.sql_summary import MAX_SUMMARY_CHARS, read_only_select, summary

SUMMARIES = [
    (
        'SELECT "hms_patient"."id" FROM "hms_patient" WHERE "hms_patient"."mrn" = %s LIMIT 21',
        "SELECT hms_patient",
    ),
    ("SELECT * FROM songs s JOIN artists a ON s.artist_id = a.id", "SELECT songs artists"),
    ("SELECT * FROM a, b x, public.c WHERE a.id IN (SELECT id FROM d)", "SELECT a b public.c d"),
    ('INSERT INTO "hms_archive" (a) SELECT a FROM hms_visit', "INSERT hms_archive SELECT hms_visit"),
    ('UPDATE "hms_patient" SET "name" = %s WHERE id = %s', "UPDATE hms_patient"),
    ('DELETE FROM "hms_patient" WHERE id = %s', "DELETE hms_patient"),
    ("WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN b ON true", "SELECT a b"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r) SELECT * FROM r", "SELECT"),
    ('SELECT EXTRACT(YEAR FROM "t"."d") FROM t', "SELECT t"),  # FROM inside a function call
    ('SELECT COUNT(*) FROM (SELECT 1 FROM "hms_visit" U0) subquery', "SELECT hms_visit"),
    ("SELECT g FROM generate_series(1, 3) g", "SELECT"),  # a function is no table
    ('SAVEPOINT "s1_x"', "SAVEPOINT"),
    ("BEGIN", "BEGIN"),
    ("/* note */ select * from T", "SELECT t"),
    ("(SELECT 1 FROM a) UNION (SELECT 2 FROM b)", "SELECT a b"),
    # never a value: a name typed as an identifier, a literal glued to a keyword, garbage
    ('SELECT * FROM "Zebediah Quillfeather"', "SELECT"),
    ("SELECT$$Zebediah$$", ""),
    ("SELECT'Zebediah'", "SELECT"),
    ("Zebediah Quillfeather", ""),
    ("SELECT * FROM t WHERE a = 'unterminated", "SELECT t"),
    ("", ""),
]


@pytest.mark.parametrize(("sql", "expected"), SUMMARIES)
def test_summary(sql: str, expected: str) -> None:
    assert summary(sql) == expected


def test_summary_is_bounded() -> None:
    sql = "SELECT * FROM " + ", ".join(f"table_number_{i}" for i in range(100))
    text = summary(sql)
    assert len(text) <= MAX_SUMMARY_CHARS and text.startswith("SELECT table_number_0 ")
    assert summary(sql * 100)  # long statements too (not memoised)


READ_ONLY = [
    ("SELECT 1", True),
    ('SELECT "insert" FROM t', True),  # a quoted name is not a keyword
    ("(SELECT 1) UNION (SELECT 2)", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("SELECT 1 --c\r; COMMIT; BEGIN READ WRITE; INSERT INTO t VALUES (1)", False),
    ("SELECT 1 --c\r; DROP TABLE t", False),
    ("SELECT 1;", False),
    ("SELECT 1; SELECT 2", False),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", False),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", False),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT * FROM t FOR NO KEY UPDATE", False),
    ("SELECT * FROM t FOR SHARE", False),
    ("SELECT * FROM t FOR KEY SHARE", False),
    ("SELECT 1 INTO x", False),
    ("COPY t TO STDOUT", False),
    ("CALL p()", False),
    ("DO $$ BEGIN END $$", False),
    ("SET default_transaction_read_only = off", False),
    ("SELECT 'a\\' ; DROP TABLE t --'", False),  # depends on standard_conforming_strings
    ("SELECT 1 /* /* */ ; DROP TABLE t", False),  # the nested comment ended before the ;
    ("SELECT 1abc", False),  # read differently across server versions
    ("SELECT 'unterminated", False),
    ("SELECT 1 \x00; DROP TABLE t", False),
    ("EXPLAIN SELECT 1", False),
    ("VALUES (1)", False),
]


@pytest.mark.parametrize(("sql", "expected"), READ_ONLY)
def test_read_only_select(sql: str, expected: bool) -> None:
    assert read_only_select(sql) is expected


def test_read_only_select_has_no_length_limit() -> None:
    padding = "SELECT '" + "x" * 20_000 + "'"
    assert read_only_select(padding)
    assert not read_only_select(padding + "; DROP TABLE t")
    assert not read_only_select(padding + " --\r; DROP TABLE t")
