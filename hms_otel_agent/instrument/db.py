"""psycopg2 and psycopg 3 through the OpenTelemetry contrib instrumentations, plus our hook.

The contrib instrumentations wrap connections and cursors and make one CLIENT span per
execute / executemany / callproc in `dbapi.CursorTracer.traced_execution` (and its async
twin), shared by psycopg and psycopg2. The agent replaces those two methods with the same span
— kind, attributes, current span, exception status, SQL commenter and the contrib's metrics —
built with one attribute write and without the SDK's two generator context
managers (the stock path sets attributes one call and one validation at a time: on an N+1
page that was the largest part of the telemetry cost per query), and adds

* a span name built from the statement's tokens, ``SELECT hms_patient`` (`signals.sql_summary`:
  operation and tables, the form of ``db.query.summary``), where the contrib takes the first word
  of the raw text (``SELECT'Zebediah'`` would be a name),
* the statement with inline literals masked (unless opted in),
* `hms.db.fingerprint` and, when the ORM is behind the query, the model, relation and
  the user's code location,
* a hash of the parameters on the span for duplicate detection (never exported),
* once the statement ran, ``db.response.returned_rows`` for SELECTs: the driver's row count.

The statement as sent, its parameters and the cursor stay on the span record (`execution`) only
until the span ends, for the opt-in EXPLAIN of slow queries (``instrument/explain.py``); the span
processor drops them then. They are never exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from time import perf_counter, time_ns
from typing import Any

from opentelemetry.context import attach, detach
from opentelemetry.instrumentation import dbapi
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import get_current_span, set_span_in_context
from opentelemetry.trace.status import Status, StatusCode

from hms_otel_agent import guard
from hms_otel_agent.config import Settings
from hms_otel_agent.instrument import db_semconv, implicit_units, sdk_internals
from hms_otel_agent.instrument.context import (
    PendingOrm,
    add_detached,
    current_orm,
    detection_only_parent,
    user_location,
)
from hms_otel_agent.instrument.sdk_internals import (
    add_sql_comment,
    db_histograms,
    db_integration,
    db_metric_attributes,
    db_mode,
    db_record_metrics,
    db_tracer,
    set_attributes,
    set_db_name,
    set_db_statement,
    set_db_system,
    span_context,
    sql_commenter,
)
from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.records import OrmContext
from hms_otel_agent.signals.sql_mask import mask_sql_literals
from hms_otel_agent.signals.sql_summary import known_operation
from hms_otel_agent.signals.sql_summary import summary as sql_summary
from hms_otel_agent.signals.vocabulary import DB_RECORD, code_attributes

# The record the span processor reads back from the span when it ends.
SPAN_RECORD = DB_RECORD
# Masking and fingerprinting run on the application's thread, in time linear in the statement;
# a statement of megabytes (an IN list of 100 000 ids) is fingerprinted on its first 16 KiB and
# exported (masked) up to 4 KiB followed by "…": whole export batches would otherwise be
# rejected by backends for one oversized attribute.
MAX_FINGERPRINT_CHARS = 16_384
MAX_EXPORTED_STATEMENT_CHARS = 4_096
# The span name (summary) reads the first 4 KiB: the tables are named there, and the summary is
# memoised up to this size (a new 16 KiB IN list each execution would cost its lexing every time).
MAX_SUMMARY_INPUT_CHARS = 4_096
TRUNCATED = "…"


class DbSpanRecord:
    __slots__ = ("execution", "fingerprint", "orm", "params_hash", "rows", "stable", "text_hash")

    def __init__(
        self, fingerprint: Any, params_hash: int | None, orm: OrmContext | None, text_hash: int | None = None
    ) -> None:
        self.fingerprint = fingerprint
        self.params_hash = params_hash
        self.text_hash = text_hash  # the statement as sent: slices differ only in LIMIT/OFFSET text
        self.orm = orm
        self.rows = -1
        # (statement, parameters, cursor) until the span ends; never exported
        self.execution: tuple[Any, Any, Any] | None = None
        # the stable statement attributes (db_semconv), for the metric; None: old names only
        self.stable: dict[str, Any] | None = None


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
    attributes.update(code_attributes(orm.location))
    attributes.update(code_attributes(orm.origin, "hms.orm.origin."))
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


# --- the traced execution -------------------------------------------------------------------

_original_traced: tuple[Any, Any] | None = None
# CursorTracer class -> whether its statement and operation name are the stock ones for str
# statements (dbapi's and the psycopg / psycopg2 subclasses', which only add sql.Composable).
_stock_reading: dict[type, bool] = {}


def _reads_like_stock(tracer_class: type) -> bool:
    stock = _stock_reading.get(tracer_class)
    if stock is None:
        stock = all(
            getattr(tracer_class, name).__module__.startswith("opentelemetry.instrumentation.")
            for name in ("get_operation_name", "get_statement")
        )
        _stock_reading[tracer_class] = stock
    return stock


def _statement_and_name(tracer: Any, cursor: Any, args: tuple[Any, ...]) -> tuple[Any, str, str]:
    """The statement as ``tracer.get_statement`` returns it (without its method layers for the
    common case, a str statement), the span name and the operation. The name is built from the
    SQL lexer's tokens, never from raw text (the contrib's first word of ``SELECT'Zebediah'`` or
    ``SELECT$$Zebediah$$`` is a value): the summary (``SELECT hms_patient``) with the stable
    database conventions, the operation alone (``SELECT``) with the old ones."""
    statement = args[0] if args else ""
    if statement.__class__ is not str or not _reads_like_stock(tracer.__class__):
        statement = tracer.get_statement(cursor, args)
    name = _span_name(db_integration(tracer), statement)
    return statement, name, name.partition(" ")[0]


def _span_name(integration: Any, statement: Any) -> str:
    text = _text(statement)
    name = sql_summary(text[:MAX_SUMMARY_INPUT_CHARS]) if text else ""
    if db_semconv.mode_of(db_mode(integration)).stable:
        return name
    return name.partition(" ")[0]


def _text(statement: Any) -> str:
    if statement.__class__ is str:
        return statement
    if isinstance(statement, bytes):
        return statement.decode("utf-8", "replace")
    return str(statement)


def _peer_attributes(integration: Any, mode: Any) -> dict[str, Any]:
    """`db_semconv.peer_attributes` of the connection, once per connection (contrib fills its
    ``span_attributes`` when it connects; the copy is kept with the size it had)."""
    contrib = integration.span_attributes
    cached = getattr(integration, "_hms_peer", None)
    if cached is not None and cached[0] is contrib and cached[1] == len(contrib):
        return cached[2]
    peer = db_semconv.peer_attributes(contrib, mode)
    with contextlib.suppress(Exception):  # an integration without room for it: computed each time
        integration._hms_peer = (contrib, len(contrib), peer)
    return peer


def _contrib_attributes(integration: Any, statement: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The attributes the contrib's ``_populate_span`` sets, with `statement` as the statement;
    the peer and the parameters named as the database mode says (`db_semconv`)."""
    mode = db_mode(integration)
    ours = db_semconv.mode_of(mode)
    attributes: dict[str, Any] = {}
    set_db_system(attributes, integration.database_system, mode)
    set_db_name(attributes, integration.database, mode)
    set_db_statement(attributes, statement, mode)
    if ours.stable:
        attributes.update(_peer_attributes(integration, ours))
    else:
        attributes.update(integration.span_attributes)
    if integration.capture_parameters and len(args) > 1:
        if ours.old:
            attributes["db.statement.parameters"] = str(args[1])
        if ours.stable:
            attributes.update(db_semconv.parameter_attributes(args[1]))
    return attributes


def _orm_context() -> Any:
    """The ORM operation this statement runs under, else the code location of raw SQL."""
    pending = current_orm.get()
    orm = pending.resolve() if isinstance(pending, PendingOrm) else pending
    if orm is None:
        location = user_location()
        if location is not None:
            orm = _raw_context(location)
    return orm


def _record(statement: Any, args: tuple[Any, ...], cursor: Any) -> DbSpanRecord:
    """What the span processor reads of a statement: fingerprint, ORM context (or the code
    location of raw SQL), a hash of the parameters; the statement as sent until the span ends."""
    if isinstance(statement, bytes):
        statement = statement.decode("utf-8", "replace")
    long = len(statement) > MAX_EXPORTED_STATEMENT_CHARS
    fp = fingerprint_sql(statement[:MAX_FINGERPRINT_CHARS] if long else statement)
    params = args[1] if len(args) > 1 else None
    record = DbSpanRecord(fp, _params_hash(params), _orm_context(), hash(statement))
    record.execution = (statement, params, cursor)
    return record


def _metric_attributes(integration: Any, record: DbSpanRecord, method: str, args: tuple[Any, ...]) -> None:
    """`record.stable` of a statement that gets no attributes, when the contrib's duration metric
    is on (the metric is not sampled: its series must not depend on the span's sampling)."""
    if db_histograms(integration)[0] is not None and db_semconv.mode_of(db_mode(integration)).stable:
        fp = record.fingerprint
        size = db_semconv.batch_size(method, args)
        statement = record.execution[0] if record.execution else ""
        record.stable = db_semconv.statement_attributes(
            fp.operation, fp.table, size is not None, sql_summary(_text(statement)[:MAX_SUMMARY_INPUT_CHARS])
        )


def _populate(
    tracer: Any, span: Any, cursor: Any, args: tuple[Any, ...], statement: Any, mask: bool, method: str
) -> DbSpanRecord | None:
    """Every attribute of the DB span in one write: the contrib's, with the statement masked,
    and the agent's (fingerprint, ORM context); the record the span processor reads."""
    integration = db_integration(tracer)
    try:
        record = _record(statement, args, cursor)
        setattr(span, SPAN_RECORD, record)
        if not span_context(span).trace_flags.sampled:
            # Recorded for detection only, never exported (pipeline.DetectingSampler): no
            # attributes; the metric's (not sampled) as for any statement.
            _metric_attributes(integration, record, method, args)
            return record
        statement, fp = record.execution[0], record.fingerprint  # type: ignore[index]
        long = len(statement) > MAX_EXPORTED_STATEMENT_CHARS
        orm = record.orm
        shown = statement
        if statement and (mask or long):
            shown = statement[:MAX_EXPORTED_STATEMENT_CHARS] if long else statement
            if mask:  # a literal cut in two is masked whole: what follows an open quote is masked
                shown = mask_sql_literals(shown)
            if long:
                shown += TRUNCATED
        attributes = _contrib_attributes(integration, shown, args)
        if db_semconv.mode_of(db_mode(integration)).stable:
            size = db_semconv.batch_size(method, args)
            record.stable = db_semconv.statement_attributes(
                fp.operation, fp.table, size is not None, sql_summary(statement[:MAX_SUMMARY_INPUT_CHARS])
            )
            attributes.update(record.stable)
            if size is not None:
                attributes["db.operation.batch.size"] = size
            name = record.stable.get("db.query.summary")
            if name:
                span.update_name(name)
        attributes["hms.db.fingerprint"] = fp.digest
        if orm is not None:
            attributes.update(orm_attributes(orm))
        set_attributes(span, attributes)
        return record
    except Exception as exc:
        guard.report("SQL span hook", exc)
        try:  # never fall back to exporting the raw statement: it may hold literals
            span.set_attributes(_contrib_attributes(integration, "" if mask else str(statement), args))
        except Exception as exc2:
            guard.report("SQL span hook", exc2)
        return None


def _start(
    tracer: Any, cursor: Any, args: tuple[Any, ...], mask: bool, method: str = ""
) -> tuple[Any, Any, str, tuple[Any, ...], Any]:
    """Start the CLIENT span of one execute as the contrib's ``traced_execution`` does (same
    name, kind, attributes, current span, SQL commenter), with one attribute write."""
    integration = db_integration(tracer)
    statement, name, operation = _statement_and_name(tracer, cursor, args)
    span = implicit_units.start_client_span(
        db_tracer(integration), name or integration.database or integration.name
    )
    token = attach(set_span_in_context(span))
    record = None
    try:
        if span.is_recording():
            commenter, in_attribute = sql_commenter(tracer)
            if args and commenter:
                if in_attribute:  # the comment is exported with the statement
                    args = add_sql_comment(tracer, args, cursor)
                    statement = _statement_and_name(tracer, cursor, args)[0]
                    record = _populate(tracer, span, cursor, args, statement, mask, method)
                else:
                    record = _populate(tracer, span, cursor, args, statement, mask, method)
                    args = add_sql_comment(tracer, args, cursor)
            else:
                record = _populate(tracer, span, cursor, args, statement, mask, method)
    except Exception:
        detach(token)
        span.end()
        raise
    return span, token, operation, args, record


def _finish(
    tracer: Any,
    span: Any,
    token: Any,
    cursor: Any,
    operation: str,
    started: float,
    record: Any,
    error: Exception | None,
) -> None:
    try:
        if error is None and record is not None and record.fingerprint.operation == "SELECT":
            rows = cursor.rowcount
            if rows.__class__ is int and rows >= 0:  # -1: a server-side cursor, unknown
                record.rows = rows
                set_attributes(span, {"db.response.returned_rows": rows})
        if record is not None and record.stable is not None:
            _record_metrics(tracer, cursor, operation, started, error, record.stable)
        else:
            db_record_metrics(tracer, cursor, operation, started, error)  # the contrib's (opt-in)
        if error is not None and span.is_recording():
            if record is not None and record.stable is not None:
                set_attributes(span, db_semconv.error_attributes(error))
            # What the SDK's start_as_current_span does with an exception leaving the block.
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    except Exception as exc:  # an exception whose str() raises, for one
        guard.report("SQL span hook", exc)
    finally:
        # In the `finally` of the application's call: raising here would replace its result
        # or its exception.
        try:
            detach(token)
            span.end()
        except Exception as exc:
            guard.report("SQL span hook", exc)


# --- statements under a request recorded for detection only --------------------------------------


def _start_detached(
    tracer: Any, cursor: Any, args: tuple[Any, ...], method: str
) -> tuple[DbSpanRecord | None, str, tuple[Any, ...]]:
    """The record `_start` would put on the span, the operation name, the arguments to run
    (with the SQL comment when enabled). Never raises."""
    record = None
    operation = ""
    try:
        statement, _, operation = _statement_and_name(tracer, cursor, args)
        commenter, in_attribute = sql_commenter(tracer)
        if args and commenter:
            if in_attribute:
                args = add_sql_comment(tracer, args, cursor)
                record = _record(_statement_and_name(tracer, cursor, args)[0], args, cursor)
            else:
                record = _record(statement, args, cursor)
                args = add_sql_comment(tracer, args, cursor)
        else:
            record = _record(statement, args, cursor)
        _metric_attributes(db_integration(tracer), record, method, args)
    except Exception as exc:
        guard.report("SQL span hook", exc)
    return record, operation, args


def _finish_detached(
    tracer: Any,
    parent: Any,
    cursor: Any,
    operation: str,
    started: float,
    start_ns: int,
    record: DbSpanRecord | None,
    error: Exception | None,
) -> None:
    try:
        end_ns = time_ns()
        if record is not None:
            if error is None and record.fingerprint.operation == "SELECT":
                rows = cursor.rowcount
                if rows.__class__ is int and rows >= 0:
                    record.rows = rows
            add_detached(parent, record, start_ns, end_ns)
        if record is not None and record.stable is not None:
            _record_metrics(tracer, cursor, operation, started, error, record.stable)
        else:
            db_record_metrics(tracer, cursor, operation, started, error)  # the contrib's (opt-in)
    except Exception as exc:
        guard.report("SQL span hook", exc)


def _record_metrics(
    tracer: Any, cursor: Any, operation: str, started: float, error: Exception | None, stable: dict[str, Any]
) -> None:
    """The contrib's ``db.client.operation.duration`` and ``db.client.response.returned_rows``,
    with the statement's stable attributes (operation, collection, summary) and the error's."""
    duration, returned_rows = db_histograms(db_integration(tracer))
    if duration is None:
        return
    elapsed = perf_counter() - started
    attributes = db_metric_attributes(tracer, operation, error)
    attributes.update(stable)
    if error is not None:
        attributes.update(db_semconv.error_attributes(error))
    duration.record(elapsed, attributes=attributes)
    if error is None:
        rows = getattr(cursor, "rowcount", None)
        if isinstance(rows, int) and rows >= 0:
            returned_rows.record(rows, attributes=attributes)


def install(settings: Settings) -> None:
    """Replace the contrib's ``CursorTracer.traced_execution`` (and its async twin) with the
    same span built in one attribute write, without two generator context managers, plus the
    agent's attributes and record (a fast path: instrument/sdk_internals.py). With the fast paths
    off, the contrib's own traced execution runs and `_install_stock` adds the agent's part."""
    global _original_traced
    if _original_traced is not None or _original_stock:
        return
    mask = not settings.capture_sql_literals
    if not sdk_internals.fast_paths():
        _install_stock(mask)
        return

    def traced_execution(
        tracer: Any, cursor: Any, query_method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        if not is_instrumentation_enabled():
            return query_method(*args, **kwargs)
        parent = detection_only_parent()
        if parent is not None:
            record, operation, args = _start_detached(
                tracer, cursor, args, getattr(query_method, "__name__", "")
            )
            start_ns, started = time_ns(), perf_counter()
            error: Exception | None = None
            try:
                return query_method(*args, **kwargs)
            except Exception as exc:
                error = exc
                raise
            finally:
                _finish_detached(tracer, parent, cursor, operation, started, start_ns, record, error)
        try:
            span, token, operation, args, record = _start(
                tracer, cursor, args, mask, getattr(query_method, "__name__", "")
            )
        except Exception as exc:
            guard.report("SQL span", exc)
            return query_method(*args, **kwargs)
        started = perf_counter()
        error = None
        try:
            return query_method(*args, **kwargs)
        except Exception as exc:
            error = exc
            raise
        finally:
            _finish(tracer, span, token, cursor, operation, started, record, error)

    async def traced_execution_async(
        tracer: Any, cursor: Any, query_method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        if not is_instrumentation_enabled():
            return await query_method(*args, **kwargs)
        parent = detection_only_parent()
        if parent is not None:
            record, operation, args = _start_detached(
                tracer, cursor, args, getattr(query_method, "__name__", "")
            )
            start_ns, started = time_ns(), perf_counter()
            error: Exception | None = None
            try:
                return await query_method(*args, **kwargs)
            except Exception as exc:
                error = exc
                raise
            finally:
                _finish_detached(tracer, parent, cursor, operation, started, start_ns, record, error)
        try:
            span, token, operation, args, record = _start(
                tracer, cursor, args, mask, getattr(query_method, "__name__", "")
            )
        except Exception as exc:
            guard.report("SQL span", exc)
            return await query_method(*args, **kwargs)
        started = perf_counter()
        error = None
        try:
            return await query_method(*args, **kwargs)
        except Exception as exc:
            error = exc
            raise
        finally:
            _finish(tracer, span, token, cursor, operation, started, record, error)

    _original_traced = (dbapi.CursorTracer.traced_execution, dbapi.CursorTracer.traced_execution_async)
    dbapi.CursorTracer.traced_execution = traced_execution  # type: ignore[method-assign,assignment]
    dbapi.CursorTracer.traced_execution_async = traced_execution_async  # type: ignore[method-assign,assignment]


def uninstall() -> None:
    global _original_traced
    if _original_traced is not None:
        dbapi.CursorTracer.traced_execution, dbapi.CursorTracer.traced_execution_async = _original_traced  # type: ignore[method-assign]
        _original_traced = None
    if _original_stock:
        sdk_internals.set_cursor_tracer_hooks(_original_stock)
        _original_stock.clear()


# --- the stock path ---------------------------------------------------------------------------
# The contrib's traced_execution makes the span; the agent's part rides on the two methods it
# calls while the span is open (contrib 0.66b1: `_populate_span` with the statement before the
# query runs, `_record_metrics` in its `finally`). Both still private: the dbapi instrumentation
# has no request or response hook.

_original_stock: dict[str, Any] = {}


def _install_stock(mask: bool) -> None:
    stock = sdk_internals.cursor_tracer_hooks()
    original = stock["populate_span"]

    def _populate_span(self: Any, span: Any, cursor: Any, *args: Any) -> None:
        if not span.is_recording():
            return
        try:
            statement = self.get_statement(cursor, args)
            long = isinstance(statement, str) and len(statement) > MAX_EXPORTED_STATEMENT_CHARS
            fp = fingerprint_sql(statement[:MAX_FINGERPRINT_CHARS] if long else statement)
            params = args[1] if len(args) > 1 else None
            text_hash = hash(statement) if isinstance(statement, str) else None
            orm = _orm_context()
            record = DbSpanRecord(fp, _params_hash(params), orm, text_hash)
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
            # The contrib named the span after the raw text's first word (SELECT'x' is a value).
            integration = db_integration(self)
            span.update_name(_span_name(integration, statement) or integration.name)
            attributes = {"hms.db.fingerprint": fp.digest}
            if db_semconv.mode_of(db_mode(integration)).stable:
                # The statement's stable names (no batch: the stock path does not say which
                # method ran); the span is named after the summary, as on the fast path.
                record.stable = db_semconv.statement_attributes(
                    fp.operation, fp.table, False, sql_summary(_text(statement)[:MAX_SUMMARY_INPUT_CHARS])
                )
                attributes.update(record.stable)
                if record.stable.get("db.query.summary"):
                    span.update_name(record.stable["db.query.summary"])
            if orm is not None:
                attributes.update(orm_attributes(orm))
            span.set_attributes(attributes)
            setattr(span, SPAN_RECORD, record)
        except Exception as exc:
            guard.report("SQL span hook", exc)

    record_metrics = stock["record_metrics"]

    def _record_metrics(self: Any, cursor: Any, *args: Any) -> Any:
        if args:  # the operation: the contrib's is the raw text's first word
            args = (known_operation(args[0]), *args[1:])
        if args and isinstance(args[-1], Exception):
            try:
                span = get_current_span()
                record = getattr(span, SPAN_RECORD, None)
                if record is not None and record.stable is not None and span.is_recording():
                    span.set_attributes(db_semconv.error_attributes(args[-1]))
            except Exception as exc:
                guard.report("SQL span hook", exc)
        if args and args[-1] is None:  # no error
            try:
                span = get_current_span()
                record = getattr(span, SPAN_RECORD, None)
                if record is not None and record.fingerprint.operation == "SELECT":
                    rows = cursor.rowcount
                    if rows.__class__ is int and rows >= 0:  # -1: a server-side cursor, unknown
                        record.rows = rows
                        span.set_attribute("db.response.returned_rows", rows)
            except Exception as exc:
                guard.report("SQL span hook", exc)
        return record_metrics(self, cursor, *args)

    _original_stock.update(stock)
    sdk_internals.set_cursor_tracer_hooks(
        {"populate_span": _populate_span, "record_metrics": _record_metrics}
    )
