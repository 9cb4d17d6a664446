"""The PostgreSQL and Redis fixtures give real, isolated, usable servers."""

from __future__ import annotations

import socket
import sys
from typing import Any

import psycopg
import psycopg2
import pytest
from harness.processes import run
from harness.services import (
    DB_NAME_PREFIX,
    REDIS_BASE_DB,
    claim_redis_db,
    database_of,
    free_port,
    new_database_name,
    release_redis_db,
    with_database,
    with_redis_db,
    xdist_worker_id,
)


def test_pg_url_is_a_fresh_empty_database_of_this_worker(pg_url: str) -> None:
    name = database_of(pg_url)
    assert name.startswith(DB_NAME_PREFIX)
    assert name.endswith("_" + xdist_worker_id().lower())
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)


def test_pg_url_works_with_psycopg2_and_psycopg3(pg_url: str) -> None:
    conn2 = psycopg2.connect(pg_url)
    try:
        with conn2.cursor() as cur:
            cur.execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1), (2); SELECT sum(x) FROM t")
            assert cur.fetchone() == (3,)
    finally:
        conn2.close()
    with psycopg.connect(pg_url) as conn3:
        assert conn3.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)


DJANGO_CHECK = """
import sys
from urllib.parse import urlsplit
import django
from django.conf import settings
u = urlsplit(sys.argv[1])
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": u.path.lstrip("/"), "USER": u.username or "",
    "PASSWORD": u.password or "", "HOST": u.hostname or "", "PORT": str(u.port or ""),
}})
django.setup()
from django.db import connection
with connection.cursor() as cur:
    cur.execute("SELECT current_database()")
    print(cur.fetchone()[0])
"""


def test_django_postgresql_backend_accepts_pg_url(pg_url: str) -> None:
    result = run([sys.executable, "-c", DJANGO_CHECK, pg_url], timeout=60, check=True)
    assert result.stdout.strip() == database_of(pg_url)


def test_database_names_and_urls() -> None:
    a, b = new_database_name(), new_database_name()
    assert a != b and a.startswith(DB_NAME_PREFIX) and len(a) < 63
    assert with_database("postgresql://u@h:5/test", "x") == "postgresql://u@h:5/x"
    assert with_database("postgresql://u@/test?host=/run/pg", "x") == "postgresql://u@/x?host=/run/pg"
    assert with_redis_db("redis://h:6379", 13) == "redis://h:6379/13"
    assert with_redis_db("redis://h:6379/0", 14) == "redis://h:6379/14"


def test_redis_url_is_the_reserved_database(redis_url: str, redis_client: Any) -> None:
    assert redis_url.rsplit("/", 1)[1].isdigit()
    assert 1 <= int(redis_url.rsplit("/", 1)[1]) <= REDIS_BASE_DB  # claimed (<= 12) or private (13)
    assert redis_client.connection_pool.connection_kwargs["db"] == int(redis_url.rsplit("/", 1)[1])
    redis_client.set("harness:k", "v")
    assert redis_client.get("harness:k") == b"v"


def test_each_test_run_claims_a_database_of_its_own(redis_url: str) -> None:
    first = claim_redis_db(redis_url, "run-a")
    second = claim_redis_db(redis_url, "run-b")
    try:
        assert first != second and {first, second} <= set(range(1, REDIS_BASE_DB))
        assert int(redis_url.rsplit("/", 1)[1]) not in {first, second}  # this session holds its own
        release_redis_db(redis_url, first, "run-b")  # not run-b's: stays claimed
        third = claim_redis_db(redis_url, "run-c")
        release_redis_db(redis_url, third, "run-c")
        assert third not in {first, second}
    finally:
        release_redis_db(redis_url, first, "run-a")
        release_redis_db(redis_url, second, "run-b")
    assert claim_redis_db(redis_url, "run-d") == first  # released: the highest free one again
    release_redis_db(redis_url, first, "run-d")


@pytest.mark.parametrize("round_", [1, 2])
def test_redis_client_starts_empty(redis_client: Any, round_: int) -> None:
    # The other round left a key behind: the fixture must have flushed it.
    assert redis_client.dbsize() == 0
    redis_client.set(f"harness:left-behind:{round_}", "x")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
