"""The bundled sample hospital-management Django project (the application being observed).

Settings module: ``hms_otel_agent.sample.settings``. Nothing in this package imports the agent.
Run it with ``python -m hms_otel_agent.sample <manage.py command>``.
"""
