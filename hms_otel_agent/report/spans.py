"""Span trees -> the plain records the detectors read (`OwnerActivity`), offline.

The same rule as the live span processor (signals/owners.py, used by both): the owner of a DB
or cache client span is its nearest ancestor that is neither a DB nor a cache client span; a cache
span under another cache span (a Redis command under a Django cache call) is not counted
again. Unlike the live processor, a DB or cache span whose parent is not in the data is
still analyzed: it is grouped under a stand-in owner for the missing parent.

DB spans from any language or service work: without the agent's ``hms.db.fingerprint`` the
statement (``db.statement`` or ``db.query.text``) is fingerprinted here, and without
``hms.orm.*`` attributes detection is SQL-level. Either generation of semantic-convention names
is read (`signals.semconv`: the stable name, else the old one it replaced), so spans recorded
with any OTEL_SEMCONV_STABILITY_OPT_IN give the same findings.

The agent's ``hms.db.connect`` events (new database connections) become the `ConnectCall`s of
the owner of the span they are on, the ``hms.explain`` events on an owner its plans, and
``db.response.returned_rows`` a statement's row count, as live. Spans the agent emits for
findings aggregated over many requests (unused eager loading) are owners of their own, marked
`Owner.aggregate`: their recorded findings are the only source of that kind, live or offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hms_otel_agent.report.otlp import KIND_CLIENT, KIND_SERVER, SpanData
from hms_otel_agent.signals import time_split
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.http_privacy import HttpPrivacy
from hms_otel_agent.signals.owners import CACHE, DB, HTTP, OWNER, TEMPLATE, TIME_PART, counted, scope_role
from hms_otel_agent.signals.records import (
    UNKNOWN_MAX_AGE,
    CacheCall,
    ConnectCall,
    DbCall,
    Finding,
    HttpCall,
    OrmContext,
    OwnerActivity,
    PlanSummary,
)
from hms_otel_agent.signals.routes import readable_name, readable_route
from hms_otel_agent.signals.semconv import stable_value
from hms_otel_agent.signals.vocabulary import (
    CONNECT_EVENT,
    DB_PAGED,
    DJANGO_CACHE_SCOPE,
    DJANGO_SCOPE,
    EAGER_LOADS_SCOPE,
    EXPLAIN_EVENT,
    HTTP_TIMEOUT,
    ORIGIN_PREFIX,
    RUN_ID_ATTRIBUTE,
    TEMPLATE_NAME,
    TEST_ATTRIBUTE,
    TIME_PREFIX,
    finding_of,
    location_of,
    plan_of,
    strings,
)
from hms_otel_agent.signals.vocabulary import integer as _int
from hms_otel_agent.signals.vocabulary import text as _text

AGGREGATE_SCOPES = frozenset((EAGER_LOADS_SCOPE,))
CACHE_SYSTEMS = frozenset(("redis", "memcached", "valkey", "keydb", "dragonfly"))


# What counts as a write or a delete, as the cache instrumentation counts them
# (instrument/django_cache.py, instrument/cache_hooks.py): per key where the key count is known.
_CACHE_WRITES = frozenset(
    (
        *("set", "add", "set_many", "touch"),
        *("SET", "SETNX", "SETEX", "PSETEX", "MSET", "MSETNX", "GETSET"),
        *("EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST"),
    )
)
_CACHE_DELETES = frozenset(("delete", "delete_many", "DEL", "UNLINK", "GETDEL"))


def role(span: SpanData) -> int:
    """By the scope as live (signals/owners.py), then by attributes for other producers."""
    by_scope = scope_role(span.scope)
    if by_scope != OWNER:
        return by_scope
    attributes = span.attributes
    if "hms.cache.operation" in attributes:
        return CACHE
    if "hms.db.fingerprint" in attributes:
        return DB
    system = stable_value(attributes, "db.system.name")
    if system and span.kind != KIND_SERVER:
        return CACHE if str(system).lower() in CACHE_SYSTEMS else DB
    if "db.statement" in attributes or "db.query.text" in attributes:
        return DB
    if span.kind == KIND_CLIENT and ("url.full" in attributes or "http.url" in attributes):
        return HTTP
    if TEMPLATE_NAME in attributes:
        return TEMPLATE
    return OWNER


def http_call(span: SpanData, privacy: HttpPrivacy | None = None) -> HttpCall:
    """An outbound call as the live hook records it; its URL made safe again (spans of other
    agents may carry it raw) by `privacy` (the settings' rules; default: the defaults), its raw
    form unknown (`HttpCall.url_hash` None)."""
    attributes = span.attributes
    method = _text(attributes, "http.request.method") or _text(attributes, "http.method")
    method = (method or span.name.split(" ", 1)[0]).upper()
    url = _text(attributes, "url.full") or _text(attributes, "http.url")
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    timeout = attributes.get(HTTP_TIMEOUT)
    return HttpCall(
        method=method if method.isalpha() and len(method) <= 10 else "_OTHER",
        url=(privacy or _URLS).target(url) if url else "",
        start_ns=span.start_ns,
        duration_ns=span.duration_ns,
        status_code=_int(status) if status is not None else 0,
        timeout=timeout if isinstance(timeout, bool) else None,
        location=location_of(attributes),
    )


def time_of(owner_span: SpanData, intervals: time_split.Intervals | None) -> dict[str, float]:
    """The owner's time split: as the live agent recorded it (``hms.time.*``), else computed
    from the child spans in the data."""
    attributes = owner_span.attributes
    recorded = {key: attributes.get(TIME_PREFIX + key) for key in time_split.KEYS}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in recorded.values()):
        return {key: float(value) for key, value in recorded.items()}  # type: ignore[arg-type]
    return time_split.split(owner_span.start_ns, owner_span.end_ns, intervals)


def _stable_text(attributes: dict[str, Any], name: str) -> str:
    """`_text` of the stable name `name`, else of the old name it replaced."""
    value = stable_value(attributes, name)
    return value if isinstance(value, str) else ""


_PARAMETER_PREFIX = "db.query.parameter."


def _parameters(attributes: dict[str, Any]) -> Any:
    """The statement's parameters when they were exported (opt-in): the old single attribute,
    else the stable ``db.query.parameter.<key>`` ones in key order; None when not exported."""
    old = attributes.get("db.statement.parameters", attributes.get("db.query.parameters"))
    if old is not None:
        return old
    found = sorted((k, str(v)) for k, v in attributes.items() if k.startswith(_PARAMETER_PREFIX))
    return found or None


def db_call(span: SpanData) -> DbCall | None:
    """The DbCall for a DB span, or None when it carries no statement and no fingerprint."""
    attributes = span.attributes
    statement = _stable_text(attributes, "db.query.text")
    digest = _text(attributes, "hms.db.fingerprint")
    if not statement and not digest:
        return None
    fp = fingerprint_sql(statement) if statement else None
    loc = location_of(attributes)
    model = _text(attributes, "hms.orm.model")
    orm: OrmContext | None = None
    if model:
        orm = OrmContext(
            model=model,
            kind=_text(attributes, "hms.orm.operation"),
            relation=_text(attributes, "hms.orm.relation"),
            lazy=attributes.get("hms.orm.lazy") is True,
            path=_text(attributes, "hms.orm.path"),
            root_model=_text(attributes, "hms.orm.root_model"),
            filtered=attributes.get("hms.orm.filtered") is True,
            location=loc,
            origin=location_of(attributes, ORIGIN_PREFIX),
        )
    elif loc is not None:
        orm = OrmContext(model="", kind="raw", location=loc)  # as the live DB hook does
    parameters = _parameters(attributes)
    return DbCall(
        fingerprint=digest or (fp.digest if fp else ""),
        statement=fp.normalized if fp else "",
        start_ns=span.start_ns,
        duration_ns=span.duration_ns,
        table=fp.table if fp else "",
        filter_columns=fp.filter_columns if fp else (),
        # Parameters are exported only when opted in; without them duplicates cannot be told.
        params_hash=hash(str(parameters)) if parameters is not None else None,
        orm=orm,
        rows=_rows(attributes.get("db.response.returned_rows")),
    )


def _rows(value: Any) -> int:
    if isinstance(value, bool):
        return -1
    try:
        return int(value) if value is not None else -1
    except (TypeError, ValueError):
        return -1


def connect_calls(span: SpanData) -> list[ConnectCall]:
    """New database connections opened while `span` was current (``hms.db.connect`` events)."""
    return [_connect_call(e.attributes, e.time_ns) for e in span.events if e.name == CONNECT_EVENT]


def _connect_call(attributes: dict[str, Any], time_ns: int) -> ConnectCall:
    max_age: Any = attributes.get("hms.db.conn_max_age")
    if isinstance(max_age, bool) or not isinstance(max_age, (int, str)):
        max_age = UNKNOWN_MAX_AGE
    else:
        try:
            max_age = int(max_age)
        except ValueError:
            max_age = UNKNOWN_MAX_AGE
    duration = attributes.get("hms.db.connect_ms")
    duration_ms = (
        float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else 0.0
    )
    return ConnectCall(
        alias=_text(attributes, "hms.db.alias") or "default",
        start_ns=time_ns,
        duration_ns=int(duration_ms * 1e6),
        conn_max_age=None if max_age == -1 else max_age,
        pooled=attributes.get("hms.db.pooled") is True,
        vendor=_stable_text(attributes, "db.system.name"),
    )


def recorded_plans(span: SpanData) -> dict[str, PlanSummary]:
    """The plans the live agent attached to an owner span (``hms.explain`` events)."""
    found: dict[str, PlanSummary] = {}
    for event in span.events:
        if event.name == EXPLAIN_EVENT:
            plan = plan_of(event.attributes)
            if plan is not None:
                found[plan.fingerprint] = plan
    return found


def cache_call(span: SpanData) -> CacheCall:
    attributes = span.attributes
    operation = _text(attributes, "hms.cache.operation")
    if not operation:
        statement = _stable_text(attributes, "db.query.text")
        operation = (statement.split(" ", 1)[0] if statement else span.name.split(" ", 1)[0]).upper()
    backend = _text(attributes, "hms.cache.backend")
    if not backend and span.scope != DJANGO_CACHE_SCOPE:
        backend = str(stable_value(attributes, "db.system.name") or "")
    call = CacheCall(
        operation=operation,
        key_pattern=_text(attributes, "hms.cache.key_pattern"),
        start_ns=span.start_ns,
        duration_ns=span.duration_ns,
        backend=backend,
        django_api=span.scope == DJANGO_CACHE_SCOPE,
        location=location_of(attributes),
    )
    hit = attributes.get("hms.cache.hit")
    if isinstance(hit, bool):
        call.reads, call.hits, call.misses = 1, int(hit), int(not hit)
    elif "hms.cache.hits" in attributes or "hms.cache.misses" in attributes:
        call.hits = _int(attributes.get("hms.cache.hits"))
        call.misses = _int(attributes.get("hms.cache.misses"))
        call.reads = call.hits + call.misses
    key = attributes.get("hms.cache.key")
    keys = len(key.split()) if isinstance(key, str) and key else 1  # the key list when captured
    if operation in _CACHE_WRITES or (operation == "get_or_set" and hit is False):
        call.writes = 1 if operation == "get_or_set" else keys
        ttl = attributes.get("hms.cache.ttl_s")
        call.ttl_s = float(ttl) if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) else None
    if operation in _CACHE_DELETES:
        call.deletes = keys
    if isinstance(key, str):
        call.key_hash = hash(key)
    return call


def recorded_findings(span: SpanData, route: str) -> list[Finding]:
    """The findings the live agent wrote as events on an owner span."""
    findings = []
    for event in span.events:
        finding = finding_of(event.attributes, route)
        if finding is not None:
            findings.append(finding)
    return findings


@dataclass
class Owner:
    """An owner span and what ran under it."""

    activity: OwnerActivity
    span: SpanData | None  # None: stand-in for a parent that is not in the data
    trace_id: str
    is_request: bool = False  # a request the app served (see _is_request)
    is_test: bool = False  # a test body (the pytest plugin's owner spans)
    service: str = ""
    run_id: str = ""
    recorded: list[Finding] = field(default_factory=list)
    aggregate: bool = False  # the agent's span for findings over many requests, not a request
    time: dict[str, float] = field(default_factory=dict)  # the time split (signals/time_split.py)

    @property
    def label(self) -> str:
        """The route of a request (readable: signals/routes.py), else the owner's name."""
        return readable_route(self.activity.route) or self.activity.name


def _is_request(span: SpanData) -> bool:
    """A server span, or the span Django's middleware makes for a request handled inside another
    span (a test client's request in a test: the contrib makes it INTERNAL, not SERVER)."""
    if span.kind == KIND_SERVER:
        return True
    attributes = span.attributes
    return span.scope == DJANGO_SCOPE and ("http.request.method" in attributes or "http.method" in attributes)


# Span names that carry a path are printed with the path templated, as the agent exports them
# (the default rules, when the caller passes none of its settings).
_URLS = HttpPrivacy()


def _resource_text(span: SpanData, name: str) -> str:
    value = span.resource.get(name)
    return str(value) if value is not None else ""


def build_owners(
    spans: Iterable[SpanData], read_findings: bool = True, privacy: HttpPrivacy | None = None
) -> list[Owner]:
    """Group DB, cache, outbound HTTP and template spans under their owners; every other span
    is an owner. `read_findings`: read the findings the live agent recorded on owner spans
    (`Owner.recorded`; the pytest plugin gets them from the live processor instead). `privacy`:
    the URL rules of the settings in force (`HttpPrivacy.from_settings`), as the live agent
    applies them; spans of other agents may carry paths and URLs raw."""
    urls = privacy or _URLS
    by_id: dict[tuple[str, str], SpanData] = {}
    for span in spans:
        by_id.setdefault((span.trace_id, span.span_id), span)
    roles = {key: role(span) for key, span in by_id.items()}
    owners: dict[tuple[str, str], Owner] = {}
    for key, span in by_id.items():
        if roles[key] == OWNER:
            route = _text(span.attributes, "http.route")
            owners[key] = Owner(
                activity=OwnerActivity(
                    name=readable_name(urls.span_name(span.name, None, None), route),
                    route=route,
                    plans=recorded_plans(span),
                    connects=connect_calls(span),
                    paged=set(strings(span.attributes.get(DB_PAGED))),
                ),
                span=span,
                trace_id=span.trace_id,
                is_request=_is_request(span),
                is_test=TEST_ATTRIBUTE in span.attributes,
                service=_resource_text(span, "service.name"),
                run_id=_resource_text(span, RUN_ID_ATTRIBUTE),
                recorded=recorded_findings(
                    span, readable_route(route) or urls.span_name(span.name, None, None)
                )
                if read_findings
                else [],
                aggregate=span.scope in AGGREGATE_SCOPES,
            )
    resolved: dict[tuple[str, str], tuple[str, str]] = {}

    def owner_key(key: tuple[str, str]) -> tuple[str, str]:
        chain = []
        current = key
        while True:
            if current in resolved:
                found = resolved[current]
                break
            if roles.get(current) == OWNER:
                found = current
                break
            chain.append(current)
            span = by_id[current]
            parent = (span.trace_id, span.parent_span_id)
            if not span.parent_span_id or parent not in by_id:
                # The parent is missing (or there is none): a stand-in owner for it.
                found = ("missing", f"{span.trace_id}/{span.parent_span_id or span.span_id}")
                if found not in owners:
                    owners[found] = Owner(
                        activity=OwnerActivity(name=f"(span {span.parent_span_id or '-'} not in the data)"),
                        span=None,
                        trace_id=span.trace_id,
                        service=_resource_text(span, "service.name"),
                        run_id=_resource_text(span, RUN_ID_ATTRIBUTE),
                    )
                break
            current = parent
        for item in chain:
            resolved[item] = found
        return found

    grouped: dict[tuple[str, str], list[tuple[int, SpanData]]] = {}
    for key, span in by_id.items():
        kind = roles[key]
        if kind == OWNER:
            continue
        parent = by_id.get((span.trace_id, span.parent_span_id))
        if parent is not None and not counted(kind, span.scope, roles[(parent.trace_id, parent.span_id)]):
            continue  # a Redis command under a Django cache call: the call is what counts
        grouped.setdefault(owner_key(key), []).append((kind, span))
    for okey, members in grouped.items():
        owner = owners[okey]
        activity = owner.activity
        # The live processor records calls as they end.
        members.sort(key=lambda item: (item[1].end_ns, item[1].start_ns))
        for kind, span in members:
            if span.events:
                activity.add_connects(connect_calls(span))
            if activity.intervals is None:
                activity.intervals = time_split.Intervals()
            activity.intervals.add(span.start_ns, span.end_ns, TIME_PART[kind])
            if kind == TEMPLATE:
                continue
            if kind == HTTP:
                activity.add_http(http_call(span, urls))
                continue
            if kind == DB:
                activity.count_db(span.duration_ns)
                call = db_call(span)
                if call is not None:
                    activity.add_db(call)
            elif "hms.cache.operation" in span.attributes:  # what the agent's cache hooks recorded
                activity.add_cache(cache_call(span))
    for owner in owners.values():
        if owner.span is not None and not owner.aggregate:
            owner.time = time_of(owner.span, owner.activity.intervals)
    return list(owners.values())
