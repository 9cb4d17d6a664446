"""The SQL lexer against PostgreSQL itself as the oracle.

Hypothesis builds SELECT lists of literals of every kind (standard, E, N, U&, B, X, dollar-quoted,
numbers) holding quotes, backslashes, semicolons, comment openers and line breaks, with aliases
(quoted identifiers) and comments between the items (line comments ending at \\n, \\r or \\r\\n,
nested block comments), and sometimes a second statement, hidden or not. For each statement:

* the server's column count of the original (extended protocol, so one statement only) equals
  the server's column count of the *masked* statement with every ``?`` the masker wrote read as
  NULL: a masker that ended a comment, a string or an identifier where the server does not would
  swallow or leave columns, or leave text the server cannot parse;
* no character of a literal's or a comment's secret survives masking or fingerprinting;
* `read_only_select` is never true for text the server reads as more than one statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import sql_lexer as lx
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.sql_mask import mask_sql_literals
from hms_otel_agent.signals.sql_summary import read_only_select

SECRET = "Zq"
# Characters that move the boundaries a naive scanner gets wrong.
_HOSTILE = st.text(alphabet=st.sampled_from(list("ab '\"\\;-/*$\r\n\tE")), max_size=12)


def _standard(text: str) -> str:
    return "'" + (SECRET + text).replace("'", "''") + "'"


def _e_string(text: str) -> str:
    return "E'" + (SECRET + text).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dollar(text: str) -> str:
    body = SECRET + text
    tag = "q"
    while f"${tag}$" in body + "$" or body.endswith(f"${tag}"):
        tag += "q"
    return f"${tag}${body}${tag}$"


literals = st.one_of(
    _HOSTILE.map(_standard),
    _HOSTILE.map(_e_string),
    _HOSTILE.map(lambda t: "N" + _standard(t)),
    _HOSTILE.filter(lambda t: "\\" not in t).map(lambda t: "U&" + _standard(t)),
    _HOSTILE.map(_dollar),
    st.sampled_from(["B'0101'", "X'1F'", "x'ab'", "42", "3.5", ".5", "1e5", "1.5E-3", "TRUE"]),
)
aliases = st.one_of(
    st.just(""),
    _HOSTILE.filter(lambda t: '"' not in t and t).map(lambda t: f' AS "{SECRET}{t}"'),
    st.just(' AS "plain_alias"'),
)
_comment_text = _HOSTILE.map(lambda t: (SECRET + t).replace("*/", "").replace("/*", ""))
comments = st.one_of(
    st.sampled_from([" ", "\n", "\t", ""]),
    st.tuples(
        _comment_text.map(lambda t: t.replace("\r", "").replace("\n", "")),
        st.sampled_from(["\n", "\r", "\r\n"]),
    ).map(lambda p: f" --{p[0]}{p[1]}"),
    _comment_text.map(lambda t: f" /*{t}*/ "),
    st.tuples(_comment_text, _comment_text).map(lambda p: f" /* {p[0]} /* {p[1]} */ {p[0]} */ "),
)
tails = st.sampled_from(["", ";", "; SELECT 2", " --x\r; SELECT 2", " /* ; */", " --; SELECT 2\n"])


@st.composite
def statements(draw: st.DrawFn) -> str:
    items = []
    for _ in range(draw(st.integers(1, 5))):
        items.append(draw(comments) + draw(literals) + draw(aliases) + draw(comments))
    return "SELECT" + " " + ",".join(items) + draw(tails)


@pytest.fixture(scope="module")
def server(pg_url: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET standard_conforming_strings = on")
        yield conn


def _columns(conn: Any, sql: str) -> int | str:
    """Columns of ``sql`` run through the extended protocol, or the server's error message."""
    from psycopg import pq

    result = conn.pgconn.exec_params(sql.encode(), [])
    if result.status == pq.ExecStatus.TUPLES_OK:
        return int(result.nfields)
    return (result.error_message or b"").decode(errors="replace")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=statements())
def test_masked_statement_reads_like_the_original_to_the_server(server: Any, sql: str) -> None:
    original = _columns(server, sql)
    if isinstance(original, str):
        # More than one statement: the lexer must not have proven it single.
        assert "multiple commands" not in original or not read_only_select(sql), (sql, original)
        assume(False)
    assert "?" not in sql
    masked = mask_sql_literals(sql)
    for text in (masked, fingerprint_sql(sql).normalized):
        assert SECRET not in text, (sql, text)
    lexed = lx.lex(sql)
    if not lexed.certain:  # only a backslash in a standard string may make it so here
        assert any(kind == lx.UNCERTAIN and "\\" in text for _, kind, text in lexed.tokens), sql
        return
    assert _columns(server, masked.replace("?", "NULL")) == original, (sql, masked)
    # Every literal the lexer saw is a column value the server saw (and nothing more).
    literals_seen = [
        t for _, k, t in lexed.tokens if k in (lx.STRING, lx.NUMBER) or (k == lx.WORD and t.upper() == "TRUE")
    ]
    assert len(literals_seen) == original, (sql, literals_seen)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=statements())
def test_a_statement_proven_single_is_single_to_the_server(server: Any, sql: str) -> None:
    if read_only_select(sql):
        outcome = _columns(server, sql)
        assert isinstance(outcome, int), (sql, outcome)
