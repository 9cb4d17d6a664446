"""EXPLAIN cannot write (instrument/explain.py, docs/reliability.md "EXPLAIN cannot write").

The attacks of issue 13 on a real PostgreSQL, through the real worker (`Explainer`), each checked
for the three things that must never happen: a write (the victim table's rows and existence), a
setting left changed on the agent's connection, a lock held by the agent's backend (pg_locks, and
the application's own ``pg_try_advisory_lock``). They run with the lexer's verdict (layer 1), with
the lexer switched off (psycopg 3's extended protocol and the read-only, rolled-back, reset session
alone), and with psycopg2's simple protocol and the lexer off against a role without write
privileges (HMS_OTEL_EXPLAIN_DATABASE_URL alone). A hypothesis-built set of statements from
hostile fragments runs both ways.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from harness import processes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hms_otel_agent import config
from hms_otel_agent.instrument import explain
from hms_otel_agent.instrument.explain import Explainer
from hms_otel_agent.signals.fingerprint import fingerprint_sql

TIMEOUT_MS = 1500
SETTINGS = dataclasses.replace(
    config.load({}).settings, explain=True, explain_timeout_ms=TIMEOUT_MS, explain_interval_s=1
)
EXPECTED_SETTINGS = {
    "default_transaction_read_only": "on",
    "statement_timeout": f"{TIMEOUT_MS}ms",
    "lock_timeout": f"{TIMEOUT_MS}ms",
    "idle_in_transaction_session_timeout": f"{TIMEOUT_MS}ms",
    "transaction_read_only": "on",
}
LOCK_KEYS = (4242, 77)
PAD = "x" * 20_000  # past the old 16 KiB fingerprint cut

SCHEMA = """
DROP TABLE IF EXISTS victim;
CREATE TABLE victim (id int PRIMARY KEY);
INSERT INTO victim VALUES (1), (2), (3);
CREATE OR REPLACE FUNCTION hms_lock_immutable() RETURNS int IMMUTABLE LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_advisory_lock(4242); RETURN 1; END $$;
CREATE OR REPLACE FUNCTION hms_set_immutable() RETURNS int IMMUTABLE LANGUAGE plpgsql AS
  $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false);
     PERFORM set_config('statement_timeout', '0', false); RETURN 1; END $$;
CREATE OR REPLACE FUNCTION hms_write() RETURNS int VOLATILE LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO victim VALUES (99); RETURN 1; END $$;
"""

ATTACKS = [
    pytest.param(
        "SELECT 1 --c\r; COMMIT; BEGIN READ WRITE; INSERT INTO victim VALUES (99)", None, id="cr-insert"
    ),
    pytest.param("SELECT 1 --c\r; COMMIT; BEGIN READ WRITE; DROP TABLE victim", None, id="cr-drop"),
    pytest.param("SELECT 1 --c\r; SET default_transaction_read_only = off", None, id="cr-set-read-write"),
    pytest.param("SELECT 1 --c\r; SET SESSION statement_timeout = 0; SELECT 1", None, id="cr-set-timeout"),
    pytest.param("SELECT 1 --c\r; SELECT pg_advisory_lock(4242)", None, id="cr-advisory-lock"),
    pytest.param(f"SELECT '{PAD}'; INSERT INTO victim VALUES (99)", None, id="semicolon-after-16k"),
    pytest.param(f"SELECT '{PAD}' --\r; DROP TABLE victim", None, id="cr-after-16k"),
    pytest.param("SELECT hms_lock_immutable()", None, id="immutable-function-takes-advisory-lock"),
    pytest.param("SELECT * FROM victim WHERE id = hms_set_immutable()", None, id="immutable-function-sets"),
    pytest.param(
        "WITH x AS (INSERT INTO victim VALUES (99) RETURNING *) SELECT * FROM x", None, id="cte-insert"
    ),
    pytest.param("WITH x AS (DELETE FROM victim RETURNING *) SELECT * FROM x", None, id="cte-delete"),
    pytest.param("SELECT * FROM victim FOR UPDATE", None, id="for-update"),
    pytest.param("SELECT * FROM victim FOR KEY SHARE", None, id="for-key-share"),
    pytest.param("SELECT hms_write()", None, id="volatile-writing-function"),
    pytest.param("SELECT * INTO stolen FROM victim", None, id="select-into"),
    pytest.param("SELECT E'a\\\\'; INSERT INTO victim VALUES (99) --'", None, id="e-string-ends-early"),
    pytest.param("SELECT $$a$$; DROP TABLE victim", None, id="dollar-then-statement"),
    pytest.param("SELECT 1 /* /* */ ; DROP TABLE victim", None, id="unterminated-nested-comment"),
    pytest.param("SELECT 1 /* /* */ ; DROP TABLE victim */", None, id="nested-comment-hides-it"),
    pytest.param("SELECT %s", ["x'; INSERT INTO victim VALUES (99); --"], id="parameter-value"),
    pytest.param("SELECT %s --", ["\r; DROP TABLE victim"], id="parameter-with-cr"),
]


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    yield pg_url


@pytest.fixture(scope="module")
def read_only_url(db: str) -> Iterator[str]:
    """A login role that may read the tables and nothing else, as docs/reliability.md says."""
    import psycopg

    role = f"hms_explain_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(db)
    dbname = parts.path.lstrip("/")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    netloc = f"{role}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


@pytest.fixture
def app(db: str) -> Iterator[Any]:
    """The application's connection (autocommit, like Django's)."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        yield conn
        conn.execute(SCHEMA)  # whatever happened, the next test starts from the same state


def run(explainer: Explainer, app: Any, statement: str, params: Any = None, **changes: Any) -> None:
    explainer.forget()  # no rate limit between attacks
    job_settings = dataclasses.replace(SETTINGS, **changes)
    cursor = app.cursor()
    explainer.submit(fingerprint_sql(statement), (statement, params, cursor), job_settings)
    assert explainer.wait_idle(30)


def assert_harmless(explainer: Explainer, app: Any) -> None:
    """No write, no setting left changed on the agent's connections, no lock held by them."""
    assert app.execute("SELECT to_regclass('victim') IS NOT NULL").fetchone() == (True,)
    assert app.execute("SELECT array_agg(id ORDER BY id) FROM victim").fetchone() == ([1, 2, 3],)
    assert app.execute("SELECT to_regclass('stolen')").fetchone() == (None,)
    for connection in explainer._connections.values():
        pid = connection.info.backend_pid if hasattr(connection, "info") else connection.get_backend_pid()
        locks = app.execute("SELECT locktype, mode FROM pg_locks WHERE pid = %s", [pid]).fetchall()
        assert locks == [], locks
        assert explain._idle(connection)
        cursor = connection.cursor()
        cursor.execute("BEGIN")  # transaction_read_only shows the default for new transactions
        shown = {}
        for name in EXPECTED_SETTINGS:
            cursor.execute(f"SHOW {name}")
            shown[name] = cursor.fetchone()[0]
        cursor.execute("ROLLBACK")
        assert shown == EXPECTED_SETTINGS
    for key in LOCK_KEYS:  # the application's own advisory locks are free
        assert app.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone() == (True,)
        app.execute("SELECT pg_advisory_unlock(%s)", [key])


@pytest.fixture
def explainer() -> Iterator[Explainer]:
    worker = Explainer()
    yield worker
    assert worker.wait_idle(30)
    for connection in worker._connections.values():
        connection.close()


@pytest.mark.parametrize(("statement", "params"), ATTACKS)
def test_attack_with_every_layer(explainer: Explainer, app: Any, statement: str, params: Any) -> None:
    run(explainer, app, statement, params)
    assert explainer.failed == 0
    assert_harmless(explainer, app)


def test_the_lexer_refuses_what_it_must_and_plans_the_rest(explainer: Explainer, app: Any) -> None:
    planned = {
        "SELECT hms_lock_immutable()",
        "SELECT * FROM victim WHERE id = hms_set_immutable()",
        "SELECT hms_write()",
        "SELECT 1 /* /* */ ; DROP TABLE victim */",
        "SELECT %s",
        "SELECT %s --",
    }
    for param in ATTACKS:
        statement, params = param.values
        before = (explainer.explained, explainer.refused)
        run(explainer, app, statement, params)
        expected = (before[0] + 1, before[1]) if statement in planned else (before[0], before[1] + 1)
        assert (explainer.explained, explainer.refused) == expected, statement[:80]
    assert explainer.failed == 0
    assert_harmless(explainer, app)


@pytest.mark.parametrize(("statement", "params"), ATTACKS)
def test_attack_without_the_lexer(
    explainer: Explainer, app: Any, statement: str, params: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers 2 and 3 alone: psycopg 3's extended protocol, the reset session, BEGIN READ ONLY,
    ROLLBACK, pg_advisory_unlock_all()."""
    monkeypatch.setattr(explain, "read_only_select", lambda text: True)
    run(explainer, app, statement, params)
    assert explainer.refused == 0
    assert_harmless(explainer, app)


@pytest.mark.parametrize(("statement", "params"), ATTACKS)
def test_attack_on_psycopg2_without_the_lexer_against_a_read_only_role(
    explainer: Explainer,
    app: Any,
    read_only_url: str,
    statement: str,
    params: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simple protocol runs every statement of the text; the role cannot write."""
    monkeypatch.setattr(explain, "read_only_select", lambda text: True)
    # psycopg 3 not importable: psycopg2 is used, toward the separate role only
    monkeypatch.setattr(explain, "psycopg3_available", lambda: False)
    import psycopg2

    conn = psycopg2.connect(app.info.dsn)
    try:
        explainer.forget()
        job_settings = dataclasses.replace(SETTINGS, explain_database_url=read_only_url)
        explainer.submit(fingerprint_sql(statement), (statement, params, conn.cursor()), job_settings)
        assert explainer.wait_idle(30)
    finally:
        conn.close()
    assert all(type(c).__module__.startswith("psycopg2") for c in explainer._connections.values())
    assert_harmless(explainer, app)


def test_settings_changed_by_anyone_are_reasserted_on_the_next_use(explainer: Explainer, app: Any) -> None:
    run(explainer, app, "SELECT 1")
    (connection,) = explainer._connections.values()
    connection.execute("SET default_transaction_read_only = off")  # as a leaked statement would
    connection.execute("SET statement_timeout = 0")
    connection.execute("SELECT pg_advisory_lock(77)")
    run(explainer, app, "SELECT 2")
    assert explainer.explained == 2
    assert_harmless(explainer, app)


# --- fuzzed statements from hostile fragments -------------------------------------------------

FRAGMENTS = [
    " ",
    "\r",
    "\n",
    ";",
    "--c",
    "--c\r",
    "--c\n",
    "/*",
    "*/",
    "'",
    "''",
    "E'\\'",
    "\\",
    "$$",
    "$a$",
    '"',
    "1",
    ",",
    "(",
    ")",
    " INSERT INTO victim VALUES (99)",
    " DELETE FROM victim",
    " DROP TABLE victim",
    " COMMIT",
    " BEGIN READ WRITE",
    " SET default_transaction_read_only = off",
    " SET statement_timeout = 0",
    " SELECT pg_advisory_lock(77)",
    " hms_lock_immutable()",
    " hms_set_immutable()",
    " hms_write()",
    " FROM victim",
    " FOR UPDATE",
    " INTO stolen",
]
statements = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=14).map(
    lambda parts: "SELECT 1" + "".join(parts)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statement=statements)
def test_fuzzed_statements(explainer: Explainer, app: Any, statement: str) -> None:
    run(explainer, app, statement)
    assert_harmless(explainer, app)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statement=statements)
def test_fuzzed_statements_without_the_lexer(explainer: Explainer, app: Any, statement: str) -> None:
    original = explain.read_only_select
    explain.read_only_select = lambda text: True  # type: ignore[assignment]
    try:
        run(explainer, app, statement)
    finally:
        explain.read_only_select = original
    assert_harmless(explainer, app)


@pytest.mark.parametrize(
    ("statement", "check", "effect"),
    [
        pytest.param(
            "SELECT 1 --c\r; COMMIT; BEGIN READ WRITE; INSERT INTO victim VALUES (99)",
            "SELECT count(*) FROM victim",
            (4,),
            id="cr-insert",
        ),
        pytest.param(
            "SELECT 1 --c\r; COMMIT; BEGIN READ WRITE; DROP TABLE victim",
            "SELECT to_regclass('victim') IS NULL",
            (True,),
            id="cr-drop",
        ),
        pytest.param(
            "SELECT 1 --c\r; SET default_transaction_read_only = off",
            "SHOW default_transaction_read_only",
            ("off",),
            id="cr-set",
        ),
        pytest.param(
            "SELECT hms_lock_immutable()",
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'",
            (1,),
            id="immutable-lock",
        ),
    ],
)
def test_control_the_attacks_are_real_on_a_plain_read_only_connection(
    app: Any, db: str, statement: str, check: str, effect: tuple[Any, ...]
) -> None:
    """What the old worker did (simple protocol, default_transaction_read_only only, reused
    session): each attack has its effect, so the tests above could fail."""
    import psycopg2

    conn = psycopg2.connect(db)
    try:
        conn.autocommit = True
        cursor = conn.cursor()
        cursor.execute("SET default_transaction_read_only = on")
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement)
        cursor.execute(check)
        assert cursor.fetchone() == effect
    finally:
        conn.close()


# A process whose application uses psycopg2; "no-psycopg3" makes `import psycopg` fail in it, as
# when psycopg 3 is not installed. The agent starts as hms-otel-run's bootstrap starts it; a slow
# SELECT runs three times; then an attack is handed straight to the worker with EXPLAIN on (as a
# caller that bypasses the start-up check would), and the worker's counts are printed.
NO_PSYCOPG3_SCRIPT = """
import dataclasses, json, sys
if sys.argv[2] == "no-psycopg3":
    sys.modules["psycopg"] = None
from hms_otel_agent import agent
agent.start()
import psycopg2
from opentelemetry import trace
from hms_otel_agent import config
from hms_otel_agent.instrument import explain
from hms_otel_agent.signals.fingerprint import fingerprint_sql
conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
tracer = trace.get_tracer("explain-check")
for _ in range(3):
    with tracer.start_as_current_span("GET /slow/", kind=trace.SpanKind.SERVER):
        cursor = conn.cursor()
        cursor.execute("SELECT v.id, pg_sleep(0.05) FROM victim v WHERE v.id = %s", [1])
        cursor.fetchall()
worker = explain.EXPLAINER
worker.wait_idle(30)
before = {"submitted": worker.submitted, "explained": worker.explained, "unsafe": worker.unsafe,
          "drivers": sorted(type(c).__module__.split(".")[0] for c in worker._connections.values())}
settings = dataclasses.replace(config.load().settings, explain=True, explain_interval_s=1)
worker.forget()
explain.read_only_select = lambda text: True  # the lexer switched off: only layers 2-4 remain
attack = "SELECT 1 --c\\r; COMMIT; BEGIN READ WRITE; INSERT INTO victim VALUES (99)"
worker.submit(fingerprint_sql(attack), (attack, None, conn.cursor()), settings)
worker.wait_idle(30)
print(json.dumps({"slow_select": before, "attack": {"unsafe": worker.unsafe, "explained": worker.explained,
      "failed": worker.failed, "psycopg3": explain.psycopg3_available()}}))
"""


def _run_no_psycopg3(tmp_path: Path, db: str, mode: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    script = tmp_path / "explain_psycopg2.py"
    script.write_text(NO_PSYCOPG3_SCRIPT)
    result = processes.run(
        [str(processes.venv_executable("python")), str(script), db, mode],
        env=processes.hermetic_env(
            {
                "HMS_OTEL_EXPLAIN": "true",
                "HMS_OTEL_SLOW_QUERY_MS": "10",
                "HMS_OTEL_LOCAL_DIR": str(tmp_path / "local"),
                "HMS_OTEL_LIVE_LOG": "false",
                **env,
            }
        ),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_psycopg2_without_psycopg3_keeps_explain_off_and_says_why_once(
    tmp_path: Path, db: str, app: Any
) -> None:
    """No psycopg 3 and no HMS_OTEL_EXPLAIN_DATABASE_URL: the simple protocol would run a hidden
    second statement as the application's role, so EXPLAIN stays off (one line at start), and the
    worker refuses a job that reaches it anyway: nothing connects, nothing is written."""
    counts, stderr = _run_no_psycopg3(tmp_path, db, "no-psycopg3", {})
    assert counts["slow_select"] == {"submitted": 0, "explained": 0, "unsafe": 0, "drivers": []}
    assert counts["attack"] == {"unsafe": 1, "explained": 0, "failed": 0, "psycopg3": False}
    lines = [line for line in stderr.splitlines() if "HMS_OTEL_EXPLAIN" in line]
    # the start-up line, then the worker's own when a job reached it anyway: the same words
    assert lines == [explain.UNSAFE_REASON, explain.UNSAFE_REASON], stderr
    assert "psycopg 3" in lines[0] and "HMS_OTEL_EXPLAIN_DATABASE_URL" in lines[0]
    assert_harmless(Explainer(), app)


def test_psycopg2_without_psycopg3_explains_through_a_role_of_its_own(
    tmp_path: Path, db: str, read_only_url: str, app: Any
) -> None:
    """With HMS_OTEL_EXPLAIN_DATABASE_URL psycopg2 plans (simple protocol, the role's rights); the
    attack with the lexer off reaches the server and cannot write."""
    app.execute(f"GRANT SELECT ON victim TO {urlsplit(read_only_url).username}")  # the table is new
    counts, stderr = _run_no_psycopg3(
        tmp_path, db, "no-psycopg3", {"HMS_OTEL_EXPLAIN_DATABASE_URL": read_only_url}
    )
    assert counts["slow_select"] == {"submitted": 1, "explained": 1, "unsafe": 0, "drivers": ["psycopg2"]}
    assert counts["attack"]["unsafe"] == 0 and counts["attack"]["psycopg3"] is False
    assert "HMS_OTEL_EXPLAIN" not in stderr, stderr
    assert_harmless(Explainer(), app)


def test_psycopg2_application_with_psycopg3_installed_explains_through_psycopg3(
    tmp_path: Path, db: str, app: Any
) -> None:
    counts, stderr = _run_no_psycopg3(tmp_path, db, "with-psycopg3", {})
    assert counts["slow_select"] == {"submitted": 1, "explained": 1, "unsafe": 0, "drivers": ["psycopg"]}
    assert counts["attack"]["unsafe"] == 0 and counts["attack"]["psycopg3"] is True
    assert "HMS_OTEL_EXPLAIN" not in stderr, stderr
    assert_harmless(Explainer(), app)
