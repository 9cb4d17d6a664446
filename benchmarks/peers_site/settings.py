"""The sample's settings, the benchmark's URLs, and the agents configured in Django settings."""

from __future__ import annotations

import os

from hms_otel_agent.sample.settings import *  # noqa: F403
from hms_otel_agent.sample.settings import INSTALLED_APPS, MIDDLEWARE

ROOT_URLCONF = "peers_site.urls"
WSGI_APPLICATION = "peers_site.wsgi.application"

_AGENT = os.environ.get("HMS_PEERS_AGENT", "")
_RATE = float(os.environ.get("HMS_PEERS_SAMPLE_RATE") or "1.0")
_SINK = os.environ.get("HMS_PEERS_SINK", "http://127.0.0.1:9")

if _AGENT == "elastic":
    # What Elastic's Django guide says: the app, the tracing middleware first, ELASTIC_APM.
    INSTALLED_APPS = [*INSTALLED_APPS, "elasticapm.contrib.django"]
    MIDDLEWARE = ["elasticapm.contrib.django.middleware.TracingMiddleware", *MIDDLEWARE]
    ELASTIC_APM = {
        "SERVICE_NAME": "hms-bench-elastic",
        "SERVER_URL": _SINK,
        "TRANSACTION_SAMPLE_RATE": _RATE,
        "ENVIRONMENT": "bench",
    }
elif _AGENT == "sentry":
    # What Sentry's Django guide says: sentry_sdk.init in settings.py.
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.redis import RedisIntegration

    sentry_sdk.init(
        dsn=_SINK.replace("http://", "http://public@") + "/1",
        integrations=[DjangoIntegration(), RedisIntegration()],
        traces_sample_rate=_RATE,
        environment="bench",
    )
