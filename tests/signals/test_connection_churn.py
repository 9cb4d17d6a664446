"""Connection churn on plain records: CONN_MAX_AGE=0, reopened connections, pools."""

from __future__ import annotations

import dataclasses

from harness.records import owner as build_owner

from hms_otel_agent import config
from hms_otel_agent.signals import connections, registry
from hms_otel_agent.signals.connections import detect
from hms_otel_agent.signals.hints import finding_fingerprint
from hms_otel_agent.signals.records import ConnectCall, Finding, OwnerActivity

SETTINGS = config.load({}).settings
MS = 1_000_000


def connect(
    max_age: int | None = 0, alias: str = "default", pooled: bool = False, ms: float = 3.0
) -> ConnectCall:
    return ConnectCall(alias=alias, start_ns=0, duration_ns=int(ms * MS), conn_max_age=max_age, pooled=pooled)


def owner(*calls: ConnectCall) -> OwnerActivity:
    return build_owner("stats/", connects=calls)


def test_conn_max_age_0_is_churn_with_one_connection() -> None:
    [finding] = detect(owner(connect(0, ms=4.0)), SETTINGS)
    fix = (
        "DATABASES['default']: 'CONN_MAX_AGE': 60, 'CONN_HEALTH_CHECKS': True (persistent connections), "
        "or a pool (Django 5.1+, psycopg 3): 'OPTIONS': {'pool': True}"
    )
    assert finding == Finding(
        kind="connection_churn",
        fingerprint=finding_fingerprint("connection_churn", "default", "True"),
        repetitions=1,
        duration_ms=4.0,
        fix=fix,
        hint=(
            "GET stats/: 1 new database connection to 'default' opened (4.0 ms connecting); "
            f"CONN_MAX_AGE=0 closes it at the end of every request — {fix}"
        ),
        route="stats/",
        subject="database 'default'",
    )


def test_one_persistent_connection_is_not_churn() -> None:
    assert detect(owner(connect(60)), SETTINGS) == []
    assert detect(owner(connect(None)), SETTINGS) == []  # unlimited
    assert detect(owner(), SETTINGS) == []


def test_reopening_a_persistent_connection_in_one_request_is_churn() -> None:
    [finding] = detect(owner(connect(60), connect(60), connect(60)), SETTINGS)
    assert finding.repetitions == 3 and finding.duration_ms == 9.0
    assert finding.fix.startswith("keep one connection to 'default' for the whole request")
    assert "the connection is closed and opened again" in finding.hint
    higher = dataclasses.replace(SETTINGS, connection_churn_threshold=4)
    assert detect(owner(connect(60), connect(60), connect(60)), higher) == []


def test_pool_checkouts_never_count() -> None:
    assert detect(owner(connect(0, pooled=True), connect(0, pooled=True)), SETTINGS) == []


def test_one_finding_per_alias() -> None:
    findings = detect(owner(connect(0), connect(60, alias="replica"), connect(0, alias="reports")), SETTINGS)
    assert sorted(f.subject for f in findings) == ["database 'default'", "database 'reports'"]


def test_registered() -> None:
    assert connections.detect in registry.DETECTORS
