"""The pytest plugin, run by pytester in subprocesses on the sample app's seeded PostgreSQL database.

pytest-django is active in those runs (``django_db`` marks, Django's TestCase); its test-database
setup is replaced by the already migrated and seeded ``sample_app_db`` database, and every test runs
in a transaction that is rolled back.
"""

from __future__ import annotations

import json
import os
import re

import pytest

pytest_plugins = ["pytester"]

CONFTEST = '''
import pytest

@pytest.fixture(scope="session")
def django_db_setup():
    """Use the migrated, seeded sample database as it is."""
'''

TESTS = """
import sys

import pytest
from django.test import Client, TestCase

from hms_otel_agent.pytest_plugin import allow
from hms_otel_agent.sample.hms.models import Encounter


def load_patients(n):
    for e in Encounter.objects.order_by("id")[:n]:
        e.patient


@pytest.mark.django_db
def test_three_lazy_loads():
    load_patients(3)


@pytest.mark.django_db
def test_six_lazy_loads():
    load_patients(6)


@pytest.mark.django_db
@pytest.mark.hms_otel_allow("hms.Encounter.patient")
def test_allowed_by_marker():
    load_patients(6)


@pytest.mark.django_db
@pytest.mark.hms_otel_allow("hms.Encounter.facility")
def test_other_relation_allowed_still_fails():
    load_patients(6)


@pytest.mark.django_db
def test_allowed_by_context_manager():
    with allow("hms.Encounter.*", "hms.Patient.insurance"):
        load_patients(6)
        assert Client().get("/encounters/?limit=6").status_code == 200


@pytest.mark.django_db
def test_client_request():
    assert Client().get("/encounters/?limit=6").status_code == 200


@pytest.mark.django_db
def test_client_request_optimized():
    assert Client().get("/encounters/optimized/?limit=6").status_code == 200


class TestWithDjangoTestCase(TestCase):
    def test_loop(self):
        load_patients(6)


def test_nothing_imported_when_inactive():
    if "--hms-otel" not in sys.argv:
        assert "hms_otel_agent.pipeline" not in sys.modules
        assert "opentelemetry.sdk.trace" not in sys.modules
"""


@pytest.fixture
def project(
    pytester: pytest.Pytester, sample_app_db: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "HMS_OTEL_")):
            monkeypatch.delenv(name)
    for name, value in sample_app_db.items():
        monkeypatch.setenv(name, value)
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = hms_otel_agent.sample.settings\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=TESTS)
    return pytester


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    found = {}
    for line in result.outlines:
        match = re.match(r"^test_app\.py::(\S+) (PASSED|FAILED|ERROR)", line)
        if match:
            found[match.group(1).rpartition("::")[2]] = match.group(2)
    return found


def test_fail_allow_threshold_and_report(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "--hms-otel", "--hms-otel-threshold", "3",
        "--hms-otel-report", "hms-report.json",
    )  # fmt: skip
    assert outcomes(result) == {
        "test_three_lazy_loads": "FAILED",  # 3 >= --hms-otel-threshold 3
        "test_six_lazy_loads": "FAILED",
        "test_allowed_by_marker": "PASSED",
        "test_other_relation_allowed_still_fails": "FAILED",
        "test_allowed_by_context_manager": "PASSED",
        "test_client_request": "FAILED",
        "test_client_request_optimized": "PASSED",
        "test_loop": "FAILED",
        "test_nothing_imported_when_inactive": "PASSED",
    }, result.stdout.str()
    out = result.stdout.str()
    # The failure names what, where, and the fix.
    assert re.search(
        r"\[n_plus_one\] test test_app\.py::test_six_lazy_loads: Encounter\.patient loaded lazily 6x "
        r"\(\d+\.\d ms\) at test_app\.py:12 in load_patients — add \.select_related\('patient'\) to the "
        r"Encounter queryset",
        out,
    ), out
    assert "fix: .select_related('patient')" in out
    assert '@pytest.mark.hms_otel_allow("hms.Encounter.patient")' in out
    assert re.search(r"\[n_plus_one\] GET encounters/: Encounter\.patient loaded lazily 6x", out), out
    assert "hms-otel: " in out and "distinct findings in" in out
    report = json.loads((project.path / "hms-report.json").read_text())
    assert report["schema"] == "hms-otel-report/1"
    assert report["thresholds"]["n_plus_one"] == 3
    routes = {r for f in report["findings"] for r in f["routes"]}
    assert "encounters/" in routes and not any("optimized" in r for r in routes)
    relations = {f["relation"] for f in report["findings"] if f["kind"] == "n_plus_one"}
    assert "hms.Encounter.patient" in relations


def test_default_threshold_other_kinds_and_markdown_report(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "--hms-otel", "--hms-otel-report", "out/report.md",
        "-k", "three_lazy or six_lazy",
    )  # fmt: skip
    # Default threshold 5: three loads are fine, six are an N+1.
    assert outcomes(result) == {"test_three_lazy_loads": "PASSED", "test_six_lazy_loads": "FAILED"}
    markdown = (project.path / "out" / "report.md").read_text()
    assert markdown.startswith("## hms-otel findings")
    assert "| 1 | N+1 | test test_app.py::test_six_lazy_loads |" in markdown
    # Findings of kinds not chosen with --hms-otel-fail-on are reported but do not fail.
    result = project.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "--hms-otel", "--hms-otel-fail-on=duplicate_query,cache_n_plus_one",
        "-k", "six_lazy",
    )  # fmt: skip
    assert outcomes(result) == {"test_six_lazy_loads": "PASSED"}


def test_inactive_without_the_flag(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert set(outcomes(result).values()) == {"PASSED"}, result.stdout.str()
    assert "distinct findings" not in result.stdout.str()  # no summary line: the plugin did nothing


def test_bad_fail_on_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--hms-otel", "--hms-otel-fail-on=n_plus_two")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown kind(s) n_plus_two" in result.stderr.str()


def report_groups(report: dict) -> set[tuple]:
    return {
        (f["fingerprint"], f["kind"], f["requests"], f["repetitions"], tuple(sorted(f["routes"])))
        for f in report["findings"]
    }


def summary_line(result: pytest.RunResult) -> str:
    return next(line for line in result.outlines if line.startswith("hms-otel: "))


def test_xdist_writes_one_merged_report_at_the_asked_path(project: pytest.Pytester) -> None:
    """With pytest-xdist the tests run in two workers; the report at the path asked for holds
    every finding and count of the run, the same as a run in one process, and so does the
    summary line."""
    pytest.importorskip("xdist")
    common = [
        "-p", "no:cacheprovider", "--hms-otel", "--hms-otel-threshold", "3", "--hms-otel-fail-on", "none",
        "-k", "not nothing_imported",  # (it reads sys.argv, which is not pytest's in a worker)
    ]  # fmt: skip
    single = project.runpytest_subprocess(*common, "--hms-otel-report", "single.json")
    assert single.ret == 0, single.stdout.str()
    parallel = project.runpytest_subprocess(*common, "-n", "2", "-v", "--hms-otel-report", "out/report.json")
    assert parallel.ret == 0, parallel.stdout.str()
    workers = set(re.findall(r"\[(gw\d)\] .*PASSED", parallel.stdout.str()))
    assert workers == {"gw0", "gw1"}, parallel.stdout.str()  # both workers ran tests
    assert [p.name for p in (project.path / "out").iterdir()] == ["report.json"]  # no per-worker files
    merged = json.loads((project.path / "out" / "report.json").read_text())
    expected = json.loads((project.path / "single.json").read_text())
    assert merged["findings"] and report_groups(merged) == report_groups(expected)
    for name in ("owners", "requests", "tests", "owners_with_findings", "db_queries", "traces"):
        assert merged["summary"][name] == expected["summary"][name], name
    # Tests and the test-client requests they made are counted as what they are.
    assert (merged["summary"]["tests"], merged["summary"]["requests"]) == (8, 3)
    assert summary_line(single) == summary_line(parallel).replace("out/report.json", "single.json")
    assert re.fullmatch(
        rf"hms-otel: {len(merged['findings'])} distinct findings in \d of 8 tests \(and the 3 requests they "
        r"made\); report: out/report.json",
        summary_line(parallel),
    ), summary_line(parallel)
    # The Markdown report says the same.
    project.runpytest_subprocess(*common, "-n", "2", "--hms-otel-report", "report.md")
    markdown = (project.path / "report.md").read_text()
    assert "in 8 tests, 3 requests and 1 other span;" in markdown, markdown
    assert "| # | kind | route | relation / key pattern | seen in | repetitions |" in markdown


def test_findings_come_from_the_live_processor_not_from_span_attributes(project: pytest.Pytester) -> None:
    """The plugin takes each owner's findings through on_findings: with the offline reader of
    finding events broken, the N+1 still fails its test with the hint."""
    project.makeconftest(
        CONFTEST
        + """
from hms_otel_agent.report import spans as _spans

def _no_recorded_findings(span, route):
    raise AssertionError("the plugin parsed finding events")

_spans.recorded_findings = _no_recorded_findings
"""
    )
    result = project.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "--hms-otel", "-k", "three_lazy or six_lazy",
    )  # fmt: skip
    assert outcomes(result) == {"test_three_lazy_loads": "PASSED", "test_six_lazy_loads": "FAILED"}, (
        result.stdout.str()
    )
    assert "Encounter.patient loaded lazily 6x" in result.stdout.str()


GROUP_TEST = """
import pytest
from django.core.cache import cache
from django.test import Client

from hms_otel_agent.sample.hms.views import _summary_key

IDS = range(61, 69)


@pytest.mark.django_db
def test_cache_aside_loop():
    cache.delete_many([_summary_key(pk) for pk in IDS])  # cold: a miss, a query, a write per patient
    response = Client().get("/patients/cached/lookup/?ids=" + ",".join(map(str, IDS)))
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.hms_otel_allow("n_plus_one")
def test_cache_aside_loop_allowed():
    test_cache_aside_loop()
"""


def test_a_repeated_group_that_took_in_its_queries_n_plus_one_still_fails(project: pytest.Pytester) -> None:
    """One cause, one finding: the cache-aside loop is one repeated-group finding, and it fails
    the test as the query's N+1 would (the default --hms-otel-fail-on is n_plus_one)."""
    project.makepyfile(test_group=GROUP_TEST)
    result = project.runpytest_subprocess("-v", "-p", "no:cacheprovider", "--hms-otel", "test_group.py")
    out = result.stdout.str()
    assert re.search(r"test_group\.py::test_cache_aside_loop FAILED", out), out
    assert re.search(r"test_group\.py::test_cache_aside_loop_allowed PASSED", out), out
    # (in the failure's report: the short summary repeats the message or not, after the width)
    failures = re.findall(r"\[(\w+)\] GET patients/cached/lookup/", out.split("short test summary info")[0])
    assert failures == ["repeated_group"], out  # one finding, not the group and the N+1
    assert "calls repeated together per item (cache.get patient:{id}:summary -> Patient select" in out
