"""N+1 findings on the sample app's naive endpoints, on real PostgreSQL, in-process.

Each naive view marks the line that triggers a lazy load with ``# lazy: <relation>``; the
finding must name that relation, that line, and the fix. Optimized twins give no finding.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import django
import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan

from hms_otel_agent.sample.hms.markers import marker_line


def findings(traced: Traced, server: ReadableSpan, name: str = "hms.n_plus_one") -> dict[str, dict[str, Any]]:
    """Finding events of a server span, by relation (or statement for raw SQL)."""
    found = {}
    for event in traced.events(server, name):
        key = event.get("hms.orm.relation") or event["hms.finding.statement"]
        assert key not in found, f"two findings for {key}"
        found[key] = event
    return found


PREFETCH_APPOINTMENTS = (
    ".prefetch_related(Prefetch('appointments', queryset=Appointment.objects.filter(scheduled_for__gte=...), "
    "to_attr='prefetched_appointments')), and read .prefetched_appointments (a list) instead of "
    ".appointments.filter(...)"
)
# The relations one page reads from one queryset get one fix (the combined fix, once checked).
PATIENTS_FIX = ".select_related('insurance').prefetch_related('emergency_contacts')"
ENCOUNTERS_FIX = ".select_related('patient__insurance', 'facility')"
RECORDS_FIX = ".select_related('medical_record').prefetch_related('notes')"
NOTES_FIX = (
    ".prefetch_related(GenericPrefetch('subject', [Encounter.objects.all(), Patient.objects.all()]))"
    if django.VERSION >= (5, 0)
    else ".prefetch_related('subject')"
)

# path, view, relation, relation kind, fix, marker target (default: the relation)
CASES = [
    (
        "/patients/?limit=10",
        "patient_list_naive",
        "hms.Patient.insurance",
        "forward",
        PATIENTS_FIX,
        None,
    ),
    (
        "/patients/?limit=10",
        "patient_list_naive",
        "hms.Patient.emergency_contacts",
        "reverse_fk",
        PATIENTS_FIX,
        None,
    ),
    (
        "/encounters/?limit=10",
        "encounter_list_naive",
        "hms.Encounter.patient",
        "forward",
        ENCOUNTERS_FIX,
        None,
    ),
    (
        "/encounters/?limit=10",
        "encounter_list_naive",
        "hms.Encounter.facility",
        "forward",
        ENCOUNTERS_FIX,
        None,
    ),
    (
        "/encounters/?limit=10",
        "encounter_list_naive",
        "hms.Patient.insurance",
        "forward",
        ENCOUNTERS_FIX,
        None,
    ),
    (
        "/appointments/schedule/?limit=12",
        "schedule_naive",
        "hms.Practitioner.appointments",
        "reverse_fk",
        PREFETCH_APPOINTMENTS,
        None,
    ),
    (
        "/appointments/schedule/?limit=12",
        "schedule_naive",
        "hms.Practitioner.departments",
        "many_to_many",
        ".prefetch_related('departments')",
        None,
    ),
    (
        "/patients/records/?limit=10",
        "patient_records_naive",
        "hms.Patient.medical_record",
        "reverse_one_to_one",
        RECORDS_FIX,
        None,
    ),
    (
        "/patients/records/?limit=10",
        "patient_records_naive",
        "hms.Patient.notes",
        "generic_relation",
        RECORDS_FIX,
        None,
    ),
    (
        "/notes/?limit=10",
        "note_list_naive",
        "hms.Note.subject",
        "generic_fk",
        NOTES_FIX,
        None,
    ),
    (
        "/patients/birthdays/?limit=10",
        "birthdays_naive",
        "hms.Patient.date_of_birth",
        "deferred",
        "add 'date_of_birth' to .only(...) or drop it from .defer(...)",
        None,
    ),
]


def checked(traced: Traced, path: str) -> tuple[Any, ReadableSpan]:
    """The page after its fixes were checked: a fix is shown once it compiled, off the request
    (the first request queues the checks; the combined fix of a page is queued when it ends)."""
    from hms_otel_agent.signals import fixes

    traced.request(path)
    assert fixes.checker is not None and fixes.checker.wait_idle(10)
    return traced.request(path)


@pytest.mark.parametrize(
    ("path", "view", "relation", "kind", "fix", "marker"),
    CASES,
    ids=[f"{c[0].split('?')[0]}:{c[2]}" for c in CASES],
)
def test_naive_endpoint_finding(
    traced: Traced, path: str, view: str, relation: str, kind: str, fix: str, marker: str | None
) -> None:
    response, server = checked(traced, path)
    assert response.status_code == 200
    assert server.attributes["hms.n_plus_one"] is True
    finding = findings(traced, server)[relation]
    assert finding["hms.orm.relation_kind"] == kind
    assert finding["hms.hint.fix"] == fix
    assert finding["code.file.path"].endswith("hms_otel_agent/sample/hms/views.py")
    assert finding["code.line.number"] == marker_line(view, marker or relation)
    assert finding["code.function.name"] == view
    assert finding["hms.finding.repetitions"] >= 5
    assert finding["hms.hint"] in server.attributes["hms.hints"]


def test_hint_sentence(traced: Traced) -> None:
    _, server = checked(traced, "/encounters/?limit=10")
    finding = findings(traced, server)["hms.Encounter.patient"]
    line = marker_line("encounter_list_naive", "hms.Encounter.patient")
    assert finding["hms.hint"].startswith("GET encounters/: Encounter.patient loaded lazily 10x (")
    from hms_otel_agent.sample.hms import views

    built = inspect.getsourcelines(views.encounter_list_naive)[1] + 1  # where the queryset is built
    assert finding["hms.hint"].endswith(
        f" ms) at hms_otel_agent/sample/hms/views.py:{line} in encounter_list_naive"
        " — add .select_related('patient__insurance', 'facility') to the Encounter queryset"
        f" at hms_otel_agent/sample/hms/views.py:{built} in encounter_list_naive"
    )
    assert server.attributes["hms.n_plus_one.count"] == 3  # patient, facility, patient__insurance


def test_get_in_a_loop(traced: Traced) -> None:
    _, server = checked(traced, "/patients/lookup/?ids=1,2,3,4,5,6,7,8")
    [finding] = findings(traced, server).values()
    assert finding["hms.orm.relation_kind"] == "get"
    assert finding["hms.hint.fix"] == "Patient.objects.in_bulk(ids)"
    assert finding["hms.hint.fix_kind"] == "in_bulk"
    assert finding["code.line.number"] == marker_line("patient_lookup_naive", "get hms.Patient")


def test_related_count_in_a_loop_with_a_lower_threshold(traced: Traced) -> None:
    _, server = traced.request("/facilities/")  # 4 facilities: below the default threshold of 5
    assert "hms.n_plus_one" not in server.attributes or server.attributes["hms.n_plus_one"] is False
    with traced.use_settings(n_plus_one_threshold=3):
        _, server = checked(traced, "/facilities/")
    finding = findings(traced, server)["hms.Facility.encounters"]
    assert finding["hms.orm.relation_kind"] == "related_count"
    assert finding["hms.hint.fix"] == (
        ".annotate(encounters_count=Count('encounters')), and read .encounters_count instead of"
        " .encounters...count()"
    )
    assert finding["code.line.number"] == marker_line("facility_list_naive", "count hms.Facility.encounters")


def test_raw_sql_without_orm_context(traced: Traced) -> None:
    _, server = traced.request("/reports/raw-encounters/?limit=10")
    [finding] = findings(traced, server).values()
    assert "hms.orm.relation" not in finding
    assert finding["hms.hint.fix"].endswith("FROM hms_encounter WHERE patient_id = ANY(%s)")
    assert finding["code.line.number"] == marker_line("raw_encounters_naive", "raw hms_encounter")


OPTIMIZED = [
    "/patients/optimized/?limit=10",
    "/encounters/optimized/?limit=10",
    "/appointments/schedule/optimized/?limit=12",
    "/patients/records/optimized/?limit=10",
    "/notes/optimized/?limit=10",
    "/patients/birthdays/optimized/?limit=10",
    "/patients/lookup/optimized/?ids=1,2,3,4,5,6,7,8",
    "/facilities/optimized/",
    "/reports/raw-encounters/optimized/?limit=10",
]


@pytest.mark.parametrize("path", OPTIMIZED)
def test_optimized_twin_has_no_finding(traced: Traced, path: str) -> None:
    with traced.use_settings(n_plus_one_threshold=3):
        response, server = traced.request(path)
    assert response.status_code == 200
    assert [e.name for e in server.events if e.name.startswith("hms.")] == []
    assert "hms.hints" not in server.attributes
    lazy = [s for s in traced.spans() if s.attributes.get("hms.orm.lazy") is True]
    assert lazy == []


def test_concurrent_requests_in_threads_keep_their_findings_apart(traced: Traced) -> None:
    from django.test import Client

    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def get(path: str) -> None:
        barrier.wait()
        for _ in range(3):
            statuses.append(Client().get(path).status_code)

    threads = [
        threading.Thread(target=get, args=(p,)) for p in ("/encounters/?limit=10", "/patients/?limit=10")
    ]
    traced.clear()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6
    for server in traced.server_spans():
        relations = set(findings(traced, server))
        if server.name == "GET encounters/":
            assert relations == {"hms.Encounter.patient", "hms.Encounter.facility", "hms.Patient.insurance"}
        else:
            assert relations == {"hms.Patient.insurance", "hms.Patient.emergency_contacts"}
            assert all(
                e["code.function.name"] == "patient_list_naive" for e in findings(traced, server).values()
            )


def test_concurrent_asgi_requests_keep_their_findings_apart(traced: Traced) -> None:
    from django.test import AsyncClient

    async def run() -> list[int]:
        client = AsyncClient()
        paths = ["/encounters/?limit=10", "/notes/?limit=10"] * 3
        responses = await asyncio.gather(*(client.get(p) for p in paths))
        return [r.status_code for r in responses]

    traced.clear()
    assert asyncio.run(run()) == [200] * 6
    servers = traced.server_spans()
    assert len(servers) == 6
    for server in servers:
        relations = set(findings(traced, server))
        expected = (
            {"hms.Encounter.patient", "hms.Encounter.facility", "hms.Patient.insurance"}
            if server.name == "GET encounters/"
            else {"hms.Note.subject"}
        )
        assert relations == expected, server.name
