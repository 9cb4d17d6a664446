"""The agent's `traced_execution` (instrument/db.py) makes the DB spans the contrib's would.

Each scenario runs on real PostgreSQL three times — through the agent's replacement (the fast
path), through the contrib's own `CursorTracer` methods with the agent's stock-path hooks
(HMS_OTEL_FAST_PATHS=false, or untested versions) and through the contrib alone — and the spans
must match in name, kind, parent, status, events and every attribute the contrib sets; the
agent's own attributes come on top, the same in both of the agent's modes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation import dbapi

from hms_otel_agent.instrument import db, sdk_internals
from hms_otel_agent.signals.sql_summary import summary as sql_summary

# Ours on top of the contrib's: the hook's attributes and the row count.
_AGENT_KEYS = re.compile(r"^(hms\.|code\.|db\.response\.returned_rows$)")


def _comparable(value: Any) -> Any:
    if isinstance(value, bytes):
        # psycopg2's tracer exports a bytes statement as bytes; the agent decodes it (UTF-8).
        value = value.decode()
    if isinstance(value, str):
        value = re.sub(r"traceparent='[^']*'", "traceparent=…", value)
    return value


def _describe(span: Any, job_id: int, agent: bool = False) -> tuple[Any, ...]:
    attributes = {
        key: _comparable(value)
        for key, value in (span.attributes or {}).items()
        if agent or not _AGENT_KEYS.match(key)
    }
    events = [(e.name, (e.attributes or {}).get("exception.type")) for e in span.events]
    parent = span.parent.span_id == job_id if span.parent is not None else None
    return (
        span.name.split(" ", 1)[0],  # the agent's name adds the tables (checked in both_ways)
        span.kind,
        parent,
        span.status.status_code,
        span.status.description,
        events,
        attributes,
    )


def _describe_contrib(described: tuple[Any, ...]) -> tuple[Any, ...]:
    """A description with the agent's attributes left out (what the contrib alone makes)."""
    attributes = {k: v for k, v in described[-1].items() if not _AGENT_KEYS.match(k)}
    return (*described[:-1], attributes)


@pytest.fixture
def both_ways(traced: Any) -> Iterator[Callable[[Callable[[], None]], tuple[list[Any], list[Any]]]]:
    """Run a scenario with the agent's DB spans (literals captured, so that the statements can
    be compared) and with the contrib's; return the spans of each."""
    settings = dataclasses.replace(traced.base_settings, capture_sql_literals=True)

    def run(scenario: Callable[[], None]) -> tuple[list[Any], list[Any]]:
        results = []
        for mode in ("fast", "stock", "contrib"):
            ours = mode != "contrib"
            db.uninstall()
            if ours:
                sdk_internals.configure(mode == "fast", installed={})
                db.install(settings)
                sdk_internals.configure(True, installed={})
                assert (db._original_traced is not None) == (mode == "fast")
            traced.clear()
            with traced.tracer.start_as_current_span("job") as job:
                scenario()
            job_id = job.get_span_context().span_id
            spans = [s for s in traced.spans() if s.name != "job"]
            assert spans, "no DB span"
            if ours:
                assert all("hms.db.fingerprint" in s.attributes for s in spans), (
                    "the agent's hook did not run"
                )
                for s in spans:  # the name is built from the statement's tokens, never its raw text
                    statement = _comparable(
                        s.attributes.get("db.query.text", s.attributes.get("db.statement"))
                    )
                    expected = sql_summary(statement)  # the summary with the stable conventions
                    if "db.query.text" not in s.attributes:
                        expected = expected.partition(" ")[0]  # the operation with the old ones
                    assert s.name == (expected or s.name)
            else:
                assert not any("hms.db.fingerprint" in s.attributes for s in spans)
            results.append([_describe(s, job_id, agent=ours) for s in spans])
        # Both of the agent's modes: the same spans, the agent's attributes included.
        assert results[0] == results[1]
        return [_describe_contrib(d) for d in results[0]], results[2]

    try:
        yield run
    finally:
        db.uninstall()
        db.install(traced.base_settings)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sync_statements(both_ways: Any, pg_url: str, driver: str) -> None:
    module = pytest.importorskip(driver)

    def scenario() -> None:
        conn = module.connect(pg_url)
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT g FROM generate_series(1, %s) g", [3])
            cursor.fetchall()
            cursor.executemany("SELECT %s::int", [(1,), (2,)])
            cursor.execute(b"SELECT 'bytes'")
            cursor.execute("/* a leading note */ SELECT 2")
            if driver == "psycopg":
                from psycopg import sql

                cursor.execute(sql.SQL("SELECT {} AS n").format(sql.Literal(5)))
            with pytest.raises(module.Error):
                cursor.execute("SELECT * FROM no_such_table")
            conn.rollback()
        finally:
            conn.close()

    ours, stock = both_ways(scenario)
    # The bytes statement: the contrib names its span after the database, the agent after the
    # statement's summary.
    assert stock[2][0] != "SELECT" and ours[2][0] == "SELECT"
    stock[2] = ("SELECT", *stock[2][1:])
    assert ours == stock
    assert ours[-1][3].name == "ERROR" and ours[-1][5][0][0] == "exception"
    assert ours[-1][5][0][1].endswith("UndefinedTable")


def test_async_psycopg(both_ways: Any, pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")

    async def statements() -> None:
        conn = await psycopg.AsyncConnection.connect(pg_url)
        try:
            cursor = conn.cursor()
            await cursor.execute("SELECT g FROM generate_series(1, %s) g", [4])
            await cursor.fetchall()
            with pytest.raises(psycopg.Error):
                await cursor.execute("SELECT * FROM no_such_table")
        finally:
            await conn.close()

    ours, stock = both_ways(lambda: asyncio.run(statements()))
    assert ours == stock
    assert [d[0] for d in ours] == ["SELECT", "SELECT"]


@pytest.mark.parametrize("comment_in_attribute", [False, True], ids=["comment-sent", "comment-exported"])
def test_sql_commenter(both_ways: Any, traced: Any, pg_url: str, comment_in_attribute: bool) -> None:
    psycopg2 = pytest.importorskip("psycopg2")

    def scenario() -> None:
        conn = dbapi.instrument_connection(
            "commenter-test",
            psycopg2.connect.__wrapped__(pg_url),  # not the instrumentor's: one span per statement
            "postgresql",
            enable_commenter=True,
            enable_attribute_commenter=comment_in_attribute,
            tracer_provider=traced.tracer_provider,
        )
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT %s::int", [7])
            assert cursor.fetchone() == (7,)
        finally:
            conn.close()

    ours, stock = both_ways(scenario)
    assert ours == stock
    statement = ours[0][6]["db.statement"]
    assert ("traceparent" in statement) is comment_in_attribute


def test_suppressed_instrumentation_makes_no_span(traced: Any, pg_url: str) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

    traced.clear()
    conn = psycopg2.connect(pg_url)
    try:
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        finally:
            detach(token)
    finally:
        conn.close()
    assert traced.spans() == []
