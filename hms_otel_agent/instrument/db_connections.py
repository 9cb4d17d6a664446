"""Database connections: what Django's ``connect()`` costs, and under which request.

`install()` (once Django is ready) wraps ``BaseDatabaseWrapper.connect`` — what Django calls
whenever a thread's connection for an alias is missing (the first query of a request after
``CONN_MAX_AGE`` closed the previous one, after an error, or in a new thread). Each new
connection

* adds an event ``hms.db.connect`` to the span that is current (the request span, usually: the
  connection is opened before the first statement's span starts) with the time spent
  connecting and the alias's lifecycle settings: ``hms.db.alias``, ``hms.db.connect_ms``,
  ``hms.db.conn_max_age`` (seconds; -1 unlimited), ``hms.db.pooled`` (Django 5.1+
  ``OPTIONS={"pool": ...}``: a pool checkout), ``hms.db.health_checks``, ``db.system.name``
  (``db.system`` with the old names);
* leaves a `ConnectCall` on that span for the span processor, which hands it to the span's owner
  (the connection-churn detector and the per-request reuse metric read those);
* counts in ``hms.db.connections.opened`` and ``db.client.connection.create_time`` (every
  connection, including those opened outside any request).

An event rather than a span of its own: the request's span tree (and the count of its DB
children) stays what the contrib instrumentations make.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from hms_otel_agent import __version__, guard
from hms_otel_agent.signals.activity import UNKNOWN_MAX_AGE, ConnectCall
from hms_otel_agent.signals.vocabulary import CONNECT_EVENT, CONNECT_RECORD

SCOPE = "hms_otel_agent.db_connections"
EVENT_NAME = CONNECT_EVENT
COMPONENT = "DB connection hook"

_undo: list[tuple[Any, str, Any]] = []


def _lifecycle(wrapper: Any) -> tuple[str, int | None, bool, bool, str]:
    settings = wrapper.settings_dict
    max_age = settings.get("CONN_MAX_AGE", 0)
    options = settings.get("OPTIONS") or {}
    pooled = bool(options.get("pool")) if isinstance(options, dict) else False
    if max_age is not None and not isinstance(max_age, int):
        try:
            max_age = int(max_age)
        except (TypeError, ValueError):
            max_age = UNKNOWN_MAX_AGE
    return (
        str(wrapper.alias),
        max_age,
        pooled,
        bool(settings.get("CONN_HEALTH_CHECKS", False)),
        str(getattr(wrapper, "vendor", "") or ""),
    )


def _record(wrapper: Any, start_ns: int, duration_ns: int, metrics: tuple[Any, Any]) -> None:
    alias, max_age, pooled, health_checks, vendor = _lifecycle(wrapper)
    opened, create_time = metrics
    opened.add(1, {"hms.db.alias": alias, "hms.db.pooled": pooled})
    create_time.record(duration_ns / 1e9, {"db.client.connection.pool.name": alias, "hms.db.pooled": pooled})
    span = trace.get_current_span()
    if not span.is_recording():
        return
    event: dict[str, Any] = dict.fromkeys(_system_keys, vendor)
    span.add_event(
        EVENT_NAME,
        {
            **event,
            "hms.db.alias": alias,
            "hms.db.connect_ms": round(duration_ns / 1e6, 3),
            "hms.db.conn_max_age": -1 if max_age is None else max_age,
            "hms.db.pooled": pooled,
            "hms.db.health_checks": health_checks,
        },
        timestamp=start_ns,
    )
    call = ConnectCall(alias, start_ns, duration_ns, max_age, pooled, vendor)
    calls = getattr(span, CONNECT_RECORD, None)
    if calls is None:
        setattr(span, CONNECT_RECORD, [call])
    elif len(calls) < 1000:
        calls.append(call)


# The event's name for the database system, as the database semantic-convention mode says.
_system_keys: tuple[str, ...] = ("db.system",)


def _database_system_keys() -> tuple[str, ...]:
    from hms_otel_agent.instrument.db_semconv import database_mode

    mode = database_mode()
    return (("db.system",) if mode.old else ()) + (("db.system.name",) if mode.stable else ())


def install(tracer_provider: Any, meter_provider: Any) -> Callable[[], None]:
    """The Django-ready callback that wraps ``BaseDatabaseWrapper.connect``."""

    def install_connection_hook() -> None:
        global _system_keys
        if _undo:
            return
        _system_keys = _database_system_keys()
        from django.db.backends.base.base import BaseDatabaseWrapper

        meter = meter_provider.get_meter(SCOPE, __version__)
        metrics = (
            meter.create_counter(
                "hms.db.connections.opened",
                unit="{connection}",
                description="New database connections opened by Django (pool checkouts marked pooled).",
            ),
            meter.create_histogram(
                "db.client.connection.create_time",
                unit="s",
                description="Time it took to open a new database connection.",
                explicit_bucket_boundaries_advisory=[
                    0.001,
                    0.0025,
                    0.005,
                    0.01,
                    0.025,
                    0.05,
                    0.1,
                    0.25,
                    1,
                    5,
                ],
            ),
        )
        original = BaseDatabaseWrapper.connect

        @functools.wraps(original)
        def connect(self: Any) -> Any:
            start_ns = time.time_ns()
            started = time.perf_counter_ns()
            result = original(self)
            try:
                _record(self, start_ns, time.perf_counter_ns() - started, metrics)
            except Exception as exc:
                guard.report(COMPONENT, exc)
            return result

        BaseDatabaseWrapper.connect = connect
        _undo.append((BaseDatabaseWrapper, "connect", original))

    return install_connection_hook


def uninstall() -> None:
    while _undo:
        owner, name, original = _undo.pop()
        setattr(owner, name, original)
