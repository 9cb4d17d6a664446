"""Unused eager loading: ``select_related`` / ``prefetch_related`` relations that are never read.

One request says little (a list that happened to be empty, a branch not taken), so outcomes
are aggregated per code site — where the queryset was evaluated, its model, the relation path
and whether it was joined or prefetched — over many evaluations:

=================== =========================================================================
unused_eager_load   ``unused_eager_min_loads`` or more evaluations at one site loaded the
                    relation eagerly and not one instance ever had it read: drop it (or, for a
                    nested path whose parent is read, keep the parent only)
=================== =========================================================================

A site whose relation is read even once is never reported again. Each site is reported once
per process. The outcomes come from ``instrument/eager_loads.py``; this module is the pure
aggregation over plain records (standard library only), bounded by `MAX_SITES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hms_otel_agent.signals import hints
from hms_otel_agent.signals.records import CodeLocation, Finding

UNUSED_EAGER_LOAD = "unused_eager_load"
KINDS = (UNUSED_EAGER_LOAD,)
SELECT_RELATED = "select_related"
PREFETCH_RELATED = "prefetch_related"
MAX_SITES = 10_000


@dataclass(frozen=True, slots=True)
class EagerOutcome:
    """One evaluated queryset, once its instances are gone: what it loaded and what was read."""

    root_model: str  # app_label.Model of the queryset
    location: CodeLocation | None  # the user's code that evaluated it
    relations: tuple[tuple[str, str], ...]  # (path, SELECT_RELATED | PREFETCH_RELATED)
    used: frozenset[str]  # paths read on at least one instance


@dataclass(slots=True)
class _Site:
    loads: int = 0
    used: int = 0
    reported: bool = False


def _parent(path: str) -> str:
    return path.rpartition("__")[0]


def fix(path: str, method: str, parent_used: bool) -> str:
    if parent_used:
        parent = _parent(path)
        return f".{method}('{parent}') instead of '{path}'"
    return f"drop '{path}' from .{method}(...)"


class UnusedEagerAggregator:
    """Counts per (model, path, method, code location); `add` returns the findings that an
    outcome makes due."""

    def __init__(self, max_sites: int = MAX_SITES) -> None:
        self.max_sites = max_sites
        self.sites: dict[tuple[str, str, str, CodeLocation | None], _Site] = {}

    def add(self, outcome: EagerOutcome, min_loads: int) -> list[Finding]:
        due: list[tuple[str, str, _Site]] = []
        for path, method in outcome.relations:
            key = (outcome.root_model, path, method, outcome.location)
            site = self.sites.get(key)
            if site is None:
                if len(self.sites) >= self.max_sites:
                    continue
                site = self.sites[key] = _Site()
            site.loads += 1
            if path in outcome.used:
                site.used += 1
            elif not site.used and not site.reported and site.loads >= min_loads:
                due.append((path, method, site))
        findings = []
        for path, method, site in due:
            parent = _parent(path)
            parent_key = (outcome.root_model, parent, method, outcome.location)
            parent_site = self.sites.get(parent_key) if parent else None
            if parent_site is not None and not parent_site.used:
                continue  # the parent is unused too: its finding covers this path
            site.reported = True
            findings.append(self._finding(outcome, path, method, site, parent_used=parent_site is not None))
        return findings

    def _finding(
        self, outcome: EagerOutcome, path: str, method: str, site: _Site, parent_used: bool
    ) -> Finding:
        location = outcome.location
        model = hints.short_model(outcome.root_model)
        change = fix(path, method, parent_used)
        hint = (
            f"{model} queryset{hints.where(location)}: .{method}('{path}') loaded in "
            f"{site.loads} evaluations and never read — {change}"
        )
        return Finding(
            kind=UNUSED_EAGER_LOAD,
            fingerprint=hints.finding_fingerprint(
                UNUSED_EAGER_LOAD,
                outcome.root_model,
                path,
                method,
                location.file if location else "",
                location.function if location else "",
            ),
            repetitions=site.loads,
            duration_ms=0.0,
            model=outcome.root_model,
            relation=f"{outcome.root_model}.{path}",
            location=location,
            fix=change,
            hint=hint,
            subject=f"{outcome.root_model}.{path} ({method})",
        )
