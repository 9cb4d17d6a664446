"""hms-otel-run and hms-otel as a user meets them: flags, bad settings, scripts, test suites."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess, run, venv_executable

from hms_otel_agent import __version__, config
from hms_otel_agent.signals.semconv import stable_value

from .conftest import otlp_env, runserver, server_span_for

pytestmark = pytest.mark.e2e


def hms_otel_run(*args: str) -> list[str]:
    return [venv_executable("hms-otel-run"), *args]


def test_help_lists_every_option_and_version() -> None:
    result = run(hms_otel_run("--help"), timeout=60)
    assert result.returncode == 0
    for option in config.OPTIONS:
        assert option.flag in result.stdout, option.flag
        assert option.env in result.stdout, option.env
    version = run(hms_otel_run("--version"), timeout=60)
    assert version.stdout.strip() == f"hms-otel-run {__version__}"


def test_bad_flag_is_a_usage_error() -> None:
    result = run(hms_otel_run("--n-plus-one-threshold", "many", "--", "python", "-c", "pass"), timeout=60)
    assert result.returncode == 2
    assert "--n-plus-one-threshold" in result.stderr and "'many' is not accepted" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = run(hms_otel_run("--no-such-option", "python", "-c", "pass"), timeout=60)
    assert unknown.returncode == 2 and "unrecognized arguments" in unknown.stderr


def test_missing_command_exits_127() -> None:
    result = run(hms_otel_run("no-such-program-hms"), timeout=60)
    assert result.returncode == 127
    assert "command not found: no-such-program-hms" in result.stderr


SCRIPT = """
import os, psycopg2, redis
from opentelemetry import trace
tracer = trace.get_tracer("script")
with tracer.start_as_current_span("nightly-job"):
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM hms_patient WHERE mrn = 'MRN-000001'")
    print("patients", cur.fetchone()[0])
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    r.set("script:last-run", "1", ex=60)
    conn.close()
"""


def test_plain_script_with_psycopg2_and_redis(
    tmp_path: Path, otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**sample_app_db, **otlp_env(otlp_receiver, "grpc")}
    del env["DJANGO_SETTINGS_MODULE"]
    result = run(hms_otel_run("python", str(script)), env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "patients" in result.stdout
    job = otlp_receiver.wait_for_spans(lambda s: s.name == "nightly-job")[0]
    children = otlp_receiver.wait_for_spans(lambda s: s.parent_span_id == job.span_id, count=2)
    systems = sorted(str(stable_value(c.attributes, "db.system.name")) for c in children)
    assert systems == ["postgresql", "redis"]
    sql = next(c for c in children if stable_value(c.attributes, "db.system.name") == "postgresql")
    # Literals never leave the process by default.
    assert "MRN-000001" not in str(stable_value(sql.attributes, "db.query.text"))
    assert stable_value(sql.attributes, "db.query.text") == "SELECT count(*) FROM hms_patient WHERE mrn = ?"
    assert job.resource["service.name"] == "job.py"
    assert job.attributes["hms.db.query_count"] == 1


def test_embedded_default_writes_otlp_json_file_and_says_where_once(
    tmp_path: Path, sample_app_db: dict[str, str]
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    result = run(hms_otel_run("python", str(script)), env=sample_app_db, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    announcements = [line for line in result.stderr.splitlines() if "no OTLP endpoint configured" in line]
    assert len(announcements) == 1 and str(tmp_path / ".hms-otel") in announcements[0]
    assert "Traceback" not in result.stderr and "Connection refused" not in result.stderr
    import json

    lines = (tmp_path / ".hms-otel" / "traces.jsonl").read_text().splitlines()
    spans = [
        span
        for line in lines
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    job = next(s for s in spans if s["name"] == "nightly-job")
    assert len(job["traceId"]) == 32 and len(job["spanId"]) == 16  # hex, as the collector writes
    assert {s["parentSpanId"] for s in spans if s["name"] != "nightly-job"} == {job["spanId"]}


def test_bad_setting_gives_one_line_and_the_app_starts(
    otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess]
) -> None:
    env = {**otlp_env(otlp_receiver, "http/protobuf"), "HMS_OTEL_N_PLUS_ONE_THRESHOLD": "lots"}
    app = run_sample(runserver, env, stop_signal=signal.SIGINT)
    assert app.request("GET", "/health/").status == 200
    server_span_for(otlp_receiver, "/health/")
    lines = [line for line in app.stderr.splitlines() if "HMS_OTEL_N_PLUS_ONE_THRESHOLD" in line]
    # Once, although runserver's autoreloader starts a second Python process.
    assert lines == [
        "hms-otel: HMS_OTEL_N_PLUS_ONE_THRESHOLD='lots' is not accepted (expected an integer >= 2); "
        "using the default 5"
    ]
    assert "Traceback" not in app.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "smoke-signals"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ("HMS_OTEL_CACHE_N_PLUS_ONE_THRESHOLD", "-1"),
        ("OTEL_TRACES_EXPORTER", "jaeger-thrift"),
    ],
)
def test_strict_mode_exits_2_before_the_app_runs(variable: str, value: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cmd = hms_otel_run("python", "-c", f"open({str(marker)!r}, 'w').close()")
    result = run(cmd, env={"HMS_OTEL_STRICT": "true", variable: value}, timeout=60)
    assert result.returncode == 2
    assert f"{variable}={value!r} is not accepted" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    # The same check applies when the agent starts inside the process (start(), the distro).
    inside = run(
        [sys.executable, "-c", "import hms_otel_agent; hms_otel_agent.start(); print('app ran')"],
        env={"HMS_OTEL_STRICT": "true", variable: value},
        timeout=60,
    )
    assert inside.returncode == 2 and "app ran" not in inside.stdout and "Traceback" not in inside.stderr


def test_config_check_for_deploy_pipelines() -> None:
    ok = run([venv_executable("hms-otel"), "config", "--check"], env={}, timeout=60)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout
    bad = run(
        [venv_executable("hms-otel"), "config", "--check"],
        env={"OTEL_EXPORTER_OTLP_TIMEOUT": "soon", "HMS_OTEL_LOG_LEVEL": "chatty"},
        timeout=60,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 2
    assert "OTEL_EXPORTER_OTLP_TIMEOUT='soon'" in bad.stderr and "HMS_OTEL_LOG_LEVEL='chatty'" in bad.stderr


def test_config_shows_values_and_their_sources() -> None:
    result = run(
        [venv_executable("hms-otel"), "config", "--n-plus-one-threshold", "3"],
        env={"HMS_OTEL_CACHE_N_PLUS_ONE_THRESHOLD": "8", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert lines["HMS_OTEL_N_PLUS_ONE_THRESHOLD"].endswith("3  [cli]")
    assert lines["HMS_OTEL_CACHE_N_PLUS_ONE_THRESHOLD"].endswith("8  [env]")
    assert lines["HMS_OTEL_DUPLICATE_QUERY_THRESHOLD"].endswith("2  [default]")
    assert "traces go to: OTLP http/protobuf http://c:4318/v1/traces" in result.stdout


def test_backend_down_app_serves_and_one_warning(run_sample: Callable[..., AppProcess]) -> None:
    # A bound socket that does not listen: connections are refused, and the port stays ours.
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{reserved.getsockname()[1]}"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
    }
    app = run_sample(lambda port: runserver(port, "--noreload"), env, stop_signal=signal.SIGINT)
    for _ in range(20):
        response = app.request("GET", "/stats/")
        assert response.status == 200 and response.json()["patients"] > 0
    import time

    time.sleep(1.5)  # several export attempts fail meanwhile
    app.stop()
    reserved.close()
    stderr = app.stderr
    assert stderr.count("cannot export traces") == 1, stderr
    assert stderr.count("cannot export metrics") <= 1, stderr
    assert "cannot export traces to " + dead + "/v1/traces (connection refused)" in stderr
    assert "Traceback" not in stderr
    # Only the agent's own lines talk about exporting: the exporters' per-batch logs are silenced.
    assert [
        line for line in stderr.splitlines() if "xport" in line and not line.startswith("hms-otel: ")
    ] == []


CONFTEST = """
import os
from urllib.parse import urlsplit

import django
from django.conf import settings


def pytest_configure(config):
    url = urlsplit(os.environ["DATABASE_URL"])
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.path.lstrip("/"), "USER": url.username or "", "HOST": url.hostname or "",
            "PORT": str(url.port or ""),
        }},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                            "LOCATION": os.environ["REDIS_URL"]}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
    )
    django.setup()
"""

TESTS = """
import pytest
from django.core.cache import cache
from django.db import connection


def test_query():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM hms_patient")
        assert cursor.fetchone()[0] > 0


def test_cache():
    cache.set("suite:key", "v", 30)
    assert cache.get("suite:key") == "v"


def test_fails_on_purpose():
    assert 1 == 2


@pytest.mark.xfail(reason="known")
def test_expected_failure():
    raise RuntimeError("known")
"""


def test_pytest_suite_that_configures_settings_itself(
    tmp_path: Path, otlp_receiver: OtlpReceiver, sample_app_db: dict[str, str]
) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(TESTS)
    env = {k: v for k, v in sample_app_db.items() if k != "DJANGO_SETTINGS_MODULE"}
    pytest_cmd = [
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:django",
        "test_suite.py",
    ]
    plain = run(pytest_cmd, env=env, cwd=tmp_path, timeout=120)
    traced = run(
        hms_otel_run(*pytest_cmd), env={**env, **otlp_env(otlp_receiver, "grpc")}, cwd=tmp_path, timeout=120
    )

    def outcome(output: str) -> str:
        return [line for line in output.splitlines() if " passed" in line or " failed" in line][-1].split(
            " in "
        )[0]

    assert outcome(plain.stdout) == "1 failed, 2 passed, 1 xfailed"
    assert outcome(traced.stdout) == outcome(plain.stdout)
    assert plain.returncode == traced.returncode == 1
    assert "Settings already configured" not in traced.stdout + traced.stderr
    spans = otlp_receiver.wait_for_spans(
        lambda s: (
            stable_value(s.attributes, "db.system.name") == "postgresql"
            or s.name in ("cache.set", "cache.get")
        ),
        count=3,
    )
    statements = {str(stable_value(s.attributes, "db.query.text")) for s in spans}
    assert "SELECT count(*) FROM hms_patient" in statements
    # Each cache call is one span, the Redis command it sent folded into it.
    assert {
        s.name: tuple(s.attributes["hms.cache.commands"]) for s in spans if s.name.startswith("cache.")
    } == {
        "cache.set": ("SET",),
        "cache.get": ("GET",),
    }
