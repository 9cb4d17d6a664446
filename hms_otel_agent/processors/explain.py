"""EXPLAIN dispatch: slow statements to the EXPLAIN worker, its plans back onto owners.

The worker itself is instrument/explain.py (it needs a database connection); pipeline.py hands
it to the span processor as a `PlanSource`, so this layer does not import instrument/.
"""

from __future__ import annotations

from typing import Any, Protocol

from opentelemetry.sdk.trace import Span

from hms_otel_agent.config import Settings
from hms_otel_agent.signals.records import OwnerActivity, PlanSummary


class PlanSource(Protocol):
    """Where slow statements go for EXPLAIN and their plans come from (instrument/explain.py)."""

    def submit(self, fingerprint: Any, execution: tuple[Any, Any, Any], settings: Any) -> bool: ...

    def plan_for(self, fingerprint: str) -> PlanSummary | None: ...


def release_execution(
    plans: PlanSource | None, span: Span, record: Any, end_ns: int, settings: Settings
) -> None:
    """The statement and parameters leave the span record here, whatever happens next:
    queued for EXPLAIN when opted in and slow, else dropped."""
    execution = record.execution
    record.execution = None
    if (
        plans is not None
        and settings.explain
        and end_ns - (span.start_time or end_ns) >= settings.slow_query_ms * 1e6
    ):
        plans.submit(record.fingerprint, execution, settings)


def attach_plans(activity: OwnerActivity, slow_query_ms: float, plans: PlanSource) -> None:
    """Plans EXPLAIN found earlier for statements that are slow under this owner."""
    slow_ns = slow_query_ms * 1e6
    for call in activity.db_calls:
        if call.duration_ns >= slow_ns and call.fingerprint not in activity.plans:
            plan = plans.plan_for(call.fingerprint)
            if plan is not None:
                activity.plans[call.fingerprint] = plan
