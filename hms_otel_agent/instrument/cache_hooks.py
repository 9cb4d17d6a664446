"""Hit/miss, key pattern and TTL for Redis command spans (filled in by the cache signals)."""

from __future__ import annotations

from collections.abc import Callable

from hms_otel_agent.config import Settings


def redis_request_hook(settings: Settings) -> Callable[..., None] | None:
    return None


def redis_response_hook(settings: Settings) -> Callable[..., None] | None:
    return None
