"""The SQL lexer (signals/sql_lexer.py): one test per lexical rule of PostgreSQL's scanner that
decides where a literal, a comment or a statement ends, and the masking that fails closed on it.
tests/reliability/test_sql_lexer_oracle.py checks the same rules against a real server."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import sql_lexer as lx
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.sql_mask import mask_sql_literals

W, Q, S, N, J, P, O, U, C, X = (  # noqa: E741 - one letter per kind keeps the table readable
    lx.WORD,
    lx.QIDENT,
    lx.STRING,
    lx.NUMBER,
    lx.JUNK,
    lx.PARAM,
    lx.OP,
    lx.PUNCT,
    lx.COMMENT,
    lx.OTHER,
)


def kinds(sql: str, placeholders: bool = True) -> list[tuple[int, str]]:
    lexed = lx.lex(sql, placeholders=placeholders)
    assert "".join(space + text for space, _, text in lexed.tokens) == sql  # lossless
    assert lexed.tokens[-1][1] == lx.END
    return [(kind, text) for _, kind, text in lexed.tokens[:-1]]


RULES = [
    # -- comments end at ANY line break: \n or \r (the EXPLAIN attack of issue 13)
    ("SELECT 1 --c\r; COMMIT", [(W, "SELECT"), (N, "1"), (C, "--c"), (U, ";"), (W, "COMMIT")]),
    ("SELECT 1 --c\n; x", [(W, "SELECT"), (N, "1"), (C, "--c"), (U, ";"), (W, "x")]),
    ("a --\x0b; b", [(W, "a"), (C, "--\x0b; b")]),  # a vertical tab does not end it
    # -- block comments nest
    ("SELECT /* a /* b */ c; */ 1", [(W, "SELECT"), (C, "/* a /* b */ c; */"), (N, "1")]),
    ("/*/ */ 1", [(C, "/*/ */"), (N, "1")]),  # "/*/" opens, its "/" does not close
    ("/**/1", [(C, "/**/"), (N, "1")]),
    ("/* a **/ b", [(C, "/* a **/"), (W, "b")]),
    # -- a comment starts inside a run of operator characters
    ("1 *--x\n2", [(N, "1"), (O, "*"), (C, "--x"), (N, "2")]),
    ("1 +/*x*/2", [(N, "1"), (O, "+"), (C, "/*x*/"), (N, "2")]),
    # -- operators ending in + or - (scan.l's rule)
    ("a=-1", [(W, "a"), (O, "="), (O, "-"), (N, "1")]),
    ("a@-1", [(W, "a"), (O, "@-"), (N, "1")]),
    ("a->>b", [(W, "a"), (O, "->>"), (W, "b")]),
    # -- strings
    ("'it''s'", [(S, "'it''s'")]),
    ("E'it\\'s' e'\\\\'", [(S, "E'it\\'s'"), (S, "e'\\\\'")]),
    ("E'a''b'", [(S, "E'a''b'")]),
    ("N'x' U&'d\\0061t' u&'x'", [(S, "N'x'"), (S, "U&'d\\0061t'"), (S, "u&'x'")]),
    ("B'01' X'1F' x'1f'", [(S, "B'01'"), (S, "X'1F'"), (S, "x'1f'")]),
    ("B'01''10'", [(S, "B'01'"), (S, "'10'")]),  # no doubled quote in a bit string
    ("somee'abc'", [(W, "somee"), (S, "'abc'")]),  # E after a letter is no E string
    ("SELECT'x'", [(W, "SELECT"), (S, "'x'")]),
    ("VALUES('x')", [(W, "VALUES"), (U, "("), (S, "'x'"), (U, ")")]),
    # -- dollar quotes
    ("$$it's; x$$", [(S, "$$it's; x$$")]),
    ("$a$ $b$ x $b$ $a$", [(S, "$a$ $b$ x $b$ $a$")]),
    ("$_1$x$_1$", [(S, "$_1$x$_1$")]),
    ("$1$", [(P, "$1"), (X, "$")]),  # a tag never starts with a digit
    ("SELECT$$John$$", [(W, "SELECT$$John$$")]),  # $ continues an identifier
    ("a$b$ c", [(W, "a$b$"), (W, "c")]),
    # -- quoted identifiers
    ('"we""ird 9"', [(Q, '"we""ird 9"')]),
    ('U&"d\\0061t"', [(Q, 'U&"d\\0061t"')]),
    ('"a"."b"', [(Q, '"a"'), (U, "."), (Q, '"b"')]),
    # -- identifiers: every non-ASCII character is a letter, no-break space included
    ("ätt1 a\xa0b", [(W, "ätt1"), (W, "a\xa0b")]),
    # -- numbers (PostgreSQL 16) and junk after them
    (
        "1e5 .5 5. 1.5E-3 0x1F 0o17 0b101 1_000",
        [(N, t) for t in ["1e5", ".5", "5.", "1.5E-3", "0x1F", "0o17", "0b101", "1_000"]],
    ),
    ("1..5", [(N, "1"), (U, ".."), (N, "5")]),
    ("t.5", [(W, "t"), (N, ".5")]),
    ("1abc $1x 0x", [(J, "1abc"), (J, "$1x"), (J, "0x")]),
    ("1$a$x$a$", [(N, "1"), (S, "$a$x$a$")]),
    # -- placeholders and punctuation
    ("%s %(pk)s %% a%%s $1", [(P, "%s"), (P, "%(pk)s"), (O, "%%"), (W, "a"), (O, "%%"), (W, "s"), (P, "$1")]),
    ("a=%s", [(W, "a"), (O, "="), (P, "%s")]),
    (
        "a::int, b := 1; c[1:2]",
        [
            (W, "a"),
            (U, "::"),
            (W, "int"),
            (U, ","),
            (W, "b"),
            (U, ":="),
            (N, "1"),
            (U, ";"),
            (W, "c"),
            (U, "["),
            (N, "1"),
            (U, ":"),
            (N, "2"),
            (U, "]"),
        ],
    ),
    ("{\\}", [(X, "{"), (X, "\\"), (X, "}")]),
]


@pytest.mark.parametrize(("sql", "expected"), RULES, ids=[repr(r[0])[:40] for r in RULES])
def test_rules(sql: str, expected: list[tuple[int, str]]) -> None:
    assert kinds(sql) == expected
    assert lx.lex(sql).certain


def test_server_reading_of_percent() -> None:
    # After client-side interpolation "%s" is the modulo operator and a column s.
    assert kinds("a %s", placeholders=False) == [(W, "a"), (O, "%"), (W, "s")]
    assert kinds("a=%s", placeholders=False) == [(W, "a"), (O, "=%"), (W, "s")]


UNCERTAIN = [
    pytest.param("SELECT 'abc", "'abc", id="unterminated-string"),
    pytest.param("SELECT '''", "'''", id="unterminated-after-doubled-quote"),
    pytest.param("SELECT E'abc\\'", "E'abc\\'", id="unterminated-e-string"),
    pytest.param('SELECT "abc FROM t', '"abc FROM t', id="unterminated-identifier"),
    pytest.param("SELECT $a$ x $b$", "$a$ x $b$", id="unterminated-dollar"),
    pytest.param("SELECT 1 /* a /* b */ c", "/* a /* b */ c", id="unterminated-nested-comment"),
    pytest.param("SELECT B'01", "B'01", id="unterminated-bit-string"),
    # standard_conforming_strings=off would end the first string at \' : two readings
    pytest.param("SELECT 'a\\', 'b'", "'a\\', 'b'", id="backslash-in-standard-string"),
    pytest.param("SELECT N'a\\'", "N'a\\'", id="backslash-in-national-string"),
    pytest.param("SELECT 1\x00; DROP TABLE t", "\x00; DROP TABLE t", id="nul"),
]


@pytest.mark.parametrize(("sql", "rest"), UNCERTAIN)
def test_uncertain_stops_at_the_token_in_doubt(sql: str, rest: str) -> None:
    lexed = lx.lex(sql)
    assert not lexed.certain
    assert lexed.tokens[-2][1:] == (lx.UNCERTAIN, rest)
    assert "".join(space + text for space, _, text in lexed.tokens) == sql


def test_unicode_string_with_backslash_is_certain() -> None:
    # U&'..' has no backslash escapes at the lexical level (and is refused when
    # standard_conforming_strings is off), so its end is certain.
    assert lx.lex("SELECT U&'a\\' , 1").certain


def test_quoted_identifier_value() -> None:
    assert lx.quoted_identifier_value('"we""ird"') == 'we"ird'
    assert lx.quoted_identifier_value('U&"x"') is None


# --- masking: what the lexer cannot read with certainty is replaced, never passed through -------

MASK = [
    pytest.param("SELECT 1 --c\r, 'Zebediah'", "SELECT ? --?\r, ?", id="comment-ends-at-cr"),
    pytest.param("SELECT /* /* */ 'Zebediah Quillfeather' */ 1", "SELECT /*?*/ ?", id="nested-comment"),
    pytest.param("SELECT /* /* */ Zebediah Quillfeather */ 1", "SELECT /*?*/ ?", id="nested-comment-words"),
    pytest.param('SELECT 1 AS "Zebediah Quillfeather"', 'SELECT ? AS "?"', id="alias"),
    pytest.param(
        'SELECT "Quillfeather"."mrn" FROM t', 'SELECT "?"."mrn" FROM t', id="capitalised-identifier"
    ),
    pytest.param("SELECT'Zebediah'", "SELECT?", id="keyword-adjacent-string"),
    pytest.param("VALUES('Zebediah')", "VALUES(?)", id="keyword-adjacent-values"),
    pytest.param("SELECT$$Zebediah$$", "?", id="dollar-after-keyword-is-one-identifier"),
    pytest.param("SELECT E'Zebe\\'diah', x'1f', X'1F'", "SELECT ?, ?, ?", id="prefixed-strings"),
    pytest.param("SELECT 'C:\\' || 'Zebediah'", "SELECT ?", id="backslash-masks-the-rest"),
    pytest.param(
        'SELECT "hms_patient"."mrn", "U0"."id", T3."x" FROM "hms_patient"',
        'SELECT "hms_patient"."mrn", "U0"."id", T3."x" FROM "hms_patient"',
        id="django-names-kept",
    ),
    pytest.param("SELECT 1\x00 'Zebediah'", "SELECT ??", id="nul"),
]


@pytest.mark.parametrize(("sql", "expected"), MASK)
def test_mask_fails_closed(sql: str, expected: str) -> None:
    assert mask_sql_literals(sql) == expected
    assert mask_sql_literals(expected) == expected
    normalized = fingerprint_sql(sql).normalized
    for secret in ("Zebediah", "Quillfeather"):
        assert secret not in normalized


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab'\"$-/*;\\\r\n eE&U1 .")), max_size=80))
def test_property_lossless_and_linear(sql: str) -> None:
    lexed = lx.lex(sql)
    assert "".join(space + text for space, _, text in lexed.tokens) == sql
    assert [k for _, k, _ in lexed.tokens].count(lx.UNCERTAIN) == (0 if lexed.certain else 1)


@pytest.mark.parametrize(
    "sql",
    ["/*" * 300_000, "$a$" * 300_000, "'" * 1_000_000, "E'\\" * 300_000, "--\r" * 300_000, "1e" * 400_000],
)
def test_megabyte_inputs_terminate(sql: str) -> None:
    start = time.perf_counter()
    lx.lex(sql)
    assert time.perf_counter() - start < 10.0  # a guard against super-linear scanning only
