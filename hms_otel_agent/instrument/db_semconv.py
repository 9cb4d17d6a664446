"""The stable database names contrib 0.66 leaves out of a SQL span, for `instrument/db.py`.

With ``database`` or ``database/dup`` in OTEL_SEMCONV_STABILITY_OPT_IN, contrib's dbapi span has
``db.system.name``, ``db.namespace`` and ``db.query.text`` and is named after the statement's
first keyword (``SELECT``). The agent adds, from its own parse of the statement (the ORM's SQL
or raw SQL alike):

* ``db.operation.name`` (``SELECT``; ``BATCH INSERT`` for an ``executemany`` of two or more
  parameter sets, with ``db.operation.batch.size``), ``db.collection.name`` (the statement's
  table) and ``db.query.summary`` (``SELECT hms_patient``), which also names the span;
* ``server.address`` / ``server.port``, which contrib sets from the *HTTP* mode (``net.peer.*``
  under ``database`` alone);
* on failure, ``db.response.status_code`` (the SQLSTATE) and ``error.type`` (the SQLSTATE, else
  the exception's qualified class name);
* with HMS_OTEL_CAPTURE_SQL_PARAMETERS, ``db.query.parameter.<key>`` in place of the old
  ``db.statement.parameters``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from hms_otel_agent.signals.semconv import Mode

_OLD_PEER: Final = {"net.peer.name": "server.address", "net.peer.port": "server.port"}
_MAX_PARAMETERS: Final = 64  # one attribute per parameter: an IN list of 10 000 ids is not 10 000
_MAX_CACHED: Final = 20_000

# (operation, table, batch, summary) -> the attributes; bounded by the application's statements.
_by_statement: dict[tuple[str, str, bool, str], dict[str, Any]] = {}


def statement_attributes(operation: str, table: str, batch: bool, summary: str) -> dict[str, Any]:
    """``db.operation.name``, ``db.collection.name`` and ``db.query.summary`` of a statement
    (shared: callers must not change the dict); `summary` is `signals.sql_summary.summary`'s
    (``SELECT hms_visit hms_patient``: the operation and every table, sub-queries included)."""
    key = (operation, table, batch, summary)
    attributes = _by_statement.get(key)
    if attributes is None:
        attributes = {}
        prefix = "BATCH " if batch else ""
        if operation:
            attributes["db.operation.name"] = prefix + operation
        if table:
            attributes["db.collection.name"] = table
        shown = summary or operation
        if shown:
            attributes["db.query.summary"] = prefix + shown
        if len(_by_statement) < _MAX_CACHED:
            _by_statement[key] = attributes
    return attributes


def batch_size(method_name: str, args: Sequence[Any]) -> int | None:
    """The number of parameter sets of an ``executemany`` when it is a batch (0, or two or
    more); None otherwise. A parameter iterator is never consumed: its size is unknown."""
    if method_name != "executemany" or len(args) < 2:
        return None
    sets = args[1]
    if not hasattr(sets, "__len__"):
        return None
    try:
        size = len(sets)
    except Exception:
        return None
    return None if size == 1 else size


def peer_attributes(contrib: Mapping[str, Any], db_mode: Mode) -> dict[str, Any]:
    """The connection attributes contrib collected, with the peer named as the *database* mode
    says (contrib names it after the HTTP mode)."""
    peer = dict(contrib)
    for old, stable in _OLD_PEER.items():
        value = peer.get(old, peer.get(stable))
        if value is None:
            continue
        peer.pop(old, None)
        peer.pop(stable, None)
        if db_mode.old:
            peer[old] = value
        if db_mode.stable:
            peer[stable] = value
    return peer


def error_attributes(error: BaseException) -> dict[str, Any]:
    """``db.response.status_code`` (psycopg 3 ``sqlstate``, psycopg2 ``pgcode``) and ``error.type``."""
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(code, str) and code:
        return {"db.response.status_code": code, "error.type": code}
    cls = type(error)
    module = cls.__module__
    return {"error.type": cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"}


def parameter_attributes(params: Any) -> dict[str, Any]:
    """``db.query.parameter.<key>``: by position (``0``, ``1``) or by name, at most 64."""
    if isinstance(params, Mapping):
        items = list(params.items())[:_MAX_PARAMETERS]
    elif isinstance(params, (list, tuple)):
        items = list(enumerate(params[:_MAX_PARAMETERS]))
    else:
        return {}
    return {f"db.query.parameter.{key}": str(value) for key, value in items}


def mode_of(contrib_mode: Any) -> Mode:
    """The agent's reading of contrib's database `_StabilityMode` (``default``, ``database``,
    ``database/dup``)."""
    value = getattr(contrib_mode, "value", "default")
    return Mode.DUP if value == "database/dup" else Mode.STABLE if value == "database" else Mode.OLD


def database_mode() -> Mode:
    """The database mode contrib's instrumentations read from OTEL_SEMCONV_STABILITY_OPT_IN
    (once per process: what the agent's own names follow too)."""
    from hms_otel_agent.instrument.sdk_internals import semconv_modes

    return mode_of(semconv_modes()[0])
