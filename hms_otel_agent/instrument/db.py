"""psycopg2 and psycopg 3 through the OpenTelemetry contrib instrumentations, plus our hook.

The contrib instrumentations make one CLIENT span per execute / executemany / callproc.
Both share `dbapi.CursorTracer._populate_span`, which runs while the span is open and
sees the statement and its parameters; the agent wraps it to

* export the statement with inline literals masked (unless opted in),
* add `hms.db.fingerprint` and, when the ORM is behind the query, the model, relation and
  the user's code location,
* keep a hash of the parameters on the span for duplicate detection (never exported),
* once the statement ran (``CursorTracer._record_metrics``, called in a ``finally`` while the
  span is still open), record ``db.response.returned_rows`` for SELECTs: the driver's row count.

The statement as sent, its parameters and the cursor stay on the span record (`execution`) only
until the span ends, for the opt-in EXPLAIN of slow queries (``instrument/explain.py``); the span
processor drops them then. They are never exported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation import dbapi
from opentelemetry.trace import get_current_span

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.context import current_orm, set_attributes, user_location
from hms_otel_agent.signals.activity import OrmContext
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.sql_mask import mask_sql_literals

# The record the span processor reads back from the span when it ends.
SPAN_RECORD = "_hms_db"
# Masking and fingerprinting run on the application's thread, in time linear in the statement;
# a statement of megabytes (an IN list of 100 000 ids) is fingerprinted on its first 16 KiB and
# exported (masked) up to 4 KiB followed by "…": whole export batches would otherwise be
# rejected by backends for one oversized attribute.
MAX_FINGERPRINT_CHARS = 16_384
MAX_EXPORTED_STATEMENT_CHARS = 4_096
TRUNCATED = "…"

_original_populate: Callable[..., Any] | None = None
_original_record_metrics: Callable[..., Any] | None = None


class DbSpanRecord:
    __slots__ = ("execution", "fingerprint", "orm", "params_hash", "rows")

    def __init__(self, fingerprint: Any, params_hash: int | None, orm: OrmContext | None) -> None:
        self.fingerprint = fingerprint
        self.params_hash = params_hash
        self.orm = orm
        self.rows = -1
        # (statement, parameters, cursor) until the span ends; never exported
        self.execution: tuple[Any, Any, Any] | None = None


def orm_attributes(orm: OrmContext) -> dict[str, Any]:
    """The span attributes of an ORM context: built once per (interned) context, then shared —
    callers must not change the returned dict."""
    entry = _orm_attributes.get(id(orm))
    if entry is not None and entry[0] is orm:
        return entry[1]
    attributes = _build_orm_attributes(orm)
    if len(_orm_attributes) < _MAX_CACHED:
        _orm_attributes[id(orm)] = (orm, attributes)  # keeps `orm` alive: its id stays its own
    return attributes


def _build_orm_attributes(orm: OrmContext) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if orm.model:
        attributes["hms.orm.model"] = orm.model
        attributes["hms.orm.operation"] = orm.kind
        if orm.relation:
            attributes["hms.orm.relation"] = orm.relation
        attributes["hms.orm.lazy"] = orm.lazy
        if orm.path:
            attributes["hms.orm.path"] = orm.path
            attributes["hms.orm.root_model"] = orm.root_model
        if orm.filtered:
            attributes["hms.orm.filtered"] = True
    if orm.location is not None:
        attributes["code.file.path"] = orm.location.file
        attributes["code.line.number"] = orm.location.line
        attributes["code.function.name"] = orm.location.function
    return attributes


# id(OrmContext) -> (the context, its attributes). The ORM contexts are interned
# (instrument/django_orm.py), and so are the raw statements' contexts below: bounded by the code.
_orm_attributes: dict[int, tuple[OrmContext, dict[str, Any]]] = {}
# CodeLocation -> the context of a raw statement (no ORM) run from there.
_raw_contexts: dict[Any, OrmContext] = {}
_MAX_CACHED = 20_000


def _raw_context(location: Any) -> OrmContext:
    orm = _raw_contexts.get(location)
    if orm is None:
        orm = OrmContext(model="", kind="raw", location=location)
        if len(_raw_contexts) < _MAX_CACHED:
            _raw_contexts[location] = orm
    return orm


def _params_hash(params: Any) -> int | None:
    if params is None:
        return None
    try:
        return hash(repr(params))
    except Exception:
        return None


def install(settings: Settings) -> None:
    global _original_populate
    if _original_populate is not None:
        return
    original = dbapi.CursorTracer._populate_span
    mask = not settings.capture_sql_literals

    def _populate_span(self: Any, span: Any, cursor: Any, *args: Any) -> None:
        if not span.is_recording():
            return
        try:
            statement = self.get_statement(cursor, args)
            if isinstance(statement, bytes):
                statement = statement.decode("utf-8", "replace")
            long = isinstance(statement, str) and len(statement) > MAX_EXPORTED_STATEMENT_CHARS
            fp = fingerprint_sql(statement[:MAX_FINGERPRINT_CHARS] if long else statement)
            orm = current_orm.get()
            if orm is None:
                location = user_location()
                if location is not None:
                    orm = _raw_context(location)
            params = args[1] if len(args) > 1 else None
            record = DbSpanRecord(fp, _params_hash(params), orm)
            record.execution = (statement, params, cursor)
            if statement and (mask or long):
                shown = statement[:MAX_EXPORTED_STATEMENT_CHARS] if long else statement
                if mask:  # a literal cut in two is masked whole: what follows an open quote is masked
                    shown = mask_sql_literals(shown)
                args = (shown + TRUNCATED if long else shown, *args[1:])
        except Exception as exc:
            guard.report("SQL span hook", exc)
            # Never fall back to exporting the raw statement: it may hold literals.
            original(self, span, cursor, *(("", *args[1:]) if mask and args else args))
            return
        original(self, span, cursor, *args)
        try:
            if orm is None:
                set_attributes(span, {"hms.db.fingerprint": fp.digest})
            else:
                set_attributes(span, {"hms.db.fingerprint": fp.digest, **orm_attributes(orm)})
            setattr(span, SPAN_RECORD, record)
        except Exception as exc:
            guard.report("SQL span hook", exc)

    dbapi.CursorTracer._populate_span = _populate_span  # type: ignore[method-assign]
    _original_populate = original
    _install_row_count()


def _install_row_count() -> None:
    global _original_record_metrics
    original = getattr(dbapi.CursorTracer, "_record_metrics", None)
    if original is None or _original_record_metrics is not None:
        return  # another contrib version: no row counts

    def _record_metrics(self: Any, cursor: Any, *args: Any) -> Any:
        if args and args[-1] is None:  # no error
            try:
                span = get_current_span()
                record = getattr(span, SPAN_RECORD, None)
                if record is not None and record.fingerprint.operation == "SELECT":
                    rows = cursor.rowcount
                    if rows.__class__ is int and rows >= 0:  # -1: a server-side cursor, unknown
                        record.rows = rows
                        set_attributes(span, {"db.response.returned_rows": rows})
            except Exception as exc:
                guard.report("SQL row count", exc)
        return original(self, cursor, *args)

    dbapi.CursorTracer._record_metrics = _record_metrics  # type: ignore[method-assign,assignment]
    _original_record_metrics = original


def uninstall() -> None:
    global _original_populate, _original_record_metrics
    if _original_populate is not None:
        dbapi.CursorTracer._populate_span = _original_populate  # type: ignore[method-assign]
        _original_populate = None
    if _original_record_metrics is not None:
        dbapi.CursorTracer._record_metrics = _original_record_metrics  # type: ignore[method-assign]
        _original_record_metrics = None
