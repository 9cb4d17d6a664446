"""JSON endpoints of the sample hospital.

Each ``*_naive`` view has an ``*_optimized`` twin that returns the same JSON without the N+1.
In the naive views a trailing marker comment sits on exactly the line whose frame runs each lazy
load ("lazy: <relation>") or cache read in a loop ("cache-read: <key pattern>"); tests find the
expected code locations through them (see ``markers.py``). Keep those lines single statements.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import BadRequest
from django.db import connection
from django.db.models import Count, Prefetch, Q
from django.http import Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import get_resolver
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import (
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

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
SUMMARY_TIMEOUT_S = 3600
RECENT_KEY = "encounters:recent"
RECENT_TIMEOUT_S = 1800
PATIENT_CACHE_PARTS = (
    "summary",
    "profile",
    "encounters",
    "appointments",
    "notes",
    "contacts",
    "record",
    "insurance",
    "timeline",
    "billing",
)

Row = dict[str, Any]


# -- request parsing ------------------------------------------------------------------------------


def _limit(request: HttpRequest) -> int:
    raw = request.GET.get("limit", "").strip()
    if not raw:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    return max(1, min(value, MAX_LIMIT))


def _ids(request: HttpRequest) -> list[int]:
    raw = request.GET.get("ids", "")
    try:
        ids = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise BadRequest("ids must be comma-separated integers") from exc
    return ids[:MAX_LIMIT]


# -- serialisation (pure: never touches a relation that is not passed in) -------------------------


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _name(person: Patient | Practitioner) -> str:
    return f"{person.given_name} {person.family_name}"


def _insurance(insurance: Insurance | None) -> Row | None:
    if insurance is None:
        return None
    return {"provider": insurance.provider, "plan_code": insurance.plan_code}


def _contact(contact: EmergencyContact) -> Row:
    return {"name": contact.name, "phone": contact.phone, "relationship": contact.relationship}


def _note(note: Note) -> Row:
    return {"id": note.pk, "text": note.text, "created_at": _iso(note.created_at)}


def _patient_row(patient: Patient, insurance: Insurance | None, contacts: list[EmergencyContact]) -> Row:
    return {
        "id": patient.pk,
        "mrn": patient.mrn,
        "name": _name(patient),
        "insurance": _insurance(insurance),
        "emergency_contacts": [_contact(c) for c in contacts],
    }


def _encounter_row(
    encounter: Encounter, patient: Patient, facility: Facility, insurance: Insurance | None
) -> Row:
    return {
        "id": encounter.pk,
        "started_at": _iso(encounter.started_at),
        "reason": encounter.reason,
        "status": encounter.status,
        "patient": {"id": patient.pk, "mrn": patient.mrn, "name": _name(patient)},
        "facility": {"id": facility.pk, "name": facility.name},
        "insurance": _insurance(insurance),
    }


def _schedule_row(
    practitioner: Practitioner, upcoming: list[Appointment], departments: list[Department]
) -> Row:
    return {
        "id": practitioner.pk,
        "name": _name(practitioner),
        "specialty": practitioner.specialty,
        "departments": [d.name for d in departments],
        "upcoming": [
            {
                "id": a.pk,
                "patient_id": a.patient_id,
                "scheduled_for": _iso(a.scheduled_for),
                "status": a.status,
                "duration_minutes": a.duration_minutes,
            }
            for a in upcoming
        ],
    }


def _record_row(patient: Patient, record: MedicalRecord | None, notes: list[Note]) -> Row:
    return {
        "id": patient.pk,
        "mrn": patient.mrn,
        "medical_record": (
            None if record is None else {"blood_type": record.blood_type, "allergies": record.allergies}
        ),
        "notes": [_note(n) for n in notes],
    }


def _subject(subject: object) -> Row | None:
    if isinstance(subject, Patient):
        return {"type": "patient", "id": subject.pk, "mrn": subject.mrn}
    if isinstance(subject, Encounter):
        return {"type": "encounter", "id": subject.pk, "status": subject.status}
    return None


def _birthday_row(patient: Patient, born: dt.date) -> Row:
    return {"id": patient.pk, "name": _name(patient), "date_of_birth": born.isoformat()}


def _lookup_row(patient: Patient) -> Row:
    return {"id": patient.pk, "mrn": patient.mrn, "name": _name(patient)}


def _facility_row(facility: Facility, encounter_count: int) -> Row:
    return {"id": facility.pk, "name": facility.name, "city": facility.city, "encounters": encounter_count}


def _raw_encounter(row: tuple[Any, ...]) -> Row:
    return {"id": row[0], "started_at": _iso(row[2]), "reason": row[3], "status": row[4]}


def _patient_summary(patient: Patient) -> Row:
    """The cached summary; ``patient.insurance`` must already be loaded (select_related)."""
    return {
        "id": patient.pk,
        "mrn": patient.mrn,
        "name": _name(patient),
        "date_of_birth": _iso(patient.date_of_birth),
        "insurance": _insurance(patient.insurance),
    }


def _summary_key(pk: int) -> str:
    return f"patient:{pk}:summary"


# -- 1. /patients/: forward FK (nullable) + reverse FK --------------------------------------------


def patient_list_naive(request: HttpRequest) -> JsonResponse:
    patients = Patient.objects.order_by("id")[: _limit(request)]
    results = []
    for p in patients:
        insurance = p.insurance  # lazy: hms.Patient.insurance
        contacts = list(p.emergency_contacts.all())  # lazy: hms.Patient.emergency_contacts
        results.append(_patient_row(p, insurance, contacts))
    return JsonResponse({"results": results})


def patient_list_optimized(request: HttpRequest) -> JsonResponse:
    patients = (
        Patient.objects.select_related("insurance")
        .prefetch_related("emergency_contacts")
        .order_by("id")[: _limit(request)]
    )
    results = [_patient_row(p, p.insurance, list(p.emergency_contacts.all())) for p in patients]
    return JsonResponse({"results": results})


# -- 2. /encounters/: two relations interleaved in one loop + a nested path -----------------------


def encounter_list_naive(request: HttpRequest) -> JsonResponse:
    encounters = Encounter.objects.order_by("id")[: _limit(request)]
    results = []
    for e in encounters:
        patient = e.patient  # lazy: hms.Encounter.patient
        facility = e.facility  # lazy: hms.Encounter.facility
        insurance = e.patient.insurance  # lazy: hms.Patient.insurance
        results.append(_encounter_row(e, patient, facility, insurance))
    return JsonResponse({"results": results})


def encounter_list_optimized(request: HttpRequest) -> JsonResponse:
    encounters = Encounter.objects.select_related("patient__insurance", "facility").order_by("id")[
        : _limit(request)
    ]
    results = [_encounter_row(e, e.patient, e.facility, e.patient.insurance) for e in encounters]
    return JsonResponse({"results": results})


# -- 3. /appointments/schedule/: filtered reverse FK in a loop + many-to-many ---------------------


def _upcoming_cutoff() -> dt.datetime:
    """Start of today (UTC): stable within a day, so the naive and optimized twins agree."""
    return timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)


def schedule_naive(request: HttpRequest) -> JsonResponse:
    cutoff = _upcoming_cutoff()
    practitioners = Practitioner.objects.order_by("id")[: _limit(request)]
    results = []
    for pr in practitioners:
        appointments = pr.appointments.filter(scheduled_for__gte=cutoff)
        upcoming = list(appointments)  # lazy: hms.Practitioner.appointments
        departments = list(pr.departments.all())  # lazy: hms.Practitioner.departments
        results.append(_schedule_row(pr, upcoming, departments))
    return JsonResponse({"results": results})


def schedule_optimized(request: HttpRequest) -> JsonResponse:
    upcoming = Prefetch(
        "appointments",
        queryset=Appointment.objects.filter(scheduled_for__gte=_upcoming_cutoff()),
        to_attr="upcoming",
    )
    practitioners = Practitioner.objects.prefetch_related(upcoming, "departments").order_by("id")[
        : _limit(request)
    ]
    results = [_schedule_row(pr, pr.upcoming, list(pr.departments.all())) for pr in practitioners]
    return JsonResponse({"results": results})


# -- 4. /patients/records/: reverse one-to-one + generic relation ---------------------------------


def patient_records_naive(request: HttpRequest) -> JsonResponse:
    patients = Patient.objects.order_by("id")[: _limit(request)]
    results = []
    for p in patients:
        try:
            record = p.medical_record  # lazy: hms.Patient.medical_record
        except MedicalRecord.DoesNotExist:
            record = None
        notes = list(p.notes.all())  # lazy: hms.Patient.notes
        results.append(_record_row(p, record, notes))
    return JsonResponse({"results": results})


def _loaded_record(patient: Patient) -> MedicalRecord | None:
    try:
        return patient.medical_record
    except MedicalRecord.DoesNotExist:
        return None


def patient_records_optimized(request: HttpRequest) -> JsonResponse:
    patients = (
        Patient.objects.select_related("medical_record")
        .prefetch_related("notes")
        .order_by("id")[: _limit(request)]
    )
    results = [_record_row(p, _loaded_record(p), list(p.notes.all())) for p in patients]
    return JsonResponse({"results": results})


# -- 5. /notes/: generic foreign key --------------------------------------------------------------


def note_list_naive(request: HttpRequest) -> JsonResponse:
    notes = Note.objects.order_by("id")[: _limit(request)]
    results = []
    for n in notes:
        subject = n.subject  # lazy: hms.Note.subject
        results.append({**_note(n), "subject": _subject(subject)})
    return JsonResponse({"results": results})


def _subject_prefetch() -> Any:
    try:
        from django.contrib.contenttypes.prefetch import GenericPrefetch
    except ImportError:  # Django 4.2
        return "subject"
    return GenericPrefetch("subject", [Patient.objects.all(), Encounter.objects.all()])


def note_list_optimized(request: HttpRequest) -> JsonResponse:
    notes = Note.objects.prefetch_related(_subject_prefetch()).order_by("id")[: _limit(request)]
    results = [{**_note(n), "subject": _subject(n.subject)} for n in notes]
    return JsonResponse({"results": results})


# -- 6. /patients/birthdays/: deferred field loaded per row ---------------------------------------


def birthdays_naive(request: HttpRequest) -> JsonResponse:
    patients = Patient.objects.only("given_name", "family_name").order_by("id")[: _limit(request)]
    results = []
    for p in patients:
        born = p.date_of_birth  # lazy: hms.Patient.date_of_birth
        results.append(_birthday_row(p, born))
    return JsonResponse({"results": results})


def birthdays_optimized(request: HttpRequest) -> JsonResponse:
    patients = Patient.objects.only("given_name", "family_name", "date_of_birth").order_by("id")[
        : _limit(request)
    ]
    results = [_birthday_row(p, p.date_of_birth) for p in patients]
    return JsonResponse({"results": results})


# -- 7. /patients/lookup/?ids=1,2,3: .get() in a loop ---------------------------------------------


def patient_lookup_naive(request: HttpRequest) -> JsonResponse:
    results, missing = [], []
    for pk in _ids(request):
        try:
            patient = Patient.objects.get(pk=pk)  # lazy: get hms.Patient
        except Patient.DoesNotExist:
            missing.append(pk)
            continue
        results.append(_lookup_row(patient))
    return JsonResponse({"results": results, "missing": missing})


def patient_lookup_optimized(request: HttpRequest) -> JsonResponse:
    ids = _ids(request)
    found = Patient.objects.in_bulk(ids)
    results = [_lookup_row(found[pk]) for pk in ids if pk in found]
    missing = [pk for pk in ids if pk not in found]
    return JsonResponse({"results": results, "missing": missing})


# -- 8. /facilities/: related-manager count() in a loop -------------------------------------------


def facility_list_naive(request: HttpRequest) -> JsonResponse:
    facilities = Facility.objects.order_by("id")[: _limit(request)]
    results = []
    for f in facilities:
        encounter_count = f.encounters.count()  # lazy: count hms.Facility.encounters
        results.append(_facility_row(f, encounter_count))
    return JsonResponse({"results": results})


def facility_list_optimized(request: HttpRequest) -> JsonResponse:
    facilities = Facility.objects.annotate(encounter_count=Count("encounters")).order_by("id")[
        : _limit(request)
    ]
    results = [_facility_row(f, f.encounter_count) for f in facilities]
    return JsonResponse({"results": results})


# -- 9. /reports/raw-encounters/: raw SQL, one query per patient ----------------------------------

RAW_PATIENT_IDS = "SELECT id FROM hms_patient ORDER BY id LIMIT %s"
RAW_ENCOUNTERS_OF_ONE = (
    "SELECT id, patient_id, started_at, reason, status FROM hms_encounter WHERE patient_id = %s ORDER BY id"
)
RAW_ENCOUNTERS_OF_MANY = (
    "SELECT id, patient_id, started_at, reason, status FROM hms_encounter"
    " WHERE patient_id = ANY(%s) ORDER BY patient_id, id"
)


def raw_encounters_naive(request: HttpRequest) -> JsonResponse:
    results = []
    with connection.cursor() as cursor:
        cursor.execute(RAW_PATIENT_IDS, [_limit(request)])
        patient_ids = [row[0] for row in cursor.fetchall()]
        for patient_id in patient_ids:
            cursor.execute(RAW_ENCOUNTERS_OF_ONE, [patient_id])  # lazy: raw hms_encounter
            encounters = [_raw_encounter(row) for row in cursor.fetchall()]
            results.append({"patient_id": patient_id, "encounters": encounters})
    return JsonResponse({"results": results})


def raw_encounters_optimized(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute(RAW_PATIENT_IDS, [_limit(request)])
        patient_ids = [row[0] for row in cursor.fetchall()]
        by_patient: dict[int, list[Row]] = {pk: [] for pk in patient_ids}
        if patient_ids:
            cursor.execute(RAW_ENCOUNTERS_OF_MANY, [patient_ids])
            for row in cursor.fetchall():
                by_patient[row[1]].append(_raw_encounter(row))
    results = [{"patient_id": pk, "encounters": by_patient[pk]} for pk in patient_ids]
    return JsonResponse({"results": results})


# -- 10. /patients/<pk>/summary/: correct cache-aside ---------------------------------------------


def patient_summary(request: HttpRequest, pk: int) -> JsonResponse:
    key = _summary_key(pk)
    summary = cache.get(key)
    if summary is None:
        summary = _patient_summary(get_object_or_404(Patient.objects.select_related("insurance"), pk=pk))
        cache.set(key, summary, timeout=SUMMARY_TIMEOUT_S)
    return JsonResponse(summary)


# -- 11. /patients/cached/: single-key cache reads in a loop --------------------------------------


def cached_patients_naive(request: HttpRequest) -> JsonResponse:
    patients = Patient.objects.select_related("insurance").order_by("id")[: _limit(request)]
    results = []
    for p in patients:
        summary = cache.get(f"patient:{p.pk}:summary")  # cache-read: patient:{id}:summary
        if summary is None:
            summary = _patient_summary(p)
            cache.set(_summary_key(p.pk), summary, timeout=SUMMARY_TIMEOUT_S)
        results.append(summary)
    return JsonResponse({"results": results})


def cached_patients_optimized(request: HttpRequest) -> JsonResponse:
    patients = list(Patient.objects.select_related("insurance").order_by("id")[: _limit(request)])
    cached = cache.get_many([_summary_key(p.pk) for p in patients])
    results, missing = [], {}
    for p in patients:
        summary = cached.get(_summary_key(p.pk))
        if summary is None:
            summary = missing[_summary_key(p.pk)] = _patient_summary(p)
        results.append(summary)
    if missing:
        cache.set_many(missing, timeout=SUMMARY_TIMEOUT_S)
    return JsonResponse({"results": results})


# -- 12. /encounters/recent/: a cache write without expiry ----------------------------------------


def _recent_encounters(limit: int) -> list[Row]:
    encounters = Encounter.objects.select_related("patient").order_by("-started_at", "-id")[:limit]
    return [
        {
            "id": e.pk,
            "started_at": _iso(e.started_at),
            "status": e.status,
            "patient": {"id": e.patient.pk, "mrn": e.patient.mrn},
        }
        for e in encounters
    ]


def recent_encounters_naive(request: HttpRequest) -> JsonResponse:
    recent = _recent_encounters(_limit(request))
    cache.set(RECENT_KEY, recent, timeout=None)
    return JsonResponse({"results": recent})


def recent_encounters_optimized(request: HttpRequest) -> JsonResponse:
    recent = _recent_encounters(_limit(request))
    cache.set(RECENT_KEY, recent, timeout=RECENT_TIMEOUT_S)
    return JsonResponse({"results": recent})


# -- 13. /patients/<pk>/flaky-summary/: repeated miss, miss without fill --------------------------


def flaky_summary(request: HttpRequest, pk: int) -> JsonResponse:
    key = f"patient:{pk}:profile"
    profile = None
    for _attempt in range(2):
        profile = cache.get(key)  # cache-read: patient:{id}:profile
        if profile is not None:
            break
    if profile is None:
        # Never written back: every request misses twice and then queries the database.
        profile = _patient_summary(get_object_or_404(Patient.objects.select_related("insurance"), pk=pk))
    return JsonResponse(profile)


# -- 14. POST /patients/<pk>/touch/: invalidation storm -------------------------------------------


def _patient_cache_keys(pk: int) -> list[str]:
    return [f"patient:{pk}:{part}" for part in PATIENT_CACHE_PARTS]


@csrf_exempt
@require_POST
def touch_patient_naive(request: HttpRequest, pk: int) -> JsonResponse:
    if not Patient.objects.filter(pk=pk).exists():
        raise Http404("no such patient")
    keys = _patient_cache_keys(pk)
    for key in keys:
        cache.delete(key)
    return JsonResponse({"id": pk, "invalidated": keys})


@csrf_exempt
@require_POST
def touch_patient_optimized(request: HttpRequest, pk: int) -> JsonResponse:
    if not Patient.objects.filter(pk=pk).exists():
        raise Http404("no such patient")
    keys = _patient_cache_keys(pk)
    cache.delete_many(keys)
    return JsonResponse({"id": pk, "invalidated": keys})


# -- 15. /stats/: exactly 3 SQL queries and 2 cache commands --------------------------------------

STATS_HITS_KEY = "hms:stats:hits"
STATS_LAST_KEY = "hms:stats:last"


def _bump_hits() -> tuple[int, str | None]:
    """Count the visit; also return ``hms:stats:last``, a note an operator may SET (usually unset)."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        # The raw client sends exactly two commands, INCRBY (redis-py's incr) and GET; Django's
        # cache.incr() would add an EXISTS first.
        client = backend._cache.get_client(write=True)
        hits = int(client.incr(STATS_HITS_KEY))
        last = client.get(STATS_LAST_KEY)
        return hits, last.decode() if isinstance(last, bytes) else last
    backend.add(STATS_HITS_KEY, 0, timeout=86400)
    return backend.incr(STATS_HITS_KEY), backend.get(STATS_LAST_KEY)


def stats(request: HttpRequest) -> JsonResponse:
    counts = {
        "patients": Patient.objects.count(),
        "encounters": Encounter.objects.count(),
        "appointments": Appointment.objects.count(),
    }
    hits, last = _bump_hits()
    return JsonResponse({**counts, "hits": hits, "last": last})


# -- 16. /health/ and the index -------------------------------------------------------------------


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def index(request: HttpRequest) -> JsonResponse:
    routes = [str(p.pattern) for p in get_resolver().url_patterns]
    return JsonResponse({"endpoints": ["/" + r for r in routes if not r.startswith("admin/")]})


# -- 17. failing endpoints ------------------------------------------------------------------------


@csrf_exempt
@require_POST
def duplicate_patient(request: HttpRequest) -> JsonResponse:
    """Copy a patient (``?pk=``, default the lowest id): the unique MRN makes the INSERT fail (500)."""
    raw_pk = request.GET.get("pk") or request.POST.get("pk")
    patients = Patient.objects.order_by("id")
    source = patients.filter(pk=int(raw_pk)).first() if raw_pk and raw_pk.isdigit() else patients.first()
    if source is None:
        raise Http404("no patient to duplicate; run seed_hms first")
    copy = Patient.objects.create(
        mrn=source.mrn,
        given_name=source.given_name,
        family_name=source.family_name,
        date_of_birth=source.date_of_birth,
        email=source.email,
        phone=source.phone,
        national_id=source.national_id,
    )
    return JsonResponse({"id": copy.pk}, status=201)


def boom(request: HttpRequest) -> JsonResponse:
    mrn = request.GET.get("mrn", "")
    raise ValueError(f"bad patient {mrn}")


# -- 18. /patients/search/?q=&mrn=: identifying values in the query string ------------------------


def patient_search(request: HttpRequest) -> JsonResponse:
    q = request.GET.get("q", "").strip()
    mrn = request.GET.get("mrn", "").strip()
    patients = Patient.objects.order_by("id")
    if q:
        patients = patients.filter(Q(given_name__icontains=q) | Q(family_name__icontains=q))
    if mrn:
        patients = patients.filter(mrn__icontains=mrn)
    results = [_birthday_row(p, p.date_of_birth) | {"mrn": p.mrn} for p in patients[: _limit(request)]]
    return JsonResponse({"results": results})


# -- 19. /patients/export/: every row at once (unbounded, wide) vs a keyset page -----------------


def patient_export_naive(request: HttpRequest) -> JsonResponse:
    patients = Patient.objects.order_by("id")  # no LIMIT: every patient, every column
    results = [{"id": p.pk, "mrn": p.mrn, "name": _name(p)} for p in patients]
    return JsonResponse({"results": results, "next": None})


def patient_export_optimized(request: HttpRequest) -> JsonResponse:
    """One keyset page (``?after=<last id>&limit=``) of only the columns used; ``next`` is the
    ``after`` of the following page."""
    raw_after = request.GET.get("after", "").strip()
    after = int(raw_after) if raw_after.isdigit() else 0
    limit = _limit(request)
    page = list(
        Patient.objects.filter(pk__gt=after)
        .order_by("id")
        .values("id", "mrn", "given_name", "family_name")[:limit]
    )
    results = [
        {"id": p["id"], "mrn": p["mrn"], "name": f"{p['given_name']} {p['family_name']}"} for p in page
    ]
    return JsonResponse({"results": results, "next": page[-1]["id"] if len(page) == limit else None})


# -- 20. /encounters/search/?reason=: a filter on a column without an index -----------------------


def encounter_search(request: HttpRequest) -> JsonResponse:
    """Encounters with exactly this reason. ``hms_encounter.reason`` has no index: on a large table
    this is a sequential scan (the slow-query finding's plan says which index to add)."""
    reason = request.GET.get("reason", "").strip()
    encounters = Encounter.objects.filter(reason=reason).values("id", "status", "started_at")[
        : _limit(request)
    ]
    return JsonResponse({"results": [{**e, "started_at": _iso(e["started_at"])} for e in encounters]})


# -- 21. /patients/cached/lookup/?ids=: cache.get -> SELECT -> cache.set per patient (MN+1) --------


def cached_lookup_naive(request: HttpRequest) -> JsonResponse:
    results = []
    for pk in _ids(request):
        summary = cache.get(_summary_key(pk))
        if summary is None:
            patient = Patient.objects.select_related("insurance").filter(pk=pk).first()
            if patient is None:
                continue
            summary = _patient_summary(patient)
            cache.set(_summary_key(pk), summary, timeout=SUMMARY_TIMEOUT_S)
        results.append(summary)
    return JsonResponse({"results": results})


def cached_lookup_optimized(request: HttpRequest) -> JsonResponse:
    ids = _ids(request)
    cached = cache.get_many([_summary_key(pk) for pk in ids])
    missing = [pk for pk in ids if _summary_key(pk) not in cached]
    found = Patient.objects.select_related("insurance").in_bulk(missing) if missing else {}
    fresh = {_summary_key(pk): _patient_summary(p) for pk, p in found.items()}
    if fresh:
        cache.set_many(fresh, timeout=SUMMARY_TIMEOUT_S)
    cached.update(fresh)
    return JsonResponse({"results": [cached[_summary_key(pk)] for pk in ids if _summary_key(pk) in cached]})


# -- 22. /appointments/upcoming/: a select_related relation that is never read --------------------


def _appointment_row(appointment: Appointment, patient: Patient) -> Row:
    return {
        "id": appointment.pk,
        "scheduled_for": _iso(appointment.scheduled_for),
        "patient": {"id": patient.pk, "name": _name(patient)},
        "practitioner_id": appointment.practitioner_id,
    }


def upcoming_appointments_naive(request: HttpRequest) -> JsonResponse:
    appointments = Appointment.objects.select_related("patient", "practitioner").filter(
        scheduled_for__gte=_upcoming_cutoff()
    )[: _limit(request)]
    return JsonResponse({"results": [_appointment_row(a, a.patient) for a in appointments]})


def upcoming_appointments_optimized(request: HttpRequest) -> JsonResponse:
    appointments = Appointment.objects.select_related("patient").filter(
        scheduled_for__gte=_upcoming_cutoff()
    )[: _limit(request)]
    return JsonResponse({"results": [_appointment_row(a, a.patient) for a in appointments]})
