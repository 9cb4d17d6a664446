"""Slow queries under one owner span, with the plan when EXPLAIN ran for them.

================== ==========================================================================
slow_query         one statement that ran for ``slow_query_ms`` or longer; one finding per
                   statement fingerprint and code site, with every slow execution counted
================== ==========================================================================

The fix comes from the plan when one is known (``OwnerActivity.plans``, filled from the opt-in
background EXPLAIN, see ``instrument/explain.py``): a filtered sequential scan over a large table
gives ``CREATE INDEX ... ON table (columns)`` and the Django ``Meta.indexes`` line; otherwise the
costliest plan node is named. Without a plan the hint says how to get one and which columns the
statement filters on. Standard library only.
"""

from __future__ import annotations

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints, plans
from hms_otel_agent.signals.records import (
    DbCall,
    Finding,
    OwnerActivity,
    PlanSummary,
    db_location,
    first_model,
    most_common,
    total_ms,
)

SLOW_QUERY = "slow_query"
KINDS = (SLOW_QUERY,)


def is_slow(call: DbCall, settings: Settings) -> bool:
    if call.duration_ns < settings.slow_query_ms * 1e6:
        return False
    return call.operation not in hints.TRANSACTION_OPERATIONS


def _fix(first: DbCall, model: str, plan: PlanSummary | None) -> tuple[str, str, tuple[str, ...]]:
    """(fix, table, index columns)."""
    if plan is not None and plan.index_table:
        fix = plans.index_fix(plan.index_table, plan.index_columns, model)
        return fix, plan.index_table, plan.index_columns
    if plan is not None and plan.nodes:
        fix = f"the plan's costliest step is {plan.nodes[0]}: EXPLAIN ANALYZE it on a copy of the data"
        return fix, "", ()
    columns = ", ".join(first.filter_columns)
    if first.table and columns and first.statement.upper().startswith("SELECT"):
        fix = (
            f"EXPLAIN it (HMS_OTEL_EXPLAIN=true attaches the plan); a sequential scan of "
            f"{first.table} filtered on ({columns}) needs an index on them"
        )
    else:
        fix = "EXPLAIN it (HMS_OTEL_EXPLAIN=true attaches the plan) and index what it scans"
    return fix, "", ()


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    groups: dict[tuple[str, str, str], list[DbCall]] = {}
    for call in activity.db_calls:
        if is_slow(call, settings):
            at = db_location(call)
            site = (at.file, at.function) if at is not None else ("", "")
            groups.setdefault((call.fingerprint, *site), []).append(call)
    findings = []
    owner = activity.name or activity.route
    for calls in groups.values():
        first = calls[0]
        location = most_common(db_location(c) for c in calls)
        model = first_model(calls)
        plan = activity.plans.get(first.fingerprint)
        fix, table, columns = _fix(first, model, plan)
        duration_ms = total_ms(calls)
        slowest = max(c.duration_ns for c in calls) / 1e6
        what = hints.query_noun(model, first.table)
        subject = f"slow {what} (up to {slowest:.0f} ms) run"
        findings.append(
            Finding(
                kind=SLOW_QUERY,
                fingerprint=hints.site_fingerprint(SLOW_QUERY, first.fingerprint, location),
                repetitions=len(calls),
                duration_ms=duration_ms,
                statement=first.statement,
                model=model,
                location=location,
                fix=fix,
                hint=hints.sentence(owner, subject, len(calls), duration_ms, location, fix),
                route=activity.route,
                table=table or first.table,
                columns=columns,
            )
        )
    return findings
