"""Cache anti-patterns under one owner span (usually a request).

The instrumentation leaves one `CacheCall` per Django cache API call and per Redis command
that is not part of a Django cache call (the span processor drops Redis commands nested under
a Django cache span, so nothing is counted twice). From those and the owner's `DbCall`s:

=========================== ===============================================================
cache_n_plus_one            >= ``cache_n_plus_one_threshold`` single-key reads (``reads == 1``)
                            of one key pattern: read them at once (``cache.get_many`` / MGET)
cache_repeated_miss         one key (``key_hash``) missed by two or more calls: the value is
                            never stored
cache_miss_without_fill     a miss, then SQL (outside any cache call), and no later write of
                            that key (of its pattern when the key is not known): the
                            cache-aside path does not populate the cache. Decided across
                            owners (`FillEvidence`): only once ``cache_miss_min_requests``
                            owners missed at that site without a fill, and never for a key
                            pattern written anywhere in the process (a background job, a
                            command or another path fills it)
cache_write_without_ttl     a write that leaves the key without an expiry (``ttl_s is None``)
                            and no later write of the same key that sets one
cache_invalidation_storm    >= ``cache_invalidation_threshold`` delete calls (round trips, not
                            keys: one ``delete_many`` of 50 keys is one) under one owner
=========================== ===============================================================

Findings are grouped by key pattern and the user's code (file and function), so a loop over
50 keys of one pattern is one finding with 50 repetitions. Patterns are grouped by `group_of`
(the pattern with only built-in structural words): a pattern that gains a learned word while
the process runs (``{value}:{id}:summary`` -> ``hms:{id}:summary``, see signals/key_pattern.py)
stays one group, its finding keeps its fingerprint, and the finding shows the most informative
pattern of the group.

Keys of job queues and libraries (RQ, Celery / kombu, Django's cached sessions) are not the
application's cache reads: calls whose key pattern starts with one of `IGNORED_KEY_PREFIXES` or
``HMS_OTEL_CACHE_IGNORE_KEY_PREFIXES`` are left out of every cache finding. Standard library only.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints
from hms_otel_agent.signals.activity import (
    CacheCall,
    DbCall,
    Finding,
    OwnerActivity,
    most_common,
    outside_cache_calls,
    total_ms,
)
from hms_otel_agent.signals.key_pattern import VALUE, key_pattern

CACHE_N_PLUS_ONE = "cache_n_plus_one"
CACHE_REPEATED_MISS = "cache_repeated_miss"
CACHE_MISS_WITHOUT_FILL = "cache_miss_without_fill"
CACHE_WRITE_WITHOUT_TTL = "cache_write_without_ttl"
CACHE_INVALIDATION_STORM = "cache_invalidation_storm"
KINDS = (
    CACHE_N_PLUS_ONE,
    CACHE_REPEATED_MISS,
    CACHE_MISS_WITHOUT_FILL,
    CACHE_WRITE_WITHOUT_TTL,
    CACHE_INVALIDATION_STORM,
)


# Key prefixes of job queues and libraries (as key patterns keep them; Django's version prefix
# ":1:" is not part of a pattern).
IGNORED_KEY_PREFIXES = (
    "rq:",
    "celery-task-meta-",
    "celery-taskset-meta-",
    "chord-unlock-",
    "_kombu.",
    "unacked",
    "django.contrib.sessions.",
)
MAX_EVIDENCE = 10_000  # key-pattern groups and sites remembered


class FillEvidence:
    """What "miss without fill" is decided on, across the owners of one process (or one offline
    analysis): the key-pattern groups written by any owner (a request, a job, a command), and per
    site the owners whose misses were followed by SQL and not filled. Bounded by `MAX_EVIDENCE`."""

    def __init__(self) -> None:
        self.written: set[str] = set()
        self.unfilled: dict[tuple[str, str, str, bool], int] = {}

    def observe(self, calls: Iterable[CacheCall]) -> None:
        for call in calls:
            if call.writes and len(self.written) < MAX_EVIDENCE:
                self.written.add(group_of(call.key_pattern))

    def unfilled_owners(self, site: tuple[str, str, str, bool]) -> int:
        """Count one more owner with unfilled misses at `site`; return the count so far."""
        count = self.unfilled.get(site, 0) + 1
        if site in self.unfilled or len(self.unfilled) < MAX_EVIDENCE:
            self.unfilled[site] = count
        return count


evidence = FillEvidence()


def reset_evidence() -> None:
    """Forget what was seen (a new process's pipeline, a new offline analysis, tests)."""
    global evidence
    evidence = FillEvidence()


def group_of(pattern: str) -> str:
    """The group of a key pattern: the same for a pattern with learned words and without."""
    return key_pattern(pattern) if pattern else ""


def most_informative(patterns: Iterable[str]) -> str:
    """The pattern with the fewest masked words (the latest among equals)."""
    best, best_masked = "", -1
    for pattern in patterns:
        masked = pattern.count(VALUE)
        if best_masked < 0 or masked <= best_masked:
            best, best_masked = pattern, masked
    return best


WILDCARD = "*"
_SEPARATOR = ":"
_MAX_PATTERNS = 64  # patterns looked at when merging (the rest rarely changes the result)


def common_pattern(patterns: Iterable[str]) -> str:
    """One pattern for several: ``patient:{id}:summary`` + ``patient:{id}:notes`` ->
    ``patient:{id}:*``; the first pattern when they share nothing; ``""`` for none."""
    unique = list(dict.fromkeys(p for p in patterns if p))[:_MAX_PATTERNS]
    if len(unique) <= 1:
        return unique[0] if unique else ""
    split = [p.split(_SEPARATOR) for p in unique]
    lengths = {len(s) for s in split}
    if len(lengths) == 1:
        merged = [parts[0] if len(set(parts)) == 1 else WILDCARD for parts in zip(*split, strict=False)]
    else:
        merged = []
        for parts in zip(*split, strict=False):
            if len(set(parts)) != 1:
                break
            merged.append(parts[0])
        merged.append(WILDCARD)
    if all(part == WILDCARD or part.startswith("{") for part in merged):
        return unique[0]  # nothing literal in common: "*" or "{id}:*" would say nothing
    return _SEPARATOR.join(merged)


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    prefixes = (*IGNORED_KEY_PREFIXES, *settings.cache_ignore_key_prefixes)
    calls = [c for c in activity.cache_calls if not c.key_pattern.startswith(prefixes)]
    if not calls:
        return []
    evidence.observe(calls)
    owner = activity.name or activity.route
    findings: list[Finding] = []
    findings.extend(_n_plus_one(activity, owner, calls, settings.cache_n_plus_one_threshold))
    findings.extend(_repeated_misses(activity, owner, calls))
    findings.extend(
        _misses_without_fill(activity, owner, calls, activity.db_calls, settings.cache_miss_min_requests)
    )
    findings.extend(_writes_without_ttl(activity, owner, calls))
    findings.extend(_invalidation_storm(activity, owner, calls, settings.cache_invalidation_threshold))
    return findings


# --- helpers -----------------------------------------------------------------------------------


def _site(call: CacheCall) -> tuple[str, str]:
    location = call.location
    return (location.file, location.function) if location is not None else ("", "")


def _times(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _finding(
    kind: str,
    activity: OwnerActivity,
    owner: str,
    calls: Sequence[CacheCall],
    pattern: str,
    subject: str,
    action: str,
    fix: str,
) -> Finding:
    location = most_common(c.location for c in calls)
    duration_ms = total_ms(calls)
    hint = f"{owner}: {subject} ({duration_ms:.1f} ms){hints.where(location)} — {action}"
    return Finding(
        kind=kind,
        fingerprint=hints.site_fingerprint(kind, group_of(pattern), location),
        repetitions=len(calls),
        duration_ms=duration_ms,
        key_pattern=pattern,
        location=location,
        fix=fix,
        hint=hint,
        route=activity.route,
    )


def _group_by_site(calls: Iterable[CacheCall]) -> dict[tuple[str, str, str, bool], list[CacheCall]]:
    """Calls by (pattern, file, function, Django API); the pattern is the group's most
    informative one."""
    groups: dict[tuple[str, str, str, bool], list[CacheCall]] = {}
    for call in calls:
        groups.setdefault((group_of(call.key_pattern), *_site(call), call.django_api), []).append(call)
    return {
        (most_informative(c.key_pattern for c in group), *key[1:]): group for key, group in groups.items()
    }


# --- cache N+1 ---------------------------------------------------------------------------------


def _n_plus_one(activity: OwnerActivity, owner: str, calls: list[CacheCall], threshold: int) -> list[Finding]:
    groups: dict[tuple[str, bool], list[CacheCall]] = {}
    for call in calls:
        if call.reads == 1 and call.key_pattern:
            groups.setdefault((group_of(call.key_pattern), call.django_api), []).append(call)
    findings = []
    for (_, django_api), group in groups.items():
        if len(group) < threshold:
            continue
        pattern = most_informative(c.key_pattern for c in group)
        if django_api:
            fix = "cache.get_many([...])"
            action = "read them with cache.get_many() (one MGET)"
        elif group[0].operation in ("GET", "MGET"):
            fix = "client.mget([...])"
            action = "read them with one MGET: client.mget([...])"
        else:
            fix = "client.pipeline()"
            action = f"send the {group[0].operation} commands in one round trip: client.pipeline()"
        subject = f"{len(group)} cache reads of {pattern} one key at a time"
        findings.append(_finding(CACHE_N_PLUS_ONE, activity, owner, group, pattern, subject, action, fix))
    return findings


# --- repeated miss -----------------------------------------------------------------------------


def _repeated_misses(activity: OwnerActivity, owner: str, calls: list[CacheCall]) -> list[Finding]:
    by_key: dict[int, list[CacheCall]] = {}
    for call in calls:
        if call.misses and call.key_hash is not None:
            by_key.setdefault(call.key_hash, []).append(call)
    repeated = [call for group in by_key.values() if len(group) >= 2 for call in group]
    if not repeated:
        return []
    repeated.sort(key=lambda c: c.start_ns)
    findings = []
    for (pattern, _file, _function, django_api), group in _group_by_site(repeated).items():
        keys = len({c.key_hash for c in group})
        if django_api:
            fix = "cache.get_or_set(key, compute, timeout=...)"
        else:
            fix = "SET key value EX <seconds> after computing it"
        what = f"{_times(keys, 'key', 'keys')} of {pattern}" if keys > 1 else pattern
        subject = f"{what} missed {len(group)} times"
        action = f"the value is never stored: {fix}"
        findings.append(_finding(CACHE_REPEATED_MISS, activity, owner, group, pattern, subject, action, fix))
    return findings


# --- miss without fill -------------------------------------------------------------------------


def _last_starts(calls: Iterable[CacheCall], key: str) -> dict[object, int]:
    last: dict[object, int] = {}
    for call in calls:
        value = call.key_hash if key == "hash" else group_of(call.key_pattern)
        if value is not None and call.start_ns >= last.get(value, -1):
            last[value] = call.start_ns
    return last


def _misses_without_fill(
    activity: OwnerActivity, owner: str, calls: list[CacheCall], db_calls: list[DbCall], min_owners: int = 1
) -> list[Finding]:
    misses = [c for c in calls if c.misses]
    if not misses or not db_calls:
        return []
    db_starts = sorted(c.start_ns for c in outside_cache_calls(db_calls, calls))
    if not db_starts:
        return []
    writes = [c for c in calls if c.writes]
    # The last write of each key, of each pattern, and of each pattern by a multi-key write
    # (multi-key calls do not name their keys: a write of the same pattern counts as the fill).
    by_key = _last_starts(writes, "hash")
    by_pattern = _last_starts(writes, "pattern")
    by_pattern_multi = _last_starts((w for w in writes if w.writes > 1), "pattern")
    unfilled = []
    for miss in misses:
        if bisect_right(db_starts, miss.start_ns + miss.duration_ns) == len(db_starts):
            continue  # no SQL after the miss
        start = miss.start_ns
        if miss.key_hash is not None and by_key.get(miss.key_hash, -1) >= start:
            continue
        # A key that is not known (a multi-key read, or offline without the raw keys) is filled
        # by any later write of its pattern; a known key only by its own or a multi-key write.
        filled_by_pattern = by_pattern if miss.reads > 1 or miss.key_hash is None else by_pattern_multi
        if filled_by_pattern.get(group_of(miss.key_pattern), -1) >= start:
            continue
        unfilled.append(miss)
    findings = []
    for site, group in _group_by_site(unfilled).items():
        pattern, _file, _function, django_api = site
        if group_of(pattern) in evidence.written:
            continue  # written elsewhere in the process: filled by design (a job, another path)
        if evidence.unfilled_owners((group_of(pattern), *site[1:])) < min_owners:
            continue  # not enough evidence yet
        if django_api:
            fix = "cache.set(key, value, timeout=...) after the query"
        else:
            fix = "SET key value EX <seconds> after the query"
        subject = (
            f"{_times(len(group), 'miss', 'misses')} of {pattern} then SQL, and the result is not cached"
        )
        action = f"the cache-aside path does not populate the cache: {fix}"
        findings.append(
            _finding(CACHE_MISS_WITHOUT_FILL, activity, owner, group, pattern, subject, action, fix)
        )
    return findings


# --- write without expiry ----------------------------------------------------------------------

_DJANGO_TTL_FIXES = {
    "set": "cache.set(key, value, timeout=<seconds>)",
    "add": "cache.add(key, value, timeout=<seconds>)",
    "set_many": "cache.set_many(data, timeout=<seconds>)",
    "get_or_set": "cache.get_or_set(key, default, timeout=<seconds>)",
    "touch": "cache.touch(key, timeout=<seconds>)",
}
_REDIS_TTL_FIXES = {
    "SET": "SET key value EX <seconds>",
    "SETNX": "SET key value NX EX <seconds>",
    "GETSET": "SET key value GET EX <seconds>",
    "MSET": "SET key value EX <seconds> per key in one pipeline (MSET cannot expire)",
    "MSETNX": "SET key value NX EX <seconds> per key in one pipeline (MSETNX cannot expire)",
}


def _writes_without_ttl(activity: OwnerActivity, owner: str, calls: list[CacheCall]) -> list[Finding]:
    candidates = [c for c in calls if c.writes and c.ttl_s is None]
    if not candidates:
        return []
    # A later write of the same key that sets an expiry (SET, then EXPIRE) fixes it.
    expired_later = _last_starts((c for c in calls if c.writes and c.ttl_s is not None), "hash")
    never = [c for c in candidates if c.key_hash is None or expired_later.get(c.key_hash, -1) < c.start_ns]
    findings = []
    for (pattern, _file, _function, django_api), group in _group_by_site(never).items():
        operation = group[0].operation
        if django_api:
            fix = _DJANGO_TTL_FIXES.get(operation, "timeout=<seconds>")
        else:
            fix = _REDIS_TTL_FIXES.get(operation, "EXPIRE key <seconds>")
        subject = f"{_times(len(group), 'cache write', 'cache writes')} of {pattern} without an expiry"
        action = f"the entries never expire and go stale: pass a timeout: {fix}"
        findings.append(
            _finding(CACHE_WRITE_WITHOUT_TTL, activity, owner, group, pattern, subject, action, fix)
        )
    return findings


# --- invalidation storm ------------------------------------------------------------------------


def _invalidation_storm(
    activity: OwnerActivity, owner: str, calls: list[CacheCall], threshold: int
) -> list[Finding]:
    deletes = [c for c in calls if c.deletes]
    if len(deletes) < threshold:
        return []
    pattern = common_pattern(c.key_pattern for c in deletes)
    keys = sum(c.deletes for c in deletes)
    if sum(1 for c in deletes if c.django_api) * 2 >= len(deletes):
        fix = "cache.delete_many([...])"
        action = (
            "delete them in one call with cache.delete_many([...]), or version the keys "
            "(cache.incr_version / a version segment in the key) instead of deleting each"
        )
    else:
        fix = "client.delete(*keys)"
        action = (
            "delete them in one round trip with client.delete(*keys) (UNLINK for big values), "
            "or version the keys instead of deleting each"
        )
    subject = f"{len(deletes)} cache deletes one call at a time ({_times(keys, 'key', 'keys')}) of {pattern}"
    return [_finding(CACHE_INVALIDATION_STORM, activity, owner, deletes, pattern, subject, action, fix)]
