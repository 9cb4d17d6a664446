"""The background EXPLAIN worker (instrument/explain.py) on real PostgreSQL, with psycopg and
psycopg2: a connection of its own, read-only, never running the statement, never a write, rate
limited, bounded, and failures that stay inside the agent."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from hms_otel_agent import config
from hms_otel_agent.instrument.explain import MAX_QUEUE, Explainer
from hms_otel_agent.signals.fingerprint import fingerprint_sql

SETTINGS = dataclasses.replace(config.load({}).settings, explain=True, explain_seq_scan_rows=1000)


@pytest.fixture(scope="module")
def table(pg_url: str) -> Iterator[str]:
    """A table of 5000 rows with an unindexed column, and a sequence."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS explain_t; DROP SEQUENCE IF EXISTS explain_seq")
        conn.execute("CREATE TABLE explain_t (id serial PRIMARY KEY, reason text, n int)")
        conn.execute(
            "INSERT INTO explain_t (reason, n) SELECT 'r' || (g % 500), g FROM generate_series(1, 5000) g"
        )
        conn.execute("ANALYZE explain_t")
        conn.execute("CREATE SEQUENCE explain_seq")
    yield pg_url


@pytest.fixture
def explainer() -> Iterator[Explainer]:
    worker = Explainer()
    yield worker
    assert worker.wait_idle(30)


def submit(worker: Explainer, cursor: Any, statement: str, params: Any = None, **changes: Any) -> bool:
    settings = dataclasses.replace(SETTINGS, **changes)
    return worker.submit(fingerprint_sql(statement), (statement, params, cursor), settings)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_plan_on_a_connection_of_its_own_that_changes_nothing(
    table: str, explainer: Explainer, driver: str
) -> None:
    module = pytest.importorskip(driver)
    conn = module.connect(table)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM explain_t")  # the application's transaction is open
        cursor.fetchall()
        statement = "SELECT id FROM explain_t WHERE reason = %s"
        assert submit(explainer, cursor, statement, ["r7 O'Hara"])
        assert submit(explainer, cursor, "SELECT nextval('explain_seq')")  # planned, never run
        assert explainer.wait_idle(30)
        plan = explainer.plan_for(fingerprint_sql(statement).digest)
        assert plan is not None
        assert plan.index_table == "explain_t" and plan.index_columns == ("reason",)
        assert plan.nodes[0].startswith("Seq Scan on explain_t filter (reason) cost=")
        assert "O'Hara" not in repr(plan) and "r7" not in repr(plan)
        assert explainer.explained == 2 and explainer.failed == 0
        # the application's connection is still in its transaction, and saw nothing
        status = conn.info.transaction_status if driver == "psycopg" else conn.get_transaction_status()
        assert int(status) == 2  # INTRANS
        cursor.execute("SELECT last_value, is_called FROM explain_seq")
        assert cursor.fetchone() == (1, False)
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hms-otel-explain'")
        assert cursor.fetchone()[0] >= 1
    finally:
        conn.close()


def test_the_worker_connection_is_read_only_with_timeouts(table: str, explainer: Explainer) -> None:
    import psycopg

    with psycopg.connect(table) as conn:
        assert submit(
            explainer, conn.cursor(), "SELECT id FROM explain_t WHERE n = %s", [3], explain_timeout_ms=1500
        )
        assert explainer.wait_idle(30)
    (worker_conn,) = explainer._connections.values()
    settings = {
        name: worker_conn.execute(f"SHOW {name}").fetchone()[0]
        for name in ("statement_timeout", "lock_timeout", "default_transaction_read_only")
    }
    assert settings == {
        "statement_timeout": "1500ms",
        "lock_timeout": "1500ms",
        "default_transaction_read_only": "on",
    }


def test_writes_locks_and_repeats_are_refused(table: str, explainer: Explainer) -> None:
    import psycopg

    with psycopg.connect(table) as conn:
        cursor = conn.cursor()
        assert not submit(explainer, cursor, "UPDATE explain_t SET n = 1 WHERE id = %s", [1])
        assert not submit(explainer, cursor, "INSERT INTO explain_t (n) VALUES (%s)", [1])
        # a SELECT by its fingerprint, refused by the lexer's proof on the worker
        assert submit(explainer, cursor, "SELECT id FROM explain_t FOR UPDATE")
        assert submit(explainer, cursor, "SELECT id FROM explain_t WHERE n = %s", [1])
        assert not submit(explainer, cursor, "SELECT id FROM explain_t WHERE n = %s", [2])  # rate limit
        assert explainer.wait_idle(30)
        assert explainer.submitted == 2 and explainer.refused == 1 and explainer.explained == 1


def test_the_queue_is_bounded(table: str, explainer: Explainer, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    monkeypatch.setattr(explainer, "_ensure_thread", lambda: None)  # nobody consumes yet
    with psycopg.connect(table) as conn:
        accepted = [submit(explainer, conn.cursor(), f"SELECT id AS c{i} FROM explain_t") for i in range(20)]
    assert accepted == [True] * MAX_QUEUE + [False] * (20 - MAX_QUEUE)
    assert explainer.dropped == 20 - MAX_QUEUE
    monkeypatch.undo()
    explainer._ensure_thread()
    assert explainer.wait_idle(30)
    assert explainer.explained == MAX_QUEUE


def test_a_failing_explain_stays_in_the_agent(table: str, explainer: Explainer) -> None:
    import psycopg

    with psycopg.connect(table) as conn:
        conn.execute("CREATE TEMP TABLE mine (a int)")  # invisible to any other connection
        assert submit(explainer, conn.cursor(), "SELECT a FROM mine WHERE a = %s", [1])
        assert explainer.wait_idle(30)
        assert explainer.failed == 1 and explainer.explained == 0
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (0,)  # the app's connection is fine
        assert explainer._connections == {}  # the worker's was dropped
