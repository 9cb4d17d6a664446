"""In-process fixtures for the sample app's own tests (real PostgreSQL and Redis, no mocks).

* a throwaway database ``hms_sample_<hex>`` on ``$HMS_OTEL_TEST_DATABASE_URL``'s server
  (default postgresql://postgres@127.0.0.1:5432/test), migrated and seeded once, dropped at the end;
* Redis database 15 on ``$HMS_OTEL_TEST_REDIS_URL``'s server (default redis://127.0.0.1:6379/0),
  flushed at the start and the end. Under pytest-xdist each worker uses 13 + its index instead,
  the database the shared harness reserves for that worker (tests in a worker run one at a time),
  so that workers never flush each other's cache;
* Django set up in this process with ``hms_otel_agent.sample.settings`` pointing at both.

The environment is changed only while the settings module is imported, so processes started by
other tests do not inherit it.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

SETTINGS_MODULE = "hms_otel_agent.sample.settings"
SEED_PATIENTS = 40
SEED = 1
REDIS_DB = 15
XDIST_BASE_REDIS_DB = 13  # tests/harness: 13 + worker index on a shared server


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def sample_pg_server() -> str:
    return os.environ.get("HMS_OTEL_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def sample_db_url(sample_pg_server: str) -> Iterator[str]:
    """URL of a fresh database ``hms_sample_<hex>``; dropped (WITH FORCE) at session end."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    name = f"hms_sample_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(sample_pg_server, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {sample_pg_server}: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_path(sample_pg_server, "/" + name)
    finally:
        _close_django_connections()
        with psycopg.connect(sample_pg_server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _redis_db() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return XDIST_BASE_REDIS_DB + int(worker[2:])
    return REDIS_DB


@pytest.fixture(scope="session")
def sample_redis_url() -> Iterator[str]:
    """``redis://host:port/15`` (13 + worker index under xdist), flushed before and after."""
    redis = pytest.importorskip("redis")
    base = os.environ.get("HMS_OTEL_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    url = _with_path(base, f"/{_redis_db()}")
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def _close_django_connections() -> None:
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()


@contextmanager
def _temporary_env(values: dict[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _setup_django(db_url: str, redis_url: str) -> None:
    import django
    from django.conf import settings

    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "HMS_SAMPLE_CACHE_BACKEND": "redis",
        "HMS_SAMPLE_DEBUG": None,
    }
    if not settings.configured:
        with _temporary_env(env):
            # The settings module reads the environment when it is executed: if something imported
            # it already (a test importing its helpers), execute it again under our environment.
            module = sys.modules.get(SETTINGS_MODULE)
            if module is not None:
                importlib.reload(module)
            django.setup()
        return
    # Django was set up earlier in this process (another conftest or pytest-django): point it at
    # our database and Redis, as Django's own test runner does for its test database.
    if getattr(settings, "SETTINGS_MODULE", None) != SETTINGS_MODULE:
        pytest.skip(f"Django is already configured with {settings.SETTINGS_MODULE}")
    django.setup()
    from django.core.cache import caches
    from django.db import connections

    from hms_otel_agent.sample.settings import cache_from_env, database_from_url

    connections["default"].close()
    database = database_from_url(db_url)
    for target in (settings.DATABASES["default"], connections["default"].settings_dict):
        target.update({k: database[k] for k in ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")})
    settings.CACHES["default"] = cache_from_env("redis", redis_url)
    caches._settings = caches.settings = caches.configure_settings(None)
    caches._connections = type(caches._connections)()


def _check_targets(db_url: str, redis_url: str) -> None:
    """Refuse to migrate, seed or flush anything but the throwaway database and Redis db 15."""
    from django.conf import settings
    from django.db import connections

    db_name = urlsplit(db_url).path.lstrip("/")
    names = {settings.DATABASES["default"]["NAME"], connections["default"].settings_dict["NAME"]}
    if names != {db_name}:
        pytest.fail(f"sample settings point at database {names}, expected only {db_name!r}")
    location = settings.CACHES["default"].get("LOCATION")
    if location != redis_url:
        pytest.fail(f"sample cache points at {location!r}, expected {redis_url!r}")


@pytest.fixture(scope="session")
def sample_app(request: pytest.FixtureRequest, sample_db_url: str, sample_redis_url: str) -> Iterator[None]:
    """Django set up in-process on the throwaway database (migrated, seeded) and Redis db 15."""
    pytest.importorskip("django")
    try:  # pytest-django blocks database access once it has set Django up; lift that for us
        blocker = request.getfixturevalue("django_db_blocker")
    except pytest.FixtureLookupError:
        blocker = None
    unblocked = blocker.unblock() if blocker is not None else None
    if unblocked is not None:
        unblocked.__enter__()
    try:
        _setup_django(sample_db_url, sample_redis_url)
        _check_targets(sample_db_url, sample_redis_url)
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_hms", patients=SEED_PATIENTS, seed=SEED, flush_cache=True, verbosity=0)
        yield
    finally:
        _close_django_connections()
        if unblocked is not None:
            unblocked.__exit__(None, None, None)


@pytest.fixture
def hms_client(sample_app: None) -> Any:
    """A Django test client; the view's exception propagates (use ``hms_client_500`` for 500s)."""
    from django.test import Client

    return Client()


@pytest.fixture
def hms_client_500(sample_app: None) -> Any:
    """A Django test client that turns view exceptions into 500 responses, as a server does."""
    from django.test import Client

    return Client(raise_request_exception=False)


@pytest.fixture
def hms_cache(sample_app: None) -> Any:
    """The Django cache (Redis db 15), cleared before the test."""
    from django.core.cache import cache as django_cache

    django_cache.clear()
    return django_cache


@pytest.fixture
def count_queries(sample_app: None) -> Callable[..., Any]:
    """``with count_queries() as q: ...`` then ``len(q)``: Django's CaptureQueriesContext."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    return lambda: CaptureQueriesContext(connection)


class RedisCommands:
    """Commands that the Django cache's Redis connection sends, seen through MONITOR.

    Only commands from the cache's own (pooled, already connected) connection are kept, so other
    clients of the same server do not count. A sentinel ECHO from a second connection marks the
    end of the recording.
    """

    def __init__(self, redis_url: str) -> None:
        import redis

        self._redis = redis
        self._url = redis_url
        self.commands: list[str] = []

    @property
    def names(self) -> list[str]:
        return [c.split(" ", 1)[0].upper() for c in self.commands]

    @contextmanager
    def record(self) -> Iterator[RedisCommands]:
        from django.core.cache import caches

        # Warm the pooled connection and learn its address (CLIENT INFO runs before MONITOR starts).
        cache_client = caches["default"]._cache.get_client(write=True)
        address = cache_client.client_info()["addr"]
        monitor_client = self._redis.Redis.from_url(self._url)
        sentinel_client = self._redis.Redis.from_url(self._url)
        sentinel = f"hms-sample-sentinel-{uuid.uuid4().hex}"
        self.commands = []
        try:
            with monitor_client.monitor() as monitor:
                yield self
                sentinel_client.echo(sentinel)
                while True:
                    entry = monitor.next_command()
                    if sentinel in entry["command"]:
                        break
                    if f"{entry['client_address']}:{entry['client_port']}" == address:
                        self.commands.append(entry["command"])
        finally:
            monitor_client.close()
            sentinel_client.close()


@pytest.fixture
def redis_commands(sample_app: None, sample_redis_url: str) -> RedisCommands:
    return RedisCommands(sample_redis_url)


@pytest.fixture
def raw_redis(sample_redis_url: str) -> Iterator[Any]:
    """A separate redis-py client on db 15 (for TTL and key checks)."""
    import redis

    client = redis.Redis.from_url(sample_redis_url)
    try:
        yield client
    finally:
        client.close()
