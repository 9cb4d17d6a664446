"""Outbound-API views of the sample hospital: each patient's FHIR record and latest heart rates
from a FHIR server (``settings.HMS_SAMPLE_FHIR_URL``; the demo and the tests start the fake one
in `hms_otel_agent.demo.fhir_server`).

``fhir_summaries_naive`` asks per patient, twice, and without a timeout (requests' default):
an HTTP N+1 for ``Patient/{id}`` and one for ``Observation?patient=...``, both calls without a
timeout. ``fhir_summaries_optimized`` returns the same JSON from two searches (``Patient?_id=``
and ``Observation?patient=`` with every id, comma-separated) through httpx with a timeout. The
patients' MRNs are their FHIR ids and their family names go in a chained search parameter: the
tests check that neither leaves the process. The lines that call the server end with
``# outbound: <what>`` (tests find the expected code locations through them).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from .models import Patient

DEFAULT_LIMIT = 10
MAX_LIMIT = 50
TIMEOUT = (3.05, 10)  # (connect, read) seconds

Row = dict[str, Any]


def _base() -> str | None:
    return getattr(settings, "HMS_SAMPLE_FHIR_URL", "") or None


def _patients(request: HttpRequest) -> list[Patient]:
    try:
        limit = max(1, min(int(request.GET.get("limit", DEFAULT_LIMIT)), MAX_LIMIT))
    except ValueError:
        limit = DEFAULT_LIMIT
    return list(Patient.objects.order_by("id")[:limit])


def _row(patient: Patient, resource: Row, observations: list[Row]) -> Row:
    return {
        "id": patient.pk,
        "active": resource.get("active"),
        "practitioner": (resource.get("generalPractitioner") or [{}])[0].get("reference"),
        "heart_rates": [o["valueQuantity"]["value"] for o in observations],
    }


def _unavailable() -> JsonResponse:
    return JsonResponse({"error": "no FHIR server configured (HMS_SAMPLE_FHIR_URL)"}, status=503)


def fhir_summaries_naive(request: HttpRequest) -> JsonResponse:
    import requests

    base = _base()
    if base is None:
        return _unavailable()
    rows = []
    for patient in _patients(request):
        resource = requests.get(f"{base}/Patient/{patient.mrn}").json()  # outbound: Patient read
        params = {"patient": patient.mrn, "patient.family": patient.family_name, "_count": 3}
        found = requests.get(f"{base}/Observation", params=params).json()  # outbound: Observation search
        rows.append(_row(patient, resource, [e["resource"] for e in found.get("entry", [])]))
    return JsonResponse({"results": rows})


def fhir_summaries_optimized(request: HttpRequest) -> JsonResponse:
    import httpx

    base = _base()
    if base is None:
        return _unavailable()
    patients = _patients(request)
    ids = ",".join(p.mrn for p in patients)
    with httpx.Client(base_url=base, timeout=httpx.Timeout(TIMEOUT[1], connect=TIMEOUT[0])) as client:
        read = client.get("/Patient", params={"_id": ids, "_count": len(patients)}).json()
        search = client.get("/Observation", params={"patient": ids, "_count": 3 * len(patients)}).json()
    resources = {e["resource"]["id"]: e["resource"] for e in read.get("entry", [])}
    observations: dict[str, list[Row]] = {}
    for entry in search.get("entry", []):
        subject = entry["resource"]["subject"]["reference"].partition("/")[2]
        observations.setdefault(subject, []).append(entry["resource"])
    rows = [_row(p, resources.get(p.mrn, {}), observations.get(p.mrn, [])) for p in patients]
    return JsonResponse({"results": rows})
