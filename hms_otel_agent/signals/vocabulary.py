"""The names the agent writes and reads back: span record keys, instrumentation scopes, event
and attribute names, and the translation of a `Finding` (and a plan, a code location) to span
attributes and back.

The live side (instrument/, processors, the pytest plugin) writes with these; the offline side
(report/, ``hms-otel analyze``) reads with the same table, so the two cannot drift. Plain data
and pure functions: no Django, no SDK. Every emitted name is documented in docs/attributes.md.
"""

from __future__ import annotations

from typing import Any

from hms_otel_agent.signals.records import CodeLocation, Finding, PlanSummary

# --- record keys: Python attributes the agent's hooks leave on an SDK span (never exported) ---
DB_RECORD = "_hms_db"  # instrument/db.DbSpanRecord: the statement's fingerprint, ORM context, rows
CACHE_RECORD = "_hms_cache"  # the CacheCall, read back by the span processor when the span ends
COMMAND_RECORD = "_hms_redis"  # the parsed Redis command, from the request hook to the response hook
CONNECT_RECORD = "_hms_connects"  # list of ConnectCall opened while the span was current
STRUCTURED_TRACES_RECORD = "_hms_structured_traces"  # stack traces the processor built itself
HTTP_RECORD = "_hms_http"  # signals/http_calls.HttpCall of an outbound call (instrument/http_client.py)

# --- instrumentation scopes ------------------------------------------------------------------
DB_SCOPES = frozenset(
    (
        "opentelemetry.instrumentation.psycopg2",
        "opentelemetry.instrumentation.psycopg",
        "opentelemetry.instrumentation.dbapi",
    )
)
DJANGO_CACHE_SCOPE = "hms_otel_agent.django_cache"
CACHE_SCOPES = frozenset(("opentelemetry.instrumentation.redis", DJANGO_CACHE_SCOPE))
EAGER_LOADS_SCOPE = "hms_otel_agent.eager_loads"  # aggregate findings, not a request
EAGER_LOADS_SPAN = "unused eager loading"  # the span name of those findings
DJANGO_SCOPE = "opentelemetry.instrumentation.django"
TEMPLATE_SCOPE = "hms_otel_agent.django_templates"  # template renders: part of their owner
# The contrib instrumentations whose client spans are outbound calls (instrument/http_client.py).
HTTP_CLIENT_SCOPES = frozenset(
    (
        "opentelemetry.instrumentation.requests",
        "opentelemetry.instrumentation.httpx",
        "opentelemetry.instrumentation.urllib3",
    )
)

# --- resource and span attributes other layers look for -------------------------------------
RUN_ID_ATTRIBUTE = "hms.run.id"  # resource: every process of one hms-otel-run run
TEST_ATTRIBUTE = "hms.pytest.nodeid"  # pytest_plugin.py: on the owner span of each test
TEMPLATE_NAME = "hms.template.name"  # template spans: the name the template was loaded by
HTTP_TIMEOUT = "hms.http.timeout"  # outbound spans: whether the call has a timeout (when shown)
TIME_PREFIX = "hms.time."  # owner spans: hms.time.db_ms ... (signals/time_split.py KEYS)
DB_PAGED = "hms.db.paged"  # owner spans: fingerprints of statements read in LIMIT/OFFSET slices

# --- events ----------------------------------------------------------------------------------
CONNECT_EVENT = "hms.db.connect"
EXPLAIN_EVENT = "hms.explain"
FINDING_EVENTS = {
    "n_plus_one": "hms.n_plus_one",
    "duplicate_query": "hms.duplicate_query",
    "repeated_group": "hms.repeated_group",
    "slow_query": "hms.slow_query",
    "unbounded_result": "hms.result_set",
    "wide_result": "hms.result_set",
    "connection_churn": "hms.connection_churn",
    "unused_eager_load": "hms.unused_eager_load",
}


def finding_event(kind: str) -> str:
    """The event name a finding of `kind` is written as."""
    return FINDING_EVENTS.get(kind, "hms.cache" if kind.startswith("cache") else "hms.finding")


# --- code locations ----------------------------------------------------------------------------


ORIGIN_PREFIX = "hms.orm.origin."  # where a queryset came from: hms.orm.origin.code.*


def code_attributes(location: CodeLocation | None, prefix: str = "") -> dict[str, object]:
    """The semantic-convention ``code.*`` attributes of a location (empty when unknown; no
    function for a template line); `prefix` `ORIGIN_PREFIX` for where a queryset came from."""
    if location is None:
        return {}
    attributes: dict[str, object] = {
        prefix + "code.file.path": location.file,
        prefix + "code.line.number": location.line,
    }
    if location.function:
        attributes[prefix + "code.function.name"] = location.function
    return attributes


def location_of(attributes: dict[str, Any], prefix: str = "") -> CodeLocation | None:
    """The location in ``code.*`` attributes, stable or older names (any producer); with
    `prefix` `ORIGIN_PREFIX`, where the queryset came from."""
    file = attributes.get(prefix + "code.file.path") or attributes.get(prefix + "code.filepath")
    if not file:
        return None
    line = attributes.get(prefix + "code.line.number", attributes.get(prefix + "code.lineno"))
    try:
        number = int(line) if line is not None else 0
    except (TypeError, ValueError):
        number = 0
    function = attributes.get(prefix + "code.function.name") or attributes.get(prefix + "code.function") or ""
    return CodeLocation(str(file), number, str(function))


# --- values read back ------------------------------------------------------------------------


def text(attributes: dict[str, Any], name: str) -> str:
    value = attributes.get(name)
    return value if isinstance(value, str) else ""


def integer(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return ()


# --- plans ---------------------------------------------------------------------------------------


def plan_attributes(plan: PlanSummary) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "hms.db.fingerprint": plan.fingerprint,
        "hms.explain.total_cost": plan.total_cost,
        "hms.explain.plan_rows": plan.plan_rows,
        "hms.explain.nodes": list(plan.nodes),
    }
    if plan.index_table:
        attributes["hms.explain.index_table"] = plan.index_table
        attributes["hms.explain.index_columns"] = list(plan.index_columns)
    return attributes


def plan_of(attributes: dict[str, Any]) -> PlanSummary | None:
    """The plan of an ``hms.explain`` event's attributes (None without a fingerprint)."""
    fingerprint = text(attributes, "hms.db.fingerprint")
    if not fingerprint:
        return None
    cost = attributes.get("hms.explain.total_cost")
    return PlanSummary(
        fingerprint=fingerprint,
        total_cost=float(cost) if isinstance(cost, (int, float)) else 0.0,
        plan_rows=integer(attributes.get("hms.explain.plan_rows")),
        nodes=strings(attributes.get("hms.explain.nodes")),
        index_table=text(attributes, "hms.explain.index_table"),
        index_columns=strings(attributes.get("hms.explain.index_columns")),
    )


# --- findings ------------------------------------------------------------------------------------

FINDING_KIND = "hms.finding.kind"
# The optional Finding fields in the order their attributes are written (an event's attributes
# are exported in insertion order): field, attribute (for a code location: the prefix of its
# ``code.*`` attributes), how the value is read back. A field at its default is not written.
_TEXT, _INT, _LIST, _LOCATION = 0, 1, 2, 3
_OPTIONAL: tuple[tuple[str, str, int], ...] = (
    ("statement", "hms.finding.statement", _TEXT),
    ("model", "hms.orm.model", _TEXT),
    ("relation", "hms.orm.relation", _TEXT),
    ("relation_kind", "hms.orm.relation_kind", _TEXT),
    ("key_pattern", "hms.cache.key_pattern", _TEXT),
    ("location", "", _LOCATION),  # code.*
    ("origin", ORIGIN_PREFIX, _LOCATION),  # hms.orm.origin.code.*
    ("fix", "hms.hint.fix", _TEXT),
    ("fix_kind", "hms.hint.fix_kind", _TEXT),
    ("hint", "hms.hint", _TEXT),
    ("subject", "hms.finding.subject", _TEXT),
    ("rows", "hms.finding.rows", _INT),
    ("table", "hms.finding.table", _TEXT),
    ("columns", "hms.finding.columns", _LIST),
    ("members", "hms.finding.members", _LIST),
    ("includes", "hms.finding.includes", _LIST),
)


def finding_attributes(finding: Finding) -> dict[str, Any]:
    """A finding as the attributes of its event. Not written: `route` (the owner span's
    ``http.route``) and `covers` / `cover_fixes` (in-process only)."""
    attributes: dict[str, Any] = {
        FINDING_KIND: finding.kind,
        "hms.finding.fingerprint": finding.fingerprint,
        "hms.finding.repetitions": finding.repetitions,
        "hms.finding.duration_ms": round(finding.duration_ms, 3),
    }
    for name, attribute, how in _OPTIONAL:
        value = getattr(finding, name)
        if how == _LOCATION:
            attributes.update(code_attributes(value, attribute))
        elif value:
            attributes[attribute] = list(value) if how == _LIST else value
    return attributes


def finding_of(attributes: dict[str, Any], route: str = "") -> Finding | None:
    """The finding an event's attributes describe (None when they are not a finding's)."""
    kind = attributes.get(FINDING_KIND)
    if not isinstance(kind, str) or not kind:
        return None
    duration = attributes.get("hms.finding.duration_ms")
    optional: dict[str, Any] = {}
    for name, attribute, how in _OPTIONAL:
        if how == _LOCATION:
            optional[name] = location_of(attributes, attribute)
        elif how == _TEXT:
            optional[name] = text(attributes, attribute)
        elif how == _INT:
            optional[name] = integer(attributes.get(attribute))
        else:
            optional[name] = strings(attributes.get(attribute))
    return Finding(
        kind=kind,
        fingerprint=text(attributes, "hms.finding.fingerprint"),
        repetitions=integer(attributes.get("hms.finding.repetitions")),
        duration_ms=float(duration) if isinstance(duration, (int, float)) else 0.0,
        route=route,
        **optional,
    )
