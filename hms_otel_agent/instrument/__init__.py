"""Instrumentation of the libraries the agent knows, each applied when it is imported.

Post-import hooks keep start-up cheap (nothing is imported that the application does not
import itself) and make the order of imports irrelevant.
"""

from __future__ import annotations

from typing import Any

import wrapt

from hms_otel_agent import guard
from hms_otel_agent.config import Settings

_installed: set[str] = set()


def install(settings: Settings, tracer_provider: Any, meter_provider: Any) -> None:
    disabled = {name.strip().lower() for name in settings.disabled_instrumentations}
    if "*" in disabled:
        return

    def when_imported(module_name: str, name: str, apply: Any) -> None:
        if name in disabled or name in _installed:
            return
        _installed.add(name)

        def hook(_module: Any) -> None:
            try:
                apply()
            except Exception as exc:
                guard.report(f"{name} instrumentation", exc)

        wrapt.register_post_import_hook(hook, module_name)

    from hms_otel_agent.instrument import db, django_orm, django_server, implicit_units, redis, units

    units.install(tracer_provider)
    implicit_units.configure(
        settings.implicit_units, settings.implicit_unit_idle_ms, settings.implicit_unit_max_calls
    )

    def instrument_psycopg2() -> None:
        from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

        db.install(settings)
        instrumentor = Psycopg2Instrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=tracer_provider,
                capture_parameters=settings.capture_sql_parameters,
                skip_dep_check=True,
            )

    def instrument_psycopg() -> None:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        db.install(settings)
        instrumentor = PsycopgInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=tracer_provider,
                capture_parameters=settings.capture_sql_parameters,
                skip_dep_check=True,
            )

    when_imported("psycopg2", "psycopg2", instrument_psycopg2)
    when_imported("psycopg", "psycopg", instrument_psycopg)
    when_imported("redis", "redis", lambda: redis.install(settings, tracer_provider))
    when_imported("celery", "celery", lambda: _instrument_celery(tracer_provider, meter_provider))
    when_imported("rq", "rq", lambda: _instrument_rq(settings, tracer_provider))
    from hms_otel_agent.instrument import http_client

    for library, apply in (
        ("requests", http_client.instrument_requests),
        ("httpx", http_client.instrument_httpx),
        ("urllib3", http_client.instrument_urllib3),
    ):
        when_imported(library, library, lambda apply=apply: apply(settings, tracer_provider, meter_provider))
    if "django" not in disabled and "django" not in _installed:
        _installed.add("django")
        django_server.when_django_ready(
            django_server.instrument_server(settings, tracer_provider, meter_provider)
        )
        django_server.when_django_ready(django_orm.install)
        from hms_otel_agent.instrument import db_connections, eager_loads

        eager_loads.install(settings, tracer_provider, meter_provider)
        django_orm._track_eager = eager_loads.track
        django_server.when_django_ready(db_connections.install(tracer_provider, meter_provider))
        from hms_otel_agent.instrument import django_cache

        django_server.when_django_ready(django_cache.when_ready(settings, tracer_provider))
        from hms_otel_agent.instrument import django_commands

        django_server.when_django_ready(django_commands.install(settings.commands_without_span))
        if "django_templates" not in disabled:
            from hms_otel_agent.instrument import django_templates

            django_server.when_django_ready(django_templates.install(tracer_provider))
        django_server.hook_django_setup()


def _instrument_celery(tracer_provider: Any, meter_provider: Any) -> None:
    from hms_otel_agent.instrument import celery

    celery.install(tracer_provider, meter_provider)


def _instrument_rq(settings: Settings, tracer_provider: Any) -> None:
    from hms_otel_agent.instrument import rq

    rq.install(tracer_provider)


def uninstall() -> None:
    """Undo what can be undone (for tests); post-import hooks stay registered but idle."""
    from hms_otel_agent.instrument import db

    for name in list(_installed):
        try:
            if name == "psycopg2":
                from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

                Psycopg2Instrumentor().uninstrument()
            elif name == "psycopg":
                from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

                PsycopgInstrumentor().uninstrument()
            elif name in ("requests", "httpx", "urllib3"):
                from hms_otel_agent.instrument import http_client

                http_client.uninstall(name)
            elif name == "redis":
                from hms_otel_agent.instrument import redis

                redis.uninstall()
            elif name == "celery":
                from hms_otel_agent.instrument import celery

                celery.uninstall()
            elif name == "rq":
                from hms_otel_agent.instrument import rq

                rq.uninstall()
            elif name == "django":
                from hms_otel_agent.instrument import django_orm, django_server

                django_server.uninstrument_server()
                django_orm.uninstall()
                django_orm._track_eager = None
                from hms_otel_agent.instrument import db_connections

                db_connections.uninstall()
                from hms_otel_agent.instrument import django_cache

                django_cache.uninstall()
                from hms_otel_agent.instrument import django_commands

                django_commands.uninstall()
                from hms_otel_agent.instrument import django_templates

                django_templates.uninstall()
        except Exception as exc:
            guard.report(f"{name} uninstrumentation", exc)
    db.uninstall()
    from hms_otel_agent.instrument import implicit_units, units

    implicit_units.set_enabled(False)
    units.uninstall()
    _installed.clear()
