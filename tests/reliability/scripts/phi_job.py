"""Run under hms-otel-run by test_phi.py: patient data written inline into SQL, statements that
fail with errors quoting it, and Redis and Django cache calls whose values (and with
PHI_KEYS=1, keys) are patient data. Prints what happened to each call as JSON.

The corpus comes from ``phi_corpus.py`` in $PHI_DIR, so no value appears in this file's source
(which tracebacks quote).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.environ["PHI_DIR"])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")

import django

django.setup()

import psycopg  # noqa: E402
import psycopg2  # noqa: E402
import redis  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402
from opentelemetry import trace  # noqa: E402
from phi_corpus import PATIENTS  # type: ignore[import-not-found]  # noqa: E402

URL = os.environ["DATABASE_URL"]
PHI_KEYS = os.environ.get("PHI_KEYS") == "1"
outcomes: list[tuple[str, str, str]] = []


def attempt(label: str, call: Callable[[], Any]) -> None:
    try:
        outcomes.append((label, "ok", repr(call())))
    except Exception as exc:
        outcomes.append((label, type(exc).__name__, ""))


def sql(p: dict[str, str]) -> None:
    select = (
        f"SELECT id FROM hms_patient WHERE mrn = '{p['mrn']}' AND family_name = '{p['family_name']}' "
        f"AND date_of_birth = DATE '{p['dob']}' AND email = '{p['email']}'"
    )
    by_ssn = f"SELECT count(*) FROM hms_patient WHERE national_id = '{p['ssn']}' OR phone = '{p['phone']}'"
    duplicate = (
        "INSERT INTO hms_patient (mrn, given_name, family_name, date_of_birth, email, phone, national_id, "
        f"created_at) VALUES ('{p['mrn']}', '{p['given_name']}', '{p['family_name']}', '{p['dob']}', "
        f"'{p['email']}', '{p['phone']}', '{p['ssn']}', now())"
    )
    with psycopg2.connect(URL) as conn, conn.cursor() as cur:
        attempt("pg2 select", lambda: (cur.execute(select), cur.fetchall())[1])
        attempt("pg2 bytes", lambda: (cur.execute(by_ssn.encode()), cur.fetchall())[1])
    with psycopg2.connect(URL) as conn, conn.cursor() as cur:
        attempt("pg2 bad cast", lambda: cur.execute(f"SELECT '{p['family_name']}'::int"))
    with psycopg2.connect(URL) as conn, conn.cursor() as cur:
        attempt("pg2 duplicate", lambda: cur.execute(duplicate))
    with psycopg.connect(URL, autocommit=True) as conn3:
        either = f"SELECT id FROM hms_patient WHERE given_name = '{p['given_name']}' OR mrn = '{p['mrn']}'"
        attempt("pg3 select", lambda: conn3.execute(either.encode()).fetchall())
        attempt(
            "pg3 bad date", lambda: conn3.execute(f"SELECT DATE '{p['contact_name']}'".encode()).fetchall()
        )
        attempt("pg3 params", lambda: conn3.execute("SELECT id FROM hms_patient WHERE mrn = %s", (p["mrn"],)))
    # Issue 13: text a regex scanner misreads but PostgreSQL does not (nested comments, a comment
    # ended by \r, quoted aliases, literals glued to keywords, SELECT$$..$$ is one identifier).
    with psycopg.connect(URL, autocommit=True) as conn3:
        lexical = [
            f"SELECT id /* note /* {p['family_name']} */ {p['given_name']} {p['mrn']} */ FROM hms_patient",
            f'SELECT id AS "{p["given_name"]} {p["family_name"]}", 1 AS "{p["mrn"]}" FROM hms_patient',
            f"SELECT'{p['mrn']}', $${p['email']}$$",
            f"VALUES('{p['ssn']}')",
            f"SELECT$${p['family_name']}$$",
            f"SELECT 1 --{p['given_name']}\r, '{p['dob']}'",
            f"SELECT E'{p['phone']}\\'' AS x, '{p['contact_name']}'",
        ]
        for i, statement in enumerate(lexical):
            attempt(
                f"pg3 lexical {i}", lambda statement=statement: conn3.execute(statement.encode()).fetchall()
            )
    with connection.cursor() as cur:
        like = (
            f"SELECT id FROM hms_patient WHERE family_name = '{p['family_name']}' AND mrn LIKE '{p['mrn']}'"
        )
        attempt("django", lambda: (cur.execute(like), cur.fetchall())[1])


def caches(i: int, p: dict[str, str]) -> None:
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    # PHI in cache values always; in cache keys only with PHI_KEYS=1 (see the xfail test).
    name_key = f"patient:{p['mrn']}:name" if PHI_KEYS else f"patient:{i}:name"
    email_key = f"patient:{p['email']}:dob" if PHI_KEYS else f"patient:{i}:dob"
    ssn_key = f"ssn:{p['ssn']}" if PHI_KEYS else f"record:{i}"
    dob_key = f"dob:{p['dob']}" if PHI_KEYS else f"visit:{i}"
    summary_key = f"patient:{p['family_name']}:summary" if PHI_KEYS else f"patient:{i}:summary"
    many = [f"mrn:{p['mrn']}", f"email:{p['email']}"] if PHI_KEYS else [f"mrn:{i}", f"email:{i}"]
    loop_key = f"patient:{p['mrn']}:allergy:{p['allergy']}" if PHI_KEYS else f"patient:{i}:allergy"
    attempt("redis set", lambda: r.set(name_key, p["family_name"], ex=60))
    attempt("redis get", lambda: r.get(name_key))
    attempt("redis miss", lambda: r.get(email_key))
    attempt("redis hset", lambda: r.hset(ssn_key, "note", p["note"]))
    attempt("redis wrongtype", lambda: r.lpush(ssn_key, p["phone"]))
    pipeline = r.pipeline().set(dob_key, p["contact_phone"]).get(dob_key).delete(dob_key, ssn_key, name_key)
    attempt("redis pipeline", pipeline.execute)
    attempt("cache set", lambda: cache.set(summary_key, p, 60))
    attempt("cache get", lambda: cache.get(summary_key))
    attempt("cache get_many", lambda: cache.get_many(many))
    attempt("cache delete", lambda: cache.delete(summary_key))
    for _ in range(6):  # a cache N+1: a finding with a key pattern
        cache.get(loop_key)
    r.close()


def main() -> None:
    tracer = trace.get_tracer("phi-script")
    for i, p in enumerate(PATIENTS):
        with tracer.start_as_current_span("nightly-phi-job"):
            sql(p)
            caches(i, p)
    connection.close()
    print(json.dumps(outcomes))


main()
