"""Connection churn: new database connections opened while serving one owner (a request).

The instrumentation leaves one `ConnectCall` per Django ``connect()`` under the owner (a
``connect`` span), with the alias's ``CONN_MAX_AGE`` and whether a pool serves it:

================== ==========================================================================
connection_churn   an alias opened a connection under this owner with ``CONN_MAX_AGE = 0``
                   and no pool (Django closes it again when the request ends: every request
                   pays for a new connection), or opened ``connection_churn_threshold`` or
                   more connections under one owner whatever its settings (the code closes
                   and reopens connections)
================== ==========================================================================

Pool checkouts (Django 5.1+ ``OPTIONS={"pool": ...}``) are not new connections and never count.
One finding per alias; the fingerprint does not depend on the route (the fix is in settings).
Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints
from hms_otel_agent.signals.records import ConnectCall, Finding, OwnerActivity, total_ms

CONNECTION_CHURN = "connection_churn"
KINDS = (CONNECTION_CHURN,)


def persistent_fix(alias: str) -> str:
    return (
        f"DATABASES['{alias}']: 'CONN_MAX_AGE': 60, 'CONN_HEALTH_CHECKS': True "
        "(persistent connections), or a pool (Django 5.1+, psycopg 3): 'OPTIONS': {'pool': True}"
    )


def reuse_fix(alias: str) -> str:
    return (
        f"keep one connection to '{alias}' for the whole request: don't call connection.close() "
        "or close_old_connections() inside it; or a pool (Django 5.1+, psycopg 3): "
        "'OPTIONS': {'pool': True}"
    )


def _times(count: int) -> str:
    return f"{count} new database connection" + ("" if count == 1 else "s")


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    if not activity.connects:
        return []
    by_alias: dict[str, list[ConnectCall]] = {}
    for call in activity.connects:
        if not call.pooled:
            by_alias.setdefault(call.alias, []).append(call)
    findings = []
    owner = activity.name or activity.route
    for alias, calls in by_alias.items():
        per_request = any(c.conn_max_age == 0 for c in calls)
        if not per_request and len(calls) < settings.connection_churn_threshold:
            continue
        duration_ms = total_ms(calls)
        if per_request:
            fix = persistent_fix(alias)
            why = "CONN_MAX_AGE=0 closes it at the end of every request"
        else:
            fix = reuse_fix(alias)
            why = "the connection is closed and opened again"
        hint = (
            f"{owner}: {_times(len(calls))} to '{alias}' opened ({duration_ms:.1f} ms connecting); "
            f"{why} — {fix}"
        )
        findings.append(
            Finding(
                kind=CONNECTION_CHURN,
                fingerprint=hints.finding_fingerprint(CONNECTION_CHURN, alias, str(per_request)),
                repetitions=len(calls),
                duration_ms=duration_ms,
                fix=fix,
                hint=hint,
                route=activity.route,
                subject=f"database '{alias}'",
            )
        )
    return findings
