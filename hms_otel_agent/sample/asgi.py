"""ASGI entry point: ``uvicorn hms_otel_agent.sample.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")

application = get_asgi_application()
