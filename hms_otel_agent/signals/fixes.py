"""ORM fixes derived from the models' structure (the route of relations the ORM recorded), as
plain data with their text.

A `Fix` says what to add to which queryset (or ModelAdmin), built only from what the ORM
instrumentation recorded from ``_meta``: each relation on the way with its kind and the model it
reaches (`activity.Step`), the lookups of a ``get()`` and whether they name a unique field, the
lookups and ordering added to a related set, the aggregates asked for. Never from SQL text.

* ``select_related`` only along forward foreign keys and one-to-ones (either direction);
* the first reverse foreign key, many-to-many or generic relation on the way becomes
  ``prefetch_related``; the steps after it go into ``Prefetch(path, queryset=...)``;
* a GenericForeignKey becomes ``GenericPrefetch`` (Django 5.0+) with one queryset per type seen,
  or ``prefetch_related`` before 5.0 (only when one type was seen or nothing follows it);
* a filtered or ordered related set becomes ``Prefetch(..., queryset=...filter(...).order_by(...),
  to_attr=...)`` and the code change to read it;
* ``count()`` / ``exists()`` / ``aggregate()`` on a related set per row become ``annotate(...)``;
* ``get()`` in a loop: ``in_bulk()`` on the primary key or a unique field, else one query
  building a dict;
* under an admin changelist: ``list_select_related`` with every relation the changelist joined
  itself, or ``get_queryset`` for prefetches; its second ``COUNT(*)``:
  ``show_full_result_count = False``.

`checker` (set by the instrumentation) compiles each fix before it is shown
(``instrument/fix_check.py``); without one (offline analysis) fixes are shown unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from hms_otel_agent.signals import records as a
from hms_otel_agent.signals.records import FixFacts, OrmContext, Step

# Fix kinds (hms.hint.fix_kind).
SELECT_RELATED = "select_related"
PREFETCH_RELATED = "prefetch_related"
PREFETCH_QUERYSET = "prefetch_queryset"  # Prefetch(..., queryset=...) on the way or filtered
GENERIC_PREFETCH = "generic_prefetch"
ANNOTATE = "annotate"
IN_BULK = "in_bulk"
DICT_QUERY = "dict_query"
ADMIN_LIST_SELECT_RELATED = "admin_list_select_related"
ADMIN_GET_QUERYSET = "admin_get_queryset"
ADMIN_FULL_RESULT_COUNT = "admin_show_full_result_count"
# The kinds offered: each is proven by a test that applies it to a sample app's page and counts
# its queries (tests/integration/test_fixes_applied.py PROVEN); a fix of another kind is never
# shown (hints.checked_fix).
FIX_KINDS = (
    SELECT_RELATED,
    PREFETCH_RELATED,
    PREFETCH_QUERYSET,
    GENERIC_PREFETCH,
    ANNOTATE,
    IN_BULK,
    DICT_QUERY,
    ADMIN_LIST_SELECT_RELATED,
    ADMIN_GET_QUERYSET,
    ADMIN_FULL_RESULT_COUNT,
)

# Capabilities of the application's Django (set by the instrumentation; empty offline).
FEATURE_GENERIC_PREFETCH = "generic_prefetch"  # Django 5.0+
FEATURE_FETCH_PEERS = "fetch_peers"  # Django 6.1+
features: frozenset[str] = frozenset()

_SELECTABLE = frozenset((a.FORWARD, a.REVERSE_ONE_TO_ONE))
_PREFETCHABLE = frozenset((a.REVERSE_FK, a.MANY_TO_MANY, a.GENERIC_RELATION, a.GENERIC_FK))
_PEER_KINDS = frozenset((a.FORWARD, a.REVERSE_ONE_TO_ONE, a.DEFERRED))


class Queryset(NamedTuple):
    """``Model.objects.filter(...).order_by(...).select_related(...).prefetch_related(...)``."""

    model: str  # app_label.Model
    filters: tuple[str, ...] = ()  # lookups; their values are the user's
    order_by: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    prefetch: tuple[Lookup, ...] = ()


class Lookup(NamedTuple):
    """One argument of ``prefetch_related``: a path, a ``Prefetch`` or a ``GenericPrefetch``."""

    path: str
    querysets: tuple[Queryset, ...] = ()  # one: Prefetch; one per type: GenericPrefetch
    generic: bool = False
    to_attr: str = ""


class Fix(NamedTuple):
    kind: str
    root: str  # app_label.Model of the queryset (or ModelAdmin's model) the fix goes on
    select: tuple[str, ...] = ()
    prefetch: tuple[Lookup, ...] = ()
    annotate: tuple[tuple[str, str], ...] = ()  # (alias, expression text)
    field: str = ""  # in_bulk(field_name=), the dict's key, the deferred field
    admin: str = ""  # the ModelAdmin class
    change: str = ""  # the code change the fix needs, in words
    # Django 6.1: .fetch_mode(models.FETCH_PEERS) would do as well. Not shown: no test here applies
    # it on 6.1 (every fix kind shown is proven by tests/integration/test_fixes_applied.py).
    peers: bool = False

    @property
    def text(self) -> str:
        return render(self)


class Verdict(NamedTuple):
    ok: bool
    reason: str = ""  # why it failed ("FieldError: ...", "not checked: ..."), never a value


class FixChecker(Protocol):
    def verdict(self, fix: Fix) -> Verdict | None:
        """The verdict when known; None while the check is pending (it is then scheduled)."""

    def submit(self, fix: Fix) -> None:
        """Schedule a check (nothing when it is known or queued)."""


def verdict(fix: Fix) -> Verdict | None:
    """The checker's verdict; unchecked fixes pass where no checker runs (offline analysis)."""
    return Verdict(True, "not checked") if checker is None else checker.verdict(fix)


checker: FixChecker | None = None


def short(label: str) -> str:
    return label.rpartition(".")[2]


# -- derivation ------------------------------------------------------------------------------------


def derive(orm: OrmContext, targets: Iterable[str] = ()) -> Fix | None:
    """The fix for repeated operations with this context (`targets`: the types a
    GenericForeignKey loaded across the finding). None when no structural fix is known."""
    facts = orm.facts
    kind = orm.kind
    if kind == a.GET:
        return None if facts.descriptor else _get_fix(orm.model, facts)
    route = facts.route
    if not route:
        return None
    if kind in (a.RELATED_COUNT, a.RELATED_EXISTS, a.RELATED_AGGREGATE):
        return _annotate_fix(orm.root_model or orm.model, kind, facts)
    if kind == a.DEFERRED:
        return None
    fix = _eager_fix(orm.root_model or orm.model, route, facts, orm.filtered, tuple(targets))
    if fix is not None and facts.admin:
        return _admin(fix, facts)
    return fix


def _get_fix(model: str, facts: FixFacts) -> Fix | None:
    lookups = facts.lookups
    if facts.unique_field == "pk":
        return Fix(IN_BULK, model)
    if facts.unique_field:
        return Fix(IN_BULK, model, field=facts.unique_field)
    if lookups and all("__" not in k and k.isidentifier() for k in lookups):
        return Fix(DICT_QUERY, model, field=",".join(lookups))
    return None


def _split(route: tuple[Step, ...]) -> tuple[tuple[Step, ...], Step | None, tuple[Step, ...]]:
    """(joinable steps, the first step that needs a prefetch, the steps after it)."""
    for index, step in enumerate(route):
        if step.kind not in _SELECTABLE:
            return route[:index], step, route[index + 1 :]
    return route, None, ()


def _path(steps: Iterable[Step]) -> str:
    return "__".join(s.name for s in steps)


def _inner(model: str, rest: tuple[Step, ...], targets: tuple[str, ...]) -> Queryset | None:
    """The queryset of a prefetch level that carries the `rest` of the route; None when it
    would be ``Model.objects.all()`` (a plain path does) or cannot be written."""
    joined, prefetch, after = _split(rest)
    select = (_path(joined),) if joined else ()
    lookups: tuple[Lookup, ...] = ()
    if prefetch is not None:
        lookup = _lookup(prefetch.model, _path((*joined, prefetch)), prefetch, after, targets)
        if lookup is None:
            return None
        lookups = (lookup,)
    return Queryset(model, select=select, prefetch=lookups)


def _lookup(
    model: str, path: str, step: Step, rest: tuple[Step, ...], targets: tuple[str, ...]
) -> Lookup | None:
    """The prefetch lookup for `step` (reached by `path`) and what follows it."""
    if step.kind == a.GENERIC_FK:
        types = tuple(sorted({t for t in (*targets, step.model) if t}))
        if FEATURE_GENERIC_PREFETCH in features and types:
            querysets = []
            for label in types:
                inner = _inner(label, rest, ()) if rest and label == step.model else None
                querysets.append(inner or Queryset(label))
            return Lookup(path, tuple(querysets), generic=True)
        # Before GenericPrefetch (Django 4.2) nothing is offered past a GenericForeignKey: the
        # objects' types are only known at run time, so no check can prove the path.
        return None if rest else Lookup(path)
    if not rest:
        return Lookup(path)
    inner = _inner(step.model, rest, targets)
    if inner is None:
        return None
    if not inner.prefetch and not inner.select:
        return Lookup(path)
    if not inner.select and len(inner.prefetch) == 1:
        # Django applies a Prefetch's querysets at the last level of its path:
        # GenericPrefetch('items__subject', [...]) rather than a Prefetch nesting it.
        nested = inner.prefetch[0]
        return nested._replace(path=path + "__" + nested.path)
    return Lookup(path, (inner,))


def _eager_fix(
    root: str, route: tuple[Step, ...], facts: FixFacts, filtered: bool, targets: tuple[str, ...]
) -> Fix | None:
    joined, prefetch, rest = _split(route)
    if prefetch is None:
        return Fix(SELECT_RELATED, root, select=(_path(joined),), peers=_peers(route))
    select = (_path(joined),) if joined else ()
    path = _path((*joined, prefetch))
    if filtered and not rest and prefetch.kind != a.GENERIC_FK:
        if "" in facts.filters:
            return None  # a condition we cannot name
        to_attr = f"prefetched_{prefetch.name}"
        queryset = Queryset(prefetch.model, filters=facts.filters, order_by=facts.order_by)
        change = (
            f"read .{to_attr} (a list) instead of .{prefetch.name}"
            + (".filter(...)" if facts.filters else "")
            + (".order_by(...)" if facts.order_by else "")
        )
        return Fix(
            PREFETCH_QUERYSET, root, select, (Lookup(path, (queryset,), to_attr=to_attr),), change=change
        )
    lookup = _lookup(prefetch.model, path, prefetch, rest, targets)
    if lookup is None:
        return None
    if lookup.generic:
        kind = GENERIC_PREFETCH
    elif lookup.querysets:
        kind = PREFETCH_QUERYSET
    else:
        kind = PREFETCH_RELATED
    return Fix(kind, root, select, (lookup,))


def _peers(route: tuple[Step, ...]) -> bool:
    return FEATURE_FETCH_PEERS in features and all(s.kind in _PEER_KINDS for s in route)


def _annotate_fix(root: str, kind: str, facts: FixFacts) -> Fix | None:
    route = facts.route
    joined, step, rest = _split(route)
    if step is None or rest or step.kind == a.GENERIC_FK:
        return None  # the related set is reached through a prefetch: not one annotation
    path = _path(route)
    name = step.name
    condition = ""
    if facts.filters:
        if "" in facts.filters:
            return None
        condition = ", filter=Q(" + ", ".join(f"{path}__{f}=..." for f in facts.filters) + ")"
    if kind == a.RELATED_COUNT:
        alias = f"{name}_count"
        annotate: tuple[tuple[str, str], ...] = ((alias, f"Count('{path}'{condition})"),)
        change = f"read .{alias} instead of .{name}...count()"
    elif kind == a.RELATED_AGGREGATE:
        if not facts.aggregates:
            return None
        annotate = tuple(
            (alias, f"{func}('{path}__{field}'{condition})") for alias, func, field in facts.aggregates
        )
        aliases = ", ".join("." + alias for alias, _, _ in facts.aggregates)
        change = f"read {aliases} instead of .{name}.aggregate(...)"
    else:
        alias = f"has_{name}"
        if not step.remote or joined:
            annotate = ((f"{name}_count", f"Count('{path}'{condition})"),)
            change = f"test .{name}_count > 0 instead of .{name}...exists()"
        else:
            filters = "".join(f", {f}=..." for f in facts.filters)
            subquery = f"{short(step.model)}.objects.filter({step.remote}=OuterRef('pk'){filters})"
            annotate = ((alias, f"Exists({subquery})"),)
            change = f"read .{alias} instead of .{name}...exists()"
    return Fix(ANNOTATE, root, annotate=annotate, change=change)


def merge_annotations(parts: list[Fix]) -> Fix | None:
    """count(), exists() and aggregate() of one relation: one annotate()."""
    if not parts or any(p.root != parts[0].root or p.kind != ANNOTATE for p in parts):
        return None
    annotate = tuple(dict.fromkeys(entry for p in parts for entry in p.annotate))
    if len({alias for alias, _ in annotate}) != len(annotate):
        return None
    change = "; ".join(dict.fromkeys(p.change for p in parts if p.change))
    return Fix(ANNOTATE, parts[0].root, annotate=annotate, change=change)


def _admin(fix: Fix, facts: FixFacts) -> Fix:
    """The same relations as admin options: ``list_select_related`` replaces the changelist's
    own ``select_related()``, so it lists what that joined too; prefetches go in
    ``get_queryset``."""
    kept = _merge_paths((*facts.admin_joins, *fix.select)) if fix.select else ()
    if fix.prefetch:
        return fix._replace(kind=ADMIN_GET_QUERYSET, select=kept, admin=facts.admin, peers=False)
    return fix._replace(kind=ADMIN_LIST_SELECT_RELATED, select=kept, admin=facts.admin, peers=False)


def admin_count_fix(model: str, admin: str) -> Fix:
    """The changelist's second ``COUNT(*)`` (the unfiltered total for "Show all")."""
    return Fix(ADMIN_FULL_RESULT_COUNT, model, admin=admin)


def combine(fixes: Iterable[Fix]) -> Fix | None:
    """One fix for several relations of one queryset (a property that reads two relations):
    the union of their select_related paths and prefetch lookups. None when they do not go on
    the same queryset in the same way."""
    fixes = list(fixes)
    if not fixes:
        return None
    first = fixes[0]
    if any(f.root != first.root or f.admin != first.admin for f in fixes):
        return None
    if any(f.kind not in _COMBINABLE or f.change for f in fixes):
        return None
    select = _merge_paths(p for f in fixes for p in f.select)
    by_path: dict[str, Lookup] = {}
    for lookup in (lk for f in fixes for lk in f.prefetch):
        known = by_path.get(lookup.path)
        merged = lookup if known is None else _merge_lookup(known, lookup)
        if merged is None:
            return None  # one path with two querysets that cannot be one: Django refuses that
        by_path[lookup.path] = merged
    # A plain path that a longer lookup goes through is implied by it.
    prefetch = tuple(
        lookup
        for path, lookup in by_path.items()
        if lookup.querysets or not any(other.startswith(path + "__") for other in by_path)
    )
    kinds = {f.kind for f in fixes}
    if first.admin:
        kind = ADMIN_GET_QUERYSET if prefetch else ADMIN_LIST_SELECT_RELATED
    elif len(kinds) == 1:
        kind = first.kind
    elif kinds <= {SELECT_RELATED, PREFETCH_RELATED}:
        kind = PREFETCH_RELATED
    else:
        kind = PREFETCH_QUERYSET if GENERIC_PREFETCH not in kinds else GENERIC_PREFETCH
    peers = all(f.peers for f in fixes)
    return Fix(kind, first.root, select, prefetch, admin=first.admin, peers=peers)


_COMBINABLE = frozenset(
    (
        SELECT_RELATED,
        PREFETCH_RELATED,
        PREFETCH_QUERYSET,
        GENERIC_PREFETCH,
        ADMIN_LIST_SELECT_RELATED,
        ADMIN_GET_QUERYSET,
    )
)


def _merge_queryset(one: Queryset, other: Queryset) -> Queryset | None:
    if one == other:
        return one
    if one.filters or other.filters or one.order_by or other.order_by:
        return None
    fix = combine(
        [
            Fix(PREFETCH_QUERYSET, one.model, one.select, one.prefetch),
            Fix(PREFETCH_QUERYSET, other.model, other.select, other.prefetch),
        ]
    )
    return None if fix is None else Queryset(one.model, select=fix.select, prefetch=fix.prefetch)


def _merge_lookup(one: Lookup, other: Lookup) -> Lookup | None:
    """Two lookups of one path as one: a plain path is implied by a Prefetch of it; the
    querysets of two GenericPrefetch are merged type by type."""
    if one == other or (not other.querysets and not other.generic):
        return one
    if not one.querysets and not one.generic:
        return other
    if one.generic != other.generic or one.to_attr or other.to_attr:
        return None
    merged: dict[str, Queryset] = {}
    for qs in (*one.querysets, *other.querysets):
        known = merged.get(qs.model)
        both = qs if known is None else _merge_queryset(known, qs)
        if both is None:
            return None
        merged[qs.model] = both
    return Lookup(one.path, tuple(merged[m] for m in sorted(merged)), one.generic)


def _merge_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Paths in order of first appearance, each replaced by the longest path through it."""
    found = list(dict.fromkeys(paths))
    merged: list[str] = []
    for path in found:
        longest = max((q for q in found if q == path or q.startswith(path + "__")), key=len)
        if longest not in merged and not any(m.startswith(longest + "__") for m in merged):
            merged.append(longest)
    return tuple(merged)


# -- text ------------------------------------------------------------------------------------------


def _queryset_text(qs: Queryset) -> str:
    text = f"{short(qs.model)}.objects"
    if qs.filters:
        text += ".filter(" + ", ".join(f"{f}=..." for f in qs.filters) + ")"
    if qs.order_by:
        text += ".order_by(" + ", ".join(repr(o) for o in qs.order_by) + ")"
    if qs.select:
        text += ".select_related(" + ", ".join(repr(s) for s in qs.select) + ")"
    if qs.prefetch:
        text += ".prefetch_related(" + ", ".join(_lookup_text(lk) for lk in qs.prefetch) + ")"
    if text.endswith(".objects"):
        text += ".all()"
    return text


def _lookup_text(lookup: Lookup) -> str:
    if lookup.generic:
        querysets = ", ".join(_queryset_text(q) for q in lookup.querysets)
        return f"GenericPrefetch({lookup.path!r}, [{querysets}])"
    if not lookup.querysets:
        return repr(lookup.path)
    to_attr = f", to_attr={lookup.to_attr!r}" if lookup.to_attr else ""
    return f"Prefetch({lookup.path!r}, queryset={_queryset_text(lookup.querysets[0])}{to_attr})"


def queryset_calls(fix: Fix) -> str:
    """``.select_related(...).prefetch_related(...)`` / ``.annotate(...)`` of a fix."""
    text = ""
    if fix.select:
        text += ".select_related(" + ", ".join(repr(s) for s in fix.select) + ")"
    if fix.prefetch:
        text += ".prefetch_related(" + ", ".join(_lookup_text(lk) for lk in fix.prefetch) + ")"
    if fix.annotate:
        text += ".annotate(" + ", ".join(f"{alias}={expr}" for alias, expr in fix.annotate) + ")"
    return text


def render(fix: Fix) -> str:
    """The fix as the code to write."""
    model = short(fix.root)
    if fix.kind == IN_BULK:
        if fix.field:
            return f"{model}.objects.in_bulk(values, field_name={fix.field!r})"
        return f"{model}.objects.in_bulk(ids)"
    if fix.kind == DICT_QUERY:
        keys = fix.field.split(",")
        if len(keys) == 1:
            key = keys[0]
            return f"{{o.{key}: o for o in {model}.objects.filter({key}__in=values)}}"
        attrs = ", ".join(f"o.{k}" for k in keys)
        q = ", ".join(f"{k}={k}" for k in keys)
        names = ", ".join(keys)
        return (
            f"{{({attrs}): o for o in {model}.objects.filter("
            f"reduce(operator.or_, (Q({q}) for {names} in keys)))}}"
        )
    if fix.kind == ADMIN_FULL_RESULT_COUNT:
        return f"show_full_result_count = False on {fix.admin}"
    if fix.kind == ADMIN_LIST_SELECT_RELATED:
        paths = ", ".join(repr(p) for p in fix.select)
        return f"list_select_related = ({paths},) on {fix.admin}"
    if fix.kind == ADMIN_GET_QUERYSET:
        prefetch = ", ".join(_lookup_text(lk) for lk in fix.prefetch)
        text = (
            "def get_queryset(self, request): return super().get_queryset(request)"
            f".prefetch_related({prefetch}) on {fix.admin}"
        )
        if fix.select:
            paths = ", ".join(repr(p) for p in fix.select)
            text += f", and list_select_related = ({paths},)"
        return text
    text = queryset_calls(fix)
    if fix.change:
        text += f", and {fix.change}"
    return text
