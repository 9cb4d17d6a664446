"""Run by test_faults.py with and without the agent: statements that stress the SQL span hook
(fingerprinting, literal masking). Prints, as JSON, what the driver answered to each."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg2
from opentelemetry import trace

URL = os.environ["DATABASE_URL"]
MEGABYTE = "x" * (1 << 20)

STATEMENTS: list[tuple[str, Any, Any]] = [
    ("1 MB literal", f"SELECT length('{MEGABYTE}')", None),
    ("1 MB of IN list", "SELECT 1 WHERE 1 IN (" + ",".join(str(i) for i in range(150_000)) + ")", None),
    ("1 MB comment", f"SELECT 1 /* {MEGABYTE} */", None),
    ("bytes", b"SELECT 'bytes statement', 42", None),
    ("invalid UTF-8 bytes", b"SELECT '\xff\xfe\xc3('", None),
    ("latin-1 bytes", "SELECT 'Vörösmarty'".encode("latin-1"), None),
    ("NUL", "SELECT 'a\x00b'", None),
    ("deep nesting", "SELECT " + "(" * 5000 + "1" + ")" * 5000, None),
    ("unterminated quote", "SELECT 'never closed", None),
    ("unterminated comment", "SELECT 1 /* never closed", None),
    ("dollar quotes", "SELECT $tag$ it's $$ odd $tag$", None),
    ("empty", "", None),
    ("only a comment", "-- nothing", None),
    ("50 000 parameters", "SELECT " + ",".join(["%s"] * 50_000), list(range(50_000))),
    ("surrogates", "SELECT '\udcff'", None),
    ("many statements", "SELECT 1; SELECT 2; " * 2000, None),
]


def outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        result = call()
    except Exception as exc:
        return type(exc).__name__, ""
    return "ok", repr(result)[:200]


def psycopg2_run(statement: Any, params: Any) -> Any:
    with psycopg2.connect(URL) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else cur.rowcount


def psycopg3_run(statement: Any, params: Any) -> Any:
    with psycopg.connect(URL, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else cur.rowcount


def main() -> None:
    tracer = trace.get_tracer("pathological")
    results = []
    with tracer.start_as_current_span("pathological"):
        for label, statement, params in STATEMENTS:
            for driver, run in (("psycopg2", psycopg2_run), ("psycopg", psycopg3_run)):
                kind, shown = outcome(
                    lambda run=run, statement=statement, params=params: run(statement, params)
                )
                results.append([f"{driver}: {label}", kind, shown])
    print(json.dumps(results))


main()
