"""Settings of the bundled sample hospital-management project.

Everything that differs between machines comes from the environment:

``DATABASE_URL``             postgresql://user[:password]@host:port/dbname
                             (default postgresql://postgres@127.0.0.1:5432/test)
``REDIS_URL``                redis://host:port/db (default redis://127.0.0.1:6379/0)
``HMS_SAMPLE_CACHE_BACKEND`` ``redis`` (default) or ``locmem`` (no Redis needed)
``HMS_SAMPLE_CONN_MAX_AGE``  seconds a database connection is kept (default 60)
``HMS_SAMPLE_DEBUG``         ``1``/``true`` turns DEBUG on (default off)

This is a demo project: the secret key is a fixed dummy value.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str, conn_max_age: int = 60) -> dict[str, Any]:
    """Turn ``postgresql://user:password@host:port/dbname`` into a Django DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": conn_max_age,
        # The server reports UTC, so Django does not send SET TIME ZONE on connect.
        "OPTIONS": {"options": "-c timezone=UTC"},
    }


def cache_from_env(backend: str, redis_url: str) -> dict[str, Any]:
    if backend == "locmem":
        return {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "hms-sample",
            "KEY_PREFIX": "",
            "VERSION": 1,
        }
    if backend != "redis":
        raise ValueError(f"HMS_SAMPLE_CACHE_BACKEND must be 'redis' or 'locmem', got {backend!r}")
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_url,
        "KEY_PREFIX": "",
        "VERSION": 1,
    }


SECRET_KEY = "hms-sample-not-a-secret-demo-key-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = _env_bool("HMS_SAMPLE_DEBUG")
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "hms_otel_agent.sample.hms",
    "rest_framework",
    "taggit",
    "hms_otel_agent.sample.clinic",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "hms_otel_agent.sample.urls"
WSGI_APPLICATION = "hms_otel_agent.sample.wsgi.application"
ASGI_APPLICATION = "hms_otel_agent.sample.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        conn_max_age=int(os.environ.get("HMS_SAMPLE_CONN_MAX_AGE") or 60),
    ),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": cache_from_env(
        (os.environ.get("HMS_SAMPLE_CACHE_BACKEND") or "redis").strip().lower(),
        os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
    ),
}

# The FHIR server of the outbound-API views (hms/outbound.py); the demo starts a fake one.
HMS_SAMPLE_FHIR_URL = os.environ.get("HMS_SAMPLE_FHIR_URL", "")

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

STATIC_URL = "static/"
