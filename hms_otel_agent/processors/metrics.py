"""The span processor's metrics and the counters it writes on owner spans (names in
docs/attributes.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.trace import Span

from hms_otel_agent.signals.records import Finding, OwnerActivity


class SignalMetrics:
    """The agent's own instruments (names documented in docs/attributes.md)."""

    def __init__(self, meter: Any) -> None:
        self.findings = meter.create_counter(
            "hms.findings", unit="{finding}", description="Performance findings, by route, kind and relation."
        )
        self.cache_reads = meter.create_counter(
            "hms.cache.reads", unit="{read}", description="Cache keys read, by route, key pattern and result."
        )
        self.cache_write_ttl = meter.create_histogram(
            "hms.cache.write_ttl",
            unit="s",
            description="Expiry of cache writes, by key pattern.",
            explicit_bucket_boundaries_advisory=[1, 10, 60, 300, 900, 1800, 3600, 21600, 86400, 604800],
        )
        self.queries_per_request = meter.create_histogram(
            "hms.db.queries_per_request",
            unit="{query}",
            description="SQL statements run per request, by route.",
            explicit_bucket_boundaries_advisory=[0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377],
        )
        self.time = meter.create_counter(
            "hms.time",
            unit="s",
            description="Request time by route and part: db, cache, http, template, app (the rest).",
        )
        self.connection_uses = meter.create_counter(
            "hms.db.connection.uses",
            unit="{use}",
            description="Owner spans that ran SQL, by route and whether they reused a connection "
            "(opened none).",
        )

    def count_findings(self, findings: Iterable[Finding], route: str | None) -> None:
        """One per finding, by route (None: findings over many requests, no route), kind,
        relation and key pattern."""
        for finding in findings:
            attributes: dict[str, Any] = {}
            if route is not None:
                attributes["http.route"] = route
            attributes["hms.finding.kind"] = finding.kind
            attributes["hms.orm.relation"] = finding.relation
            attributes["hms.cache.key_pattern"] = finding.key_pattern if route is not None else ""
            self.findings.add(1, attributes)


def record_connections(
    metrics: SignalMetrics | None, span: Span, activity: OwnerActivity, route: str
) -> None:
    """Connections opened under the owner and their time; whether the owner reused one."""
    opened = [c for c in activity.connects if not c.pooled]
    if activity.connects:
        span.set_attribute("hms.db.connections_opened", len(opened))
        span.set_attribute("hms.db.connect_ms", round(sum(c.duration_ns for c in opened) / 1e6, 3))
    if activity.db_count and metrics is not None:
        metrics.connection_uses.add(1, {"http.route": route, "hms.db.connection.reused": not opened})


def record_cache(metrics: SignalMetrics | None, span: Span, activity: OwnerActivity, route: str) -> None:
    """Hits, misses and their ratio on the owner span; cache read and write-TTL metrics."""
    hits = misses = 0
    # Summed per key pattern first: one counter add per pattern and result, not per call.
    reads: dict[str, list[int]] = {}
    for call in activity.cache_calls:
        hits += call.hits
        misses += call.misses
        if metrics is None:
            continue
        if call.hits or call.misses:
            counts = reads.get(call.key_pattern)
            if counts is None:
                reads[call.key_pattern] = [call.hits, call.misses]
            else:
                counts[0] += call.hits
                counts[1] += call.misses
        if call.writes and call.ttl_s is not None:
            metrics.cache_write_ttl.record(call.ttl_s, {"hms.cache.key_pattern": call.key_pattern})
    if metrics is not None:
        for pattern, (pattern_hits, pattern_misses) in reads.items():
            if pattern_hits:
                metrics.cache_reads.add(
                    pattern_hits,
                    {"http.route": route, "hms.cache.key_pattern": pattern, "hms.cache.result": "hit"},
                )
            if pattern_misses:
                metrics.cache_reads.add(
                    pattern_misses,
                    {"http.route": route, "hms.cache.key_pattern": pattern, "hms.cache.result": "miss"},
                )
    if hits or misses:
        span.set_attribute("hms.cache.hit_count", hits)
        span.set_attribute("hms.cache.miss_count", misses)
        span.set_attribute("hms.cache.hit_ratio", round(hits / (hits + misses), 4))
