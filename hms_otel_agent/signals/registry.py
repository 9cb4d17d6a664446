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
    eager_loading,
    http_n_plus_one,
    http_sequential,
    http_slow,
    http_timeout,
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
    http_n_plus_one.detect,
    http_sequential.detect,
    http_slow.detect,
    http_timeout.detect,
]

consolidate = repeated_groups.consolidate

# Every kind of finding, in the order reports list them.
FINDING_KINDS: tuple[str, ...] = (
    n_plus_one.N_PLUS_ONE,
    n_plus_one.DUPLICATE_QUERY,
    cache_signals.CACHE_N_PLUS_ONE,
    cache_signals.CACHE_REPEATED_MISS,
    cache_signals.CACHE_MISS_WITHOUT_FILL,
    cache_signals.CACHE_WRITE_WITHOUT_TTL,
    cache_signals.CACHE_INVALIDATION_STORM,
    repeated_groups.REPEATED_GROUP,
    slow_queries.SLOW_QUERY,
    result_sets.UNBOUNDED_RESULT,
    result_sets.WIDE_RESULT,
    connections.CONNECTION_CHURN,
    eager_loading.UNUSED_EAGER_LOAD,
    http_n_plus_one.HTTP_N_PLUS_ONE,
    http_sequential.HTTP_SEQUENTIAL,
    http_slow.HTTP_SLOW_CALL,
    http_timeout.HTTP_NO_TIMEOUT,
)
