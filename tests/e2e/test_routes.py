"""Regex routes (a Django REST framework router, a re_path) read as templates in the live log and
the reports, while the exported ``http.route`` stays what Django's resolver gives."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.processes import AppProcess, run, venv_executable
from harness.services import free_port

from hms_otel_agent.report.otlp import read_paths

pytestmark = pytest.mark.e2e
pytest.importorskip("rest_framework")

SETTINGS = """
from hms_otel_agent.sample.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, *{"rest_framework"} - set(INSTALLED_APPS)]  # noqa: F405
ROOT_URLCONF = "drf_site.urls"
"""

URLS = """
from django.http import JsonResponse
from django.urls import include, path, re_path
from rest_framework import routers, viewsets
from rest_framework.response import Response

from hms_otel_agent.sample.hms.models import Encounter, Patient


class PatientViewSet(viewsets.ViewSet):
    def retrieve(self, request, pk=None):
        patient = Patient.objects.get(pk=pk)
        return Response({"facilities": [e.facility.name for e in patient.encounters.all()]})


def legacy_encounters(request, year):
    return JsonResponse({"patients": [e.patient.family_name for e in Encounter.objects.order_by("id")[:8]]})


router = routers.DefaultRouter()
router.register("patients", PatientViewSet, basename="patient")

urlpatterns = [
    path("api/", include(router.urls)),
    re_path(r"^legacy/(?P<year>[0-9]{4})/encounters/$", legacy_encounters),
    path("", include("hms_otel_agent.sample.urls")),
]
"""

DRF_ROUTE = "api/patients/(?P<pk>[^/.]+)/$"
RE_PATH_ROUTE = "^legacy/(?P<year>[0-9]{4})/encounters/$"
READABLE = {DRF_ROUTE: "api/patients/{pk}/", RE_PATH_ROUTE: "legacy/{year}/encounters/"}


def busy_patient(env: dict[str, str]) -> int:
    """The patient with the most encounters (an N+1 on the detail view's facilities)."""
    script = (
        "import django; django.setup()\n"
        "from django.db.models import Count\n"
        "from hms_otel_agent.sample.hms.models import Patient\n"
        "busiest = Patient.objects.annotate(n=Count('encounters')).order_by('-n', 'pk')[0]\n"
        "print(busiest.pk, busiest.n)"
    )
    pk, encounters = run([sys.executable, "-c", script], env=env, check=True).stdout.split()
    assert int(encounters) >= 3  # the threshold below
    return int(pk)


def test_regex_routes_read_as_templates(
    tmp_path: Path, app_process: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> None:
    site = tmp_path / "drf_site"
    site.mkdir()
    (site / "__init__.py").write_text("")
    (site / "settings.py").write_text(textwrap.dedent(SETTINGS))
    (site / "urls.py").write_text(textwrap.dedent(URLS))
    telemetry = tmp_path / "telemetry"
    env = {
        **sample_app_db,
        "DJANGO_SETTINGS_MODULE": "drf_site.settings",
        "PYTHONPATH": str(tmp_path),
        "HMS_OTEL_LOCAL_DIR": str(telemetry),
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD": "3",
        "COLUMNS": "200",
    }
    pk = busy_patient(env)
    port = free_port()
    cmd = [venv_executable("hms-otel-run"), sys.executable, "-m", "django", "runserver", "--noreload",
           f"127.0.0.1:{port}"]  # fmt: skip
    app = app_process(
        cmd, env=env, cwd=tmp_path, base_url=f"http://127.0.0.1:{port}", stop_signal=signal.SIGINT
    )
    app.wait_http("/health/", timeout=60)
    assert app.request("GET", f"/api/patients/{pk}/").status == 200
    assert app.request("GET", "/legacy/2024/encounters/").status == 200
    time.sleep(0.5)
    assert app.stop() == 0
    err = app.stderr

    # The live log and the report at exit: templates.
    assert "hms-otel: n plus one: GET api/patients/{pk}/: Encounter.facility loaded lazily" in err, err
    assert "hms-otel: n plus one: GET legacy/{year}/encounters/: Encounter.patient loaded lazily" in err, err
    table = err[err.index("hms-otel findings") :]
    assert " api/patients/{pk}/ " in table and " legacy/{year}/encounters/ " in table, table
    assert "(?P<" not in table

    # Exported: http.route as Django's resolver gives it (contrib, dashboards and span metrics
    # group by it), the span name too.
    servers = {
        str(s.attributes.get("http.route")): s
        for s in read_paths([str(telemetry / "traces.jsonl")]).spans
        if s.kind == 2 and "hms.db.query_count" in s.attributes
    }
    assert DRF_ROUTE in servers and RE_PATH_ROUTE in servers, list(servers)
    assert servers[DRF_ROUTE].name == f"GET {DRF_ROUTE}"

    # hms-otel report (recorded findings) and analyze (detected again offline): templates.
    for command in ("report", "analyze"):
        result = run(
            ["hms-otel", command, str(telemetry), "--format", "json", "--n-plus-one-threshold", "3"],
            check=True,
        )
        routes = {r for f in json.loads(result.stdout)["findings"] for r in f["routes"]}
        assert set(READABLE.values()) <= routes, (command, routes)
        assert not any("(?P<" in r for r in routes)
