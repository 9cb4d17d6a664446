"""Where an owner's time went: database, cache, outbound HTTP, template rendering, the rest.

Each instant of the owner span counts once, for the innermost kind of work going on: a query
run while a template renders is database time, not template time; a Redis command or
``DatabaseCache`` SQL under a Django cache call is cache time; two HTTP calls running at once
count their common time once. So the five parts add up to the owner's duration:

============================ ======================================================================
``hms.time.db_ms``           SQL statements
``hms.time.cache_ms``        cache calls (Django cache API, Redis commands), including what they send
``hms.time.http_ms``         outbound HTTP calls (requests, httpx, urllib3)
``hms.time.template_ms``     template rendering, without the queries, cache and HTTP calls under it
``hms.time.app_ms``          the rest: the view's own Python, serialization, middleware, waiting
============================ ======================================================================

Precedence where kinds overlap: cache, then database, then HTTP, then template. At most
`MAX_INTERVALS` spans per owner are placed on the timeline; further ones add their duration to
their kind (capped by the owner's duration). Standard library only.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CACHE", "DB", "HTTP", "KEYS", "MAX_INTERVALS", "TEMPLATE", "Intervals", "split"]

CACHE: Final = 0
DB: Final = 1
HTTP: Final = 2
TEMPLATE: Final = 3
_NAMES: Final = ("cache_ms", "db_ms", "http_ms", "template_ms")
KEYS: Final = ("db_ms", "cache_ms", "http_ms", "template_ms", "app_ms")
"""The parts, in the order they are shown (attribute ``hms.time.<key>``)."""
MAX_INTERVALS: Final = 20_000


class Intervals:
    """The child spans of one owner, as (start, end, kind) on its timeline (bounded)."""

    __slots__ = ("overflow_ns", "spans")

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, int]] = []
        self.overflow_ns = [0, 0, 0, 0]

    def add(self, start_ns: int, end_ns: int, kind: int) -> None:
        if end_ns <= start_ns:
            return
        if len(self.spans) < MAX_INTERVALS:
            self.spans.append((start_ns, end_ns, kind))
        else:
            self.overflow_ns[kind] += end_ns - start_ns


def split(start_ns: int, end_ns: int, intervals: Intervals | None) -> dict[str, float]:
    """The owner's time in ms per part (`KEYS`), rounded to µs; the parts add up to its duration."""
    total_ns = max(0, end_ns - start_ns)
    spent = [0, 0, 0, 0]
    if intervals is not None and intervals.spans:
        events: list[tuple[int, int, int]] = []
        for begin, end, kind in intervals.spans:
            begin, end = max(begin, start_ns), min(end, end_ns)
            if end > begin:
                events.append((begin, 1, kind))
                events.append((end, -1, kind))
        events.sort()
        active = [0, 0, 0, 0]
        previous = start_ns
        for time_ns, change, kind in events:
            if time_ns > previous:
                for index in range(4):  # the innermost kind in precedence order
                    if active[index]:
                        spent[index] += time_ns - previous
                        break
                previous = time_ns
            active[kind] += change
    if intervals is not None:
        for index in range(4):
            spent[index] += intervals.overflow_ns[index]
    used = 0
    for index in range(4):  # overflow may claim more than the owner lasted: cap in precedence order
        spent[index] = min(spent[index], total_ns - used)
        used += spent[index]
    parts = {_NAMES[index]: spent[index] for index in range(4)}
    parts["app_ms"] = total_ns - used
    return {key: round(parts[key] / 1e6, 3) for key in KEYS}
