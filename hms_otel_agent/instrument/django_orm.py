"""ORM context: which Django ORM operation is behind each SQL statement.

`install()` (run once Django's app registry is ready, never at import) patches Django so that
`current_orm` holds the operation's context while the ORM executes SQL; the SQL span hook
(`instrument/db.py`) reads it, and looks up its code location only then (`_Pending`). Every
patch sets the context before calling Django, calls Django outside any ``try``/``except`` (the
application's exceptions pass through untouched), and resets the context in ``finally``. Errors
in the agent's own code are reported through `guard.report` and the operation runs without context.

What is patched (4.2 / 5.2 / 6.1 unless noted):

* lazy loads of one object: ``ForwardManyToOneDescriptor.get_object`` (forward FK and, through
  ``super()``, ``ForwardOneToOneDescriptor``); ``ReverseOneToOneDescriptor.get_queryset`` tags
  the queryset it builds for ``__get__`` (4.2/5.2) or ``fetch_one`` (6.1);
  ``GenericForeignKey.__get__`` (4.2/5.2) or ``GenericForeignKeyDescriptor.fetch_one`` (6.1);
  deferred fields: ``Model.refresh_from_db`` recognises its caller ``DeferredAttribute.__get__``
  by the code object of the frame above it (4.2/5.2: no wrapper on every attribute access, so
  ``ForeignKeyDeferredAttribute``, a data descriptor read on every ``obj.fk_id``, costs nothing)
  or ``DeferredAttribute.fetch_one`` (6.1);
* related managers: the classes built by ``create_reverse_many_to_one_manager``,
  ``create_forward_many_to_many_manager`` and contenttypes' ``create_generic_related_manager``
  (the factories are wrapped, and classes built before `install()` are patched in place):
  ``get_queryset`` tags the queryset, M2M ``count``/``exists`` (5.x+) set the context;
* operations: ``QuerySet.get`` / ``count`` / ``exists`` / ``_fetch_all``,
  ``Model.refresh_from_db``; every other statement (insert, update, delete, aggregate,
  ``iterator()``) gets a "query" context in ``SQLCompiler.execute_sql`` /
  ``SQLInsertCompiler.execute_sql`` when nothing more specific is set;
* prefetching: ``prefetch_one_level`` (prefetch queries are not lazy loads, and the objects it
  loads remember their path);
* ContentType lookups (``get_for_id``) inside a generic relation load are a plain ``get``: Django
  caches them per process, so they are not one of the relation's repeated loads;
* Django 6.1 fetch modes: ``fetch_many`` of the four fetchers (FETCH_PEERS loads a relation
  for all peers in one query): the context keeps the relation and its kind with
  ``lazy=False``, so the detector sees a batched load, not an N+1.

Data kept outside contextvars (plain data: strings, integers and the Query's own ``order_by``
tuple; never a callable, and no model instance is ever used as a key or compared):

* ``queryset.query._hms_rel``: a tuple ``(kind, model, relation, path, root_model,
  where_count, order_by)`` on the Query of a related manager's queryset (or of a reverse
  one-to-one lookup). Django evaluates that queryset later, in user code, after
  ``.filter()``/``.order_by()`` clones it; ``Query.clone`` copies ``__dict__``, so the tag
  follows the clones. ``where_count``/``order_by`` are the unfiltered shape: a clone that
  differs was filtered in user code (``OrmContext.filtered``).
* ``instance._state._hms_origin``: ``(root_model, path)`` on instances loaded through a
  relation (lazy load, select_related join, prefetch, related manager), so a lazy load from
  such an instance reports the whole path (``patient__insurance`` from ``hms.Encounter``).
  Instances of the queryset the user started from carry nothing.
"""

from __future__ import annotations

import functools
import inspect
import sys
import weakref
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from hms_otel_agent import guard
from hms_otel_agent.instrument import context as code_context
from hms_otel_agent.instrument import fix_check
from hms_otel_agent.instrument.context import (
    PendingOrm,
    async_site,
    class_location,
    current_orm,
    descriptor_name,
    user_location,
)
from hms_otel_agent.signals import fixes
from hms_otel_agent.signals.records import DEFERRED as DEFERRED_KIND
from hms_otel_agent.signals.records import (
    FORWARD,
    GENERIC_FK,
    GENERIC_RELATION,
    GET,
    MANY_TO_MANY,
    NO_FACTS,
    REFRESH,
    RELATED_AGGREGATE,
    RELATED_COUNT,
    RELATED_EXISTS,
    REVERSE_FK,
    REVERSE_ONE_TO_ONE,
    CodeLocation,
    FixFacts,
    OrmContext,
    Step,
)

COMPONENT = "Django ORM context"
QUERY = "query"
COUNT = "count"
EXISTS = "exists"
AGGREGATE = "aggregate"
TAG = "_hms_rel"  # attribute of django.db.models.sql.Query
ADMIN_TAG = "_hms_admin"  # attribute of the Query of an admin changelist's queryset
ORIGIN = "_hms_origin"  # attribute of an instance's ModelState
BUILT = "_hms_built"  # attribute of a Query: the user's line that started the queryset
_PATCHED = "_hms_orm_patch"  # marks our wrappers (for uninstall and idempotence)
_MANAGER_KINDS = frozenset((REVERSE_FK, MANY_TO_MANY, GENERIC_RELATION))
_MAX_SELECT_RELATED_DEPTH = 5  # Django's own default for select_related()

# True while Django runs prefetch_one_level: related managers built there are never evaluated.
_in_prefetch: ContextVar[bool] = ContextVar("hms_otel_orm_prefetch", default=False)
# The ModelAdmin (class name) whose ChangeList.get_results is running: its COUNT(*) queries.
_admin_results: ContextVar[str] = ContextVar("hms_otel_orm_admin", default="")

# Per-class / per-descriptor metadata, filled on first use; bounded by the number of models
# and relations in the process. Keys are model classes and descriptors, never instances.
_labels: dict[Any, str] = {}
_names: dict[Any, str] = {}
_forward_joins: dict[Any, dict[str, Any]] = {}
_accessor_maps: dict[Any, dict[str, tuple[str, str, str]]] = {}  # model -> accessor -> (kind, target, remote)
_get_facts: dict[tuple[Any, tuple[str, ...]], FixFacts] = {}  # (model, get() keywords) -> facts
_compiler_selects: dict[type, bool] = {}  # compiler class -> runs a plain SELECT
_gfk_attnames: dict[Any, str] = {}  # GenericForeignKey -> attname of its content type column
# Contexts by (operation, relation, path, code location): bounded by the code of the application.
_interned: dict[tuple[Any, ...], OrmContext] = {}
_MAX_INTERNED = 20_000

_undo: list[tuple[Any, str, Any]] = []  # (owner, name, previous value in owner.__dict__ or _MISSING)
_manager_classes: weakref.WeakSet[type] = weakref.WeakSet()
_installed = False
_MISSING = object()

# Set by install(): Django classes the hot path compares against.
_ModelIterable: Any = None
_SQLCompiler: Any = None
_NOT_SELECT: tuple[type, ...] = ()
_ContentType: Any = None
_deferred_get_code: Any = None
# Set by instrument/eager_loads.py: marks instances of querysets with select_related /
# prefetch_related lookups so that reads of those relations can be seen (unused eager loading).
_track_eager: Callable[[Any, list[Any], Any], None] | None = None


# -- contexts ---------------------------------------------------------------------------------


def _rank(ctx: OrmContext | PendingOrm) -> int:
    """Which context wins when ORM operations nest: relation loads > refresh > plain queries."""
    if ctx.relation:
        return 3
    return 2 if ctx.kind == REFRESH else 1


def _context(
    model: str,
    kind: str,
    relation: str = "",
    lazy: bool = False,
    path: str = "",
    root: str = "",
    filtered: bool = False,
    facts: FixFacts = NO_FACTS,
    origin: CodeLocation | None = None,
) -> _Pending:
    """The context of this operation, its code location to be looked up when a statement runs
    under it (`_Pending.resolve`). The walk will start from the first frame above the agent's
    ORM patches: it is live for as long as the operation runs (the caller of the patched method),
    and the frames skipped are the agent's, which the walk skips too — the same location as a
    walk from here."""
    frame = sys._getframe(1)
    hops = 1
    while frame.f_code.co_filename == _THIS_FILE and frame.f_back is not None:
        frame = frame.f_back
        hops += 1
    key = (kind, model, relation, path, root, lazy, filtered, facts, origin)
    return _Pending(kind, relation, key, frame, hops)


_THIS_FILE = _context.__code__.co_filename
_MAX_DEPTH = 64  # user_location's


class _Pending(PendingOrm):
    """An ORM context before its code location is known (instrument/context.py `PendingOrm`)."""

    __slots__ = ("_frame", "_hops", "_key", "_resolved")

    def __init__(self, kind: str, relation: str, key: tuple[Any, ...], frame: Any, hops: int) -> None:
        self.kind = kind
        self.relation = relation
        self._key = key
        self._frame = frame
        self._hops = hops
        self._resolved: OrmContext | None = None

    def resolve(self) -> OrmContext | None:
        """The interned OrmContext at the user's code location: contexts are frozen and a loop
        produces the same one every time, and building a frozen dataclass costs more than
        looking it up. None when the agent failed (reported: the statement counts as raw SQL)."""
        ctx = self._resolved
        if ctx is not None or self._frame is None:
            return ctx
        try:
            ctx = self._resolved = self._intern()
        except Exception as exc:
            guard.report(COMPONENT, exc)
        finally:
            self._frame = None  # the operation's frames are not kept beyond this
        return ctx

    def _intern(self) -> OrmContext:
        hops = self._hops
        location = user_location(self._frame, _MAX_DEPTH - hops) if hops < _MAX_DEPTH else None
        key = self._key
        origin = key[8]
        if origin is not None:  # by its fields: their strings' hashes are cached, a dataclass's is not
            key = (*key[:8], origin.file, origin.line, origin.function)
        if location is not None:
            key = (*key, location.file, location.line, location.function)
        ctx = _interned.get(key)
        if ctx is None:
            kind, model, relation, path, root, lazy, filtered, facts, origin = self._key
            ctx = OrmContext(model, kind, relation, lazy, path, root, filtered, location, facts, origin)
            if len(_interned) < _MAX_INTERNED:
                _interned[key] = ctx
            if facts is not NO_FACTS:
                _schedule_check(ctx)
        return ctx


def _schedule_check(ctx: OrmContext) -> None:
    """A new context: have its fix checked in the background before a finding shows it."""
    try:
        checker = fixes.checker
        if checker is not None and (ctx.lazy or ctx.kind == GET):
            fix = fixes.derive(ctx)
            if fix is not None:
                checker.submit(fix)
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _pop(token: Token[OrmContext | PendingOrm | None] | None) -> None:
    if token is None:
        return
    try:
        current_orm.reset(token)
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _label(model: Any) -> str:
    try:
        return _labels[model]
    except KeyError:
        label = _labels[model] = model._meta.label
        return label


def _name(descriptor: Any, compute: Callable[[Any], str]) -> str:
    try:
        return _names[descriptor]
    except KeyError:
        name = _names[descriptor] = compute(descriptor)
        return name


# (root_model, path, route, admin, where): where an instance came from. `route` has a Step per
# relation of `path`; `admin` is (ModelAdmin name, paths its changelist joined) or None; `where`
# the code location the root queryset came from (CodeLocation or None).
Origin = tuple[str, str, tuple[Step, ...], Any, Any]


def _origin(instance: Any) -> Origin | None:
    origin: Origin | None = instance._state.__dict__.get(ORIGIN)
    return origin


def _accessors(model: Any) -> dict[str, tuple[str, str, str]]:
    """accessor -> (relation kind, ``app_label.Model`` it reaches), from the model's ``_meta``:
    forward FKs and one-to-ones, reverse accessors (``related_name`` or ``x_set``), many-to-many
    fields (Django's and custom ones such as django-taggit's), GenericForeignKeys (no target)
    and GenericRelations."""
    found = _accessor_maps.get(model)
    if found is not None:
        return found
    found = {}
    for field in model._meta.get_fields(include_hidden=True):
        if not field.is_relation:
            continue
        target = field.related_model
        remote = ""
        if field.auto_created and not field.concrete:  # a reverse relation (ForeignObjectRel)
            name = field.get_accessor_name()
            if not name or not hasattr(model, name):
                continue  # no accessor on the model (django-taggit's Tag -> tagged models)
            remote = str(field.field.name)
            if field.one_to_one:
                kind = REVERSE_ONE_TO_ONE
            elif field.many_to_many:
                kind = MANY_TO_MANY
            else:
                kind = REVERSE_FK
        else:
            name = field.name
            if field.many_to_one and target is None:
                kind = GENERIC_FK
            elif field.one_to_many:
                kind = GENERIC_RELATION
            elif field.many_to_many:
                kind = MANY_TO_MANY
            else:
                kind = FORWARD
        if name and not name.endswith("+"):
            found[name] = (kind, _label(target) if isinstance(target, type) else "", remote)
    _accessor_maps[model] = found
    return found


def _step(model: Any, name: str, kind: str, target: str = "") -> Step:
    _, known, remote = _accessors(model).get(name, (kind, "", ""))
    return Step(name, kind, target or known, remote)


def _path(instance: Any, name: str) -> tuple[str, str, str, tuple[Step, ...], Any, Any]:
    """(model, root_model, path, route so far, admin, where the root queryset came from) of
    loading relation `name` of `instance`."""
    return _path_from(type(instance), _origin(instance), name)


def _path_from(cls: Any, origin: Any, name: str) -> tuple[str, str, str, tuple[Step, ...], Any, Any]:
    model = _label(cls)
    if origin is None:
        return model, model, name, (), None, None
    if not origin[1]:  # an instance of the root queryset
        return model, origin[0], name, (), origin[3], origin[4]
    return model, origin[0], origin[1] + "__" + name, origin[2], origin[3], origin[4]


def _facts(route: tuple[Step, ...], admin: Any) -> FixFacts:
    if admin is None:
        return FixFacts(route=route)
    return FixFacts(route=route, admin=admin[0], admin_joins=admin[1])


def _open_relation(
    instance: Any, name: str, kind: str, lazy: bool = True, target: str = ""
) -> tuple[Token[OrmContext | PendingOrm | None] | None, Origin | None]:
    """Set the context of loading relation `name` of `instance`; return (token, origin of what
    gets loaded). Never raises."""
    try:
        model, root, path, route, admin, where = _path(instance, name)
        route = (*route, _step(type(instance), name, kind, target))
        outer = current_orm.get()
        token = None
        if outer is None or not outer.relation:
            facts = _facts(route, admin)
            ctx = _context(model, kind, model + "." + name, lazy, path, root, facts=facts, origin=where)
            token = current_orm.set(ctx)
        return token, (root, path, route, admin, where)
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None, None


def _mark(obj: Any, origin: Origin | None) -> None:
    if obj is None or origin is None:
        return
    try:
        state = getattr(obj, "_state", None)
        if state is not None:
            route = origin[2]
            if route and not route[-1].model:  # a GenericForeignKey: the type is known now
                last = route[-1]
                route = (*route[:-1], last._replace(model=_label(type(obj))))
                origin = (origin[0], origin[1], route, origin[3], origin[4])
            state.__dict__[ORIGIN] = origin
    except Exception as exc:
        guard.report(COMPONENT, exc)


# -- tagged querysets (related managers, reverse one-to-one) ----------------------------------


def _tag_of(queryset: Any) -> tuple[Any, ...] | None:
    query = queryset.__dict__.get("_query")
    if query is None:
        return None
    return _query_tag(query)


def _query_tag(query: Any) -> tuple[Any, ...] | None:
    """The tag of a Query: (kind, model, relation, path, root, where count, order_by, route,
    admin, where the root queryset came from), built on first use from what `_tag_related`
    kept (a clone shares the pending tag)."""
    tag = query.__dict__.get(TAG)
    if tag is None or tag.__class__ is tuple:
        return tag
    built: tuple[Any, ...] = tag.build()
    query.__dict__[TAG] = built
    return built


class _PendingTag:
    """What tagging a related manager's queryset needs, kept when the manager hands it out and
    made into the tag only when the queryset is evaluated against the database: serializers and
    templates read prefetched relations row after row, and most of those querysets never run
    SQL. Holds no instance (its model and origin are read now: the origin is set when it is
    loaded)."""

    __slots__ = ("built", "count", "kind", "name", "order_by", "origin", "owner", "target")

    def __init__(
        self, kind: str, owner: Any, origin: Any, name: str, target: Any, count: int, order_by: Any
    ) -> None:
        self.kind = kind
        self.owner = owner  # the instance's model class
        self.origin = origin
        self.name = name
        self.target = target  # the queryset's model
        self.count = count
        self.order_by = order_by
        self.built: tuple[Any, ...] | None = None

    def build(self) -> tuple[Any, ...]:
        built = self.built
        if built is None:
            kind, name = self.kind, self.name
            model, root, path, route, admin, where = _path_from(self.owner, self.origin, name)
            route = (*route, _step(self.owner, name, kind, _label(self.target)))
            relation = model + "." + name
            built = (kind, model, relation, path, root, self.count, self.order_by, route, admin, where)
            self.built = built
        return built


def _tag_related(queryset: Any, instance: Any, kind: str, name: str) -> None:
    """Tag the Query of a queryset that loads relation `name` of `instance`. Never raises."""
    try:
        if _in_prefetch.get():
            return
        query = queryset.__dict__.get("_query")
        if query is None or TAG in query.__dict__:
            return  # a prefetched queryset is returned again on every access: tag it once
        count = len(query.where.children)
        pending = queryset.__dict__.get("_deferred_filter")  # the manager's own filter, not applied yet
        if pending:
            count += len(pending[1]) + len(pending[2])
        query.__dict__[TAG] = _PendingTag(
            kind, type(instance), _origin(instance), name, queryset.model, count, query.order_by
        )
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _filtered(query: Any, tag: tuple[Any, ...]) -> bool:
    return len(query.where.children) != tag[5] or query.order_by is not tag[6] or query.is_sliced


def _lookup_name(node: Any) -> str:
    """``status`` / ``started_at__gte`` of a where-clause lookup on a column of the queried model
    ("" for anything else: a nested condition, an expression, a column of a joined table)."""
    lhs = getattr(node, "lhs", None)
    target = getattr(lhs, "target", None)
    name = getattr(node, "lookup_name", None)
    if target is None or not name or getattr(lhs, "alias", None) is None:
        return ""
    field = str(target.name)
    return field if name == "exact" else f"{field}__{name}"


def _filter_facts(query: Any, tag: tuple[Any, ...], facts: FixFacts) -> FixFacts:
    """The lookups and ordering user code added to a related manager's queryset."""
    children = query.where.children[tag[5] :]
    if query.where.connector != "AND" or query.where.negated:
        children = [query.where]
    filters = tuple(_lookup_name(child) for child in children)
    order_by = () if query.order_by is tag[6] else tuple(o for o in query.order_by if isinstance(o, str))
    return facts._replace(filters=filters, order_by=order_by)


def _tagged_ctx(
    queryset: Any, tag: tuple[Any, ...], kind: str, filtering: bool = False, extra: FixFacts | None = None
) -> _Pending:
    query = queryset.query
    filtered = tag[0] in _MANAGER_KINDS and (filtering or _filtered(query, tag))
    facts = _facts(tag[7], tag[8]) if extra is None else extra._replace(route=tag[7])
    if filtered:
        facts = _filter_facts(query, tag, facts)
    return _context(tag[1], kind, tag[2], True, tag[3], tag[4], filtered, facts, tag[9])


def _aggregate_fact(alias: str, expression: Any) -> tuple[str, str, str] | None:
    """``("last", "Max", "started_at")``: names only; None when it is not one aggregate of one
    field."""
    name = getattr(expression, "name", None)
    sources = expression.get_source_expressions() if hasattr(expression, "get_source_expressions") else []
    fields = [getattr(e, "name", None) for e in sources if e is not None]
    if not isinstance(name, str) or len(fields) != 1 or not isinstance(fields[0], str):
        return None
    return (alias, name, fields[0]) if alias.isidentifier() else None


def _aggregate_facts(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    found = [_aggregate_fact(str(getattr(a, "default_alias", "")), a) for a in args]
    found += [_aggregate_fact(alias, expression) for alias, expression in kwargs.items()]
    return tuple(f for f in found if f is not None) if all(found) else ()


def _unique_fields(model: Any) -> frozenset[str]:
    """Fields that identify one row alone: unique fields and single-field unconditional
    UniqueConstraints (what ``in_bulk(field_name=...)`` accepts)."""
    meta = model._meta
    names = {f.name for f in meta.concrete_fields if f.unique}
    for constraint in getattr(meta, "total_unique_constraints", ()):
        if len(constraint.fields) == 1:
            names.add(constraint.fields[0])
    return frozenset(names)


def _attname(model: Any, lookup: str) -> str:
    """``site`` -> ``site_id`` for a foreign key (its column, readable without a query)."""
    try:
        field = model._meta.get_field(lookup)
    except Exception:
        return lookup
    return str(field.attname) if field.many_to_one and field.concrete else lookup


def _lookup_facts(model: Any, keys: tuple[str, ...]) -> FixFacts:
    """Facts of ``get(**kwargs)``: its lookups and the field they identify one row by."""
    key = (model, keys)
    facts = _get_facts.get(key)
    if facts is None:
        lookups = tuple(_attname(model, k[: -len("__exact")] if k.endswith("__exact") else k) for k in keys)
        unique = ""
        if len(lookups) == 1 and "__" not in lookups[0]:
            name = lookups[0]
            pk = model._meta.pk
            if name == "pk" or name in (pk.name, pk.attname):
                unique = "pk"
            elif name in _unique_fields(model):
                unique = name
        facts = FixFacts(lookups=lookups, unique_field=unique)
        if len(_get_facts) < _MAX_INTERNED:
            _get_facts[key] = facts
    return facts


def _open_queryset(
    queryset: Any,
    kind: str,
    filtering: bool = False,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> Token[OrmContext | PendingOrm | None] | None:
    """Context of QuerySet.get/count/exists/aggregate. Never raises."""
    try:
        outer = current_orm.get()
        tag = _tag_of(queryset)
        if tag is not None and not queryset._for_write:
            if outer is not None and outer.relation:
                return None
            extra = None
            if kind == COUNT:
                kind = RELATED_COUNT
            elif kind == EXISTS:
                kind = RELATED_EXISTS
            elif kind == AGGREGATE:
                kind = RELATED_AGGREGATE
                extra = FixFacts(aggregates=_aggregate_facts(args, kwargs or {}))
            else:
                kind = tag[0]
            return current_orm.set(_tagged_ctx(queryset, tag, kind, filtering, extra))
        if kind == AGGREGATE:
            return None  # the compiler's "query" context, as before
        if outer is not None:
            if queryset.model is _ContentType and _ContentType is not None:
                # ContentType.objects.get_for_id() / get_by_natural_key() inside a generic
                # relation load or another query (taggit's): a one-off lookup (Django caches it
                # per process), not part of the outer operation's repeats.
                return current_orm.set(_context(_label(queryset.model), kind))
            return None
        facts = NO_FACTS
        if kind == GET and kwargs:
            facts = _lookup_facts(queryset.model, tuple(kwargs))
            descriptor = descriptor_name(sys._getframe(2))  # get() -> our wrapper -> here
            if descriptor:
                facts = facts._replace(descriptor=descriptor)
        elif kind == COUNT:
            admin = _admin_results.get()
            if admin:
                facts = FixFacts(admin=admin)
        where = _built(queryset)
        return current_orm.set(_context(_label(queryset.model), kind, facts=facts, origin=where))
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _open_fetch(queryset: Any) -> Token[OrmContext | PendingOrm | None] | None:
    """Context of QuerySet._fetch_all for tagged querysets; plain ones get theirs from the
    compiler. Never raises."""
    try:
        tag = _tag_of(queryset)
        if tag is None:
            return None
        outer = current_orm.get()
        if queryset._for_write:  # delete() collecting the related set, select_for_update(), ...
            if outer is not None:
                return None
            return current_orm.set(_context(tag[1], QUERY))
        if outer is not None and outer.relation:
            return None
        return current_orm.set(_tagged_ctx(queryset, tag, tag[0]))
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _after_fetch(queryset: Any) -> None:
    """Remember where loaded instances came from (O(rows), only for relation loads and
    select_related). Never raises."""
    try:
        rows = queryset._result_cache
        if not rows or queryset._iterable_class is not _ModelIterable:
            return
        if _track_eager is not None and (
            queryset._query.select_related or queryset._prefetch_related_lookups
        ):
            _track_eager(queryset, rows, _default_select_joins)
        tag = _tag_of(queryset)
        query = queryset._query
        joins = query.select_related
        admin = None
        if tag is not None and not queryset._for_write:
            origin: Origin = (tag[4], tag[3], tag[7], tag[8], tag[9])
            for obj in rows:
                obj._state._hms_origin = origin  # ORIGIN
            root, prefix, route, where = origin[0], origin[1] + "__", origin[2], origin[4]
            admin = origin[3]
        else:
            # The queryset the user started from: its rows remember where it came from (the
            # line that built it, else the one that evaluated it) and, for an admin
            # changelist's rows, the ModelAdmin (lazy loads from them get admin fixes).
            admin = query.__dict__.get(ADMIN_TAG)
            where = query.__dict__.get(BUILT) or user_location()
            root, prefix, route = _label(queryset.model), "", ()
            origin = (root, "", (), admin, where)
            for obj in rows:
                obj._state._hms_origin = origin  # ORIGIN
        if not joins:
            return
        if joins is True:
            joins = _default_joins(queryset.model, _MAX_SELECT_RELATED_DEPTH)
        known = queryset._known_related_objects
        skip = {field.name for field in known} if known else ()
        plan = _join_plan(joins, queryset.model, root, prefix, route, admin, skip, where)
        for obj in rows:  # the first level inline: this runs once per row
            cache = obj._state.fields_cache
            for name, origin, nested in plan:
                target = cache.get(name)
                if target is not None:
                    target._state._hms_origin = origin  # ORIGIN
                    if nested:
                        _mark_joined(target, nested)
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _iterator_origin(queryset: Any) -> Origin | None:
    """The origin of the rows of ``iterator()`` over a queryset the user started from (a
    ModelChoiceField's options): None for other querysets. Never raises."""
    try:
        if queryset._iterable_class is not _ModelIterable or _tag_of(queryset) is not None:
            return None
        query = queryset._query
        where = query.__dict__.get(BUILT) or user_location()
        return (_label(queryset.model), "", (), query.__dict__.get(ADMIN_TAG), where)
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _make_iterator(original: Callable[..., Any]) -> Callable[..., Any]:
    """QuerySet._iterator (``iterator()``, 4.2+): its rows remember where they came from, as
    _fetch_all's do (the origin is computed when iteration starts, in the iterating code)."""

    def _iterator(self: Any, *args: Any, **kwargs: Any) -> Any:
        origin = _iterator_origin(self)
        if origin is None:
            yield from original(self, *args, **kwargs)
            return
        for obj in original(self, *args, **kwargs):
            obj._state._hms_origin = origin  # ORIGIN
            yield obj

    return _iterator


def _built(queryset: Any) -> CodeLocation | None:
    query = queryset.__dict__.get("_query")
    return None if query is None else query.__dict__.get(BUILT)


# Django's MultipleObjectMixin.get_queryset (set by `install`): a list view's queryset built from its `model`.
_list_view_get_queryset: Any = None

# Code objects of the manager methods between user code and BaseManager.get_queryset (the
# generated proxies share one code object); any method named get_queryset (custom managers and
# related managers calling super()) is skipped too.
_manager_codes: set[Any] = set()


def _note_built(queryset: Any) -> None:
    """Remember on the new queryset's Query the user's line that started it
    (``Visit.objects.order_by("id")``, a viewset's ``queryset = ...``, ``await
    Site.objects.aget(...)``); its clones keep it. Only when the manager was called from user
    code directly: Django's own uses (related descriptors, ModelChoiceField, generic views)
    leave it unset at the cost of a few frame checks. Never raises."""
    try:
        frame: Any = sys._getframe(2)
        location = None
        for _ in range(4):
            code = frame.f_code
            if code is _list_view_get_queryset:
                # A generic list view that sets `model`, not `queryset` (MultipleObjectMixin
                # builds it): the place to edit is the view class (``FeedingList.model``).
                view = type(frame.f_locals.get("self"))
                location = code_context.member_location(
                    view, "queryset" if view.queryset is not None else "model"
                )
                break
            if code not in _manager_codes and code.co_name != "get_queryset":
                break
            frame = frame.f_back
            if frame is None:
                return
        if location is None and async_site.get() is None:
            location = code_context.user_location(frame, max_depth=1)
        if location is not None:
            query = queryset.__dict__.get("_query")
            if query is not None:
                query.__dict__[BUILT] = location
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _make_manager_get_queryset(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_queryset(self: Any) -> Any:
        queryset = original(self)
        _note_built(queryset)
        return queryset

    return get_queryset


def _open_async_site() -> Token[CodeLocation | None] | None:
    """The awaiting code of an async ORM call, for the statements its sync part runs in
    another thread (contextvars follow sync_to_async). Never raises."""
    try:
        if async_site.get() is not None:
            return None
        location = user_location(sys._getframe(2))
        return None if location is None else async_site.set(location)
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _make_async_method(original: Callable[..., Any]) -> Callable[..., Any]:
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _open_async_site()
        try:
            return await original(self, *args, **kwargs)
        finally:
            if token is not None:
                async_site.reset(token)

    return method


# [(cache name, origin, nested plan)]
_Plan = list[tuple[str, Origin, Any]]


def _join_plan(
    joins: dict[str, Any],
    model: Any,
    root: str,
    prefix: str,
    route: tuple[Step, ...],
    admin: Any,
    skip: Any,
    where: Any,
) -> _Plan:
    plan: _Plan = []
    accessors = _accessors(model)
    for name, sub in joins.items():
        if name in skip:
            continue  # set from _known_related_objects (the manager's instance), not joined
        path = prefix + name
        kind, target, remote = accessors.get(name, (FORWARD, "", ""))
        here = (*route, Step(name, kind, target, remote))
        nested = None
        if sub:
            target_model = _model_of(model, name)
            if target_model is not None:
                nested = _join_plan(sub, target_model, root, path + "__", here, admin, (), where)
        plan.append((name, (root, path, here, admin, where), nested))
    return plan


def _model_of(model: Any, name: str) -> Any:
    """The model a select_related join `name` of `model` reaches (forward or reverse)."""
    try:
        field = model._meta.get_field(name)
    except Exception:
        for rel in model._meta.related_objects:
            if rel.one_to_one and rel.get_accessor_name() == name:
                return rel.related_model
        return None
    return field.related_model


def _mark_joined(obj: Any, plan: _Plan) -> None:
    cache = obj._state.fields_cache
    for name, origin, nested in plan:
        target = cache.get(name)
        if target is not None:
            target._state._hms_origin = origin  # ORIGIN
            if nested:
                _mark_joined(target, nested)


def _default_select_joins(model: Any) -> dict[str, Any]:
    return _default_joins(model, _MAX_SELECT_RELATED_DEPTH)


def _default_joins(model: Any, depth: int) -> dict[str, Any]:
    """What ``select_related()`` without arguments joins: non-null forward FK / one-to-one."""
    if depth <= 0:
        return {}
    key = (model, depth)
    joins = _forward_joins.get(key)
    if joins is None:
        joins = {}
        for field in model._meta.concrete_fields:
            if field.is_relation and not field.null and (field.many_to_one or field.one_to_one):
                joins[field.name] = _default_joins(field.remote_field.model, depth - 1)
        _forward_joins[key] = joins
    return joins


# -- wrappers ---------------------------------------------------------------------------------


def _wrap(owner: Any, name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
    """Replace owner.name by make(original), remembering how to undo it."""
    previous = owner.__dict__.get(name, _MISSING)
    original = getattr(owner, name)
    wrapper = make(original)
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _PATCHED, True)
    setattr(owner, name, wrapper)
    _undo.append((owner, name, previous))


def _wrap_queryset_op(kind: str, filtering: bool) -> Callable[[Any], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _open_queryset(self, kind, filtering and bool(args or kwargs), args, kwargs)
            try:
                return original(self, *args, **kwargs)
            finally:
                _pop(token)

        return wrapper

    return make


def _make_fetch_all(original: Callable[..., Any]) -> Callable[..., Any]:
    def _fetch_all(self: Any) -> None:
        if self._result_cache is not None:
            original(self)  # only prefetches can still run: they set their own context
            return
        token = _open_fetch(self)
        try:
            original(self)
        finally:
            _pop(token)
        _after_fetch(self)

    return _fetch_all


def _open_compiler(compiler: Any) -> Token[OrmContext | PendingOrm | None] | None:
    try:
        query = compiler.query
        model = query.model
        if model is None:
            return None
        tag = _query_tag(query) if _runs_select(compiler) else None
        if tag is not None:  # iterator() over a related manager's queryset
            filtered = tag[0] in _MANAGER_KINDS and _filtered(query, tag)
            facts = _facts(tag[7], tag[8])
            if filtered:
                facts = _filter_facts(query, tag, facts)
            ctx = _context(tag[1], tag[0], tag[2], True, tag[3], tag[4], filtered, facts, tag[9])
        else:
            ctx = _context(_label(model), QUERY)
        return current_orm.set(ctx)
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _runs_select(compiler: Any) -> bool:
    """A SELECT compiler: Django's SQLCompiler or a database backend's subclass of it (PostgreSQL's
    is one), not an insert, update, delete or aggregate compiler."""
    cls = type(compiler)
    known = _compiler_selects.get(cls)
    if known is None:
        known = _compiler_selects[cls] = issubclass(cls, _SQLCompiler) and not issubclass(cls, _NOT_SELECT)
    return known


def _make_execute_sql(original: Callable[..., Any]) -> Callable[..., Any]:
    def execute_sql(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = None if current_orm.get() is not None else _open_compiler(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            _pop(token)

    return execute_sql


def _open_refresh(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        outer = current_orm.get()
        caller = sys._getframe(2).f_code
        if caller is _deferred_get_code:  # DeferredAttribute.__get__ (4.2/5.2): a deferred field
            fields = kwargs.get("fields", args[1] if len(args) > 1 else None)
            if fields and len(fields) == 1:
                field = instance._meta.get_field(next(iter(fields)))
                return _open_relation(instance, field.name, DEFERRED_KIND)[0]
        if outer is not None and _rank(outer) >= 2:
            return None
        return current_orm.set(_context(_label(type(instance)), REFRESH))
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _make_refresh_from_db(original: Callable[..., Any]) -> Callable[..., Any]:
    def refresh_from_db(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _open_refresh(self, args, kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            _pop(token)

    return refresh_from_db


def _field_name(descriptor: Any) -> str:
    """Forward FK / one-to-one, deferred attribute, 6.1's GenericForeignKeyDescriptor."""
    return str(descriptor.field.name)


def _own_name(descriptor: Any) -> str:
    """GenericForeignKey itself (4.2/5.2), which is its own descriptor."""
    return str(descriptor.name)


def _reverse_one_to_one_name(descriptor: Any) -> str:
    return str(descriptor.related.get_accessor_name())


def _make_load_one(kind: str, name_of: Callable[[Any], str]) -> Callable[[Any], Callable[..., Any]]:
    """get_object(instance) / fetch_one(instance): a lazy load of one relation."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, instance: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                name = _name(self, name_of)
            except Exception as exc:
                guard.report(COMPONENT, exc)
                return original(self, instance, *args, **kwargs)
            target = _gfk_target(self.field, instance) if kind == GENERIC_FK else ""
            token, origin = _open_relation(instance, name, kind, target=target)
            try:
                result = original(self, instance, *args, **kwargs)
            finally:
                _pop(token)
            if kind == FORWARD:
                _mark(result, origin)  # get_object returns the loaded object
            elif kind == GENERIC_FK:
                _mark_cached(self, instance, origin)  # fetch_one caches it on the instance
            return result

        return wrapper

    return make


def _gfk_target(gfk: Any, instance: Any) -> str:
    """``app_label.Model`` a GenericForeignKey of `instance` points to, when its ContentType is
    in Django's per-process cache (it is after the first load of that type); else "". Never
    raises, never queries."""
    try:
        attname = _gfk_attnames.get(gfk)
        if attname is None:
            attname = _gfk_attnames[gfk] = instance._meta.get_field(gfk.ct_field).attname
        cached = _ContentType.objects._cache.get(instance._state.db or "default", {})
        content_type = cached.get(getattr(instance, attname))
        model = content_type.model_class() if content_type is not None else None
        return _label(model) if model is not None else ""
    except Exception:
        return ""


def _mark_cached(descriptor: Any, instance: Any, origin: Origin | None) -> None:
    try:
        _mark(descriptor.field.get_cached_value(instance, default=None), origin)
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _make_load_peers(kind: str, name_of: Callable[[Any], str]) -> Callable[[Any], Callable[..., Any]]:
    """fetch_many(instances) (Django 6.1 FETCH_PEERS): one query for all peers, not lazy."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, instances: Any, *args: Any, **kwargs: Any) -> Any:
            token = None
            try:
                first = instances[0] if instances else None
                if first is not None:
                    token = _open_relation(first, _name(self, name_of), kind, lazy=False)[0]
            except Exception as exc:
                guard.report(COMPONENT, exc)
            try:
                return original(self, instances, *args, **kwargs)
            finally:
                _pop(token)

        return wrapper

    return make


def _gfk_is_cached(descriptor: Any, instance: Any) -> bool:
    try:
        return bool(descriptor.is_cached(instance))
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return True


def _make_gfk_get(original: Callable[..., Any]) -> Callable[..., Any]:
    """GenericForeignKey.__get__ (4.2/5.2): the query runs inline when nothing is cached."""

    def __get__(self: Any, instance: Any, cls: Any = None) -> Any:
        if instance is None or _gfk_is_cached(self, instance):
            return original(self, instance, cls)
        try:
            name = _name(self, _own_name)
        except Exception as exc:
            guard.report(COMPONENT, exc)
            return original(self, instance, cls)
        token, origin = _open_relation(instance, name, GENERIC_FK, target=_gfk_target(self, instance))
        try:
            result = original(self, instance, cls)
        finally:
            _pop(token)
        _mark(result, origin)
        return result

    return __get__


def _tag_reverse_one_to_one(descriptor: Any, queryset: Any, hints: dict[str, Any]) -> None:
    try:
        instance = hints.get("instance")
        if instance is not None:
            name = _name(descriptor, _reverse_one_to_one_name)
            _tag_related(queryset, instance, REVERSE_ONE_TO_ONE, name)
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _make_reverse_one_to_one_queryset(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_queryset(self: Any, *args: Any, **hints: Any) -> Any:
        queryset = original(self, *args, **hints)
        _tag_reverse_one_to_one(self, queryset, hints)
        return queryset

    return get_queryset


def _enter_prefetch() -> tuple[Token[bool], Token[OrmContext | PendingOrm | None] | None] | None:
    try:
        flag = _in_prefetch.set(True)
        outer = current_orm.get()
        # A plain query's context (get(), the compiler) does not describe the prefetch queries.
        cleared = current_orm.set(None) if outer is not None and _rank(outer) == 1 else None
        return flag, cleared
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _exit_prefetch(tokens: tuple[Token[bool], Token[OrmContext | PendingOrm | None] | None] | None) -> None:
    if tokens is None:
        return
    _pop(tokens[1])
    try:
        _in_prefetch.reset(tokens[0])
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _mark_prefetched(instances: Any, lookup: Any, level: int, result: Any) -> None:
    """Objects prefetched for `instances` continue their path (``encounters__practitioner``)."""
    try:
        loaded = result[0]
        if not loaded or not instances:
            return
        through = lookup.prefetch_through.split("__")[level]
        first = instances[0]
        _, root, path, route, admin, where = _path(first, through)
        kind, _, remote = _accessors(type(first)).get(through, (REVERSE_FK, "", ""))
        origins: dict[type, Origin] = {}  # by type: a GenericForeignKey loads several
        for obj in loaded:
            state = getattr(obj, "_state", None)
            if state is not None:
                cls = type(obj)
                origin = origins.get(cls)
                if origin is None:
                    step = Step(through, kind, _label(cls), remote)
                    origin = origins[cls] = (root, path, (*route, step), admin, where)
                state._hms_origin = origin  # ORIGIN
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _make_prefetch_one_level(original: Callable[..., Any]) -> Callable[..., Any]:
    def prefetch_one_level(instances: Any, prefetcher: Any, lookup: Any, level: int) -> Any:
        tokens = _enter_prefetch()
        try:
            result = original(instances, prefetcher, lookup, level)
        finally:
            _exit_prefetch(tokens)
        _mark_prefetched(instances, lookup, level, result)
        return result

    return prefetch_one_level


# -- related manager classes ------------------------------------------------------------------


def _tag_manager_queryset(queryset: Any, manager: Any, kind: str, name: str) -> None:
    try:
        instance = manager.__dict__.get("instance")
        if instance is not None:
            _tag_related(queryset, instance, kind, name)
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _open_manager_op(manager: Any, kind: str, name: str) -> Token[OrmContext | PendingOrm | None] | None:
    try:
        instance = manager.__dict__.get("instance")
        return None if instance is None else _open_relation(instance, name, kind)[0]
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _patch_manager_class(cls: type, kind: str, name: str) -> None:
    """Patch one class built by a related-manager factory (`name`: the accessor)."""
    get_queryset = cls.__dict__.get("get_queryset")
    if get_queryset is None or getattr(get_queryset, _PATCHED, False):
        return

    def make_get_queryset(original: Callable[..., Any]) -> Callable[..., Any]:
        def get_queryset(self: Any) -> Any:
            queryset = original(self)
            _tag_manager_queryset(queryset, self, kind, name)
            return queryset

        return get_queryset

    def make_op(op: str) -> Callable[[Any], Callable[..., Any]]:
        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                token = _open_manager_op(self, op, name)
                try:
                    return original(self, *args, **kwargs)
                finally:
                    _pop(token)

            return wrapper

        return make

    for attr, make in (
        ("get_queryset", make_get_queryset),
        ("count", make_op(RELATED_COUNT)),  # M2M (5.x+): may count the through table only
        ("exists", make_op(RELATED_EXISTS)),
    ):
        original = cls.__dict__.get(attr)
        if original is not None:
            wrapper = make(original)
            functools.update_wrapper(wrapper, original)
            setattr(wrapper, _PATCHED, True)
            setattr(cls, attr, wrapper)
    _manager_classes.add(cls)


def _accessor(kind: str, rel: Any, reverse: bool) -> str:
    """The attribute the manager is reached through, on the model that owns it."""
    if kind == GENERIC_RELATION or (kind == MANY_TO_MANY and not reverse):
        return str(rel.field.name)
    return str(rel.get_accessor_name())  # reverse FK, reverse M2M


def _patch_manager_class_safely(cls: Any, kind: str, rel: Any, reverse: bool = False) -> None:
    try:
        if isinstance(cls, type) and rel is not None:
            _patch_manager_class(cls, kind, _accessor(kind, rel, reverse))
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _make_factory(kind: str) -> Callable[[Any], Callable[..., Any]]:
    """create_reverse_many_to_one_manager(superclass, rel), create_forward_many_to_many_manager(
    superclass, rel, reverse), create_generic_related_manager(superclass, rel)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def factory(*args: Any, **kwargs: Any) -> Any:
            cls = original(*args, **kwargs)
            reverse = bool(_arg(args, kwargs, 2, "reverse")) if kind == MANY_TO_MANY else False
            _patch_manager_class_safely(cls, kind, _arg(args, kwargs, 1, "rel"), reverse)
            return cls

        return factory

    return make


def _patch_existing_manager_classes(generic_descriptor: Any) -> None:
    """Manager classes Django built (and cached on descriptors) before install()."""
    from django.apps import apps
    from django.db.models.fields.related_descriptors import (
        ManyToManyDescriptor,
        ReverseManyToOneDescriptor,
    )

    for model in apps.get_models(include_auto_created=True):
        for descriptor in list(vars(model).values()):
            if not isinstance(descriptor, ReverseManyToOneDescriptor):
                continue
            cls = descriptor.__dict__.get("related_manager_cls")  # functools.cached_property
            if cls is None:
                continue
            if generic_descriptor is not None and isinstance(descriptor, generic_descriptor):
                _patch_manager_class_safely(cls, GENERIC_RELATION, descriptor.rel)
            elif isinstance(descriptor, ManyToManyDescriptor):
                _patch_manager_class_safely(cls, MANY_TO_MANY, descriptor.rel, bool(descriptor.reverse))
            else:
                _patch_manager_class_safely(cls, REVERSE_FK, descriptor.rel)


def _patch_custom_manager_class(cls: type, kind: str) -> None:
    """A related manager class that is not Django's: django-taggit's ``_TaggableManager`` (one
    class for every TaggableManager field; each manager names its field in
    ``prefetch_cache_name``). Its ``get_queryset`` is tagged like a many-to-many manager's."""
    original = cls.__dict__.get("get_queryset")
    if original is None or getattr(original, _PATCHED, False):
        return

    def get_queryset(self: Any, *args: Any, **kwargs: Any) -> Any:
        queryset = original(self, *args, **kwargs)
        try:
            name = getattr(self, "prefetch_cache_name", None)
            if isinstance(name, str):
                _tag_manager_queryset(queryset, self, kind, name)
        except Exception as exc:
            guard.report(COMPONENT, exc)
        return queryset

    functools.update_wrapper(get_queryset, original)
    setattr(get_queryset, _PATCHED, True)
    setattr(cls, "get_queryset", get_queryset)  # noqa: B010
    _manager_classes.add(cls)


def _patch_custom_many_to_many() -> None:
    """Many-to-many fields that are not ManyToManyField and bring their own manager class in
    ``field.manager`` (django-taggit's TaggableManager): recognised from ``_meta``, not by name."""
    from django.apps import apps
    from django.db.models import ManyToManyField

    for model in apps.get_models():
        for field in model._meta.get_fields():
            if not field.is_relation or not field.many_to_many or field.auto_created:
                continue
            if isinstance(field, ManyToManyField):
                continue
            manager = getattr(field, "manager", None)
            if isinstance(manager, type):
                _patch_custom_manager_class(manager, MANY_TO_MANY)


# -- the admin ------------------------------------------------------------------------------------


def _leaf_paths(joins: dict[str, Any], prefix: str = "") -> tuple[str, ...]:
    """``{'patient': {'site': {}}, 'clinician': {}}`` -> ``('patient__site', 'clinician')``."""
    paths: list[str] = []
    for name, sub in joins.items():
        if sub:
            paths.extend(_leaf_paths(sub, prefix + name + "__"))
        else:
            paths.append(prefix + name)
    return tuple(paths)


def _tag_changelist(changelist: Any, queryset: Any) -> None:
    """Mark the Query of an admin changelist's queryset with its ModelAdmin and the relations
    the changelist joined itself (``list_select_related`` False with a foreign key in
    ``list_display`` means ``select_related()``: every non-null foreign key). Never raises."""
    try:
        query = queryset.query
        joins = query.select_related
        if joins is True:
            joins = _default_joins(queryset.model, _MAX_SELECT_RELATED_DEPTH)
        paths = _leaf_paths(joins) if isinstance(joins, dict) else ()
        admin_class = type(changelist.model_admin)
        query.__dict__[ADMIN_TAG] = (admin_class.__name__, paths)
        where = class_location(admin_class)  # the admin's fixes go on the ModelAdmin
        if where is not None:
            query.__dict__[BUILT] = where
    except Exception as exc:
        guard.report(COMPONENT, exc)


def _make_changelist_queryset(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_queryset(self: Any, *args: Any, **kwargs: Any) -> Any:
        queryset = original(self, *args, **kwargs)
        _tag_changelist(self, queryset)
        return queryset

    return get_queryset


def _enter_results(changelist: Any) -> Token[str] | None:
    try:
        return _admin_results.set(type(changelist.model_admin).__name__)
    except Exception as exc:
        guard.report(COMPONENT, exc)
        return None


def _make_changelist_results(original: Callable[..., Any]) -> Callable[..., Any]:
    """ChangeList.get_results: its counts (the paginator's and the unfiltered total)."""

    def get_results(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _enter_results(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            if token is not None:
                _admin_results.reset(token)

    return get_results


# -- install / uninstall ----------------------------------------------------------------------


def install() -> None:
    """Patch Django (idempotent). Waits for the app registry when Django is not ready yet."""
    global _installed
    if _installed:
        return
    from hms_otel_agent.instrument.django_server import _django_ready, when_django_ready

    if not _django_ready():
        when_django_ready(install)
        return
    _installed = True
    try:
        _install()
    except Exception as exc:
        guard.report(COMPONENT, exc)
        uninstall()


def _install() -> None:
    global _ModelIterable, _SQLCompiler, _NOT_SELECT, _ContentType, _deferred_get_code
    from django.apps import apps
    from django.db.models import Model, manager, query
    from django.db.models.fields import related_descriptors as rd
    from django.db.models.query_utils import DeferredAttribute
    from django.db.models.sql import compiler

    _ModelIterable = query.ModelIterable
    _SQLCompiler = compiler.SQLCompiler
    _NOT_SELECT = (
        compiler.SQLInsertCompiler,
        compiler.SQLUpdateCompiler,
        compiler.SQLDeleteCompiler,
        compiler.SQLAggregateCompiler,
    )
    fetch_modes = hasattr(DeferredAttribute, "fetch_one")  # Django 6.1+

    _wrap(query.QuerySet, "get", _wrap_queryset_op(GET, True))
    _wrap(query.QuerySet, "count", _wrap_queryset_op(COUNT, False))
    _wrap(query.QuerySet, "exists", _wrap_queryset_op(EXISTS, False))
    _wrap(query.QuerySet, "aggregate", _wrap_queryset_op(AGGREGATE, False))
    _wrap(query.QuerySet, "_fetch_all", _make_fetch_all)
    if hasattr(query.QuerySet, "_iterator"):
        _wrap(query.QuerySet, "_iterator", _make_iterator)
    _wrap(manager.BaseManager, "get_queryset", _make_manager_get_queryset)
    _manager_codes.update(
        (manager.BaseManager.all.__code__, manager.Manager.filter.__code__)  # filter: a generated proxy
    )
    for name, value in list(vars(query.QuerySet).items()):
        if name.startswith("a") and inspect.iscoroutinefunction(value):  # aget, acount, aexists, ...
            _wrap(query.QuerySet, name, _make_async_method)
    _wrap(compiler.SQLCompiler, "execute_sql", _make_execute_sql)
    _wrap(compiler.SQLInsertCompiler, "execute_sql", _make_execute_sql)
    _wrap(query, "prefetch_one_level", _make_prefetch_one_level)
    _wrap(Model, "refresh_from_db", _make_refresh_from_db)

    _wrap(rd.ForwardManyToOneDescriptor, "get_object", _make_load_one(FORWARD, _field_name))
    _wrap(rd.ReverseOneToOneDescriptor, "get_queryset", _make_reverse_one_to_one_queryset)
    if fetch_modes:
        _wrap(DeferredAttribute, "fetch_one", _make_load_one(DEFERRED_KIND, _field_name))
        _wrap(DeferredAttribute, "fetch_many", _make_load_peers(DEFERRED_KIND, _field_name))
        _wrap(rd.ForwardManyToOneDescriptor, "fetch_many", _make_load_peers(FORWARD, _field_name))
        reverse_peers = _make_load_peers(REVERSE_ONE_TO_ONE, _reverse_one_to_one_name)
        _wrap(rd.ReverseOneToOneDescriptor, "fetch_many", reverse_peers)
    else:
        _deferred_get_code = DeferredAttribute.__get__.__code__

    _wrap(rd, "create_reverse_many_to_one_manager", _make_factory(REVERSE_FK))
    _wrap(rd, "create_forward_many_to_many_manager", _make_factory(MANY_TO_MANY))
    generic_descriptor = None
    if apps.is_installed("django.contrib.contenttypes"):
        from django.contrib.contenttypes import fields as ct_fields
        from django.contrib.contenttypes.models import ContentType

        _ContentType = ContentType
        generic_descriptor = ct_fields.ReverseGenericManyToOneDescriptor
        _wrap(ct_fields, "create_generic_related_manager", _make_factory(GENERIC_RELATION))
        gfk_descriptor = getattr(ct_fields, "GenericForeignKeyDescriptor", None)  # 6.1+
        if gfk_descriptor is not None and hasattr(gfk_descriptor, "fetch_one"):
            _wrap(gfk_descriptor, "fetch_one", _make_load_one(GENERIC_FK, _field_name))
            _wrap(gfk_descriptor, "fetch_many", _make_load_peers(GENERIC_FK, _field_name))
        else:
            _wrap(ct_fields.GenericForeignKey, "__get__", _make_gfk_get)
    _patch_existing_manager_classes(generic_descriptor)
    _register_framework_frames()
    _patch_custom_many_to_many()
    fix_check.install(_accessors)
    if apps.is_installed("django.contrib.admin"):
        from django.contrib.admin.views.main import ChangeList

        _wrap(ChangeList, "get_queryset", _make_changelist_queryset)
        _wrap(ChangeList, "get_results", _make_changelist_results)


def _register_framework_frames() -> None:
    """Frames that say where a load was triggered when no user frame is below them."""
    global _list_view_get_queryset
    from django.core.handlers.base import BaseHandler
    from django.forms.boundfield import BoundField
    from django.template.base import Node
    from django.views.generic.list import MultipleObjectMixin

    _list_view_get_queryset = MultipleObjectMixin.get_queryset.__code__
    code_context.register_frames(code_context.TEMPLATE_NODE, Node.render_annotated)
    code_context.register_frames(code_context.FORM_FIELD, BoundField.as_widget)
    code_context.register_frames(
        code_context.REQUEST_HANDLER, BaseHandler._get_response, BaseHandler._get_response_async
    )
    try:
        from rest_framework.serializers import Serializer
    except Exception:  # not installed, or it cannot be imported here: no serializer locations
        return
    code_context.register_frames(code_context.SERIALIZER_FIELD, Serializer.to_representation)


def uninstall() -> None:
    """Undo every patch (for tests); tags already on queries and instances stay inert."""
    global _installed, _deferred_get_code, _ContentType
    while _undo:
        owner, name, previous = _undo.pop()
        try:
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)
        except Exception as exc:
            guard.report(COMPONENT, exc)
    for cls in list(_manager_classes):
        for attr in ("get_queryset", "count", "exists"):
            wrapper = cls.__dict__.get(attr)
            if getattr(wrapper, _PATCHED, False):
                setattr(cls, attr, getattr(wrapper, "__wrapped__"))  # noqa: B009
    _manager_classes.clear()
    fix_check.uninstall()
    _manager_codes.clear()
    code_context.unregister_frames()
    _deferred_get_code = _ContentType = None
    _installed = False
