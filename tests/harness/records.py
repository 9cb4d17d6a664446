"""Builders of the plain records the detectors read (signals/records.py), shared by the
signals tests: a statement becomes a `DbCall` the way the SQL hook makes one (fingerprinted,
normalized, its table and filter columns), an owner an `OwnerActivity` with its calls."""

from __future__ import annotations

from collections.abc import Iterable

from hms_otel_agent.signals.fingerprint import fingerprint_sql
from hms_otel_agent.signals.records import CacheCall, ConnectCall, DbCall, OrmContext, OwnerActivity

MS = 1_000_000


def db_call(
    sql: str,
    ms: float = 1.0,
    start_ns: int = 0,
    orm: OrmContext | None = None,
    params_hash: int | None = None,
    rows: int = -1,
) -> DbCall:
    fp = fingerprint_sql(sql)
    return DbCall(
        fingerprint=fp.digest,
        statement=fp.normalized,
        start_ns=start_ns,
        duration_ns=int(ms * MS),
        table=fp.table,
        filter_columns=fp.filter_columns,
        params_hash=params_hash,
        orm=orm,
        rows=rows,
    )


def owner(
    route: str,
    db: Iterable[DbCall] = (),
    cache: Iterable[CacheCall] = (),
    connects: Iterable[ConnectCall] = (),
    db_count: bool = False,
) -> OwnerActivity:
    """The owner of a request to `route` (named ``GET <route>`` as the Django middleware names
    it). `db_count`: count its statements as the live processor does."""
    calls = list(db)
    return OwnerActivity(
        name=f"GET {route}",
        route=route,
        db_calls=calls,
        cache_calls=list(cache),
        connects=list(connects),
        db_count=len(calls) if db_count else 0,
    )
