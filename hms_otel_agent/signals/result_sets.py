"""Large result sets under one owner span: unbounded and wide results.

Reads ``DbCall.rows`` (``db.response.returned_rows``, the driver's row count right after the
statement ran) and the normalized statement:

================== ==========================================================================
unbounded_result   a SELECT with no ``LIMIT`` / ``FETCH FIRST`` that returned at least
                   ``large_result_rows`` rows: paginate (keyset / cursor pagination for large
                   ordered lists, or Django's Paginator); with ``wide_result_columns`` or more
                   columns in its SELECT list, also fetch only the columns used
wide_result        a SELECT *with* a LIMIT that still returned ``large_result_rows`` rows or
                   more, with ``wide_result_columns`` or more columns in its SELECT list:
                   ``.only(...)`` / ``.values(...)``
================== ==========================================================================

"Wide" is the width of the SELECT list counted in the normalized statement (top-level commas
between ``SELECT`` and ``FROM``; ``select_related`` joins add the joined tables' columns), not a
comparison with the fields the code reads afterwards: that would need a hook on every attribute
read of every loaded instance. A large result with many columns is where ``only()`` /
``values()`` pays off, so the hint is given there and phrased as a question of which columns the
code uses. ``SELECT *`` and statements whose list cannot be read are not counted as wide.

Only the main statement's ``LIMIT`` counts when deciding "unbounded" (a ``LIMIT`` anywhere in the
text, e.g. in a subquery, makes it bounded: no false positive, a possible miss). A statement that
filters on a list of values (``IN (...)``, ``= ANY(...)``: a ``prefetch_related`` query, a batched
lookup) is bounded by that list — the query that produced the list is the one to paginate — so it
can only be a wide result. Results read
through a server-side cursor (``QuerySet.iterator()`` on PostgreSQL) have no row count and are not
checked: streaming is already the fix. Standard library only.
"""

from __future__ import annotations

import re

from hms_otel_agent.config import Settings
from hms_otel_agent.signals import hints
from hms_otel_agent.signals.records import (
    DbCall,
    Finding,
    OwnerActivity,
    db_location,
    first_model,
    most_common,
    total_ms,
)

UNBOUNDED_RESULT = "unbounded_result"
WIDE_RESULT = "wide_result"
KINDS = (UNBOUNDED_RESULT, WIDE_RESULT)

_BOUNDED = re.compile(r"\b(?:LIMIT|FETCH\s+(?:FIRST|NEXT))\b")
_BY_VALUE_LIST = re.compile(r"\bIN \(\.\.\.\)|\bANY\(\.\.\.\)")
_SELECTS = ("SELECT", "WITH")


def is_select(statement: str) -> bool:
    return statement.lstrip("( ").split(" ", 1)[0].upper() in _SELECTS


def is_bounded(statement: str) -> bool:
    """True when the statement has a LIMIT or FETCH FIRST / NEXT (keywords are upper-case in
    the normalized text)."""
    return _BOUNDED.search(statement) is not None


def by_value_list(statement: str) -> bool:
    """``WHERE fk IN (...)`` / ``= ANY(...)``: rows for a list of keys the code already holds (a
    prefetch, a batched lookup) — bounded by that list, whose own query is where to paginate."""
    return _BY_VALUE_LIST.search(statement) is not None


def select_width(statement: str) -> int | None:
    """Columns in the top-level SELECT list of a normalized statement; None when unknown
    (``*``, no FROM, not a SELECT)."""
    upper = statement.upper()
    start = upper.find("SELECT ")
    if start < 0:
        return None
    index = start + len("SELECT ")
    depth = 0
    commas = 0
    in_quote = False
    end = -1
    length = len(statement)
    while index < length:
        char = statement[index]
        if in_quote:
            if char == '"':
                in_quote = False
        elif char == '"':
            in_quote = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            if char == ",":
                commas += 1
            elif char == "F" and upper.startswith("FROM", index) and statement[index - 1] == " ":
                end = index
                break
        index += 1
    if end < 0:
        return None
    items = statement[start + len("SELECT ") : end].strip()
    if items.upper().startswith("DISTINCT "):
        items = items[len("DISTINCT ") :].strip()
    if not items or items == "*" or (items.endswith(".*") and commas == 0):
        return None
    return commas + 1


def pagination_fix(model: str, table: str) -> str:
    if model:
        name = hints.short_model(model)
        return (
            f"paginate: {name}.objects.order_by('pk').filter(pk__gt=last_pk)[:page_size] "
            "(keyset), or django.core.paginator.Paginator"
        )
    target = table or "the table"
    return f"paginate: SELECT ... FROM {target} WHERE id > %s ORDER BY id LIMIT %s (keyset)"


def columns_fix(model: str) -> str:
    if model:
        return ".only('field', ...) or .values('field', ...) with just the fields the code reads"
    return "select only the columns the code reads"


def detect(activity: OwnerActivity, settings: Settings) -> list[Finding]:
    threshold = settings.large_result_rows
    groups: dict[tuple[str, str, str], list[DbCall]] = {}
    for call in activity.db_calls:
        if call.rows >= threshold and is_select(call.statement):
            orm = call.orm
            location = orm.location if orm is not None else None
            site = (location.file, location.function) if location is not None else ("", "")
            groups.setdefault((call.fingerprint, *site), []).append(call)
    findings = []
    owner = activity.name or activity.route
    for calls in groups.values():
        first = calls[0]
        bounded = is_bounded(first.statement)
        width = select_width(first.statement)
        wide = width is not None and width >= settings.wide_result_columns
        if bounded and not wide:
            continue
        if not bounded and by_value_list(first.statement):
            if not wide:
                continue
            bounded = True  # bounded by its key list: only the width can be helped here
        kind = WIDE_RESULT if bounded else UNBOUNDED_RESULT
        model = first_model(calls)
        location = most_common(db_location(c) for c in calls)
        rows = max(c.rows for c in calls)
        duration_ms = total_ms(calls)
        what = hints.query_noun(model, first.table)
        if kind == UNBOUNDED_RESULT:
            fix = pagination_fix(model, first.table)
            if wide:
                fix += f"; and {columns_fix(model)}"
            subject = f"an unbounded {what} ({rows} rows, no LIMIT{f', {width} columns' if wide else ''}) run"
        else:
            fix = columns_fix(model)
            subject = f"a wide {what} ({rows} rows of {width} columns) run"
        hint = hints.sentence(owner, subject, len(calls), duration_ms, location, fix)
        findings.append(
            Finding(
                kind=kind,
                fingerprint=hints.site_fingerprint(kind, first.fingerprint, location),
                repetitions=len(calls),
                duration_ms=duration_ms,
                statement=first.statement,
                model=model,
                location=location,
                fix=fix,
                hint=hint,
                route=activity.route,
                rows=rows,
                table=first.table,
            )
        )
    return findings
