"""The findings report: findings grouped by fingerprint across requests, and cache hit ratios.

`Aggregator` takes owners (one per request, task or test) with their findings, one at a time,
and keeps only running totals, so a long test run or a large file needs little memory.
`Report.to_dict()` is the stable JSON schema documented in docs/report.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from hms_otel_agent.config import Settings
from hms_otel_agent.report.spans import Owner
from hms_otel_agent.signals.cache_signals import group_of, most_informative
from hms_otel_agent.signals.records import CodeLocation, Finding

SCHEMA = "hms-otel-report/1"
RECORDED = "recorded"  # findings the live agent wrote into the telemetry (hms-otel report)
ANALYZED = "analyzed"  # findings detected here from raw spans (hms-otel analyze)

AGGREGATE_ROUTE = "(across requests)"  # the route shown for findings decided over many requests

# A key pattern read at least this often with a hit ratio below this is a warming candidate.
WARMING_MIN_READS = 20
WARMING_MAX_HIT_RATIO = 0.5


# What a group takes from its findings: each field from the first finding that has it.
_FILLED = (
    "statement",
    "model",
    "relation",
    "relation_kind",
    "key_pattern",
    "fix",
    "subject",
    "location",
    "origin",
)


@dataclass
class FindingGroup:
    """One finding fingerprint, over every request it occurred in: what the findings are about
    (`about`, a Finding: fingerprint, kind, statement, relation, location, fix, the hint of the
    worst occurrence, ...) and the counts over its occurrences."""

    about: Finding
    requests: int = 0
    repetitions: int = 0
    max_repetitions: int = 0
    total_ms: float = 0.0
    routes: dict[str, float] = field(default_factory=dict)  # route -> time spent there
    services: set[str] = field(default_factory=set)
    planned: bool = False  # a slow query's plan gave the fix
    _worst_ms: float = -1.0
    _hint_fixed: bool = False  # the hint is of an occurrence that showed a fix

    @classmethod
    def of(cls, fingerprint: str, kind: str) -> FindingGroup:
        """An empty group (its `about` filled by `add`)."""
        return cls(Finding(kind=kind, fingerprint=fingerprint, repetitions=0, duration_ms=0.0))

    @property
    def per_request_ms(self) -> float:
        return self.total_ms / self.requests if self.requests else 0.0

    @property
    def route_list(self) -> list[str]:
        return [r for r, _ in sorted(self.routes.items(), key=lambda item: (-item[1], item[0]))]

    @property
    def subject(self) -> str:
        """The relation, key pattern, or table the finding is about."""
        about = self.about
        return about.subject or about.relation or about.key_pattern or about.model or _table(about.statement)

    def _fill(self, other: Finding, changes: dict[str, Any]) -> None:
        """Set `changes`, then each field still empty from `other`."""
        about = self.about
        for name in _FILLED:
            if not changes.get(name, getattr(about, name)) and getattr(other, name):
                changes[name] = getattr(other, name)
        if changes:
            self.about = replace(about, **changes)

    def add(self, finding: Finding, route: str, service: str) -> None:
        self.requests += 1
        self.repetitions += finding.repetitions
        self.max_repetitions = max(self.max_repetitions, finding.repetitions)
        self.total_ms += finding.duration_ms
        self.routes[route] = self.routes.get(route, 0.0) + finding.duration_ms
        if service:
            self.services.add(service)
        changes: dict[str, Any] = {}
        # The hint of the worst occurrence, but one that shows a fix over one whose fix was
        # still being checked (the same cause: the fix is the same on every occurrence).
        if (finding.duration_ms > self._worst_ms and (finding.fix or not self._hint_fixed)) or (
            finding.fix and not self._hint_fixed
        ):
            self._worst_ms = finding.duration_ms
            if finding.hint:
                changes["hint"] = finding.hint
            self._hint_fixed = bool(finding.fix)
        if finding.columns and not self.planned:
            # A plan arrived (slow queries): its index is the fix from now on.
            changes["fix"], self.planned = finding.fix, True
        self._fill(finding, changes)

    def merge(self, other: FindingGroup) -> None:
        """Add `other` (the same fingerprint, aggregated elsewhere: another xdist worker)."""
        self.requests += other.requests
        self.repetitions += other.repetitions
        self.max_repetitions = max(self.max_repetitions, other.max_repetitions)
        self.total_ms += other.total_ms
        for route, ms in other.routes.items():
            self.routes[route] = self.routes.get(route, 0.0) + ms
        self.services |= other.services
        changes: dict[str, Any] = {}
        if (other._worst_ms > self._worst_ms and (other._hint_fixed or not self._hint_fixed)) or (
            other._hint_fixed and not self._hint_fixed
        ):
            self._worst_ms = other._worst_ms
            if other.about.hint:
                changes["hint"] = other.about.hint
            self._hint_fixed = other._hint_fixed
        if other.planned and not self.planned:
            changes["fix"], self.planned = other.about.fix, True
        self._fill(other.about, changes)

    def state(self) -> dict[str, Any]:
        """Plain data (what execnet can send) that `from_state` turns back into this group."""
        about = self.about
        return {
            **{name: getattr(about, name) for name in _ABOUT_FIELDS},
            **{name: getattr(self, name) for name in _GROUP_FIELDS},
            "location": _location_state(about.location),
            "origin": _location_state(about.origin),
            "routes": dict(self.routes),
            "services": sorted(self.services),
            "worst_ms": self._worst_ms,
            "hint_fixed": self._hint_fixed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FindingGroup:
        about = Finding(
            repetitions=0,
            duration_ms=0.0,
            location=_location_from_state(state.get("location")),
            origin=_location_from_state(state.get("origin")),
            **{name: state[name] for name in _ABOUT_FIELDS},
        )
        group = cls(about, **{name: state[name] for name in _GROUP_FIELDS})
        group.routes = {str(k): float(v) for k, v in state.get("routes", {}).items()}
        group.services = set(state.get("services", ()))
        group._worst_ms = float(state.get("worst_ms", -1.0))
        group._hint_fixed = bool(state.get("hint_fixed", False))
        return group

    def to_dict(self) -> dict[str, Any]:
        routes = self.route_list
        about = self.about
        return {
            "fingerprint": about.fingerprint,
            "kind": about.kind,
            "route": routes[0] if routes else "",
            "routes": routes,
            "subject": self.subject,
            "relation": about.relation,
            "relation_kind": about.relation_kind,
            "model": about.model,
            "key_pattern": about.key_pattern,
            "statement": about.statement,
            "requests": self.requests,
            "repetitions": self.repetitions,
            "max_repetitions": self.max_repetitions,
            "total_ms": round(self.total_ms, 3),
            "per_request_ms": round(self.per_request_ms, 3),
            "location": _location_dict(about.location),
            "origin": _location_dict(about.origin),
            "fix": about.fix,
            "hint": about.hint,
            "services": sorted(self.services),
        }


_ABOUT_FIELDS = (
    "fingerprint", "kind", "statement", "model", "relation", "relation_kind", "key_pattern", "fix", "hint",
    "subject",
)  # fmt: skip
_GROUP_FIELDS = ("requests", "repetitions", "max_repetitions", "total_ms", "planned")


def _location_state(location: CodeLocation | None) -> list[Any] | None:
    return None if location is None else [location.file, location.line, location.function]


def _location_from_state(value: Any) -> CodeLocation | None:
    return CodeLocation(str(value[0]), int(value[1]), str(value[2])) if value else None


def _location_dict(location: CodeLocation | None) -> dict[str, Any] | None:
    if location is None:
        return None
    return {"file": location.file, "line": location.line, "function": location.function}


def _table(statement: str) -> str:
    words = statement.replace('"', "").split()
    upper = [w.upper() for w in words]
    for keyword in ("FROM", "INTO", "UPDATE"):
        if keyword in upper:
            index = upper.index(keyword) + 1
            if index < len(words):
                return words[index]
    return ""


@dataclass
class KeyPatternStats:
    key_pattern: str
    reads: int = 0
    hits: int = 0
    misses: int = 0
    writes: int = 0
    writes_without_ttl: int = 0
    deletes: int = 0

    @property
    def hit_ratio(self) -> float | None:
        return self.hits / (self.hits + self.misses) if (self.hits + self.misses) else None

    @property
    def warming_candidate(self) -> bool:
        ratio = self.hit_ratio
        return ratio is not None and self.reads >= WARMING_MIN_READS and ratio < WARMING_MAX_HIT_RATIO

    def to_dict(self) -> dict[str, Any]:
        ratio = self.hit_ratio
        return {
            "key_pattern": self.key_pattern,
            "reads": self.reads,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": None if ratio is None else round(ratio, 4),
            "writes": self.writes,
            "writes_without_ttl": self.writes_without_ttl,
            "deletes": self.deletes,
            "warming_candidate": self.warming_candidate,
        }


TIME_PARTS = ("db_ms", "cache_ms", "http_ms", "template_ms", "app_ms")  # signals/time_split.KEYS


@dataclass
class RouteTime:
    """Where the time of one route's requests (or one owner name's runs) went, summed."""

    route: str
    owners: int = 0
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIME_PARTS, 0.0))

    @property
    def total_ms(self) -> float:
        return sum(self.parts.values())

    def add(self, time: dict[str, float], owners: int = 1) -> None:
        self.owners += owners
        for key in TIME_PARTS:
            self.parts[key] += time.get(key, 0.0)

    def share(self, key: str) -> float:
        total = self.total_ms
        return self.parts[key] / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        total = self.total_ms
        return {
            "route": self.route,
            "owners": self.owners,
            "total_ms": round(total, 3),
            "mean_ms": round(total / self.owners, 3) if self.owners else 0.0,
            **{key: round(value, 3) for key, value in self.parts.items()},
            "shares": {key.removesuffix("_ms"): round(self.share(key), 4) for key in TIME_PARTS},
        }


@dataclass
class Summary:
    spans: int = 0
    traces: int = 0
    owners: int = 0
    requests: int = 0
    tests: int = 0  # pytest plugin: the owner spans of test bodies
    owners_with_findings: int = 0
    db_queries: int = 0
    db_time_ms: float = 0.0
    cache_reads: int = 0
    cache_hits: int = 0
    services: set[str] = field(default_factory=set)
    run_ids: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        ratio = self.cache_hits / self.cache_reads if self.cache_reads else None
        return {
            "spans": self.spans,
            "traces": self.traces,
            "owners": self.owners,
            "requests": self.requests,
            "tests": self.tests,
            "owners_with_findings": self.owners_with_findings,
            "db_queries": self.db_queries,
            "db_time_ms": round(self.db_time_ms, 3),
            "cache_reads": self.cache_reads,
            "cache_hit_ratio": None if ratio is None else round(ratio, 4),
            "services": sorted(self.services),
            "run_ids": sorted(self.run_ids),
        }


@dataclass
class Report:
    source: str
    inputs: list[str]
    summary: Summary
    findings: list[FindingGroup]
    key_patterns: list[KeyPatternStats]
    thresholds: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    time: list[RouteTime] = field(default_factory=list)  # busiest first

    @property
    def warming_candidates(self) -> list[KeyPatternStats]:
        return [k for k in self.key_patterns if k.warming_candidate]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "source": self.source,
            "inputs": list(self.inputs),
            "thresholds": dict(self.thresholds),
            "summary": self.summary.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "cache": {
                "key_patterns": [k.to_dict() for k in self.key_patterns],
                "warming_candidates": [k.key_pattern for k in self.warming_candidates],
            },
            "notes": list(self.notes),
            "time": [t.to_dict() for t in self.time],
        }


def thresholds_of(settings: Settings) -> dict[str, Any]:
    return {
        "n_plus_one": settings.n_plus_one_threshold,
        "n_plus_one_min_duration_ms": settings.n_plus_one_min_duration_ms,
        "duplicate_query": settings.duplicate_query_threshold,
        "cache_n_plus_one": settings.cache_n_plus_one_threshold,
        "cache_invalidation": settings.cache_invalidation_threshold,
        "large_result_rows": settings.large_result_rows,
        "wide_result_columns": settings.wide_result_columns,
        "slow_query_ms": settings.slow_query_ms,
        "connection_churn": settings.connection_churn_threshold,
        "repeated_group": settings.repeated_group_threshold,
        "http_n_plus_one": settings.http_n_plus_one_threshold,
        "http_slow_ms": settings.http_slow_ms,
        "http_sequential_min_calls": settings.http_sequential_min_calls,
        "http_sequential_min_saved_ms": settings.http_sequential_min_saved_ms,
        "http_sequential_max_gap_ms": settings.http_sequential_max_gap_ms,
        "unused_eager_min_loads": settings.unused_eager_min_loads,
        "warming_min_reads": WARMING_MIN_READS,
        "warming_max_hit_ratio": WARMING_MAX_HIT_RATIO,
    }


_SUMMARY_COUNTS = (
    "spans", "owners", "requests", "tests", "owners_with_findings", "db_queries", "db_time_ms", "cache_reads",
    "cache_hits",
)  # fmt: skip


class Aggregator:
    def __init__(self, source: str, inputs: Iterable[str] = (), settings: Settings | None = None) -> None:
        self.source = source
        self.inputs = list(inputs)
        self.summary = Summary()
        self.groups: dict[str, FindingGroup] = {}
        self.patterns: dict[str, KeyPatternStats] = {}
        self.thresholds = thresholds_of(settings) if settings is not None else {}
        self.notes: list[str] = []
        self._traces: set[str] = set()
        self.times: dict[str, RouteTime] = {}

    def add_spans(self, count: int) -> None:
        self.summary.spans += count

    def add(self, owner: Owner, findings: list[Finding]) -> None:
        summary = self.summary
        activity = owner.activity
        if owner.aggregate:  # the agent's own span for findings over many requests
            self._add_findings(owner, findings)
            return
        summary.owners += 1
        if owner.is_request:
            summary.requests += 1
        elif owner.is_test:
            summary.tests += 1
        if owner.trace_id:
            self._traces.add(owner.trace_id)
            summary.traces = len(self._traces)
        summary.db_queries += activity.db_count
        summary.db_time_ms += activity.db_duration_ns / 1e6
        if owner.service:
            summary.services.add(owner.service)
        if owner.run_id:
            summary.run_ids.add(owner.run_id)
        for call in activity.cache_calls:
            if not (call.reads or call.writes or call.deletes):
                continue
            # One row per group: a pattern that gained a learned word is the same family.
            group = group_of(call.key_pattern)
            stats = self.patterns.get(group)
            if stats is None:
                stats = self.patterns[group] = KeyPatternStats(call.key_pattern)
            elif call.key_pattern != stats.key_pattern:
                stats.key_pattern = most_informative((stats.key_pattern, call.key_pattern))
            stats.reads += call.reads
            stats.hits += call.hits
            stats.misses += call.misses
            stats.writes += call.writes
            if call.writes and call.ttl_s is None:
                stats.writes_without_ttl += call.writes
            stats.deletes += call.deletes
            summary.cache_reads += call.hits + call.misses
            summary.cache_hits += call.hits
        if owner.time:
            label = owner.label
            times = self.times.get(label)
            if times is None:
                times = self.times[label] = RouteTime(label)
            times.add(owner.time)
        if findings:
            summary.owners_with_findings += 1
        self._add_findings(owner, findings)

    def _add_findings(self, owner: Owner, findings: list[Finding]) -> None:
        for finding in findings:
            key = finding.fingerprint or f"{finding.kind}:{finding.statement or finding.key_pattern}"
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = FindingGroup.of(key, finding.kind)
            group.add(finding, AGGREGATE_ROUTE if owner.aggregate else owner.label, owner.service)

    # -- across processes (pytest-xdist workers) ----------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything added so far as plain data, for `merge_state` in another process."""
        summary = self.summary
        return {
            "summary": {
                **{name: getattr(summary, name) for name in _SUMMARY_COUNTS},
                "services": sorted(summary.services),
                "run_ids": sorted(summary.run_ids),
            },
            "traces": sorted(self._traces),
            "groups": [g.state() for g in self.groups.values()],
            "patterns": [[group, vars(stats)] for group, stats in self.patterns.items()],
            "notes": list(self.notes),
            "times": [[t.route, t.owners, t.parts] for t in self.times.values()],
        }

    def merge_state(self, state: dict[str, Any]) -> None:
        """Add what another aggregator added (its `state()`)."""
        summary, other = self.summary, state["summary"]
        for name in _SUMMARY_COUNTS:
            setattr(summary, name, getattr(summary, name) + other[name])
        summary.services.update(other["services"])
        summary.run_ids.update(other["run_ids"])
        self._traces.update(state["traces"])
        summary.traces = len(self._traces)
        for data in state["groups"]:
            group = FindingGroup.from_state(data)
            mine = self.groups.get(group.about.fingerprint)
            if mine is None:
                self.groups[group.about.fingerprint] = group
            else:
                mine.merge(group)
        for key, data in state["patterns"]:
            theirs = KeyPatternStats(**data)
            stats = self.patterns.get(key)
            if stats is None:
                self.patterns[key] = theirs
                continue
            stats.key_pattern = most_informative((stats.key_pattern, theirs.key_pattern))
            for name in ("reads", "hits", "misses", "writes", "writes_without_ttl", "deletes"):
                setattr(stats, name, getattr(stats, name) + getattr(theirs, name))
        self.notes.extend(n for n in state["notes"] if n not in self.notes)
        for route, owners, parts in state.get("times", ()):
            times = self.times.get(route)
            if times is None:
                times = self.times[route] = RouteTime(route)
            times.add(parts, owners)

    def report(self) -> Report:
        findings = sorted(
            self.groups.values(),
            key=lambda g: (-g.total_ms, -g.repetitions, g.about.kind, g.about.fingerprint),
        )
        patterns = sorted(
            self.patterns.values(), key=lambda p: (-(p.hits + p.misses), -p.writes, p.key_pattern)
        )
        return Report(
            source=self.source,
            inputs=self.inputs,
            summary=self.summary,
            findings=findings,
            key_patterns=patterns,
            thresholds=self.thresholds,
            notes=self.notes,
            time=sorted(self.times.values(), key=lambda t: (-t.total_ms, t.route)),
        )
