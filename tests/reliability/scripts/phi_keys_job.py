"""Run under hms-otel-run by test_phi_keys.py: cache keys built from patient data in every shape
a hospital app writes them (names in any case, joined by any separator, in any segment; MRNs,
e-mails, dates, SSNs, phone numbers, free text; control characters), through redis-py and
Django's cache, in loops that make findings; exceptions whose messages quote tracebacks with
patient data; RediSearch when $REDISEARCH_URL names a server. Prints what ran as JSON.

The corpus comes from ``phi_corpus.py`` in $PHI_DIR, so no value appears in this file's source
(which tracebacks quote).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.environ["PHI_DIR"])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")

import django

django.setup()

import warnings  # noqa: E402

import redis  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.cache.backends.base import CacheKeyWarning  # noqa: E402

# Django's own warning about keys with spaces quotes the key: the application's output, not the
# agent's (the test reads this process's stderr for what the agent prints).
warnings.simplefilter("ignore", CacheKeyWarning)
from opentelemetry import trace  # noqa: E402
from phi_corpus import PATIENTS  # type: ignore[import-not-found]  # noqa: E402

tracer = trace.get_tracer("phi-keys-script")
ran: dict[str, int] = {}


def count(label: str) -> None:
    ran[label] = ran.get(label, 0) + 1


def names(p: dict[str, str]) -> list[str]:
    """The patient's name as keys hold it: every case, every joiner."""
    first, last = p["given_name"], p["family_name"]
    forms = []
    for case in (str.lower, str.upper, str.title, lambda s: s):
        for joiner in ("_", "-", "/", " ", ".", "|", "#", "=", ":"):
            forms.append(case(first) + joiner + case(last))
    return forms


def keys_of(p: dict[str, str], index: int) -> list[str]:
    first, last = p["given_name"], p["family_name"]
    keys = []
    for name in names(p):
        keys += [
            f"patient:{name}:summary",  # the name in the second segment
            f"search:{index}:{name}:page",  # the third segment
            f"search:{{value}}:{name}:page",  # the shape
            f"ward:7:{name}",  # the last segment
            f"{name}:profile",  # the first segment
        ]
    keys += [
        f"mrn:{p['mrn']}",
        f"patient:{p['mrn'].lower()}:chart",
        f"email:{p['email']}:dob:{p['dob']}",
        f"ssn/{p['ssn']}/phone/{p['phone']}",
        f"contact:{p['contact_name']}:{p['contact_phone']}",
        f"note:{p['note']}",
        f"allergy:{p['allergy']}",
        f"reason:{p['reason'].upper()}",
        f"by_name:{last.lower()}_{first.lower()}:v2",
        f"{first.upper()}{last.upper()}",
        f"patient:{first}\n{last}:summary",
        f"patient:\x1b[31m{last}\x1b[0m:summary",
        f"patient:\u202e{last}:summary",
        f":1:patient:{last.lower()}",
    ]
    return keys


def attempt(label: str, call: Callable[[], Any]) -> None:
    try:
        call()
        count(label)
    except Exception as exc:
        count(f"{label} {type(exc).__name__}")


def caches(r: Any, p: dict[str, str], index: int) -> None:
    keys = keys_of(p, index)
    for key in keys:
        attempt("redis set", lambda key=key: r.set(key, "x", ex=60))
        attempt("redis get", lambda key=key: r.get(key))
        attempt("cache set", lambda key=key: cache.set(key, {"v": 1}))
        attempt("cache get", lambda key=key: cache.get(key))
    attempt("redis mget", lambda: r.mget(keys[:20]))
    attempt("cache get_many", lambda: cache.get_many(keys[:20]))
    pipe = r.pipeline()
    for key in keys[:30]:
        pipe.get(key)
    attempt("redis pipeline", pipe.execute)
    spaced = [k for k in keys if " " not in k][:5]
    for key in spaced:
        attempt("redis one-string command", lambda key=key: r.execute_command(f"GET {key}"))
    attempt("cache delete_many", lambda: cache.delete_many(keys[:12]))
    for key in keys[:12]:
        attempt("cache delete", lambda key=key: cache.delete(key))


def exceptions(p: dict[str, str]) -> None:
    quoted = (
        "Traceback (most recent call last):\n"
        '  File "/srv/jobs/admissions.py", line 12, in run\n'
        f"    admit(name='{p['given_name']} {p['family_name']}', mrn='{p['mrn']}', dob='{p['dob']}')\n"
        f"ValueError: duplicate {p['mrn']} {p['email']}\n"
    )
    try:
        with tracer.start_as_current_span("nightly-import"):
            try:
                raise ValueError(f"{p['family_name']} {p['ssn']}")
            except ValueError:
                raise RuntimeError("import failed:\n" + traceback.format_exc() + quoted)  # noqa: B904
    except RuntimeError:
        count("exception")


def search(p: dict[str, str], index: int) -> None:
    url = os.environ.get("REDISEARCH_URL")
    if not url:
        return
    from redis.commands.search.field import TextField
    from redis.commands.search.index_definition import IndexDefinition
    from redis.commands.search.query import Query

    client = redis.Redis.from_url(url)  # redis-py 8's default protocol
    if index == 0:
        attempt(
            "ft.create",
            lambda: client.ft("idx:patients").create_index(
                [TextField("name"), TextField("mrn")], definition=IndexDefinition(prefix=["doc:"])
            ),
        )
    client.hset(f"doc:{index}", mapping={"name": f"{p['given_name']} {p['family_name']}", "mrn": p["mrn"]})
    attempt("ft.search", lambda: client.ft("idx:patients").search(Query(p["family_name"])))
    attempt("ft.search raw", lambda: client.execute_command("FT.SEARCH", "idx:patients", p["given_name"]))
    client.close()


NATO = "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec romeo sierra tango".split()  # noqa: E501, SIM905


def learned_family(r: Any) -> None:
    """A family whose prefix is learned while the word after it varies: the positive control
    that learning runs in this process."""
    with tracer.start_as_current_span("learning"):
        for word in NATO:
            attempt("learning get", lambda word=word: r.get(f"hmsjob:{word}:state"))


def main() -> None:
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    learned_family(r)
    for round_ in range(2):
        for index, p in enumerate(PATIENTS):
            with tracer.start_as_current_span("nightly-phi-keys-job"):
                caches(r, p, index)
                if round_ == 0:
                    search(p, index)
            exceptions(p)
    r.close()
    print(json.dumps(ran, sort_keys=True))


main()
