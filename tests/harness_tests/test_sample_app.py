"""sample_app_db gives a migrated, seeded database the sample app runs against."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from harness.processes import AppProcess, venv_executable
from harness.services import database_of, free_port


def test_sample_app_db_is_migrated_and_seeded(sample_app_db: dict[str, str], pg_url: str) -> None:
    assert sample_app_db["DJANGO_SETTINGS_MODULE"] == "hms_otel_agent.sample.settings"
    assert database_of(sample_app_db["DATABASE_URL"]) != database_of(pg_url)  # pg_url stays empty
    with psycopg.connect(sample_app_db["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM hms_patient").fetchone() == (60,)
        migrations = conn.execute("SELECT count(*) FROM django_migrations WHERE app = 'hms'").fetchone()
        assert migrations is not None and migrations[0] >= 1


def test_sample_app_serves_from_it(
    sample_app_db: dict[str, str], app_process: Callable[..., AppProcess]
) -> None:
    port = free_port()
    cmd = [venv_executable("gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "1", "hms_otel_agent.sample.wsgi"]
    app = app_process(cmd, env=sample_app_db, base_url=f"http://127.0.0.1:{port}")
    assert app.wait_http("/health/", timeout=30).status == 200
    response = app.request("GET", "/patients/")
    assert response.status == 200, response.text
