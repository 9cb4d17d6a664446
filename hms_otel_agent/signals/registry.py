"""The detectors the agent runs on every owner span, in report order. Adding a detector
means one new module in signals/ and one line here."""

from __future__ import annotations

from collections.abc import Callable

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import cache_signals, n_plus_one
from hms_otel_agent.signals.activity import Finding, OwnerActivity

Detector = Callable[[OwnerActivity, Settings], list[Finding]]

DETECTORS: list[Detector] = [
    n_plus_one.detect,
    cache_signals.detect,
]
