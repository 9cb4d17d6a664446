"""Repeated query groups (Sentry's "MN+1"): several different calls repeated together per item.

The owner's SQL statements and cache calls, in start order, become one sequence of
signatures: a lazy ORM load is its relation, any other statement its fingerprint, a cache call
its operation and key pattern (statements run inside a cache call — DatabaseCache — and
transaction statements are left out). A *group* is a run of ``k`` (2..`MAX_PERIOD`) calls with
at least two different signatures that repeats back to back ``repeated_group_threshold`` times
or more — the body of a loop: ``cache.get -> SELECT -> cache.set`` per patient.

================== ==========================================================================
repeated_group     such a group with at least one SQL statement; not reported when every
                   member is a lazy ORM relation load (their N+1 findings each carry the exact
                   fix, and applying them removes the group), nor when there is no SQL in it
                   (``cache.get -> cache.set`` per item is a cache N+1 finding, whose fix,
                   ``get_many`` / ``set_many``, is the batching)
================== ==========================================================================

One cause, one finding (`consolidate`, run by the span processor and by ``hms-otel analyze``
after all detectors): the group *takes in* the owner's findings of its members — the
``cache_n_plus_one`` of its key patterns (``cache.get_many`` alone is half a fix when each miss
then runs a query and a write), and the ``n_plus_one`` / ``duplicate_query`` of its statements
and relations. What those said is kept in the group: the member query's checked ORM fix replaces
the step's generic batch fix, and its relation, the place its queryset came from and its fix
kind become the group's. `Finding.includes` names the kinds taken in, so ``pytest --hms-otel``
(which fails on ``n_plus_one`` by default) still fails on a cache-aside loop with a query per
item. Members that have no finding of their own (a ``cache.set`` per item) are named in the group
only.

Exact repetition only: a loop whose body differs between items (a cache hit for some patients,
a miss and a query for others) is not a group; its parts still get their N+1 findings. Standard
library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints
from hms_otel_agent.signals import records as a
from hms_otel_agent.signals.cache_signals import group_of
from hms_otel_agent.signals.records import (
    CacheCall,
    CodeLocation,
    DbCall,
    Finding,
    OwnerActivity,
    db_location,
    first_model,
    most_common,
    outside_cache_calls,
    total_ms,
)

REPEATED_GROUP = "repeated_group"
_ACTION = "batch each step over all items: "
KINDS = (REPEATED_GROUP,)
MAX_PERIOD = 8  # calls in one loop body
MAX_CALLS = 5000

# Findings a group takes in (see `consolidate`): by key pattern, and by statement or relation.
_COVERED_CACHE_KINDS = frozenset(("cache_n_plus_one",))
_COVERED_SQL_KINDS = frozenset(("n_plus_one", "duplicate_query"))


@dataclass(slots=True)
class _Step:
    signature: tuple[str, ...]
    start_ns: int
    duration_ns: int
    db: DbCall | None = None
    cache: CacheCall | None = None


def _db_signature(call: DbCall) -> tuple[str, ...]:
    orm = call.orm
    if orm is not None and orm.lazy and orm.relation:
        return ("relation", orm.relation, orm.path)
    return ("sql", call.fingerprint)


def _cache_signature(call: CacheCall) -> tuple[str, ...]:
    return ("cache", call.operation, group_of(call.key_pattern))


def _steps(activity: OwnerActivity) -> list[_Step]:
    caches = [c for c in activity.cache_calls if c.operation]
    steps = [_Step(_cache_signature(c), c.start_ns, c.duration_ns, cache=c) for c in caches]
    for call in outside_cache_calls(activity.db_calls, caches):
        if call.operation in hints.TRANSACTION_OPERATIONS:
            continue
        steps.append(_Step(_db_signature(call), call.start_ns, call.duration_ns, db=call))
    steps.sort(key=lambda s: s.start_ns)
    return steps[:MAX_CALLS]


def find_groups(
    signatures: Sequence[object], min_repeats: int, max_period: int = MAX_PERIOD
) -> list[tuple[int, int, int]]:
    """(start, period, repeats) of every run where ``signatures[start:start+period]`` (at least two
    different values) repeats back to back ``min_repeats`` times or more; the smallest period
    that covers the most wins; runs do not overlap."""
    n = len(signatures)
    # next_different[i]: the first index after i whose signature differs from signatures[i] (n if
    # none), so that a window [i, i + k) holds two different values exactly when k is larger
    # than next_different[i] - i: no set per window (a run of one lazy load was n x period sets).
    next_different = [n] * n
    for index in range(n - 2, -1, -1):
        same = signatures[index + 1] == signatures[index]
        next_different[index] = next_different[index + 1] if same else index + 1
    found = []
    i = 0
    while i < n:
        best: tuple[int, int] | None = None
        for k in range(max(2, next_different[i] - i + 1), max_period + 1):
            if i + k * min_repeats > n:
                break
            j = i + k
            while j < n and signatures[j] == signatures[j - k]:
                j += 1
            repeats = (j - i) // k
            if repeats >= min_repeats and (best is None or repeats * k > best[0] * best[1]):
                best = (k, repeats)
        if best is None:
            i += 1
            continue
        k, repeats = best
        found.append((i, k, repeats))
        i += k * repeats
    return found


def _describe(step: _Step) -> str:
    if step.cache is not None:
        call = step.cache
        op = f"cache.{call.operation}" if call.django_api else call.operation
        return f"{op} {call.key_pattern}".strip()
    db = step.db
    assert db is not None
    orm = db.orm
    if orm is not None and orm.lazy and orm.relation:
        return hints.lazy_subject(orm)
    operation = db.operation
    if orm is not None and orm.model:
        if orm.kind == a.GET:
            return f"{hints.short_model(orm.model)}.objects.get()"
        return f"{hints.short_model(orm.model)} {operation.lower()}"
    return f"{operation} on {db.table or 'one table'}"


def _step_fix(step: _Step, one_key: bool = False) -> str:
    """The batch form of one step; `one_key`: a cache read of the same key for every item."""
    if step.cache is not None:
        call = step.cache
        if one_key and call.reads:
            return f"read {call.key_pattern} once before the loop (the same key for every item)"
        if call.django_api:
            if call.reads:
                return "cache.get_many(keys)"
            if call.writes:
                return "cache.set_many({...}, timeout=...)"
            if call.deletes:
                return "cache.delete_many(keys)"
            return f"one cache.{call.operation}_many(...) if the backend has it"
        if call.reads:
            return "client.mget(keys)"
        return f"one client.pipeline() for the {call.operation} commands"
    db = step.db
    assert db is not None
    orm = db.orm
    operation = db.operation
    if orm is not None and (orm.lazy or orm.kind in (a.GET, a.REFRESH)):
        return hints.orm_fix(orm)
    if operation in ("INSERT", "UPDATE", "DELETE"):
        return hints.write_fix(operation, orm.model if orm is not None else "")
    return hints.batch_fix(db.table, db.filter_columns, orm.model if orm is not None else "")


def _covers(step: _Step) -> str:
    if step.cache is not None:
        return "key_pattern:" + group_of(step.cache.key_pattern)
    call = step.db
    assert call is not None
    if call.orm is not None and call.orm.lazy and call.orm.relation:
        return "relation:" + call.orm.relation
    return "statement:" + call.statement


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    if len(activity.db_calls) + len(activity.cache_calls) < 2 * settings.repeated_group_threshold:
        return []
    steps = _steps(activity)
    interned: dict[tuple[str, ...], int] = {}
    signatures = [interned.setdefault(s.signature, len(interned)) for s in steps]
    merged: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
    for start, period, repeats in find_groups(signatures, settings.repeated_group_threshold):
        body = steps[start : start + period]
        if all(s.db is None for s in body):
            continue  # cache calls only (get -> set per item): the cache N+1 finding says it
        if all(s.db is not None and s.signature[0] == "relation" for s in body):
            continue  # lazy loads only: each relation's N+1 finding has the exact fix
        # One loop seen from two phases (``cache.get -> SELECT`` and ``SELECT -> cache.get``, when
        # the first item differed) is one group: runs are merged by their body's rotation.
        body_signatures = tuple(signatures[start : start + period])
        rotation = min(body_signatures[i:] + body_signatures[:i] for i in range(period))
        merged.setdefault(rotation, []).append((start, period, repeats))
    findings = []
    owner = activity.name or activity.route
    for runs in merged.values():
        start, period, _ = runs[0]
        body = steps[start : start + period]
        members = tuple(_describe(s) for s in body)
        calls = [s for begin, k, repeats in runs for s in steps[begin : begin + k * repeats]]
        repetitions = sum(repeats for _, _, repeats in runs)
        duration_ms = total_ms(calls)
        location = most_common(_location(s) for s in calls)
        keys: dict[tuple[str, ...], set[int | None]] = {}
        for step in calls:
            if step.cache is not None:
                keys.setdefault(step.signature, set()).add(step.cache.key_hash)
        step_fixes = tuple(
            dict.fromkeys((_covers(s), _step_fix(s, _one_key(keys.get(s.signature)))) for s in body)
        )
        fix = "; ".join(dict.fromkeys(f for _, f in step_fixes))
        subject = f"{period} calls repeated together per item ({' -> '.join(members)})"
        hint = hints.sentence(owner, subject, repetitions, duration_ms, location, _ACTION + fix)
        db_steps = [s.db for s in body if s.db is not None]
        cache_steps = [s.cache for s in body if s.cache is not None]
        model = first_model(db_steps)
        findings.append(
            Finding(
                kind=REPEATED_GROUP,
                fingerprint=_fingerprint(body, calls),
                repetitions=repetitions,
                duration_ms=duration_ms,
                statement=db_steps[0].statement if db_steps else "",
                model=model,
                key_pattern=cache_steps[0].key_pattern if cache_steps else "",
                location=location,
                fix=fix,
                hint=hint,
                route=activity.route,
                subject=" + ".join(members),
                members=members,
                covers=tuple(dict.fromkeys(c for c, _ in step_fixes)),
                cover_fixes=step_fixes,
            )
        )
    return findings


def _one_key(hashes: set[int | None] | None) -> bool:
    return hashes is not None and len(hashes) == 1 and None not in hashes


def _fingerprint(body: list[_Step], calls: list[_Step]) -> str:
    """The loop's cause, whatever phase it was seen from (another request may start it on
    another step): its body rotated to start at its smallest signature, and where that step
    runs."""
    texts = ["\x1e".join(s.signature) for s in body]
    first = min(range(len(texts)), key=lambda i: texts[i:] + texts[:i])
    anchor = body[first].signature
    location = most_common(_location(s) for s in calls if s.signature == anchor)
    return hints.site_fingerprint(REPEATED_GROUP, "|".join(texts[first:] + texts[:first]), location)


def _location(step: _Step) -> CodeLocation | None:
    if step.cache is not None:
        return step.cache.location
    return db_location(step.db) if step.db is not None else None


def _member_key(finding: Finding) -> str:
    """The `covers` entry an N+1 or duplicate finding of a group's member would have."""
    return "relation:" + finding.relation if finding.relation else "statement:" + finding.statement


def consolidate(findings: list[Finding]) -> list[Finding]:
    """Fold the findings of one owner that a repeated group stands for into the group: the cache
    N+1 findings of its key patterns, the N+1 and duplicate findings of its statements and
    relations (their fixes, relation and origin carried over). Returns `findings` itself when
    there is nothing to fold."""
    groups = [f for f in findings if f.kind == REPEATED_GROUP and f.covers]
    if not groups:
        return findings
    taken: dict[int, list[Finding]] = {}  # id(group) -> the findings it takes in
    dropped: set[int] = set()
    for finding in findings:
        if finding.kind in _COVERED_CACHE_KINDS:
            key = "key_pattern:" + group_of(finding.key_pattern)
        elif finding.kind in _COVERED_SQL_KINDS and (finding.relation or finding.statement):
            key = _member_key(finding)
        else:
            continue
        group = next((g for g in groups if key in g.covers), None)
        if group is not None:
            taken.setdefault(id(group), []).append(finding)
            dropped.add(id(finding))
    if not dropped:
        return findings
    kept = []
    for finding in findings:
        if id(finding) in dropped:
            continue
        members = taken.get(id(finding))
        kept.append(finding if members is None else _fold(finding, members))
    return kept


def _fold(group: Finding, members: list[Finding]) -> Finding:
    """The group with what its members' own findings said: a member query's checked fix (or
    its reason for showing none) instead of the step's generic batch fix."""
    queries = {_member_key(m): m for m in members if m.kind in _COVERED_SQL_KINDS}
    fixes: list[str] = []
    actions: list[str] = []
    for cover, step_fix in group.cover_fixes:
        member = queries.get(cover)
        if member is None:
            fixes.append(step_fix)
            actions.append(step_fix)
        else:
            fixes.append(member.fix)
            actions.append(member.hint.rpartition(" — ")[2] if " — " in member.hint else member.fix)
    fix = "; ".join(dict.fromkeys(f for f in fixes if f))
    action = "; ".join(dict.fromkeys(a for a in actions if a))
    prefix = group.hint.rpartition(" — ")[0] or group.hint
    query = next((m for m in queries.values() if m.kind == "n_plus_one"), None) or next(
        iter(queries.values()), None
    )
    return dataclasses.replace(
        group,
        fix=fix,
        hint=f"{prefix} — {_ACTION}{action}" if action else prefix,
        relation=group.relation or (query.relation if query else ""),
        relation_kind=group.relation_kind or (query.relation_kind if query else ""),
        fix_kind=group.fix_kind or (query.fix_kind if query else ""),
        origin=group.origin or (query.origin if query else None),
        includes=tuple(sorted({m.kind for m in members} | set(group.includes))),
    )
