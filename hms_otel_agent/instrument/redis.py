"""redis-py (sync, asyncio, pipelines) through the OpenTelemetry contrib instrumentation.

The contrib instrumentation records `GET ?` and nothing about the result; the agent's
request and response hooks add the key pattern, hit or miss, and the TTL of writes
(see `cache_hooks`).
"""

from __future__ import annotations

from typing import Any

from hms_otel_agent.config import Settings

REDIS_SCOPE = "opentelemetry.instrumentation.redis"


def install(settings: Settings, tracer_provider: Any) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    from hms_otel_agent.instrument import cache_hooks

    RedisInstrumentor().instrument(
        tracer_provider=tracer_provider,
        request_hook=cache_hooks.redis_request_hook(settings),
        response_hook=cache_hooks.redis_response_hook(settings),
    )


def uninstall() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor().uninstrument()
