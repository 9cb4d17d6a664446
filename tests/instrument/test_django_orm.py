"""ORM context (instrument/django_orm.py) on real PostgreSQL through the in-process sample app.

Spans come from the agent's real pipeline (`traced`); where a value is not exported as an
attribute (``OrmContext.filtered``), the test reads `current_orm` from inside Django's own
``connection.execute_wrapper`` hook, i.e. exactly what the SQL span hook sees.

Expected code locations come from the ``# lazy: ...`` markers in the sample views
(hms_otel_agent/sample/hms/markers.py) or, for ORM calls made here, from this file's lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from hms_otel_agent import guard
from hms_otel_agent.instrument import django_orm
from hms_otel_agent.instrument.context import PendingOrm, current_orm
from hms_otel_agent.sample.hms.markers import markers_of
from hms_otel_agent.signals.records import (
    DEFERRED,
    FORWARD,
    GENERIC_FK,
    GENERIC_RELATION,
    GET,
    MANY_TO_MANY,
    REFRESH,
    RELATED_AGGREGATE,
    RELATED_COUNT,
    RELATED_EXISTS,
    RELATION_KINDS,
    REVERSE_FK,
    REVERSE_ONE_TO_ONE,
    OrmContext,
)

VIEWS_FILE = "hms_otel_agent/sample/hms/views.py"
ADMIN_FILE = "hms_otel_agent/sample/hms/admin.py"
THIS_FILE = "tests/instrument/test_django_orm.py"
N = 8  # ?limit=N


# -- helpers --------------------------------------------------------------------------------------


def _next_line() -> int:
    """The line after the caller's: put the ORM call under test right below."""
    return sys._getframe(1).f_lineno + 1


def _orm(span: Any) -> dict[str, Any]:
    a = span.attributes or {}
    # where the queryset came from: tests/instrument/test_locations.py
    wanted = ("hms.orm.", "code.")
    return {k: v for k, v in a.items() if k.startswith(wanted) and not k.startswith("hms.orm.origin.")}


def _db_spans(traced: Any, owner: Any) -> list[Any]:
    spans = traced.descendants_of(owner)  # a template's queries are its children
    return [s for s in spans if (s.attributes or {}).get("db.system") == "postgresql"]


def _lazy(spans: list[Any]) -> list[Any]:
    return [s for s in spans if (s.attributes or {}).get("hms.orm.lazy") is True]


def _relation_attrs(
    model: str, kind: str, relation: str, path: str, root: str, line: int, function: str, file: str
) -> dict[str, Any]:
    return {
        "hms.orm.model": model,
        "hms.orm.operation": kind,
        "hms.orm.relation": relation,
        "hms.orm.lazy": True,
        "hms.orm.path": path,
        "hms.orm.root_model": root,
        "code.file.path": file,
        "code.line.number": line,
        "code.function.name": function,
    }


@contextmanager
def _owner(traced: Any, name: str = "test-owner") -> Iterator[Any]:
    """A parent span for ORM calls made by the test itself (outside a request)."""
    with traced.tracer.start_as_current_span(name) as span:
        yield span


def _resolved(ctx: OrmContext | PendingOrm | None) -> OrmContext | None:
    """The context as the SQL span hook reads it: its code location looked up (once)."""
    return ctx.resolve() if isinstance(ctx, PendingOrm) else ctx


@contextmanager
def _contexts() -> Iterator[list[tuple[str, OrmContext | None]]]:
    """(sql, current_orm) for every statement this thread's connection runs, read inside
    Django's execute_wrapper hook, i.e. where the SQL span hook reads it."""
    from django.db import connection

    log: list[tuple[str, OrmContext | None]] = []

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        log.append((sql, _resolved(current_orm.get())))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield log


def _file_path(span: Any) -> str:
    return str((span.attributes or {}).get("code.file.path", ""))


@pytest.fixture
def rollback(traced: Any) -> Iterator[None]:
    """Run the test body in a transaction that is rolled back: the seeded data stays as it is."""
    from django.db import transaction

    with transaction.atomic():
        yield
        transaction.set_rollback(True)


# -- every relation kind, from the naive sample views ----------------------------------------------

# view path -> view function; every `# lazy:` marker in the view must show up, and nothing else lazy.
NAIVE_VIEWS = {
    f"/patients/?limit={N}": "patient_list_naive",
    f"/encounters/?limit={N}": "encounter_list_naive",
    f"/appointments/schedule/?limit={N}": "schedule_naive",
    f"/patients/records/?limit={N}": "patient_records_naive",
    f"/notes/?limit={N}": "note_list_naive",
    f"/patients/birthdays/?limit={N}": "birthdays_naive",
    f"/facilities/?limit={N}": "facility_list_naive",
}

# marker target -> (model, kind, relation, path, root_model)
EXPECTED = {
    ("patient_list_naive", "hms.Patient.insurance"): (
        "hms.Patient",
        FORWARD,
        "hms.Patient.insurance",
        "insurance",
        "hms.Patient",
    ),
    ("patient_list_naive", "hms.Patient.emergency_contacts"): (
        "hms.Patient",
        REVERSE_FK,
        "hms.Patient.emergency_contacts",
        "emergency_contacts",
        "hms.Patient",
    ),
    ("encounter_list_naive", "hms.Encounter.patient"): (
        "hms.Encounter",
        FORWARD,
        "hms.Encounter.patient",
        "patient",
        "hms.Encounter",
    ),
    ("encounter_list_naive", "hms.Encounter.facility"): (
        "hms.Encounter",
        FORWARD,
        "hms.Encounter.facility",
        "facility",
        "hms.Encounter",
    ),
    # the nested path: e.patient.insurance -> select_related('patient__insurance') on Encounter
    ("encounter_list_naive", "hms.Patient.insurance"): (
        "hms.Patient",
        FORWARD,
        "hms.Patient.insurance",
        "patient__insurance",
        "hms.Encounter",
    ),
    ("schedule_naive", "hms.Practitioner.appointments"): (
        "hms.Practitioner",
        REVERSE_FK,
        "hms.Practitioner.appointments",
        "appointments",
        "hms.Practitioner",
    ),
    ("schedule_naive", "hms.Practitioner.departments"): (
        "hms.Practitioner",
        MANY_TO_MANY,
        "hms.Practitioner.departments",
        "departments",
        "hms.Practitioner",
    ),
    ("patient_records_naive", "hms.Patient.medical_record"): (
        "hms.Patient",
        REVERSE_ONE_TO_ONE,
        "hms.Patient.medical_record",
        "medical_record",
        "hms.Patient",
    ),
    ("patient_records_naive", "hms.Patient.notes"): (
        "hms.Patient",
        GENERIC_RELATION,
        "hms.Patient.notes",
        "notes",
        "hms.Patient",
    ),
    ("note_list_naive", "hms.Note.subject"): (
        "hms.Note",
        GENERIC_FK,
        "hms.Note.subject",
        "subject",
        "hms.Note",
    ),
    ("birthdays_naive", "hms.Patient.date_of_birth"): (
        "hms.Patient",
        DEFERRED,
        "hms.Patient.date_of_birth",
        "date_of_birth",
        "hms.Patient",
    ),
    ("facility_list_naive", "count hms.Facility.encounters"): (
        "hms.Facility",
        RELATED_COUNT,
        "hms.Facility.encounters",
        "encounters",
        "hms.Facility",
    ),
}


def test_expected_table_covers_every_lazy_marker_of_the_views() -> None:
    markers = {(m.view, m.target) for view in NAIVE_VIEWS.values() for m in markers_of(view)}
    assert markers == set(EXPECTED)
    kinds = {kind for _, kind, _, _, _ in EXPECTED.values()}
    # exists: see test_related_exists_*; aggregate: the clinic app (test_fixes_applied.py)
    assert kinds == set(RELATION_KINDS) - {RELATED_EXISTS, RELATED_AGGREGATE}


@pytest.mark.parametrize("path", list(NAIVE_VIEWS), ids=list(NAIVE_VIEWS.values()))
def test_each_lazy_load_has_its_relation_kind_path_and_line(traced: Any, path: str) -> None:
    view = NAIVE_VIEWS[path]
    response, server = traced.request(path)
    assert response.status_code == 200
    spans = _db_spans(traced, server)
    lazy = _lazy(spans)
    assert lazy, [_orm(s) for s in spans]

    by_line: dict[int, list[Any]] = {}
    for span in lazy:
        by_line.setdefault(span.attributes["code.line.number"], []).append(span)
    markers = markers_of(view)
    assert set(by_line) == {m.lineno for m in markers}, [_orm(s) for s in lazy]
    for marker in markers:
        model, kind, relation, rel_path, root = EXPECTED[(view, marker.target)]
        expected = _relation_attrs(model, kind, relation, rel_path, root, marker.lineno, view, VIEWS_FILE)
        if view == "schedule_naive" and relation == "hms.Practitioner.appointments":
            expected["hms.orm.filtered"] = True  # filtered in the loop: the fix is a Prefetch
        for span in by_line[marker.lineno]:
            assert _orm(span) == expected
    # The page query itself is a plain, non-lazy query with the view's location.
    first = spans[0].attributes
    assert first["hms.orm.operation"] == "query"
    assert first["hms.orm.lazy"] is False
    assert first["code.function.name"] == view
    assert "hms.orm.relation" not in first


def test_get_in_a_loop(traced: Any) -> None:
    (marker,) = markers_of("patient_lookup_naive")
    response, server = traced.request("/patients/lookup/?ids=1,2,3,999999")
    assert response.status_code == 200
    spans = _db_spans(traced, server)
    assert len(spans) == 4
    for span in spans:
        assert _orm(span) == {
            "hms.orm.model": "hms.Patient",
            "hms.orm.operation": GET,
            "hms.orm.lazy": False,
            "code.file.path": VIEWS_FILE,
            "code.line.number": marker.lineno,
            "code.function.name": "patient_lookup_naive",
        }


def test_filtered_related_manager_is_marked_filtered(traced: Any) -> None:
    with _contexts() as log:
        response = traced.request(f"/appointments/schedule/?limit={N}")[0]
    assert response.status_code == 200
    lazy = [ctx for _, ctx in log if ctx is not None and ctx.lazy]
    appointments = [c for c in lazy if c.relation == "hms.Practitioner.appointments"]
    departments = [c for c in lazy if c.relation == "hms.Practitioner.departments"]
    assert appointments and departments
    assert all(c.filtered for c in appointments)  # pr.appointments.filter(...) -> Prefetch(queryset=)
    assert not any(c.filtered for c in departments)  # pr.departments.all()


def test_filtered_covers_filter_exclude_order_and_slice(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    patient = Patient.objects.order_by("id").first()
    cases: dict[str, Callable[[], Any]] = {
        "all": lambda: list(patient.encounters.all()),
        "iterate manager queryset": lambda: list(patient.encounters.get_queryset()),
        "filter": lambda: list(patient.encounters.filter(status="closed")),
        "exclude": lambda: list(patient.encounters.exclude(status="closed")),
        "order_by": lambda: list(patient.encounters.order_by("-id")),
        "slice": lambda: list(patient.encounters.all()[:2]),
        "first": lambda: patient.encounters.first(),
    }
    seen = {}
    for name, run in cases.items():
        with _contexts() as log:
            run()
        (ctx,) = [c for _, c in log]
        assert ctx is not None and ctx.kind == REVERSE_FK and ctx.lazy, name
        seen[name] = ctx.filtered
    assert seen == {
        "all": False,
        "iterate manager queryset": False,
        "filter": True,
        "exclude": True,
        "order_by": True,
        "slice": True,
        "first": True,
    }


# -- relation kinds without a sample view ---------------------------------------------------------


def test_related_exists_in_a_loop(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Facility

    with _owner(traced) as owner:
        for facility in Facility.objects.order_by("id"):
            line = _next_line()
            facility.encounters.exists()
    lazy = _lazy(_db_spans(traced, owner))
    assert len(lazy) == 4
    for span in lazy:
        assert _orm(span) == _relation_attrs(
            "hms.Facility",
            RELATED_EXISTS,
            "hms.Facility.encounters",
            "encounters",
            "hms.Facility",
            line,
            "test_related_exists_in_a_loop",
            THIS_FILE,
        )


def test_many_to_many_count_and_exists(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Practitioner

    lines = {}
    with _owner(traced) as owner:
        for practitioner in Practitioner.objects.order_by("id")[:3]:
            lines[RELATED_COUNT] = _next_line()
            practitioner.departments.count()
            lines[RELATED_EXISTS] = _next_line()
            practitioner.departments.exists()
    lazy = _lazy(_db_spans(traced, owner))
    assert len(lazy) == 6
    for span in lazy:
        kind = span.attributes["hms.orm.operation"]
        assert _orm(span) == _relation_attrs(
            "hms.Practitioner",
            kind,
            "hms.Practitioner.departments",
            "departments",
            "hms.Practitioner",
            lines[kind],
            "test_many_to_many_count_and_exists",
            THIS_FILE,
        )


def test_refresh_from_db_in_a_loop(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    patients = list(Patient.objects.order_by("id")[:3])
    with _owner(traced) as owner:
        for patient in patients:
            line = _next_line()
            patient.refresh_from_db()
    spans = _db_spans(traced, owner)
    assert len(spans) == 3
    for span in spans:
        assert _orm(span) == {
            "hms.orm.model": "hms.Patient",
            "hms.orm.operation": REFRESH,
            "hms.orm.lazy": False,
            "code.file.path": THIS_FILE,
            "code.line.number": line,
            "code.function.name": "test_refresh_from_db_in_a_loop",
        }


def test_deferred_foreign_key_column(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Encounter

    encounters = list(Encounter.objects.only("id").order_by("id")[:2])
    with _owner(traced) as owner:
        for encounter in encounters:
            line = _next_line()
            encounter.patient_id  # noqa: B018
    lazy = _lazy(_db_spans(traced, owner))
    assert len(lazy) == 2
    for span in lazy:
        assert _orm(span) == _relation_attrs(
            "hms.Encounter",
            DEFERRED,
            "hms.Encounter.patient",
            "patient",
            "hms.Encounter",
            line,
            "test_deferred_foreign_key_column",
            THIS_FILE,
        )


def test_content_type_lookup_inside_a_generic_load_is_not_part_of_it(traced: Any) -> None:
    """ContentType.objects.get_for_id() runs once per process (then Django caches it): counting
    it as one more load of the relation would make findings depend on the cache's warmth."""
    from django.contrib.contenttypes.models import ContentType

    from hms_otel_agent.sample.hms.models import Note

    note = Note.objects.order_by("id").first()
    ContentType.objects.clear_cache()
    with _owner(traced) as owner:
        line = _next_line()
        note.subject  # noqa: B018
    lookup, load = _db_spans(traced, owner)
    assert _orm(lookup) == {
        "hms.orm.model": "contenttypes.ContentType",
        "hms.orm.operation": GET,
        "hms.orm.lazy": False,
        "code.file.path": THIS_FILE,
        "code.line.number": line,
        "code.function.name": "test_content_type_lookup_inside_a_generic_load_is_not_part_of_it",
    }
    assert _orm(load) == _relation_attrs(
        "hms.Note",
        GENERIC_FK,
        "hms.Note.subject",
        "subject",
        "hms.Note",
        line,
        "test_content_type_lookup_inside_a_generic_load_is_not_part_of_it",
        THIS_FILE,
    )


# -- paths through reverse relations, M2M, select_related and prefetches ---------------------------


def _paths(traced: Any, owner: Any) -> set[tuple[str, str, str]]:
    return {
        (s.attributes["hms.orm.relation"], s.attributes["hms.orm.path"], s.attributes["hms.orm.root_model"])
        for s in _lazy(_db_spans(traced, owner))
    }


def test_path_through_a_reverse_relation(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    with _owner(traced) as owner:
        for patient in Patient.objects.order_by("id")[:3]:
            for encounter in patient.encounters.all():
                encounter.practitioner  # noqa: B018
    assert _paths(traced, owner) == {
        ("hms.Patient.encounters", "encounters", "hms.Patient"),
        ("hms.Encounter.practitioner", "encounters__practitioner", "hms.Patient"),
    }


def test_path_through_many_to_many(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Practitioner

    with _owner(traced) as owner:
        for practitioner in Practitioner.objects.order_by("id")[:3]:
            for department in practitioner.departments.all():
                department.facility  # noqa: B018
    assert _paths(traced, owner) == {
        ("hms.Practitioner.departments", "departments", "hms.Practitioner"),
        ("hms.Department.facility", "departments__facility", "hms.Practitioner"),
    }


@pytest.mark.filterwarnings("ignore:Calling select_related\\(\\) with no arguments")  # 6.1, like the admin
def test_path_through_select_related(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Encounter

    with _owner(traced) as owner:
        for encounter in Encounter.objects.select_related("patient").order_by("id")[:N]:
            encounter.patient.insurance  # noqa: B018
        for encounter in Encounter.objects.select_related().order_by("id")[:N]:
            encounter.practitioner.facility.departments.count()
    assert _paths(traced, owner) == {
        ("hms.Patient.insurance", "patient__insurance", "hms.Encounter"),
        ("hms.Facility.departments", "practitioner__facility__departments", "hms.Encounter"),
    }


def test_path_through_a_prefetch(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    with _owner(traced) as owner:
        for patient in Patient.objects.prefetch_related("encounters").order_by("id")[:3]:
            for encounter in patient.encounters.all():
                encounter.practitioner  # noqa: B018
    spans = _db_spans(traced, owner)
    assert _paths(traced, owner) == {
        ("hms.Encounter.practitioner", "encounters__practitioner", "hms.Patient")
    }
    prefetch = [s for s in spans if s.attributes["hms.orm.model"] == "hms.Encounter" and not _lazy([s])]
    assert [s.attributes["hms.orm.operation"] for s in prefetch] == ["query"]


def test_filtering_a_prefetched_relation_is_a_lazy_load(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    with _owner(traced) as owner, _contexts() as log:
        for patient in Patient.objects.prefetch_related("encounters").order_by("id")[:3]:
            list(patient.encounters.all())  # served from the prefetch: no SQL
            list(patient.encounters.filter(status="closed"))  # the prefetch is bypassed
    assert len(_db_spans(traced, owner)) == 2 + 3
    lazy = [c for _, c in log if c is not None and c.lazy]
    assert len(lazy) == 3
    assert all(c.relation == "hms.Patient.encounters" and c.filtered for c in lazy)


# -- not lazy loads -------------------------------------------------------------------------------

OPTIMIZED = [
    f"/patients/optimized/?limit={N}",  # select_related + prefetch_related
    f"/encounters/optimized/?limit={N}",  # select_related('patient__insurance', 'facility')
    f"/appointments/schedule/optimized/?limit={N}",  # Prefetch(..., to_attr=) + prefetch_related
    f"/patients/records/optimized/?limit={N}",  # select_related reverse one-to-one + GenericRelation
    f"/notes/optimized/?limit={N}",  # GenericPrefetch (prefetch_related('subject') on 4.2)
    f"/patients/birthdays/optimized/?limit={N}",  # only() with the field
    "/patients/lookup/optimized/?ids=1,2,3,999999",  # in_bulk
    f"/facilities/optimized/?limit={N}",  # annotate(Count())
    f"/encounters/recent/optimized/?limit={N}",
    f"/patients/cached/optimized/?limit={N}",
]


@pytest.mark.parametrize("path", OPTIMIZED)
def test_optimized_twins_have_no_lazy_loads(traced: Any, path: str) -> None:
    response, server = traced.request(path)
    assert response.status_code == 200
    spans = _db_spans(traced, server)
    assert spans
    assert _lazy(spans) == [], [_orm(s) for s in _lazy(spans)]
    for span in spans:
        assert span.attributes["hms.orm.operation"] in {"query", "count", "exists", "get"}, _orm(span)
        assert "hms.orm.relation" not in span.attributes
        assert span.attributes["code.file.path"] == VIEWS_FILE


def test_bulk_create_update_and_queryset_update_are_plain_queries(traced: Any, rollback: None) -> None:
    from hms_otel_agent.sample.hms.models import Insurance, Patient

    with _owner(traced) as owner:
        created = Insurance.objects.bulk_create(
            [Insurance(provider=f"P{i}", plan_code="X", member_number=str(i)) for i in range(5)]
        )
        for insurance in created:
            insurance.plan_code = "Y"
        Insurance.objects.bulk_update(created, ["plan_code"])
        Insurance.objects.filter(pk__in=[i.pk for i in created]).update(plan_code="Z")
        patient = Patient.objects.order_by("id").first()
        patient.encounters.update(reason="checked")  # related manager, but a write
    spans = _db_spans(traced, owner)
    assert _lazy(spans) == []
    orm = [s for s in spans if "hms.orm.operation" in s.attributes]
    assert {s.attributes["hms.orm.operation"] for s in orm} == {"query"}
    assert {s.attributes["hms.orm.model"] for s in orm} == {"hms.Insurance", "hms.Patient", "hms.Encounter"}
    function = "test_bulk_create_update_and_queryset_update_are_plain_queries"
    assert {s.attributes["code.function.name"] for s in spans} == {function}


def test_cascading_deletes_are_not_lazy_loads(traced: Any, rollback: None) -> None:
    import datetime as dt

    from hms_otel_agent.sample.hms.models import (
        Appointment,
        EmergencyContact,
        Encounter,
        MedicalRecord,
        Note,
        Patient,
        Practitioner,
    )

    practitioner = Practitioner.objects.order_by("id").first()
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    patients = []
    for i in range(2):
        patient = Patient.objects.create(
            mrn=f"DEL-{i}", given_name="A", family_name="B", date_of_birth=dt.date(1980, 1, 1)
        )
        EmergencyContact.objects.create(patient=patient, name="C", phone="1", relationship="x")
        MedicalRecord.objects.create(patient=patient, blood_type="A+")
        encounter = Encounter.objects.create(
            patient=patient,
            facility=practitioner.facility,
            practitioner=practitioner,
            started_at=when,
            reason="r",
            status="open",
        )
        Appointment.objects.create(patient=patient, practitioner=practitioner, scheduled_for=when, status="s")
        Note.objects.create(subject=patient, text="n")
        Note.objects.create(subject=encounter, text="n")
        patients.append(patient)
    with _owner(traced) as owner:
        patients[0].encounters.all().delete()  # collects the related set: not a lazy load either
        patients[0].delete()
        Patient.objects.filter(pk=patients[1].pk).delete()
    spans = _db_spans(traced, owner)
    assert _lazy(spans) == [], [_orm(s) for s in _lazy(spans)]
    deletes = [s for s in spans if s.attributes["db.statement"].startswith("DELETE")]
    assert {s.attributes["hms.orm.model"] for s in deletes} >= {
        "hms.Patient",
        "hms.Encounter",
        "hms.EmergencyContact",
        "hms.MedicalRecord",
        "hms.Appointment",
        "hms.Note",
    }
    assert {s.attributes.get("hms.orm.operation", "query") for s in spans} == {"query"}


def test_prefetch_and_select_related_loops_are_not_lazy(traced: Any) -> None:
    from django.contrib.contenttypes.models import ContentType
    from django.db.models import Prefetch

    from hms_otel_agent.sample.hms.models import Appointment, Encounter, Patient, Practitioner

    ContentType.objects.get_for_model(Patient)  # warm the process-wide content type cache
    with _owner(traced) as owner:
        for patient in Patient.objects.prefetch_related("emergency_contacts", "notes").order_by("id")[:N]:
            list(patient.emergency_contacts.all())
            patient.emergency_contacts.count()
            patient.emergency_contacts.exists()
            list(patient.notes.all())
        for encounter in Encounter.objects.select_related("patient__insurance", "facility")[:N]:
            encounter.patient.insurance  # noqa: B018
            encounter.facility  # noqa: B018
        upcoming = Prefetch(
            "appointments", queryset=Appointment.objects.filter(status="booked"), to_attr="up"
        )
        for practitioner in Practitioner.objects.prefetch_related(upcoming, "departments")[:N]:
            list(practitioner.up)
            list(practitioner.departments.all())
            practitioner.departments.count()
    spans = _db_spans(traced, owner)
    assert len(spans) == 3 + 1 + 3
    assert _lazy(spans) == []


# -- the admin changelist -------------------------------------------------------------------------


@pytest.fixture
def admin_client(traced: Any) -> Iterator[Any]:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_superuser("orm-context-admin", "admin@example.invalid", "unused")
    client = Client()
    client.force_login(user)
    try:
        yield client
    finally:
        client.logout()
        user.delete()


def _changelist(traced: Any, client: Any) -> list[Any]:
    traced.clear()
    response = client.get("/admin/hms/encounter/")
    assert response.status_code == 200
    (server,) = traced.server_spans()
    return _db_spans(traced, server)


def test_admin_changelist_without_list_select_related(traced: Any, admin_client: Any) -> None:
    import inspect

    from hms_otel_agent.sample.hms import admin as sample_admin

    source, start = inspect.getsourcelines(sample_admin.EncounterAdmin.patient_insurance)
    line = start + next(i for i, text in enumerate(source) if "obj.patient.insurance" in text)
    lazy = _lazy(_changelist(traced, admin_client))
    assert lazy
    for span in lazy:
        # the admin's default select_related() joined patient: the fix is the whole path
        assert _orm(span) == _relation_attrs(
            "hms.Patient",
            FORWARD,
            "hms.Patient.insurance",
            "patient__insurance",
            "hms.Encounter",
            line,
            # qualified where Python has co_qualname (3.11+)
            "EncounterAdmin.patient_insurance" if sys.version_info >= (3, 11) else "patient_insurance",
            ADMIN_FILE,
        )


def test_admin_changelist_with_list_select_related(traced: Any, admin_client: Any) -> None:
    from django.contrib import admin

    from hms_otel_agent.sample.hms.models import Encounter

    encounter_admin = admin.site._registry[Encounter]
    encounter_admin.list_select_related = ("patient__insurance",)
    try:
        spans = _changelist(traced, admin_client)
    finally:
        encounter_admin.list_select_related = False
    assert spans
    assert _lazy(spans) == []


# -- concurrency ----------------------------------------------------------------------------------

THREADED = {
    "/encounters/?limit=5": (
        "encounter_list_naive",
        {"hms.Encounter.patient", "hms.Encounter.facility", "hms.Patient.insurance"},
    ),
    "/patients/records/?limit=5": (
        "patient_records_naive",
        {"hms.Patient.medical_record", "hms.Patient.notes"},
    ),
}


def test_concurrent_requests_in_threads_keep_their_own_context(traced: Any) -> None:
    from django.db import connection
    from django.test import Client

    barrier = threading.Barrier(len(THREADED), timeout=30)
    inside: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def request(path: str) -> None:
        waited = False

        def meet_at_first_lazy_load(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any
        ) -> Any:
            nonlocal waited
            raw = current_orm.get()
            own = _resolved(raw)
            if own is not None and own.lazy and not waited:
                waited = True
                barrier.wait()  # both threads are now inside a lazy load, each with its context set
                after = current_orm.get()
                assert after is raw
                inside[path] = (own.relation, own.location.function if own.location else "")
            return execute(sql, params, many, ctx)

        try:
            with connection.execute_wrapper(meet_at_first_lazy_load):
                response = Client().get(path)
            assert response.status_code == 200
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    traced.clear()
    threads = [threading.Thread(target=request, args=(path,)) for path in THREADED]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for path, (view, relations) in THREADED.items():
        assert inside[path][0] in relations and inside[path][1] == view
        route = path.split("?")[0].lstrip("/")
        (server,) = [s for s in traced.server_spans() if s.attributes.get("http.route") == route]
        spans = _db_spans(traced, server)
        assert {s.attributes["hms.orm.relation"] for s in _lazy(spans)} == relations
        assert {s.attributes["code.function.name"] for s in spans} == {view}


def test_sync_to_async_tasks_keep_their_own_context(traced: Any) -> None:
    from asgiref.sync import sync_to_async
    from django.db import connection

    from hms_otel_agent.sample.hms.models import Encounter, Patient

    barrier = threading.Barrier(2, timeout=30)

    def meet(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        raw = current_orm.get()
        own = _resolved(raw)
        if own is not None and own.lazy and barrier.n_waiting < 2 and not getattr(meet_local, "done", False):
            meet_local.done = True
            barrier.wait()
            assert current_orm.get() is raw
        return execute(sql, params, many, ctx)

    meet_local = threading.local()

    def load_patients_of_encounters() -> list[str]:
        mrns = []
        try:
            with connection.execute_wrapper(meet):
                for encounter in Encounter.objects.order_by("id")[:4]:
                    mrns.append(encounter.patient.mrn)
        finally:
            connection.close()
        return mrns

    def load_contacts_of_patients() -> list[int]:
        counts = []
        try:
            with connection.execute_wrapper(meet):
                for patient in Patient.objects.order_by("id")[:4]:
                    counts.append(len(patient.emergency_contacts.all()))
        finally:
            connection.close()
        return counts

    async def task(name: str, func: Callable[[], Any]) -> Any:
        with traced.tracer.start_as_current_span(name) as span:
            await sync_to_async(func, thread_sensitive=False)()
            return span

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(
                task("encounters", load_patients_of_encounters), task("patients", load_contacts_of_patients)
            )
        )

    traced.clear()
    encounters_owner, patients_owner = asyncio.run(main())
    assert {s.attributes["hms.orm.relation"] for s in _lazy(_db_spans(traced, encounters_owner))} == {
        "hms.Encounter.patient"
    }
    assert {s.attributes["hms.orm.relation"] for s in _lazy(_db_spans(traced, patients_owner))} == {
        "hms.Patient.emergency_contacts"
    }
    for owner, function in (
        (encounters_owner, "test_sync_to_async_tasks_keep_their_own_context.load_patients_of_encounters"),
        (patients_owner, "test_sync_to_async_tasks_keep_their_own_context.load_contacts_of_patients"),
    ):
        if sys.version_info < (3, 11):  # no co_qualname: a nested function has its plain name
            function = function.rsplit(".", 1)[-1]
        assert {s.attributes["code.function.name"] for s in _db_spans(traced, owner)} == {function}


# -- Django 6.1 fetch modes -----------------------------------------------------------------------


def _needs_fetch_modes() -> None:
    import django

    if django.VERSION < (6, 1):
        pytest.skip("fetch modes are new in Django 6.1")


def test_fetch_peers_is_a_batched_load_not_a_lazy_one(traced: Any) -> None:
    _needs_fetch_modes()
    from django.db.models import FETCH_PEERS

    from hms_otel_agent.sample.hms.models import Encounter, Note, Patient

    with _owner(traced) as owner:
        encounters = list(Encounter.objects.fetch_mode(FETCH_PEERS).order_by("id")[:N])
        for encounter in encounters:
            encounter.patient.insurance  # noqa: B018  one query for all patients, one for insurances
        patients = list(Patient.objects.fetch_mode(FETCH_PEERS).only("given_name").order_by("id")[:N])
        for patient in patients:
            patient.date_of_birth  # noqa: B018
            with contextlib.suppress(Patient.medical_record.RelatedObjectDoesNotExist):
                patient.medical_record  # noqa: B018
        for note in Note.objects.fetch_mode(FETCH_PEERS).order_by("id")[:N]:
            note.subject  # noqa: B018
    spans = _db_spans(traced, owner)
    assert _lazy(spans) == [], [_orm(s) for s in _lazy(spans)]
    batched = [
        (s.attributes["hms.orm.operation"], s.attributes["hms.orm.relation"], s.attributes["hms.orm.path"])
        for s in spans
        if "hms.orm.relation" in s.attributes
    ]
    assert sorted(batched) == sorted(
        [
            (FORWARD, "hms.Encounter.patient", "patient"),
            (FORWARD, "hms.Patient.insurance", "patient__insurance"),
            (DEFERRED, "hms.Patient.date_of_birth", "date_of_birth"),
            (REVERSE_ONE_TO_ONE, "hms.Patient.medical_record", "medical_record"),
            # one query per content type of the subjects (patients and encounters)
            (GENERIC_FK, "hms.Note.subject", "subject"),
            (GENERIC_FK, "hms.Note.subject", "subject"),
        ]
    )
    assert all(s.attributes["hms.orm.lazy"] is False for s in spans)


def test_fetch_one_is_lazy(traced: Any) -> None:
    _needs_fetch_modes()
    from django.db.models import FETCH_ONE

    from hms_otel_agent.sample.hms.models import Encounter

    with _owner(traced) as owner:
        for encounter in Encounter.objects.fetch_mode(FETCH_ONE).order_by("id")[:3]:
            encounter.patient  # noqa: B018
    lazy = _lazy(_db_spans(traced, owner))
    assert [s.attributes["hms.orm.relation"] for s in lazy] == ["hms.Encounter.patient"] * 3


# -- the agent never breaks the application --------------------------------------------------------


def test_agent_error_in_a_patch_leaves_results_and_exceptions_intact(
    traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    def run() -> Any:
        encounters = list(Encounter.objects.order_by("id")[:4])
        return (
            [(e.pk, e.patient.mrn, e.patient.insurance_id) for e in encounters],
            [len(p.emergency_contacts.all()) for p in Patient.objects.order_by("id")[:4]],
            Patient.objects.get(pk=encounters[0].patient_id).mrn,
            Patient.objects.count(),
            encounters[0].patient.encounters.exists(),
        )

    expected = run()
    before = guard.error_counts().get(django_orm.COMPONENT, 0)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("agent bug")

    monkeypatch.setattr(django_orm, "user_location", broken)
    assert run() == expected
    with pytest.raises(Patient.DoesNotExist):  # the application's own exception, untouched
        Patient.objects.get(pk=-1)
    assert current_orm.get() is None
    assert guard.error_counts().get(django_orm.COMPONENT, 0) > before


def test_application_exception_passes_through_and_context_is_reset(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    with pytest.raises(Patient.DoesNotExist) as info:
        Patient.objects.get(pk=-1)
    assert not any(str(entry.path).endswith("guard.py") for entry in info.traceback)
    assert current_orm.get() is None


def test_uninstall_restores_django_and_install_is_idempotent(traced: Any) -> None:
    from django.db.models import Model, QuerySet
    from django.db.models.fields import related_descriptors

    from hms_otel_agent.sample.hms.models import Patient

    manager_cls = type(Patient.objects.first().encounters)
    patched = (QuerySet.get, QuerySet._fetch_all, Model.refresh_from_db, manager_cls.get_queryset)
    assert all(getattr(f, "_hms_orm_patch", False) for f in patched)
    try:
        django_orm.uninstall()
        assert not getattr(QuerySet.get, "_hms_orm_patch", False)
        assert not getattr(QuerySet._fetch_all, "_hms_orm_patch", False)
        assert not getattr(Model.refresh_from_db, "_hms_orm_patch", False)
        assert not getattr(manager_cls.get_queryset, "_hms_orm_patch", False)
        assert not getattr(related_descriptors.create_reverse_many_to_one_manager, "_hms_orm_patch", False)
        with _contexts() as log:
            list(Patient.objects.first().encounters.all())
        assert [c for _, c in log] == [None, None]
    finally:
        django_orm.install()
        django_orm.install()
    assert all(getattr(f, "_hms_orm_patch", False) for f in (QuerySet.get, manager_cls.get_queryset))
    assert not getattr(QuerySet.get.__wrapped__, "_hms_orm_patch", False)  # not wrapped twice


def test_importing_the_module_does_not_import_django() -> None:
    code = "import sys, hms_otel_agent.instrument.django_orm; print('django' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


class _PatientByKey:
    """A custom descriptor that loads one object per instance with get() (NetBox's
    GenericArrayForeignKey does it with ContentType.get_object_for_this_type)."""

    def __get__(self, instance: Any, owner: Any) -> Any:
        from hms_otel_agent.sample.hms.models import Patient

        return Patient.objects.get(pk=instance.patient_id)


def test_get_run_by_a_descriptor_names_the_reading_line_and_offers_no_in_bulk(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Encounter

    encounters = list(Encounter.objects.order_by("id")[:6])
    Encounter.patient_by_key = _PatientByKey()  # type: ignore[attr-defined]
    try:
        with _owner(traced) as owner:
            for encounter in encounters:
                line = _next_line()
                encounter.patient_by_key  # type: ignore[attr-defined]  # noqa: B018
    finally:
        del Encounter.patient_by_key  # type: ignore[attr-defined]
    spans = _db_spans(traced, owner)
    assert len(spans) == 6
    for span in spans:  # the line that read the attribute, not the descriptor's
        assert (span.attributes["code.line.number"], span.attributes["code.function.name"]) == (
            line,
            "test_get_run_by_a_descriptor_names_the_reading_line_and_offers_no_in_bulk",
        )
    [finding] = [e for e in traced.events(traced.spans()[-1]) if e.get("hms.finding.kind") == "n_plus_one"]
    assert "hms.hint.fix" not in finding  # no loop of keys to batch: never in_bulk
    descriptor = "_PatientByKey.__get__" if sys.version_info >= (3, 11) else "__get__"  # co_qualname
    assert finding["hms.hint"].endswith(
        f"no fix shown: {descriptor} loads one Patient per object; prefetch them on the"
        " list's queryset if the field supports prefetching"
    )


def test_get_in_a_plain_loop_is_not_a_descriptors(traced: Any) -> None:
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    ids = [e.patient_id for e in Encounter.objects.order_by("id")[:6]]
    with _owner(traced):
        for pk in ids:
            Patient.objects.get(pk=pk)
    [finding] = [e for e in traced.events(traced.spans()[-1]) if e.get("hms.finding.kind") == "n_plus_one"]
    assert finding["hms.hint.fix"].startswith("Patient.objects.in_bulk(")


def test_a_list_view_that_sets_model_is_where_its_queryset_comes_from(traced: Any) -> None:
    """Django's generic ListView builds the queryset from `model` (MultipleObjectMixin): the
    place to edit is the view class (Baby Buddy's FeedingList; docs/accuracy.md shape 10)."""
    from django.views.generic import ListView

    from hms_otel_agent.sample.hms.models import Encounter

    class EncounterList(ListView):  # type: ignore[type-arg]
        model = Encounter
        ordering = ("id",)

    queryset = EncounterList().get_queryset()[:6]
    with _owner(traced) as owner:
        for encounter in queryset:
            encounter.patient  # noqa: B018
    [load, *_] = _lazy(_db_spans(traced, owner))
    attributes = load.attributes
    assert attributes["hms.orm.origin.code.file.path"] == THIS_FILE
    assert attributes["hms.orm.origin.code.function.name"].endswith("EncounterList.model")
    [finding] = [e for e in traced.events(traced.spans()[-1]) if e.get("hms.finding.kind") == "n_plus_one"]
    assert "to the Encounter queryset at " in finding["hms.hint"]
    assert finding["hms.hint"].endswith("EncounterList.model")
