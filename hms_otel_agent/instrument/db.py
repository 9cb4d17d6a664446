"""psycopg2 and psycopg 3 through the OpenTelemetry contrib instrumentations, plus our hook.

The contrib instrumentations make one CLIENT span per execute / executemany / callproc.
Both share `dbapi.CursorTracer._populate_span`, which runs while the span is open and
sees the statement and its parameters; the agent wraps it to

* export the statement with inline literals masked (unless opted in),
* add `hms.db.fingerprint` and, when the ORM is behind the query, the model, relation and
  the user's code location,
* keep a hash of the parameters on the span for duplicate detection (never exported).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation import dbapi

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument.context import current_orm, user_location
from hms_otel_agent.signals.activity import OrmContext
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.sql_mask import mask_sql_literals

DB_SCOPES = frozenset(
    (
        "opentelemetry.instrumentation.psycopg2",
        "opentelemetry.instrumentation.psycopg",
        "opentelemetry.instrumentation.dbapi",
    )
)
# The record the span processor reads back from the span when it ends.
SPAN_RECORD = "_hms_db"
# Masking and fingerprinting run on the application's thread, in time linear in the statement;
# a statement of megabytes (an IN list of 100 000 ids) is fingerprinted on its first 64 KiB and
# exported (masked) up to 4 KiB followed by "…": whole export batches would otherwise be
# rejected by backends for one oversized attribute.
MAX_FINGERPRINT_CHARS = 65_536
MAX_EXPORTED_STATEMENT_CHARS = 4_096
TRUNCATED = "…"

_original_populate: Callable[..., Any] | None = None


class DbSpanRecord:
    __slots__ = ("fingerprint", "orm", "params_hash")

    def __init__(self, fingerprint: Any, params_hash: int | None, orm: OrmContext | None) -> None:
        self.fingerprint = fingerprint
        self.params_hash = params_hash
        self.orm = orm


def orm_attributes(orm: OrmContext) -> dict[str, Any]:
    attributes: dict[str, Any] = {"hms.orm.model": orm.model, "hms.orm.operation": orm.kind}
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
                    orm = OrmContext(model="", kind="raw", location=location)
            record = DbSpanRecord(fp, _params_hash(args[1] if len(args) > 1 else None), orm)
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
            attributes: dict[str, Any] = {"hms.db.fingerprint": fp.digest}
            if orm is not None:
                if orm.model:
                    attributes.update(orm_attributes(orm))
                elif orm.location is not None:
                    attributes["code.file.path"] = orm.location.file
                    attributes["code.line.number"] = orm.location.line
                    attributes["code.function.name"] = orm.location.function
            span.set_attributes(attributes)
            setattr(span, SPAN_RECORD, record)
        except Exception as exc:
            guard.report("SQL span hook", exc)

    dbapi.CursorTracer._populate_span = _populate_span  # type: ignore[method-assign]
    _original_populate = original


def uninstall() -> None:
    global _original_populate
    if _original_populate is not None:
        dbapi.CursorTracer._populate_span = _original_populate  # type: ignore[method-assign]
        _original_populate = None
