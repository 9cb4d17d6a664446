"""Plain records of what happened under one owner span, and the findings drawn from them.

The live span processor fills these from SDK spans; `hms-otel analyze` fills them from
OTLP JSON. Detectors only ever see these records, never a span or a Django object.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from hms_otel_agent.signals.time_split import Intervals

MAX_CALLS_PER_OWNER = 5000  # DB / cache calls recorded per owner span


@dataclass(frozen=True, slots=True)
class CodeLocation:
    """A place in the user's code: the first frame of the user's own code (outside Django, the
    agent and site-packages), a template line (function ``template``), a DRF serializer's field
    (``VisitSerializer.clinician`` at the class's line), or where a queryset was built.
    `function` is qualified (``VisitViewSet.get_queryset``)."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}" if self.function else f"{self.file}:{self.line}"


class Step(NamedTuple):
    """One relation on the way from the queryset's model to a loaded object."""

    name: str  # the accessor on the model before it (``patient``, ``encounters``, ``subject``)
    kind: str  # FORWARD, REVERSE_ONE_TO_ONE, REVERSE_FK, MANY_TO_MANY, GENERIC_FK, GENERIC_RELATION
    model: str  # ``app_label.Model`` reached ("" when not known, e.g. a GenericForeignKey not loaded yet)
    remote: str = ""  # reverse FK: the foreign key's name on `model` (``clinician`` for ``visits``)


class FixFacts(NamedTuple):
    """What the models' metadata and the ORM call said about an operation, for its fix (plain
    data: names of fields, lookups and aggregate functions, never a value).

    `route`: the relations from the queryset's model to the loaded relation, that one included.
    `lookups` / `unique_field`: the lookups of a ``get()`` (``("code",)``) and the field they
    name when it identifies one row (``pk`` or a unique field; "" otherwise). `filters` /
    `order_by`: what user code added to a related manager's queryset (``status``,
    ``started_at__gte``; ``-started_at``). `aggregates`: ``(alias, Function, field)`` of an
    ``aggregate()`` call. `admin`: the ``ModelAdmin`` of the changelist the object was listed by
    (``VisitAdmin``), `admin_joins`: the relation paths that changelist's queryset joined.
    `descriptor`: see below.
    """

    route: tuple[Step, ...] = ()
    lookups: tuple[str, ...] = ()
    unique_field: str = ""
    filters: tuple[str, ...] = ()
    order_by: tuple[str, ...] = ()
    aggregates: tuple[tuple[str, str, str], ...] = ()  # (alias, function, field)
    admin: str = ""
    admin_joins: tuple[str, ...] = ()
    # ``get()`` run by a descriptor of the user's code per object (a custom field's
    # ``__get__``: ``CablePath.path_objects``): its qualified name. There is no loop of keys in
    # the user's code to batch, so no ``in_bulk`` is offered.
    descriptor: str = ""


NO_FACTS = FixFacts()


@dataclass(frozen=True, slots=True)
class OrmContext:
    """The ORM operation behind one SQL statement.

    `kind` is one of the RELATION_KINDS for lazy loads, or "query", "get", "count",
    "exists", "refresh" for other operations. `relation` is ``app_label.Model.field``;
    `path` is the relation path from the queryset the objects came from, joined with
    ``__`` (``patient__insurance``), and `root_model` that queryset's model. `location` is
    where the statement was triggered; `origin` where the root queryset came from: the line
    that built it (``queryset = Visit.objects.order_by("id")`` in ``VisitViewSet``), else the
    one that evaluated it, or the ModelAdmin class of a changelist — the place its fix goes.
    """

    model: str
    kind: str
    relation: str = ""
    lazy: bool = False
    path: str = ""
    root_model: str = ""
    filtered: bool = False
    location: CodeLocation | None = None
    facts: FixFacts = NO_FACTS
    origin: CodeLocation | None = None  # where the root queryset was built (or evaluated)


# Lazy-load kinds and the usual fix for each.
FORWARD = "forward"  # forward FK / one-to-one: select_related
REVERSE_ONE_TO_ONE = "reverse_one_to_one"  # select_related on the reverse accessor
REVERSE_FK = "reverse_fk"  # prefetch_related
MANY_TO_MANY = "many_to_many"  # prefetch_related
GENERIC_FK = "generic_fk"  # GenericPrefetch / prefetch_related
GENERIC_RELATION = "generic_relation"  # prefetch_related
DEFERRED = "deferred"  # add to only() / drop from defer()
RELATED_COUNT = "related_count"  # annotate(Count(...))
RELATED_EXISTS = "related_exists"  # annotate(Exists(...)) / prefetch
RELATED_AGGREGATE = "related_aggregate"  # annotate(Max(...)) and the like
GET = "get"  # in_bulk() / filter(pk__in=...)
REFRESH = "refresh"  # refresh_from_db() in a loop
RELATION_KINDS = (
    FORWARD,
    REVERSE_ONE_TO_ONE,
    REVERSE_FK,
    MANY_TO_MANY,
    GENERIC_FK,
    GENERIC_RELATION,
    DEFERRED,
    RELATED_COUNT,
    RELATED_EXISTS,
    RELATED_AGGREGATE,
)


@dataclass(slots=True)
class DbCall:
    fingerprint: str
    statement: str  # normalized, without literals
    start_ns: int
    duration_ns: int
    table: str = ""
    filter_columns: tuple[str, ...] = ()
    params_hash: int | None = None  # never exported; compares executions in-process only
    text_hash: int | None = None  # of the statement as sent (inline LIMIT/OFFSET); never exported
    orm: OrmContext | None = None
    rows: int = -1  # rows returned (db.response.returned_rows); -1: unknown or no result set

    @property
    def operation(self) -> str:
        """SELECT, INSERT, ..., BEGIN: the statement's first word."""
        return self.statement.split(" ", 1)[0].upper()


@dataclass(slots=True)
class CacheCall:
    operation: str  # get, get_many, set, delete, GET, MGET, SET, ...
    key_pattern: str
    start_ns: int
    duration_ns: int
    backend: str = ""  # "redis" for redis-py commands, else the Django backend class
    reads: int = 0  # keys read
    hits: int = 0
    misses: int = 0
    writes: int = 0  # keys written
    deletes: int = 0
    ttl_s: float | None = None  # on writes; None when the write has no expiry
    key_hash: int | None = None  # never exported; tells repeated reads of one key apart
    location: CodeLocation | None = None
    django_api: bool = False  # a Django cache API call (its Redis commands are its children)


@dataclass(slots=True)
class ConnectCall:
    """A new database connection opened under the owner (Django's ``connect()``)."""

    alias: str  # the Django database alias ("default")
    start_ns: int
    duration_ns: int
    conn_max_age: int | None = None  # CONN_MAX_AGE in seconds; None: unlimited; -2: unknown
    pooled: bool = False  # Django 5.1+ OPTIONS={"pool": ...}: a checkout, not a new connection
    vendor: str = ""  # "postgresql", ...


UNKNOWN_MAX_AGE = -2


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """What EXPLAIN said about one statement fingerprint, without a single literal value.

    `nodes` are the costliest plan nodes as text (``Seq Scan on hms_encounter filter (reason)
    cost=1234.5 rows=12 table_rows=30000``); `index_table` / `index_columns` name the index
    the plan asks for (a filtered sequential scan over a large table), when there is one.
    """

    fingerprint: str  # hms.db.fingerprint of the statement
    total_cost: float = 0.0
    plan_rows: int = 0
    nodes: tuple[str, ...] = ()
    index_table: str = ""
    index_columns: tuple[str, ...] = ()


@dataclass(slots=True)
class HttpCall:
    """One outbound HTTP call (signals/http_calls.py); only the safe form of its URL."""

    method: str  # GET, POST, ...
    url: str  # scheme://host:port/path?query, path templated and query values REDACTED
    start_ns: int = 0
    duration_ns: int = 0
    status_code: int = 0  # 0: no response (an error, or not known)
    timeout: bool | None = None  # False: the client was told no timeout; None: not known
    url_hash: int | None = None  # of the raw URL; never exported (None offline: not known)
    location: CodeLocation | None = None
    library: str = ""  # requests, httpx, urllib3 ("" offline)

    @property
    def template(self) -> str:
        """What one endpoint is called: ``GET http://fhir:8080/fhir/Patient/{id}``."""
        return f"{self.method} {self.url}"

    @property
    def path(self) -> str:
        """The templated path, without origin and query."""
        rest = self.url.partition("://")[2] if "://" in self.url else self.url
        if "://" in self.url:
            rest = "/" + rest.partition("/")[2] if "/" in rest else "/"
        return rest.partition("?")[0]

    @property
    def query_names(self) -> tuple[str, ...]:
        """The names of the query's parameters that `signals.urls` kept (``patient``, ``_count``)."""
        query = self.url.partition("?")[2]
        return tuple(dict.fromkeys(p.partition("=")[0] for p in query.split("&") if "=" in p))

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


@dataclass(slots=True)
class OwnerActivity:
    """Everything recorded under one owner span (usually the request span). The live processor
    and the offline report both fill it through `count_db` / `add_db` / `add_cache` / `add_http`
    / `add_connects` (signals/owners.py: which span is whose), so the per-owner cap is applied the
    same way on both sides."""

    name: str
    route: str = ""
    db_calls: list[DbCall] = field(default_factory=list)
    cache_calls: list[CacheCall] = field(default_factory=list)
    db_count: int = 0  # may exceed len(db_calls) when the per-owner cap was reached
    db_duration_ns: int = 0
    dropped: int = 0
    connects: list[ConnectCall] = field(default_factory=list)
    plans: dict[str, PlanSummary] = field(default_factory=dict)  # statement fingerprint -> plan
    http_calls: list[HttpCall] = field(default_factory=list)  # outbound HTTP (signals/http_calls.py)
    intervals: Intervals | None = None  # child spans' times, for the time split (signals/time_split.py)
    trace_id: int = 0  # the owner span's ids when known (live), for on_findings listeners
    span_id: int = 0
    # Fingerprints of statements read in LIMIT/OFFSET slices of one list under this owner: found
    # live (where the parameters are known) by the N+1 detector and written on the owner span
    # (``hms.db.paged``), read back from it by offline analysis, which has no parameters.
    paged: set[str] = field(default_factory=set)

    def count_db(self, duration_ns: int) -> None:
        """One statement ran under the owner (recorded or not)."""
        self.db_count += 1
        self.db_duration_ns += duration_ns

    def has_room(self, calls: list[Any]) -> bool:
        """Whether one more call fits under MAX_CALLS_PER_OWNER; else it is counted as dropped."""
        if len(calls) < MAX_CALLS_PER_OWNER:
            return True
        self.dropped += 1
        return False

    def add_db(self, call: DbCall) -> None:
        if self.has_room(self.db_calls):
            self.db_calls.append(call)

    def add_cache(self, call: CacheCall) -> None:
        if self.has_room(self.cache_calls):
            self.cache_calls.append(call)

    def add_http(self, call: HttpCall) -> None:
        if self.has_room(self.http_calls):
            self.http_calls.append(call)

    def add_connects(self, connects: list[ConnectCall]) -> None:
        if connects and len(self.connects) < MAX_CALLS_PER_OWNER:
            self.connects.extend(connects)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # n_plus_one, duplicate_query, cache_n_plus_one, ...
    fingerprint: str  # stable across requests and processes: groups findings in reports
    repetitions: int
    duration_ms: float
    statement: str = ""
    model: str = ""
    relation: str = ""
    relation_kind: str = ""
    key_pattern: str = ""
    location: CodeLocation | None = None
    fix: str = ""
    hint: str = ""
    route: str = ""
    subject: str = ""  # what the finding is about, when no relation / key pattern / model says it
    rows: int = 0  # unbounded and wide results: the most rows one statement returned
    table: str = ""  # the table an index or a column list is for
    columns: tuple[str, ...] = ()  # index columns (slow queries), or columns returned (wide results)
    members: tuple[str, ...] = ()  # repeated query groups: the calls repeated together, in order
    fix_kind: str = ""  # the kind of a structural ORM fix (signals/fixes.py FIX_KINDS)
    origin: CodeLocation | None = None  # where the root queryset came from: where the fix goes
    # The kinds of the findings this one stands for (a repeated group that took in its member
    # query's N+1): `pytest --hms-otel` fails on them as on their own kind.
    includes: tuple[str, ...] = ()
    # Not exported: a repeated group's members as "statement:<normalized SQL>",
    # "relation:<app.Model.field>", "key_pattern:<pattern>", and (`cover_fixes`) each step's
    # (member, batch fix) in order; registry.consolidate folds the owner's findings of those
    # members into the group.
    covers: tuple[str, ...] = ()
    cover_fixes: tuple[tuple[str, str], ...] = ()


# --- helpers the detectors share -----------------------------------------------------------

_T = TypeVar("_T")


class _Timed(Protocol):
    duration_ns: int


def total_ms(calls: Iterable[_Timed]) -> float:
    return sum(c.duration_ns for c in calls) / 1e6


def most_common(values: Iterable[_T | None]) -> _T | None:
    """The most frequent value that is not None (the first seen among equals). Counted by
    identity first — ORM contexts and code locations are interned, so a run of N calls has one
    or a few distinct objects — and only those are hashed (a frozen dataclass hashes every
    field on each call)."""
    by_id: dict[int, list[Any]] = {}
    for value in values:
        if value is not None:
            entry = by_id.get(id(value))
            if entry is None:
                by_id[id(value)] = [value, 1]
            else:
                entry[1] += 1
    if not by_id:
        return None
    if len(by_id) == 1:
        only: _T = next(iter(by_id.values()))[0]
        return only
    counts: Counter[_T] = Counter()
    for value, count in by_id.values():  # in order of first occurrence, as Counter(values) is
        counts[value] += count
    return counts.most_common(1)[0][0]


def db_location(call: DbCall) -> CodeLocation | None:
    return call.orm.location if call.orm is not None else None


def first_model(calls: Iterable[DbCall]) -> str:
    """The model of the first call the ORM made, or ""."""
    return next((c.orm.model for c in calls if c.orm is not None and c.orm.model), "")


def outside_cache_calls(db_calls: Iterable[DbCall], cache_calls: Iterable[CacheCall]) -> list[DbCall]:
    """The SQL the application ran itself: not from inside a cache call (DatabaseCache)."""
    merged: list[list[int]] = []
    for begin, end in sorted(
        (c.start_ns, c.start_ns + c.duration_ns) for c in cache_calls if c.duration_ns > 0
    ):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    if not merged:
        return list(db_calls)
    begins = [m[0] for m in merged]
    kept = []
    for call in db_calls:
        index = bisect_right(begins, call.start_ns) - 1
        if index < 0 or call.start_ns > merged[index][1]:
            kept.append(call)
    return kept
