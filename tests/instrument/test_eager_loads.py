"""Unused-eager-loading tracking (instrument/eager_loads.py) on real PostgreSQL through the sample
models: which relations count as read, what is never tracked, and that tracked instances behave
as before (pickle, copy, equality)."""

from __future__ import annotations

import copy
import gc
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from hms_otel_agent.instrument import eager_loads
from hms_otel_agent.signals.eager_loading import PREFETCH_RELATED, SELECT_RELATED, EagerOutcome


@pytest.fixture
def tracking(traced: Any) -> Iterator[None]:
    gc.collect()  # querysets of earlier tests in reference cycles (prefetches point back)
    eager_loads.reset()
    eager_loads.configure(True)
    yield
    eager_loads.configure(False)
    gc.collect()
    eager_loads.reset()


def outcomes() -> list[EagerOutcome]:
    gc.collect()
    found = list(eager_loads._finished)
    eager_loads._finished.clear()
    return found


def test_select_related_reads_are_seen_per_path(tracking: None) -> None:
    from hms_otel_agent.sample.hms.models import Encounter

    encounters = list(Encounter.objects.select_related("patient__insurance", "facility").order_by("id")[:5])
    for e in encounters:
        e.patient  # noqa: B018 - read patient, never facility nor insurance
    del encounters, e
    (outcome,) = outcomes()
    assert outcome.root_model == "hms.Encounter"
    assert set(outcome.relations) == {
        ("patient", SELECT_RELATED),
        ("patient__insurance", SELECT_RELATED),
        ("facility", SELECT_RELATED),
    }
    assert outcome.used == {"patient"}
    assert (
        outcome.location is not None
        and outcome.location.function == "test_select_related_reads_are_seen_per_path"
    )


def test_nested_reads_and_prefetched_managers_are_seen(tracking: None) -> None:
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    patients = list(Patient.objects.prefetch_related("emergency_contacts", "encounters").order_by("id")[:4])
    for p in patients:
        list(p.emergency_contacts.all())
    encounters = list(Encounter.objects.select_related("patient__insurance").order_by("id")[:4])
    for e in encounters:
        e.patient.insurance  # noqa: B018
    del patients, encounters, p, e
    by_model = {o.root_model: o for o in outcomes()}
    assert by_model["hms.Patient"].used == {"emergency_contacts"}
    assert ("encounters", PREFETCH_RELATED) in by_model["hms.Patient"].relations
    assert by_model["hms.Encounter"].used == {"patient", "patient__insurance"}


def test_django_internals_do_not_count_as_reads(tracking: None) -> None:
    from django.db.models import prefetch_related_objects

    from hms_otel_agent.sample.hms.models import Encounter, Patient

    encounters = list(Encounter.objects.select_related("patient").order_by("id")[:3])
    assert all(Encounter.patient.field.is_cached(e) for e in encounters)  # `in`
    assert encounters[0]._state.fields_cache.get("patient") is not None  # .get()
    patients = list(Patient.objects.prefetch_related("encounters").order_by("id")[:3])
    prefetch_related_objects(patients, "encounters__facility")  # walks the prefetched level with .get()
    del encounters, patients
    assert {o.root_model: o.used for o in outcomes()} == {
        "hms.Encounter": frozenset(),
        "hms.Patient": frozenset(),
    }


def test_what_is_not_tracked(tracking: None) -> None:
    from django.db.models import Prefetch

    from hms_otel_agent.sample.hms.models import Encounter, Patient

    list(Patient.objects.order_by("id")[:3])  # no eager relation
    list(Encounter.objects.select_related("patient").values("id")[:3])  # not model instances
    to_attr = Prefetch("encounters", queryset=Encounter.objects.all(), to_attr="encounter_list")
    list(Patient.objects.prefetch_related(to_attr).order_by("id")[:3])  # a plain attribute
    eager_loads.configure(False)
    list(Encounter.objects.select_related("patient").order_by("id")[:3])  # tracking off
    assert outcomes() == []


def test_tracked_instances_pickle_copy_and_compare_as_before(tracking: None) -> None:
    from hms_otel_agent.sample.hms.models import Encounter, Patient

    (encounter,) = Encounter.objects.select_related("patient").order_by("id")[:1]
    (patient,) = Patient.objects.prefetch_related("encounters").order_by("id")[:1]
    assert type(encounter._state.fields_cache) is not dict  # tracked
    for obj in (encounter, patient):
        clone = pickle.loads(pickle.dumps(obj))
        assert clone == obj
        assert type(clone._state.fields_cache) is dict
        assert type(getattr(clone, "_prefetched_objects_cache", {})) is dict
        assert b"EagerLoad" not in pickle.dumps(obj)
        assert type(copy.copy(obj)._state.fields_cache) is dict
    assert pickle.loads(pickle.dumps(encounter)).patient == encounter.patient
    assert [e.pk for e in patient.encounters.all()] == [
        e.pk for e in pickle.loads(pickle.dumps(patient)).encounters.all()
    ]


def test_instances_beyond_the_budget_are_not_tracked(tracking: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from hms_otel_agent.sample.hms.models import Encounter

    monkeypatch.setattr(eager_loads, "MAX_TRACKED_OBJECTS", 3)
    encounters = list(Encounter.objects.select_related("patient").order_by("id")[:6])
    assert [type(e._state.fields_cache) is dict for e in encounters] == [False] * 3 + [True] * 3
    encounters[5].patient  # noqa: B018 - untracked: not seen
    del encounters
    (outcome,) = outcomes()
    assert outcome.used == frozenset()


def test_an_error_in_tracking_never_reaches_the_app(tracking: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from hms_otel_agent import guard
    from hms_otel_agent.sample.hms.models import Encounter

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    before = guard.error_counts().get(eager_loads.COMPONENT, 0)
    monkeypatch.setattr(eager_loads, "_relations", broken)
    encounters = list(Encounter.objects.select_related("patient").order_by("id")[:2])
    assert encounters[0].patient is not None
    assert guard.error_counts()[eager_loads.COMPONENT] == before + 1
