"""Django set up inside the test process with the bundled sample app's settings.

One process can configure Django only once, so every in-process test (the sample app's own,
the ORM and cache instrumentation tests) shares this setup: a migrated, seeded database of its
own on the session's PostgreSQL server and the session's Redis database.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

SETTINGS_MODULE = "hms_otel_agent.sample.settings"
SEED_PATIENTS = 40
SEED = 1


@dataclass(frozen=True)
class DjangoApp:
    db_url: str
    redis_url: str


def close_django_connections() -> None:
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()


@contextmanager
def temporary_env(values: dict[str, str | None]) -> Iterator[None]:
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


def setup_django(db_url: str, redis_url: str) -> None:
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
        with temporary_env(env):
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


def check_targets(db_url: str, redis_url: str) -> None:
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


def start_django_app(db_url: str, redis_url: str) -> DjangoApp:
    """Set Django up in this process on `db_url` and `redis_url`; migrate and seed."""
    setup_django(db_url, redis_url)
    check_targets(db_url, redis_url)
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_hms", patients=SEED_PATIENTS, seed=SEED, flush_cache=True, verbosity=0)
    return DjangoApp(db_url, redis_url)
