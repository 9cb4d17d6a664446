"""Which ``select_related`` / ``prefetch_related`` relations are read (opt-in:
``HMS_OTEL_UNUSED_EAGER_LOADS=true``).

Django keeps an instance's eagerly loaded relations in two dicts: ``instance._state.fields_cache``
(``select_related`` joins, single-valued prefetches) and ``instance._prefetched_objects_cache``
(many-valued prefetches). Every read of a loaded relation — ``encounter.patient``,
``patient.emergency_contacts.all()`` — goes through ``dict.__getitem__`` of one of them (Django's
``get_cached_value`` / the related manager's ``get_queryset``); ``in`` checks and ``.get()`` (what
``prefetch_related_objects`` uses to walk already-fetched levels) do not count.

When a queryset with eager relations is evaluated (``django_orm._after_fetch``, after Django has
filled those caches), `track` replaces both dicts of each loaded instance — and of the instances
joined or prefetched under it, level by level — with a `_TrackedCache`: the same dict, whose
``__getitem__`` / ``get`` first note the relation path in the queryset's `EagerLoad`. Nothing else
changes: instances of other querysets keep plain dicts and pay nothing; a read on a tracked
instance costs one Python-level ``__getitem__``. Tracked caches pickle and copy as plain dicts.

Cost (``benchmarks/micro_eager.py``, Python 3.11, Django 5.2): about 0.7 µs per tracked instance
when the queryset is evaluated (a 50-row ``select_related`` of two relations: ~37 µs on ~1.6 ms of
CPU for the query, 2-4 %) and 0.12 µs per relation read on a tracked instance (0.18 -> 0.30 µs);
querysets without eager relations pay one attribute check. Not free on the hot path, hence
opt-in.

When the last instance of the queryset is gone, the `EagerLoad` is freed and its outcome (model,
code location, relation paths, paths read) goes into a bounded queue; the span processor drains it
at the end of each owner span (`flush`) into ``signals.eager_loading.UnusedEagerAggregator``. New
findings get a span of their own (``unused eager loading``, scope ``hms_otel_agent.eager_loads``,
one ``hms.unused_eager_load`` event per finding) — they are about a code site over many requests,
not about the request that happened to cross the threshold — plus the ``hms.findings`` metric and
the live log line; every outcome counts in ``hms.orm.eager_loads``.

Not tracked: ``Prefetch(..., to_attr=...)`` (a plain attribute; reads cannot be seen), querysets
evaluated for writes, and instances beyond the first `MAX_TRACKED_OBJECTS` of one queryset.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from hms_otel_agent import __version__, guard
from hms_otel_agent.instrument.context import user_location
from hms_otel_agent.signals.activity import CodeLocation, Finding
from hms_otel_agent.signals.eager_loading import (
    PREFETCH_RELATED,
    SELECT_RELATED,
    EagerOutcome,
    UnusedEagerAggregator,
)
from hms_otel_agent.signals.vocabulary import (
    EAGER_LOADS_SCOPE,
    EAGER_LOADS_SPAN,
    finding_attributes,
    finding_event,
)

SCOPE = EAGER_LOADS_SCOPE
SPAN_NAME = EAGER_LOADS_SPAN
EVENT_NAME = finding_event("unused_eager_load")
COMPONENT = "unused eager loading"
MAX_TRACKED_OBJECTS = 2000  # instances per queryset (all levels) whose caches are tracked
MAX_PENDING = 50_000  # finished querysets waiting for the next flush

_finished: deque[EagerOutcome] = deque(maxlen=MAX_PENDING)
_aggregator = UnusedEagerAggregator()
_flush_lock = threading.Lock()
_tracer: Any = None
_loads_counter: Any = None
enabled = False


class EagerLoad:
    """One evaluated queryset's eager relations and the paths read so far."""

    __slots__ = ("location", "model", "relations", "used")

    def __init__(
        self, model: str, location: CodeLocation | None, relations: tuple[tuple[str, str], ...]
    ) -> None:
        self.model = model
        self.location = location
        self.relations = relations
        self.used: set[str] = set()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            _finished.append(EagerOutcome(self.model, self.location, self.relations, frozenset(self.used)))


class _TrackedCache(dict[Any, Any]):
    """A fields / prefetch cache whose ``[]`` notes reads of the relations it tracks."""

    __slots__ = ("_hms_load", "_hms_paths")
    _hms_load: EagerLoad
    _hms_paths: dict[str, str]

    def __getitem__(self, key: Any) -> Any:
        path = self._hms_paths.get(key)
        if path is not None:
            self._hms_load.used.add(path)
        return dict.__getitem__(self, key)

    def copy(self) -> dict[Any, Any]:
        return dict(self)

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


# A node of the relation tree: name -> (path, method, children)
_Tree = dict[str, tuple[str, str, Any]]


def _add(tree: _Tree, parts: list[str], method: str, prefix: str = "") -> None:
    name, rest = parts[0], parts[1:]
    path = prefix + name
    node = tree.get(name)
    if node is None:
        node = tree[name] = (path, method, {})
    if rest:
        _add(node[2], rest, method, path + "__")


def _select_tree(joins: dict[str, Any], skip: Any, tree: _Tree, prefix: str = "") -> None:
    for name, sub in joins.items():
        if name in skip:
            continue
        path = prefix + name
        node = tree.get(name)
        if node is None:
            node = tree[name] = (path, SELECT_RELATED, {})
        if sub:
            _select_tree(sub, (), node[2], path + "__")


def _relations(tree: _Tree) -> list[tuple[str, str]]:
    found = []
    for path, method, children in tree.values():
        found.append((path, method))
        found.extend(_relations(children))
    return found


def _children(obj: Any, name: str) -> list[Any]:
    """What is loaded under relation `name` of `obj`, read without counting as a read."""
    fields = obj._state.__dict__.get("fields_cache")
    if fields is not None and dict.__contains__(fields, name):
        value = dict.__getitem__(fields, name)
        return [] if value is None else [value]
    prefetched = obj.__dict__.get("_prefetched_objects_cache")
    if prefetched is not None and dict.__contains__(prefetched, name):
        cached = getattr(dict.__getitem__(prefetched, name), "_result_cache", None)
        return list(cached) if cached is not None else []
    return []


def _mark(
    objects: list[Any], nodes: _Tree, load: EagerLoad, below: dict[int, tuple[_Tree, list[Any]]]
) -> None:
    """Track the caches of `objects` for the relations in `nodes`; collect what is loaded under
    them (by subtree) into `below`."""
    paths = {name: node[0] for name, node in nodes.items()}
    prefetch = any(node[1] == PREFETCH_RELATED for node in nodes.values())
    nested = [
        (name, node[2], below.setdefault(id(node[2]), (node[2], []))[1])
        for name, node in nodes.items()
        if node[2]
    ]
    tracked_class = _TrackedCache
    for obj in objects:
        for name, _children_tree, found in nested:
            found.extend(_children(obj, name))
        state = obj._state
        fields = state.__dict__.get("fields_cache")
        if fields is None or fields.__class__ is dict:
            tracked = tracked_class(fields) if fields else tracked_class()
            tracked._hms_load = load
            tracked._hms_paths = paths
            state.fields_cache = tracked
        if prefetch:
            prefetched = obj.__dict__.get("_prefetched_objects_cache")
            if prefetched is not None and prefetched.__class__ is dict:
                tracked = tracked_class(prefetched)
                tracked._hms_load = load
                tracked._hms_paths = paths
                obj._prefetched_objects_cache = tracked


def track(queryset: Any, rows: list[Any], default_joins: Any) -> None:
    """Mark the instances of an evaluated queryset (`rows`) with its eager relations. Never raises."""
    try:
        if not enabled or queryset._for_write:
            return
        tree: _Tree = {}
        joins = queryset._query.select_related
        if joins:
            if joins is True:
                joins = default_joins(queryset.model)
            known = queryset._known_related_objects
            _select_tree(joins, {f.name for f in known} if known else (), tree)
        for lookup in queryset._prefetch_related_lookups:
            if isinstance(lookup, str):
                _add(tree, lookup.split("__"), PREFETCH_RELATED)
            elif getattr(lookup, "to_attr", None) is None:
                _add(tree, str(lookup.prefetch_to).split("__"), PREFETCH_RELATED)
        if not tree:
            return
        load = EagerLoad(queryset.model._meta.label, user_location(), tuple(_relations(tree)))
        budget = MAX_TRACKED_OBJECTS
        level: list[tuple[_Tree, list[Any]]] = [(tree, rows)]
        while level and budget > 0:
            below: dict[int, tuple[_Tree, list[Any]]] = {}
            for nodes, objects in level:
                if len(objects) > budget:
                    objects = objects[:budget]
                budget -= len(objects)
                _mark(objects, nodes, load, below)
                if budget <= 0:
                    break
            level = [entry for entry in below.values() if entry[1]]
    except Exception as exc:
        guard.report(COMPONENT, exc)


def pending() -> bool:
    return bool(_finished)


def flush(settings: Any) -> list[Finding]:
    """Aggregate finished querysets; emit and return the new findings. Never raises; re-entrant
    and concurrent calls return [] at once."""
    if not _flush_lock.acquire(blocking=False):
        return []
    try:
        findings: list[Finding] = []
        counter = _loads_counter
        while _finished:
            try:
                outcome = _finished.popleft()
            except IndexError:
                break
            findings.extend(_aggregator.add(outcome, settings.unused_eager_min_loads))
            if counter is not None:
                for path, method in outcome.relations:
                    counter.add(
                        1,
                        {
                            "hms.orm.root_model": outcome.root_model,
                            "hms.orm.path": path,
                            "hms.orm.eager_method": method,
                            "hms.orm.eager_used": path in outcome.used,
                        },
                    )
        if findings:
            _emit(findings)
        return findings
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return []
    finally:
        _flush_lock.release()


def _emit(findings: list[Finding]) -> None:
    if _tracer is None:
        return
    span = _tracer.start_span(SPAN_NAME, context=otel_context.Context(), kind=SpanKind.INTERNAL)
    try:
        span.set_attribute("hms.findings.count", len(findings))
        span.set_attribute("hms.hints", [f.hint for f in findings])
        for finding in findings:
            span.add_event(EVENT_NAME, finding_attributes(finding))
    finally:
        span.end()


def install(settings: Any, tracer_provider: Any, meter_provider: Any) -> None:
    global _tracer, _loads_counter, enabled
    _tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
    _loads_counter = meter_provider.get_meter(SCOPE, __version__).create_counter(
        "hms.orm.eager_loads",
        unit="{load}",
        description="Querysets evaluated with an eager relation, by model, path, method and "
        "whether any instance's relation was read.",
    )
    enabled = bool(settings.unused_eager_loads)


def configure(on: bool) -> None:
    """Turn tracking on or off (tests, benchmarks)."""
    global enabled
    enabled = on


def reset() -> None:
    """Forget pending outcomes and aggregated counts (tests)."""
    global _aggregator
    _finished.clear()
    _aggregator = UnusedEagerAggregator()
