"""The sample project as a whole: settings, seed data, manage.py / ``-m``, runserver, admin, ASGI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hms_otel_agent.sample import settings as sample_settings

SAMPLE_DIR = Path(sample_settings.__file__).resolve().parent


# -- settings -------------------------------------------------------------------------------------


def test_database_from_url() -> None:
    db = sample_settings.database_from_url("postgresql://hms%40ops:p%2Fw@db.example:6543/hms_prod", 5)
    assert db == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "hms_prod",
        "USER": "hms@ops",
        "PASSWORD": "p/w",
        "HOST": "db.example",
        "PORT": "6543",
        "CONN_MAX_AGE": 5,
        "OPTIONS": {"options": "-c timezone=UTC"},
    }
    default = sample_settings.database_from_url(sample_settings.DEFAULT_DATABASE_URL)
    assert (default["USER"], default["HOST"], default["PORT"], default["NAME"]) == (
        "postgres",
        "127.0.0.1",
        "5432",
        "test",
    )
    with pytest.raises(ValueError, match="postgresql://"):
        sample_settings.database_from_url("mysql://root@localhost/hms")


def test_cache_from_env() -> None:
    redis = sample_settings.cache_from_env("redis", "redis://cache:6380/2")
    assert redis == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://cache:6380/2",
        "KEY_PREFIX": "",
        "VERSION": 1,
    }
    assert sample_settings.cache_from_env("locmem", "")["BACKEND"].endswith("LocMemCache")
    with pytest.raises(ValueError, match="locmem"):
        sample_settings.cache_from_env("memcached", "")


def _sample_env(db_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMS_SAMPLE_", "DJANGO_"))}
    env.update(DATABASE_URL=db_url, REDIS_URL=redis_url, PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def test_settings_come_from_the_environment(sample_db_url: str, sample_redis_url: str) -> None:
    code = (
        "import json; from django.conf import settings as s; db = s.DATABASES['default'];"
        "print(json.dumps([db['NAME'], db['CONN_MAX_AGE'], s.DEBUG, s.CACHES['default']['BACKEND'],"
        " s.USE_TZ, s.TIME_ZONE, s.ALLOWED_HOSTS]))"
    )
    env = _sample_env(
        sample_db_url,
        sample_redis_url,
        DJANGO_SETTINGS_MODULE="hms_otel_agent.sample.settings",
        HMS_SAMPLE_CONN_MAX_AGE="0",
        HMS_SAMPLE_DEBUG="true",
        HMS_SAMPLE_CACHE_BACKEND="locmem",
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    name, conn_max_age, debug, backend, use_tz, tz, hosts = json.loads(out.stdout)
    assert name == sample_db_url.rsplit("/", 1)[1] and conn_max_age == 0 and debug is True
    assert backend.endswith("LocMemCache") and use_tz is True and tz == "UTC" and hosts == ["*"]


def test_connecting_needs_no_set_time_zone(sample_app: None) -> None:
    from django.db import connections

    conn = connections.create_connection("default")
    try:
        conn.ensure_connection()
        assert conn.ensure_timezone() is False  # the server already reports UTC
        with conn.cursor() as cursor:
            cursor.execute("SHOW TIME ZONE")
            assert cursor.fetchone()[0] == "UTC"
    finally:
        conn.close()


# -- seed data ------------------------------------------------------------------------------------


def _snapshot() -> dict[str, list[dict[str, Any]]]:
    from django.apps import apps

    models = apps.get_app_config("hms").get_models()
    snap = {m.__name__: list(m.objects.order_by("pk").values()) for m in models}
    snap["departments"] = list(
        apps.get_model("hms", "Practitioner").departments.through.objects.order_by("pk").values()
    )
    return snap


def test_seed_shape(sample_app: None) -> None:
    from hms_otel_agent.sample.hms.models import (
        Appointment,
        Department,
        EmergencyContact,
        Encounter,
        Facility,
        Insurance,
        MedicalRecord,
        Note,
        Patient,
        Practitioner,
    )

    models = (
        Facility,
        Department,
        Practitioner,
        Patient,
        Insurance,
        MedicalRecord,
        Encounter,
        Appointment,
        Note,
    )
    counts = {m.__name__: m.objects.count() for m in models}
    assert counts == {
        "Facility": 4,
        "Department": 12,
        "Practitioner": 12,
        "Patient": 40,
        "Insurance": 20,
        "MedicalRecord": 40,
        "Encounter": 120,
        "Appointment": 80,
        "Note": 40,
    }
    assert 40 <= EmergencyContact.objects.count() <= 80
    patients = list(Patient.objects.order_by("id"))
    assert [p.id for p in patients] == list(range(1, 41))
    assert [p.insurance_id is not None for p in patients] == [i % 2 == 1 for i in range(1, 41)]
    assert len({p.mrn for p in patients}) == 40
    for p in patients:
        assert re.fullmatch(r"MRN-\d{6}", p.mrn)
        assert re.fullmatch(r"9\d\d-\d\d-\d{4}", p.national_id)
        assert re.fullmatch(r"555-\d{3}-\d{4}", p.phone)
        assert p.email == f"{p.given_name}.{p.family_name}@example.org".lower()
        assert dt.date(1940, 1, 1) <= p.date_of_birth <= dt.date(2021, 1, 1)
    assert list(
        Encounter.objects.filter(id__lte=40).order_by("id").values_list("patient_id", flat=True)
    ) == list(range(1, 41))
    assert all(Practitioner.objects.get(pk=pk).departments.count() in (1, 2) for pk in range(1, 13))
    subjects = Counter(n.content_type.model for n in Note.objects.select_related("content_type"))
    assert subjects == {"patient": 20, "encounter": 20}


def test_seed_is_deterministic_and_idempotent(sample_app: None, hms_cache: Any) -> None:
    from django.core.management import call_command

    before = _snapshot()
    hms_cache.set("patient:1:summary", {"stale": True}, timeout=60)
    call_command("seed_hms", patients=40, seed=1, verbosity=0)
    assert _snapshot() == before
    assert hms_cache.get("patient:1:summary") == {"stale": True}
    call_command("seed_hms", patients=40, seed=1, flush_cache=True, verbosity=0)
    assert hms_cache.get("patient:1:summary") is None
    assert _snapshot() == before


def test_seed_with_another_seed_differs(sample_app: None) -> None:
    from django.core.management import call_command

    from hms_otel_agent.sample.hms.models import Patient

    before = list(Patient.objects.order_by("id").values_list("mrn", flat=True))
    try:
        call_command("seed_hms", patients=5, seed=2, verbosity=0)
        assert list(Patient.objects.order_by("id").values_list("mrn", flat=True)) != before[:5]
    finally:
        call_command("seed_hms", patients=40, seed=1, verbosity=0)
    assert list(Patient.objects.order_by("id").values_list("mrn", flat=True)) == before


# -- manage.py, python -m, runserver --------------------------------------------------------------


@pytest.mark.parametrize(
    "launcher",
    [[str(SAMPLE_DIR / "manage.py")], ["-m", "hms_otel_agent.sample"]],
    ids=["manage.py", "python -m"],
)
def test_manage_commands(
    launcher: list[str], sample_app: None, sample_db_url: str, sample_redis_url: str
) -> None:
    env = _sample_env(sample_db_url, sample_redis_url)
    cwd = "/"  # not the repo: the package must be found as installed
    check = subprocess.run(
        [sys.executable, *launcher, "check"], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "System check identified no issues" in check.stdout
    migrations = subprocess.run(
        [sys.executable, *launcher, "makemigrations", "hms", "--check", "--dry-run"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert migrations.returncode == 0, migrations.stdout + migrations.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_runserver_serves_json(sample_app: None, sample_db_url: str, sample_redis_url: str) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "hms_otel_agent.sample", "runserver", f"127.0.0.1:{port}", "--noreload"]
    proc = subprocess.Popen(
        cmd,
        env=_sample_env(sample_db_url, sample_redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health/", timeout=2) as response:
                    assert json.load(response) == {"status": "ok"}
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with urllib.request.urlopen(f"{base}/encounters/?limit=2", timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert [e["id"] for e in json.load(response)["results"]] == [1, 2]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_wsgi_and_asgi_applications(sample_app: None) -> None:
    from hms_otel_agent.sample.asgi import application as asgi_app
    from hms_otel_agent.sample.wsgi import application as wsgi_app

    assert callable(wsgi_app)
    sent: list[dict[str, Any]] = []

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected; Django cancels this when done
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/health/", "query_string": b"", "headers": [],
             "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1234), "root_path": ""}  # fmt: skip
    asyncio.run(asgi_app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b'{"status": "ok"}'


# -- admin ----------------------------------------------------------------------------------------


def test_encounter_admin_changelist_n_plus_one(hms_client: Any, count_queries: Callable[[], Any]) -> None:
    from django.contrib import admin
    from django.contrib.auth.models import User

    from hms_otel_agent.sample.hms.models import Encounter

    user, _ = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
    hms_client.force_login(user)
    encounter_admin = admin.site._registry[Encounter]
    assert encounter_admin.list_select_related is False
    assert "patient" in encounter_admin.list_display and "patient_insurance" in encounter_admin.list_display

    hms_client.get("/admin/hms/encounter/")  # warm-up
    with count_queries() as default_queries:
        default = hms_client.get("/admin/hms/encounter/")
    encounter_admin.list_select_related = ("patient__insurance",)
    try:
        with count_queries() as fixed_queries:
            fixed = hms_client.get("/admin/hms/encounter/")
    finally:
        encounter_admin.list_select_related = False
    assert default.status_code == fixed.status_code == 200
    page = Encounter.objects.order_by("-started_at", "-id")[:100]
    insured_rows = sum(1 for e in page.select_related("patient") if e.patient.insurance_id is not None)
    assert insured_rows > 10
    assert len(default_queries) - len(fixed_queries) == insured_rows
