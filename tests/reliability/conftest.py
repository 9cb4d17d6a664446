"""Helpers shared by the reliability tests (see docs/reliability.md for what they prove).

phi_app_db      sample_app_db plus patients, contacts, notes and cache entries holding a corpus
                of distinctive fake PHI (removed again at the end of the module)
baseline        responses of the sample app *without* the agent to a fixed request list, to
                compare instrumented runs with
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from e2e.conftest import MANAGE, gunicorn, runserver, uvicorn
from harness.processes import AppProcess, venv_executable
from harness.services import free_port

__all__ = ["MANAGE", "gunicorn", "runserver", "uvicorn"]

# Fast export in every test process: small delays, short timeouts.
FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "50",
    "OTEL_METRIC_EXPORT_INTERVAL": "300",
    "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": "3000",
}


# --- running the sample app -----------------------------------------------------------------


@dataclass
class Started:
    app: AppProcess
    agent: bool


def start_sample(
    app_process: Callable[..., AppProcess],
    build: Callable[..., list[str]],
    env: dict[str, str],
    *,
    agent: bool = True,
    extra: Sequence[str] = (),
    wait: bool = True,
    **kwargs: Any,
) -> AppProcess:
    """The sample app on a free port, under hms-otel-run unless ``agent=False``."""
    port = free_port()
    cmd = build(port, *extra)
    if agent:
        cmd = [venv_executable("hms-otel-run"), "--", *cmd]
    if build is runserver:
        kwargs.setdefault("stop_signal", signal.SIGINT)
    app = app_process(cmd, env=env, base_url=f"http://127.0.0.1:{port}", **kwargs)
    if wait:
        app.wait_http("/health/", timeout=60)
    return app


def start_many(app_process: Callable[..., AppProcess], specs: Sequence[dict[str, Any]]) -> list[AppProcess]:
    """Start several apps at once (start-up dominates these tests); wait for all of them."""
    apps = [start_sample(app_process, wait=False, **spec) for spec in specs]
    with ThreadPoolExecutor(len(apps)) as pool:
        list(pool.map(lambda app: app.wait_http("/health/", timeout=60), apps))
    return apps


# --- requests and their answers ---------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int
    body: bytes
    seconds: float = field(compare=False, default=0.0)


def normalized_body(path: str, body: bytes) -> bytes:
    """Bodies that legitimately differ between two runs: /stats/ counts visits."""
    if path.startswith("/stats/"):
        try:
            data = json.loads(body)
        except ValueError:
            return body
        data.pop("hits", None)
        return json.dumps(data, sort_keys=True).encode()
    return body


def send(app: AppProcess, req: Req, timeout: float = 30) -> Answer:
    headers = dict(req.headers)
    if req.body is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    started = time.monotonic()
    response = app.request(req.method, req.path, body=req.body, headers=headers, timeout=timeout)
    took = time.monotonic() - started
    return Answer(req.method, req.path, response.status, normalized_body(req.path, response.body), took)


def flush_redis(url: str | None) -> None:
    """Empty the app's Redis database: the tests of a worker share one, and an entry cached by
    an app on another database (``patient:3:summary``) would change the answers."""
    if not url:
        return
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def drive(app: AppProcess, requests: Sequence[Req]) -> list[Answer]:
    """Send `requests` in order, from an empty cache (so two runs see the same cache states)."""
    flush_redis(app.env.get("REDIS_URL"))
    return [send(app, req) for req in requests]


# Deterministic requests over every endpoint kind (bodies do not depend on earlier requests).
COMPARABLE_REQUESTS: tuple[Req, ...] = (
    Req("GET", "/health/"),
    Req("GET", "/"),
    Req("GET", "/stats/"),
    Req("GET", "/patients/?limit=20"),
    Req("GET", "/patients/optimized/?limit=20"),
    Req("GET", "/encounters/?limit=15"),
    Req("GET", "/encounters/optimized/?limit=15"),
    Req("GET", "/appointments/schedule/?limit=5"),
    Req("GET", "/patients/records/?limit=10"),
    Req("GET", "/notes/?limit=10"),
    Req("GET", "/patients/birthdays/?limit=10"),
    Req("GET", "/patients/lookup/?ids=1,2,3,999999"),
    Req("GET", "/facilities/"),
    Req("GET", "/facilities/optimized/"),
    Req("GET", "/reports/raw-encounters/?limit=8"),
    Req("GET", "/patients/3/summary/"),
    Req("GET", "/patients/cached/?limit=8"),
    Req("GET", "/patients/cached/optimized/?limit=8"),
    Req("GET", "/encounters/recent/?limit=5"),
    Req("GET", "/patients/4/flaky-summary/"),
    Req("POST", "/patients/5/touch/"),
    Req("POST", "/patients/5/touch/optimized/"),
    Req("POST", "/patients/duplicate/?pk=2"),
    Req("GET", "/boom/?mrn=MRN-000002"),
    Req("GET", "/patients/search/?q=Okafor&mrn=MRN-00000"),
    Req("GET", "/patients/999999/summary/"),
    Req("GET", "/patients/?limit=abc"),
    Req("GET", "/no/such/page/"),
)


def assert_same_answers(got: Sequence[Answer], expected: Sequence[Answer]) -> None:
    """Status and body of every request identical to the uninstrumented run."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.method, a.path) == (b.method, b.path)
        assert (a.status, a.body) == (b.status, b.body), f"{a.method} {a.path}: {a.status} vs {b.status}"


# --- telemetry text -------------------------------------------------------------------------------


def local_files(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def metric_values(receiver: Any, name: str, key: str) -> dict[str, float]:
    """{attribute value: latest cumulative value} summed over processes for a counter."""
    latest: dict[tuple[str, str], tuple[int, float]] = {}
    for point in receiver.metrics(name):
        instance = str(point.resource.get("service.instance.id"))
        attr = str(point.attributes.get(key))
        seen = latest.get((instance, attr))
        if seen is None or point.time_unix_nano >= seen[0]:
            latest[(instance, attr)] = (point.time_unix_nano, float(point.value or 0))
    totals: dict[str, float] = {}
    for (_, attr), (_, value) in latest.items():
        totals[attr] = totals.get(attr, 0.0) + value
    return totals


# --- the PHI corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakePatient:
    mrn: str
    given_name: str
    family_name: str
    dob: str
    email: str
    phone: str
    ssn: str
    contact_name: str
    contact_phone: str
    note: str
    allergy: str
    reason: str


# Distinctive values that occur nowhere else (not in the seed data, code or telemetry).
FAKE_PATIENTS = (
    FakePatient(
        mrn="MRN-QZ7731X",
        given_name="Zebediah",
        family_name="Quillfeather",
        dob="1931-07-17",
        email="zeb.quillfeather@phi-corpus.test",
        phone="+1-555-0142-871",
        ssn="731-86-2409",
        contact_name="Philomena Quillfeather",
        contact_phone="555-0177-303",
        note="Quillfeather reports tremor since 2019",
        allergy="sulfaquillamide",
        reason="Quillfeather fall at home",
    ),
    FakePatient(
        mrn="MRN-XV4408K",
        given_name="Xanthippe",
        family_name="Vörösmarty",
        dob="1948-11-23",
        email="xvorosmarty@phi-corpus.test",
        phone="(555) 014-9932",
        ssn="648-22-9175",
        contact_name="Ödön Vörösmarty",
        contact_phone="555-0199-468",
        note="Vörösmarty declined transfusion",
        allergy="glimmerazole",
        reason="Vörösmarty chest pain",
    ),
    FakePatient(
        mrn="MRN-JB9052W",
        given_name="Jehoshaphat",
        family_name="Brindlewick",
        dob="2003-02-28",
        email="j.brindlewick+ward7@phi-corpus.test",
        phone="555.014.7720",
        ssn="509-73-1186",
        contact_name="Marigold Brindlewick",
        contact_phone="555-0163-219",
        note="Brindlewick HIV status discussed",
        allergy="quorvastatin",
        reason="Brindlewick overdose follow-up",
    ),
)
REDIS_NOTE = "on-call: call Zebediah Quillfeather re MRN-QZ7731X"
# A credential and a device named after its owner, sent in headers (Authorization, User-Agent, Cookie).
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.UXVpbGxmZWF0aGVyX3Rva2Vu.c2lnbmF0dXJlX3F1aWxs"
DEVICE = "Zebediah-Quillfeathers-iPad"


def corpus_values() -> list[str]:
    values: list[str] = [REDIS_NOTE, BEARER_TOKEN, DEVICE]
    for p in FAKE_PATIENTS:
        values += [
            p.mrn,
            p.given_name,
            p.family_name,
            p.dob,
            p.email,
            p.phone,
            p.ssn,
            p.contact_name,
            p.contact_phone,
            p.note,
            p.allergy,
            p.reason,
        ]
    return values


def encodings(value: str) -> set[bytes]:
    """The forms a value can take in exported bytes: UTF-8 (protobuf strings, our JSON lines),
    URL-encoded (URLs), JSON \\u escapes, Python repr escapes."""
    forms = {value, quote(value, safe=""), quote_plus(value, safe=""), quote(value)}
    forms.add(json.dumps(value)[1:-1])  # \\u00f6 for non-ASCII
    forms.add(repr(value)[1:-1])
    forms.add(value.encode("unicode_escape").decode("ascii"))
    return {form.encode("utf-8") for form in forms if len(form) >= 4}


def find_leaks(sources: dict[str, bytes], values: Sequence[str]) -> list[str]:
    """'source: value' for every corpus value found in any source, in any of its encodings."""
    leaks = []
    for name, data in sources.items():
        for value in values:
            for form in encodings(value):
                if form in data:
                    at = data.index(form)
                    context = data[max(0, at - 80) : at + len(form) + 80].decode("utf-8", "replace")
                    leaks.append(f"{name}: {value!r} as {form!r} in ...{context}...")
                    break
    return leaks


@dataclass
class PhiDb:
    env: dict[str, str]
    patient_ids: list[int]
    profile_keys: list[str]  # Django cache keys (as stored in Redis) that hold PHI values

    def seed_cache(self) -> list[str]:
        """(Re)write the PHI cache entries; return their keys."""
        import redis

        client = redis.Redis.from_url(self.env["REDIS_URL"])
        keys = []
        try:
            for pk, p in list(zip(self.patient_ids, FAKE_PATIENTS, strict=True))[-1:]:
                key = f":1:patient:{pk}:profile"
                profile = {
                    "id": pk,
                    "mrn": p.mrn,
                    "name": f"{p.given_name} {p.family_name}",
                    "date_of_birth": p.dob,
                }
                client.set(key, pickle.dumps(profile, pickle.HIGHEST_PROTOCOL))
                keys.append(key)
            client.set("hms:stats:last", REDIS_NOTE)
        finally:
            client.close()
        return keys


def _insert_fake_patients(database_url: str) -> list[int]:
    """Insert FAKE_PATIENTS and their related rows; return their ids.

    The first two get negative ids (and so do their related rows): every list endpoint, which
    orders by id, shows them first even with a small ``?limit=``. The last one gets an ordinary
    id, for the endpoints that take a primary key in the path."""
    import psycopg

    ids: list[int] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        (content_type,) = conn.execute(
            "SELECT id FROM django_content_type WHERE app_label = 'hms' AND model = 'patient'"
        ).fetchone()  # type: ignore[misc]
        (facility, practitioner, insurance) = conn.execute(
            "SELECT (SELECT min(id) FROM hms_facility), (SELECT min(id) FROM hms_practitioner), "
            "(SELECT min(id) FROM hms_insurance)"
        ).fetchone()  # type: ignore[misc]
        for index, p in enumerate(FAKE_PATIENTS):
            negative = index < len(FAKE_PATIENTS) - 1
            row_id = -(index + 1) if negative else None

            def insert(
                table: str, columns: str, values: str, params: tuple[Any, ...], row_id: int | None = row_id
            ) -> int:
                if row_id is not None:
                    columns, values, params = "id, " + columns, "%s, " + values, (row_id, *params)
                query = f"INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING id"
                (pk,) = conn.execute(query.encode(), params).fetchone()  # type: ignore[misc]
                return int(pk)

            pk = insert(
                "hms_patient",
                "mrn, given_name, family_name, date_of_birth, email, phone, national_id, insurance_id, "
                "created_at",
                "%s, %s, %s, %s, %s, %s, %s, %s, now()",
                (p.mrn, p.given_name, p.family_name, p.dob, p.email, p.phone, p.ssn, insurance),
            )
            ids.append(pk)
            insert(
                "hms_emergencycontact",
                "patient_id, name, phone, relationship",
                "%s, %s, %s, 'sibling'",
                (pk, p.contact_name, p.contact_phone),
            )
            insert("hms_medicalrecord", "patient_id, blood_type, allergies", "%s, 'AB-', %s", (pk, p.allergy))
            insert(
                "hms_encounter",
                "patient_id, facility_id, practitioner_id, started_at, reason, status",
                "%s, %s, %s, '2099-01-01', %s, 'finished'",
                (pk, facility, practitioner, p.reason),
            )
            insert(
                "hms_appointment",
                "patient_id, practitioner_id, scheduled_for, status, duration_minutes",
                "%s, %s, now() + interval '2 days', 'booked', 30",
                (pk, practitioner),
            )
        # Notes point at a patient through a positive object_id: all at the last fake patient.
        for index, p in enumerate(FAKE_PATIENTS):
            note_id = -(index + 1) if index < len(FAKE_PATIENTS) - 1 else None
            columns, values = "content_type_id, object_id, text, created_at", "%s, %s, %s, now()"
            params: tuple[Any, ...] = (content_type, ids[-1], p.note)
            if note_id is not None:
                columns, values, params = "id, " + columns, "%s, " + values, (note_id, *params)
            conn.execute(f"INSERT INTO hms_note ({columns}) VALUES ({values})".encode(), params)
    return ids


def _delete_fake_patients(database_url: str, ids: list[int]) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in ("hms_emergencycontact", "hms_medicalrecord", "hms_encounter", "hms_appointment"):
            conn.execute(f"DELETE FROM {table} WHERE patient_id = ANY(%s)".encode(), (ids,))
        conn.execute(
            "DELETE FROM hms_note WHERE id < 0 OR (object_id = ANY(%s) AND content_type_id = "
            "(SELECT id FROM django_content_type WHERE app_label = 'hms' AND model = 'patient'))",
            (ids,),
        )
        conn.execute("DELETE FROM hms_patient WHERE id = ANY(%s)", (ids,))


@pytest.fixture(scope="module")
def phi_app_db(sample_app_db: dict[str, str]) -> Iterator[PhiDb]:
    """The sample app's database and Redis holding the PHI corpus: three extra patients (with
    contacts, records, notes, encounters, appointments; see `_insert_fake_patients`), a cached
    profile for the one with a positive id in the app's key scheme (``:1:patient:<pk>:profile``,
    a pickled dict as Django's Redis cache writes it) and the operator note ``hms:stats:last``
    that /stats/ returns."""
    import redis

    ids = _insert_fake_patients(sample_app_db["DATABASE_URL"])
    phi = PhiDb(sample_app_db, ids, [])
    phi.profile_keys = keys = phi.seed_cache()
    client = redis.Redis.from_url(sample_app_db["REDIS_URL"])
    try:
        yield phi
    finally:
        client.delete(*keys, "hms:stats:last")
        for pk in ids:
            client.delete(*(f":1:patient:{pk}:{part}" for part in ("summary", "profile")))
        client.close()
        _delete_fake_patients(sample_app_db["DATABASE_URL"], ids)


# --- the uninstrumented run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(sample_app_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[Answer]:
    """COMPARABLE_REQUESTS answered by the sample app under gunicorn without the agent."""
    port = free_port()
    log_dir = tmp_path_factory.mktemp("baseline")
    with AppProcess(
        gunicorn(port), env=sample_app_db, base_url=f"http://127.0.0.1:{port}", log_dir=log_dir
    ) as app:
        app.wait_http("/health/", timeout=60)
        answers = drive(app, COMPARABLE_REQUESTS)
    statuses = {a.path: a.status for a in answers}
    # The request list covers success, client errors and server errors.
    assert statuses["/boom/?mrn=MRN-000002"] == 500 and statuses["/patients/duplicate/?pk=2"] == 500
    assert statuses["/patients/999999/summary/"] == 404 and statuses["/patients/?limit=abc"] == 400
    return answers


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def all_descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def env_without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def is_linux() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/status")
