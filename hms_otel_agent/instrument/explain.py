"""Opt-in EXPLAIN of slow SELECTs (``HMS_OTEL_EXPLAIN=true``), off the request path, that cannot
write by construction.

When a DB span ends after ``HMS_OTEL_SLOW_QUERY_MS`` or more, the span processor calls
`submit()` with the statement as it was sent, its parameters and the cursor (kept on the span
record until then, never exported). On the request thread `submit` only checks and copies:

* the statement's fingerprint says SELECT (a cheap first filter; the proof comes later);
* at most one EXPLAIN per statement fingerprint per ``HMS_OTEL_EXPLAIN_INTERVAL_S`` in this
  process (the attempt counts, whether it succeeds or not);
* a bounded queue (`MAX_QUEUE`): when it is full the request is dropped and counted.

A daemon thread does the rest, on a connection of its own (never the application's: its
transaction state stays untouched), to ``HMS_OTEL_EXPLAIN_DATABASE_URL`` when set (a role without
write privileges: the one guarantee that holds whatever the statement and the server do) or with
the application's connection parameters. Each layer below stops a write on its own:

1. *The statement is proven one read-only SELECT.* The parameters are interpolated client-side
   on the worker's connection (``mogrify``: the exact text the server will see, of any length),
   and `signals.sql_summary.read_only_select` reads that text with the SQL lexer (PostgreSQL's
   lexical rules: ``--`` comments end at ``\r`` too, block comments nest, dollar quotes, E
   strings): one statement, no ``;``, SELECT or WITH first, no data-modifying CTE, no
   ``SELECT INTO``, no locking clause, nothing the lexer is unsure of. Anything else is refused
   (`refused`).
2. *One statement per round trip.* With psycopg 3 (used whenever it is installed, whatever the
   application's driver) the EXPLAIN goes through the extended query protocol, in which the
   server itself refuses a second statement. psycopg2 has only the simple protocol, in which the
   server runs every statement of the text: there the lexer alone would stand between a hidden
   statement and a write, so the worker uses psycopg2 only toward ``HMS_OTEL_EXPLAIN_DATABASE_URL``
   (a role of its own, which the docs say to make one without write privileges). With neither
   psycopg 3 nor that setting, EXPLAIN stays off: `unsafe_reason` is the one line the agent
   prints at start (and the worker refuses such a job whoever submits it: `unsafe`).
3. *A read-only transaction that is always rolled back.* Before each plan the session is reset
   (``DISCARD ALL``: settings, role, temporary tables, advisory locks) and re-asserted
   (``default_transaction_read_only = on``, ``statement_timeout``, ``lock_timeout`` and
   ``idle_in_transaction_session_timeout`` of ``HMS_OTEL_EXPLAIN_TIMEOUT_MS``); the plan runs in
   ``BEGIN READ ONLY`` (checked with ``current_setting('transaction_read_only')``), then
   ``ROLLBACK`` and ``pg_advisory_unlock_all()`` — a function the planner evaluates (an IMMUTABLE
   one is run while planning) can leave neither a lock nor a setting behind. A connection that
   is not idle afterwards is closed.

``EXPLAIN (FORMAT JSON)`` — never ANALYZE, so the statement is planned, not run — then the
estimated size of each table in the plan (``pg_class.reltuples``). The agent's own instrumentation
is suppressed there, so EXPLAIN makes no spans. The plan is reduced to node types, relations,
columns, costs and row estimates (`signals.plans.summarize`: no condition text, no literal) and
kept per fingerprint (at most `MAX_PLANS`, oldest dropped).

Where the plan goes: EXPLAIN finishes after the request that triggered it has ended, so its span
can no longer take an event. Plans are kept per fingerprint, and every later owner span with a
slow execution of that statement gets the plan as an ``hms.explain`` event and the slow-query
finding's fix from it (the index to create). Slow statements that matter recur; a statement that
is slow once only is reported without a plan. Child processes after ``fork`` start with an empty
queue, a new thread and no inherited connection (the parent's are left alone, never closed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from hms_otel_agent import guard
from hms_otel_agent.signals import plans
from hms_otel_agent.signals.records import PlanSummary
from hms_otel_agent.signals.sql_summary import read_only_select

logger = logging.getLogger("hms_otel")
COMPONENT = "EXPLAIN worker"
MAX_QUEUE = 16
MAX_PLANS = 256
MAX_TRACKED = 4096  # fingerprints remembered for the rate limit
MAX_CONNECTIONS = 4  # distinct databases the worker keeps a connection to

_TABLE_ROWS = (
    "SELECT c.relname, GREATEST(c.reltuples, COALESCE(s.n_live_tup, 0)::real) FROM pg_class c "
    "LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid "
    "WHERE c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'm')"
)


# Run before every plan, in autocommit: the session as a fresh one, then the settings the worker
# relies on, whatever an earlier statement did to them.
# (DISCARD ALL on its own: it cannot run inside the implicit transaction of a multi-statement query.)
_RESET_SESSION = (
    "SET default_transaction_read_only = on; SET statement_timeout = {ms}; "
    "SET lock_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}"
)


UNSAFE_REASON = (
    "hms-otel: HMS_OTEL_EXPLAIN=true is ignored: psycopg 3 is not installed, and psycopg2 sends the "
    "plan by the simple query protocol, in which the server also runs a statement hidden in the "
    "text; install psycopg 3 (pip install 'psycopg[binary]') or set HMS_OTEL_EXPLAIN_DATABASE_URL "
    'to a role without write privileges (docs/reliability.md, "EXPLAIN cannot write")'
)


def unsafe_reason(settings: Any) -> str | None:
    """Why EXPLAIN must stay off with these settings in this environment (one line), or None."""
    if not settings.explain or settings.explain_database_url or psycopg3_available():
        return None
    return UNSAFE_REASON


@dataclass(slots=True)
class _Job:
    driver: str
    dsn: str
    password: str
    separate_role: bool  # dsn is HMS_OTEL_EXPLAIN_DATABASE_URL
    fingerprint: str
    statement: str
    params: Any
    timeout_ms: int
    seq_scan_rows: int


def _connection_info(connection: Any) -> tuple[str, str, str] | None:
    """(driver module, dsn without password, password) of a psycopg / psycopg2 connection."""
    module = type(connection).__module__
    info = getattr(connection, "info", None)
    if info is None:
        return None
    if module.startswith("psycopg2"):
        return "psycopg2", str(connection.dsn), str(getattr(info, "password", "") or "")
    if module.startswith("psycopg"):
        return "psycopg", str(info.dsn), str(getattr(info, "password", "") or "")
    return None


class Explainer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[_Job] = queue.Queue(MAX_QUEUE)
        self._thread: threading.Thread | None = None
        self._attempts: OrderedDict[str, float] = OrderedDict()
        self._plans: OrderedDict[str, PlanSummary] = OrderedDict()
        self._connections: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.submitted = self.dropped = self.failed = self.explained = self.refused = 0
        self.unsafe = 0  # jobs refused for want of psycopg 3 or a role of their own (UNSAFE_REASON)

    # --- the request thread ---------------------------------------------------------------

    def submit(self, fingerprint: Any, execution: tuple[Any, Any, Any], settings: Any) -> bool:
        """Queue an EXPLAIN of `execution` = (statement, parameters, cursor). Never raises,
        never blocks."""
        try:
            statement, params, cursor = execution
            if not isinstance(statement, str) or fingerprint.operation != "SELECT":
                return False  # the proof that it is a read-only SELECT comes on the worker
            if os.getpid() != self._pid:
                self._after_fork()
            digest = fingerprint.digest
            now = time.monotonic()
            with self._lock:
                last = self._attempts.get(digest)
                if last is not None and now - last < settings.explain_interval_s:
                    return False
                self._attempts[digest] = now
                self._attempts.move_to_end(digest)
                while len(self._attempts) > MAX_TRACKED:
                    self._attempts.popitem(last=False)
            info = _connection_info(cursor.connection)
            if info is None:
                return False
            separate_role = bool(settings.explain_database_url)
            if separate_role:
                info = (info[0], settings.explain_database_url, "")
            if isinstance(params, list):
                params = tuple(params)
            elif isinstance(params, dict):
                params = dict(params)
            job = _Job(
                driver=info[0],
                dsn=info[1],
                password=info[2],
                separate_role=separate_role,
                fingerprint=digest,
                statement=statement,
                params=params,
                timeout_ms=settings.explain_timeout_ms,
                seq_scan_rows=settings.explain_seq_scan_rows,
            )
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.dropped += 1
                return False
            self.submitted += 1
            self._ensure_thread()
            return True
        except Exception as exc:
            guard.report(COMPONENT, exc)
            return False

    def plan_for(self, fingerprint: str) -> PlanSummary | None:
        return self._plans.get(fingerprint)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued EXPLAIN is done (for tests and shutdown); True if it is."""
        deadline = time.monotonic() + timeout_s
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def forget(self) -> None:
        """Drop plans and rate-limit state (tests)."""
        with self._lock:
            self._attempts.clear()
            self._plans.clear()

    # --- the worker ----------------------------------------------------------------------------

    def _after_fork(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                return
            orphans = list(self._connections.values())
            self._reset()
            _ORPHANS.extend(orphans)  # the parent's sockets: never closed or used here

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hms-otel-explain", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        while True:
            job = self._queue.get()
            try:
                with suppress_instrumentation():
                    self._explain(job)
            except Exception as exc:
                self.failed += 1
                logger.debug("hms-otel: EXPLAIN failed: %s", type(exc).__name__)
            finally:
                job.params = None  # drop the values as soon as possible
                self._queue.task_done()

    def _connect(self, job: _Job, driver: str) -> Any:
        key = (driver, job.dsn)
        connection = self._connections.get(key)
        if connection is not None and not getattr(connection, "closed", True):
            if _idle(connection):
                self._connections.move_to_end(key)
                return connection
            self._drop_connection(key, connection)
        timeout_s = max(1, job.timeout_ms // 1000)
        extra: dict[str, Any] = {"connect_timeout": timeout_s, "application_name": "hms-otel-explain"}
        if job.password:
            extra["password"] = job.password
        if driver == "psycopg2":
            import psycopg2

            connection = psycopg2.connect(job.dsn, **extra)
            connection.autocommit = True
        else:
            import psycopg

            connection = psycopg.connect(
                job.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, **extra
            )
        self._connections[key] = connection
        while len(self._connections) > MAX_CONNECTIONS:
            _, old = self._connections.popitem(last=False)
            with contextlib.suppress(Exception):
                old.close()
        return connection

    def _explain(self, job: _Job) -> None:
        driver = _worker_driver(job.driver, job.separate_role)
        if driver is None:
            # The simple protocol to the application's own role: never (see layer 2 above).
            if not self.unsafe:
                logger.warning(UNSAFE_REASON)
            self.unsafe += 1
            return
        connection = self._connect(job, driver)
        key = (driver, job.dsn)
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("DISCARD ALL")
                cursor.execute(_RESET_SESSION.format(ms=int(job.timeout_ms)))
                # The exact text the server will see: parameters interpolated client-side.
                text = _mogrify(cursor, job.statement, job.params)
                if not read_only_select(text):
                    self.refused += 1
                    return
                cursor.execute("BEGIN READ ONLY")
                try:
                    cursor.execute("SELECT current_setting('transaction_read_only')")
                    if cursor.fetchone()[0] != "on":
                        raise RuntimeError("the EXPLAIN transaction is not read-only")
                    explained = _plan(connection, cursor, "EXPLAIN (FORMAT JSON) " + text)
                    names = plans.relations(explained)
                    sizes: dict[str, float] = {}
                    if names:
                        cursor.execute(_TABLE_ROWS, [names])
                        for name, rows in cursor.fetchall():
                            sizes[str(name)] = max(float(rows or 0), sizes.get(str(name), 0.0))
                finally:
                    cursor.execute("ROLLBACK")
                    cursor.execute("SELECT pg_advisory_unlock_all()")
            finally:
                cursor.close()
            if not _idle(connection):
                raise RuntimeError("the EXPLAIN connection is not idle after the plan")
        except Exception:
            self._drop_connection(key, connection)
            raise
        summary = plans.summarize(job.fingerprint, explained, sizes, job.seq_scan_rows)
        if summary is None:
            self.failed += 1
            return
        with self._lock:
            self._plans[job.fingerprint] = summary
            self._plans.move_to_end(job.fingerprint)
            while len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        self.explained += 1
        logger.debug("hms-otel: plan of slow statement %s: %s", job.fingerprint, "; ".join(summary.nodes[:2]))

    def _drop_connection(self, key: tuple[str, str], connection: Any) -> None:
        self._connections.pop(key, None)
        with contextlib.suppress(Exception):
            connection.close()


@functools.cache
def psycopg3_available() -> bool:
    try:
        import psycopg  # noqa: F401
    except Exception:  # not installed, or no libpq for it
        return False
    return True


def _worker_driver(app_driver: str, separate_role: bool) -> str | None:
    """psycopg 3 whenever it can be imported (the extended protocol: one statement per round
    trip); psycopg2 (the simple protocol) only toward a role of its own; else None: no EXPLAIN."""
    if psycopg3_available():
        return "psycopg"
    return app_driver if separate_role else None


def _idle(connection: Any) -> bool:
    """No transaction open or failed on the worker's connection."""
    if type(connection).__module__.startswith("psycopg2"):
        import psycopg2.extensions

        return bool(connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE)
    import psycopg

    return bool(connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)


def _mogrify(cursor: Any, statement: str, params: Any) -> str:
    """The statement with its parameters interpolated as the driver would send it."""
    if params is None:
        return statement  # no interpolation at all: "%" stays as written, like execute() does
    text = cursor.mogrify(statement, params)
    if isinstance(text, bytes):  # psycopg2
        import psycopg2.extensions

        return text.decode(psycopg2.extensions.encodings.get(cursor.connection.encoding, "utf-8"))
    return str(text)


def _plan(connection: Any, cursor: Any, query: str) -> Any:
    """Run ``query`` (the EXPLAIN) and return its one value. With psycopg 3 through the extended
    query protocol: the server refuses more than one statement there."""
    if type(connection).__module__.startswith("psycopg2"):
        cursor.execute(query)
        return cursor.fetchone()[0]
    import json

    from psycopg import pq

    result = connection.pgconn.exec_params(query.encode(connection.info.encoding), [])
    if result.status != pq.ExecStatus.TUPLES_OK:
        raise RuntimeError(f"EXPLAIN failed ({pq.ExecStatus(result.status).name})")
    value = result.get_value(0, 0)
    if value is None:
        raise RuntimeError("EXPLAIN returned no plan")
    return json.loads(bytes(value).decode(connection.info.encoding))


_ORPHANS: list[Any] = []
EXPLAINER = Explainer()
