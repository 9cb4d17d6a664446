"""WSGI entry point of the peer benchmark's site (``gunicorn peers_site.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peers_site.settings")

application = get_wsgi_application()
