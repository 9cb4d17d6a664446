"""The detectors the agent runs on every owner span, in report order. Adding a detector
means one new module in signals/ and one line here.

`consolidate` runs after all detectors of one owner (live and in ``hms-otel analyze``): a
repeated-group finding replaces the cache N+1 findings of its key patterns."""

from __future__ import annotations

from collections.abc import Callable

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import (
    cache_signals,
    connections,
    n_plus_one,
    repeated_groups,
    result_sets,
    slow_queries,
)
from hms_otel_agent.signals.activity import Finding, OwnerActivity

Detector = Callable[[OwnerActivity, Settings], list[Finding]]

DETECTORS: list[Detector] = [
    n_plus_one.detect,
    cache_signals.detect,
    repeated_groups.detect,
    slow_queries.detect,
    result_sets.detect,
    connections.detect,
]

consolidate = repeated_groups.consolidate
