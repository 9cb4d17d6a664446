"""In-process fixtures for the sample app's own tests (real PostgreSQL and Redis, no mocks).

Django is set up once per test process by the shared ``django_app`` fixture (tests/conftest.py,
tests/harness/django_inprocess.py): a migrated, seeded database of its own and the session's
Redis database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from harness.django_inprocess import SEED, SEED_PATIENTS, DjangoApp

__all__ = ["SEED", "SEED_PATIENTS"]


@pytest.fixture(scope="session")
def sample_db_url(django_app: DjangoApp) -> str:
    return django_app.db_url


@pytest.fixture(scope="session")
def sample_redis_url(django_app: DjangoApp) -> str:
    return django_app.redis_url


@pytest.fixture(scope="session")
def sample_app(django_app: DjangoApp) -> None:
    """Django set up in-process on the sample app's own database, migrated and seeded."""


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
