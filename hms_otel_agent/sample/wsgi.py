"""WSGI entry point: ``gunicorn hms_otel_agent.sample.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")

application = get_wsgi_application()
