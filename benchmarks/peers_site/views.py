"""The four page types of the peer benchmark (issue 18), on the sample hospital's models.

``/stats/`` (3 SQL + 2 Redis commands) is the sample's own view; the others are here so that
their query counts are exactly the ones the benchmark names.
"""

from __future__ import annotations

from django.core.cache import cache
from django.http import HttpRequest, JsonResponse

from hms_otel_agent.sample.hms.models import Encounter

ROWS = 50
CACHE_READS = 10


def _row(encounter: Encounter) -> dict[str, object]:
    patient = encounter.patient
    return {"id": encounter.pk, "status": encounter.status, "patient": {"id": patient.pk, "mrn": patient.mrn}}


def encounter_list(request: HttpRequest) -> JsonResponse:
    """50 rows and a lazy ``Encounter.patient`` per row: 1 + 50 queries (an N+1)."""
    return JsonResponse({"results": [_row(e) for e in Encounter.objects.order_by("id")[:ROWS]]})


def encounter_list_optimized(request: HttpRequest) -> JsonResponse:
    """The same JSON in one query."""
    encounters = Encounter.objects.select_related("patient").order_by("id")[:ROWS]
    return JsonResponse({"results": [_row(e) for e in encounters]})


def cache_reads(request: HttpRequest) -> JsonResponse:
    """10 single-key ``cache.get`` (hits once the first request has filled them), no SQL."""
    values = []
    for index in range(CACHE_READS):
        key = f"bench:summary:{index}"
        value = cache.get(key)
        if value is None:
            value = {"index": index, "text": "x" * 200}
            cache.set(key, value, timeout=None)
        values.append(value)
    return JsonResponse({"results": values})
