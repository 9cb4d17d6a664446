"""Live SDK spans -> the plain records of signals/: the span processor (grouping.py) and its
helpers by job — redaction.py, metrics.py, explain.py (EXPLAIN dispatch)."""

from __future__ import annotations

from hms_otel_agent.processors.grouping import SignalProcessor
from hms_otel_agent.processors.metrics import SignalMetrics

__all__ = ["SignalMetrics", "SignalProcessor"]
