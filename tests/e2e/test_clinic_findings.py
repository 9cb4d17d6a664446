"""The clinic example app under ``hms-otel-run`` (runserver, real PostgreSQL), its findings read
from an OTLP receiver: for each page, the kind, the relation, where the load was triggered
(``code.*``: a template line, a DRF serializer field, a model method, the awaiting line of an
async view), where its queryset came from (``hms.orm.origin.code.*``: the view's line, the
viewset's ``queryset`` attribute, the form field) and the fix — and what must not be reported
(a repeated lookup is a duplicate, not an N+1; LIMIT/OFFSET slices are neither)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess

from hms_otel_agent.sample.clinic.pages import PAGES_BY_NAME

from .conftest import otlp_env, request_path, runserver

pytestmark = pytest.mark.e2e
pytest.importorskip("rest_framework")

CLINIC = Path(__file__).resolve().parents[2] / "hms_otel_agent" / "sample" / "clinic"
SHOWN = "hms_otel_agent/sample/clinic/"


def qualified(name: str) -> str:
    """A function's name as exported: qualified where Python has co_qualname (3.11+)."""
    return name if sys.version_info >= (3, 11) else name.rsplit(".", 1)[-1]


def line_of(name: str, text: str, after: str = "") -> int:
    """The 1-based line of the first line containing `text` (after the line containing `after`)."""
    lines = (CLINIC / name).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1


def where(attributes: dict[str, Any], prefix: str = "") -> tuple[Any, Any, Any]:
    return (
        attributes.get(prefix + "code.file.path"),
        attributes.get(prefix + "code.line.number"),
        attributes.get(prefix + "code.function.name"),
    )


def findings(span: ReceivedSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes) for e in span.events if e.attributes.get("hms.finding.kind")]


def by_relation(span: ReceivedSpan) -> dict[str, dict[str, Any]]:
    return {
        str(f["hms.orm.relation"]): f
        for f in findings(span)
        if f["hms.finding.kind"] == "n_plus_one" and f.get("hms.orm.relation")
    }


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {name: page.naive for name, page in PAGES_BY_NAME.items() if not page.admin}


def test_clinic_findings_name_the_trigger_the_origin_and_the_fix(
    app_process: Callable[..., AppProcess],
    sample_app_db: dict[str, str],
    otlp_receiver: OtlpReceiver,
    pages: dict[str, str],
) -> None:
    from harness.processes import venv_executable
    from harness.services import free_port

    port = free_port()
    env = {**sample_app_db, **otlp_env(otlp_receiver, "http/protobuf"), "HMS_OTEL_LIVE_LOG": "false"}
    app = app_process(
        [venv_executable("hms-otel-run"), "--", *runserver(port, "--noreload")],
        env=env,
        base_url=f"http://127.0.0.1:{port}",
    )
    app.wait_http("/health/", timeout=60)
    spans: dict[str, ReceivedSpan] = {}
    for name, path in pages.items():
        for _ in range(2):  # the first request has the fixes checked; the second shows them
            assert app.request("GET", path).status == 200, name
        path_only = path.split("?")[0]
        received = otlp_receiver.wait_for_spans(
            lambda s, p=path_only: s.kind == "SPAN_KIND_SERVER" and request_path(s) == p, count=2, timeout=30
        )
        spans[name] = max(received, key=lambda s: s.start_time_unix_nano)

    views = SHOWN + "views.py"
    # A paginated list whose template reads the rows' relations: the template line; the fix goes
    # on the view's queryset.
    visit = by_relation(spans["visit-list"])
    assert where(visit["clinic.Visit.patient"]) == (
        "clinic/visit_list.html",  # the template's name, as on template spans
        line_of("templates/clinic/visit_list.html", "visit.patient"),
        "template",
    )
    built = (
        views,
        line_of("views.py", 'Visit.objects.order_by("id")', "def visit_list_naive"),
        "visit_list_naive",
    )
    for relation in ("clinic.Visit.patient", "clinic.Visit.ward", "clinic.Visit.tags"):
        assert where(visit[relation], "hms.orm.origin.") == built, relation
        assert visit[relation]["hms.hint.fix"] == (
            ".select_related('patient', 'ward__site', 'clinician').prefetch_related('tags')"
        )
    # The property that reads two relations: its own line, qualified.
    assert where(visit["clinic.Visit.ward"])[2] == qualified("Visit.location_label")

    # A DRF viewset with nested serializers: the serializer class and field; the viewset's
    # queryset attribute.
    api = by_relation(spans["api-visits"])
    serializer = SHOWN + "serializers.py"
    assert where(api["clinic.Visit.clinician"]) == (
        serializer,
        line_of("serializers.py", "class VisitSerializer"),
        "VisitSerializer.clinician",
    )
    assert where(api["clinic.Outpatient.home_site"])[2] == "OutpatientSerializer.home_site"
    assert where(api["clinic.Visit.orders"])[2] == qualified("VisitSerializer.get_order_codes")
    viewset = (SHOWN + "api.py", line_of("api.py", "queryset = Visit.objects"), "VisitViewSet")
    for finding in api.values():
        assert where(finding, "hms.orm.origin.") == viewset
        assert finding["hms.hint.fix"] == (
            ".select_related('patient__home_site', 'clinician').prefetch_related('tags', 'orders')"
        )
        assert finding["hms.hint"].endswith(
            f"to the Visit queryset at {viewset[0]}:{viewset[1]} in VisitViewSet"
        )

    # A fragment included twice: one finding per relation, at the fragment's line.
    board = by_relation(spans["ward-board"])
    assert set(board) == {"clinic.Ward.site", "clinic.Ward.clinicians"}
    assert where(board["clinic.Ward.site"]) == ("clinic/_ward_summary.html", 1, "template")
    assert board["clinic.Ward.site"]["hms.finding.repetitions"] == 6

    # A ModelForm's option labels: Clinician.__str__, and the form field holds the queryset.
    form = by_relation(spans["visit-form"])["clinic.Clinician.ward"]
    assert where(form)[2] == qualified("Clinician.__str__")
    assert where(form, "hms.orm.origin.") == (
        SHOWN + "forms.py",
        line_of("forms.py", "class VisitForm("),
        "VisitForm.clinician",
    )
    assert form["hms.hint.fix"] == ".select_related('ward')"

    # aget() in a loop in an async view: the awaiting line survives sync_to_async.
    [async_get] = [f for f in findings(spans["lookup-async"]) if f["hms.finding.kind"] == "n_plus_one"]
    assert where(async_get) == (views, line_of("views.py", "await Site.objects.aget"), "lookup_async_naive")
    assert async_get["hms.hint.fix"] == "Site.objects.in_bulk(values, field_name='code')"

    # The same lookup repeated with the same parameters: a duplicate, never an N+1.
    dashboard = findings(spans["dashboard"])
    assert [f["hms.finding.kind"] for f in dashboard] == ["duplicate_query"]
    assert dashboard[0]["hms.finding.repetitions"] == len(
        ("title", "wards", "open", "patients", "clinicians", "handovers")
    )
    assert where(dashboard[0])[2] == "_home_site"

    # One list read in LIMIT/OFFSET slices: neither an N+1 nor a duplicate.
    assert [f["hms.finding.kind"] for f in findings(spans["export"])] == []
