"""Pages of the outpatient clinic: each naive page and its optimized twin render the same content.

Trailing ``# lazy: <target>`` comments mark the line whose frame runs the repeated query
(``markers.py``); loads that run in a template, a serializer, a form or a model method are marked
there. Keep marked lines single statements.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import BadRequest
from django.core.paginator import Paginator
from django.db.models import Count, Exists, Max, OuterRef, Prefetch
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .forms import VisitForm, VisitFormOptimized
from .models import Clinician, Handover, Medication, Order, Site, Visit, Ward

PAGE_SIZE = 10
EXPORT_CHUNK = 10
MAX_CODES = 100
DEFAULT_SITE = "NTH"

Row = dict[str, Any]


def _codes(request: HttpRequest, name: str) -> list[str]:
    raw = request.GET.get(name, "")
    codes = [part.strip() for part in raw.split(",") if part.strip()]
    if any(len(c) > 20 for c in codes):
        raise BadRequest(f"{name}: codes are at most 20 characters")
    return codes[:MAX_CODES]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


# -- 1. /clinic/visits/?page=N: a paginated list whose template reads a property of two relations
#       and the tags (django-taggit) of each row ---------------------------------------------------


def visit_list_naive(request: HttpRequest) -> HttpResponse:
    visits = Visit.objects.order_by("id")
    page = Paginator(visits, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "clinic/visit_list.html", {"page": page})


def visit_list_optimized(request: HttpRequest) -> HttpResponse:
    visits = (
        Visit.objects.select_related("patient", "ward__site", "clinician")
        .prefetch_related("tags")
        .order_by("id")
    )
    page = Paginator(visits, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "clinic/visit_list.html", {"page": page})


# -- 2. /clinic/wards/board/: a fragment included twice, reading a forward FK and a count ---------


def ward_board_naive(request: HttpRequest) -> HttpResponse:
    wards = Ward.objects.order_by("id")
    return render(
        request, "clinic/ward_board.html", {"wards": wards, "fragment": "clinic/_ward_summary.html"}
    )


def ward_board_optimized(request: HttpRequest) -> HttpResponse:
    wards = Ward.objects.select_related("site").annotate(clinicians_count=Count("clinicians")).order_by("id")
    fragment = "clinic/_ward_summary_optimized.html"
    return render(request, "clinic/ward_board.html", {"wards": list(wards), "fragment": fragment})


# -- 3. /clinic/handovers/: a GenericForeignKey reached through a reverse foreign key -------------


def _handover_row(handover: Handover, items: list[Any]) -> Row:
    return {
        "id": handover.pk,
        "ward_id": handover.ward_id,
        "items": [{"id": i.pk, "note": i.note, "subject": str(i.subject)} for i in items],
    }


def handover_list_naive(request: HttpRequest) -> JsonResponse:
    results = []
    for handover in Handover.objects.order_by("id"):
        items = list(handover.items.all())  # lazy: clinic.Handover.items
        results.append(_handover_row(handover, items))
    return JsonResponse({"results": results})


def handover_subjects() -> Any:
    """The items' subjects, each type with the relation its ``__str__`` reads."""
    try:
        from django.contrib.contenttypes.prefetch import GenericPrefetch
    except ImportError:  # Django 4.2: the subjects in one query per type, their relations lazily
        return "items__subject"
    return GenericPrefetch(
        "items__subject", [Visit.objects.select_related("patient"), Order.objects.select_related("visit")]
    )


def handover_list_optimized(request: HttpRequest) -> JsonResponse:
    handovers = Handover.objects.prefetch_related(handover_subjects()).order_by("id")
    return JsonResponse({"results": [_handover_row(h, list(h.items.all())) for h in handovers]})


# -- 4. /clinic/wards/open-visits/: a filtered, ordered related manager per row -------------------


def _open_visits_row(ward: Ward, visits: list[Visit]) -> Row:
    return {
        "ward": ward.pk,
        "open": [{"id": v.pk, "started_at": _iso(v.started_at), "reason": v.reason} for v in visits],
    }


def ward_open_visits_naive(request: HttpRequest) -> JsonResponse:
    results = []
    for ward in Ward.objects.order_by("id"):
        visits = list(ward.visits.filter(status="open").order_by("-started_at"))  # lazy: clinic.Ward.visits
        results.append(_open_visits_row(ward, visits))
    return JsonResponse({"results": results})


def ward_open_visits_optimized(request: HttpRequest) -> JsonResponse:
    open_visits = Prefetch(
        "visits", queryset=Visit.objects.filter(status="open").order_by("-started_at"), to_attr="open_visits"
    )
    wards = Ward.objects.prefetch_related(open_visits).order_by("id")
    return JsonResponse({"results": [_open_visits_row(w, w.open_visits) for w in wards]})


# -- 5. /clinic/clinicians/workload/: count(), aggregate() and exists() on a related manager -------


def _workload_row(clinician: Clinician, visits: int, last: Any, has_open: bool) -> Row:
    return {"id": clinician.pk, "visits": visits, "last_visit": _iso(last), "has_open": has_open}


def clinician_workload_naive(request: HttpRequest) -> JsonResponse:
    results = []
    for clinician in Clinician.objects.order_by("id"):
        visits = clinician.visits.count()  # lazy: count clinic.Clinician.visits
        latest = clinician.visits.aggregate(last=Max("started_at"))  # lazy: aggregate clinic.Clinician.visits
        has_open = clinician.visits.filter(status="open").exists()  # lazy: exists clinic.Clinician.visits
        last = latest["last"]
        results.append(_workload_row(clinician, visits, last, has_open))
    return JsonResponse({"results": results})


def clinician_workload_optimized(request: HttpRequest) -> JsonResponse:
    open_visits = Visit.objects.filter(clinician=OuterRef("pk"), status="open")
    clinicians = Clinician.objects.annotate(
        visits_count=Count("visits"), last_visit=Max("visits__started_at"), has_open=Exists(open_visits)
    ).order_by("id")
    results = [_workload_row(c, c.visits_count, c.last_visit, c.has_open) for c in clinicians]
    return JsonResponse({"results": results})


# -- 6. /clinic/lookup/?sites=&medications=: natural-key lookups (a unique field, a plain one) -----


def _site_row(site: Site) -> Row:
    return {"code": site.code, "name": site.name}


def _medication_row(medication: Medication) -> Row:
    return {"atc": medication.atc_code, "name": medication.name}


def lookup_naive(request: HttpRequest) -> JsonResponse:
    sites, medications = [], []
    for code in _codes(request, "sites"):
        site = Site.objects.get(code=code)  # lazy: get clinic.Site
        sites.append(_site_row(site))
    for name in _codes(request, "medications"):
        medication = Medication.objects.get(name=name)  # lazy: get clinic.Medication
        medications.append(_medication_row(medication))
    return JsonResponse({"sites": sites, "medications": medications})


def lookup_optimized(request: HttpRequest) -> JsonResponse:
    site_codes, names = _codes(request, "sites"), _codes(request, "medications")
    sites = Site.objects.in_bulk(site_codes, field_name="code")  # code is unique
    by_name = {m.name: m for m in Medication.objects.filter(name__in=names)}  # name is not
    return JsonResponse(
        {
            "sites": [_site_row(sites[c]) for c in site_codes],
            "medications": [_medication_row(by_name[n]) for n in names],
        }
    )


# -- 7. /clinic/lookup/async/?sites=: aget() in a loop in an async view ----------------------------


async def lookup_async_naive(request: HttpRequest) -> JsonResponse:
    sites = []
    for code in _codes(request, "sites"):
        site = await Site.objects.aget(code=code)  # lazy: get clinic.Site
        sites.append(_site_row(site))
    return JsonResponse({"sites": sites})


async def lookup_async_optimized(request: HttpRequest) -> JsonResponse:
    codes = _codes(request, "sites")
    sites = await sync_to_async(Site.objects.in_bulk)(codes, field_name="code")
    return JsonResponse({"sites": [_site_row(sites[c]) for c in codes]})


# -- 8. /clinic/dashboard/: the same lookup repeated by each widget --------------------------------


def _home_site() -> Site:
    return Site.objects.get(code=DEFAULT_SITE)  # lazy: duplicate clinic.Site


def _wards_widget(site: Site) -> Row:
    return {"widget": "wards", "value": Ward.objects.filter(site=site).count()}


def _open_widget(site: Site) -> Row:
    return {"widget": "open visits", "value": Visit.objects.filter(ward__site=site, status="open").count()}


def _patients_widget(site: Site) -> Row:
    return {"widget": "patients", "value": site.outpatients.count()}


def _clinicians_widget(site: Site) -> Row:
    return {"widget": "clinicians", "value": Clinician.objects.filter(ward__site=site).count()}


def _handovers_widget(site: Site) -> Row:
    return {"widget": "handovers", "value": Handover.objects.filter(ward__site=site).count()}


def _title_widget(site: Site) -> Row:
    return {"widget": "title", "value": site.name}


WIDGETS = (
    _title_widget,
    _wards_widget,
    _open_widget,
    _patients_widget,
    _clinicians_widget,
    _handovers_widget,
)


def dashboard_naive(request: HttpRequest) -> JsonResponse:
    # Each widget looks the site up again, as widgets that each call a helper do.
    return JsonResponse({"site": DEFAULT_SITE, "widgets": [widget(_home_site()) for widget in WIDGETS]})


def dashboard_optimized(request: HttpRequest) -> JsonResponse:
    site = _home_site()
    return JsonResponse({"site": DEFAULT_SITE, "widgets": [widget(site) for widget in WIDGETS]})


# -- 9. /clinic/visits/export/: one list read in LIMIT/OFFSET slices -------------------------------


def _export_row(visit: Visit) -> Row:
    return {"id": visit.pk, "status": visit.status, "started_at": _iso(visit.started_at)}


def visit_export_naive(request: HttpRequest) -> JsonResponse:
    visits = Visit.objects.order_by("id")
    total = visits.count()
    rows: list[Row] = []
    for start in range(0, total, EXPORT_CHUNK):
        rows.extend(_export_row(v) for v in visits[start : start + EXPORT_CHUNK])  # lazy: slice clinic.Visit
    return JsonResponse({"results": rows})


def visit_export_optimized(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"results": [_export_row(v) for v in Visit.objects.order_by("id")]})


# -- 10. /clinic/orders/: a many-to-many per row ---------------------------------------------------


def _order_row(order: Order, medications: list[Medication]) -> Row:
    return {"id": order.pk, "code": order.code, "medications": [m.atc_code for m in medications]}


def order_list_naive(request: HttpRequest) -> JsonResponse:
    results = []
    for order in Order.objects.order_by("id")[:40]:
        medications = list(order.medications.all())  # lazy: clinic.Order.medications
        results.append(_order_row(order, medications))
    return JsonResponse({"results": results})


def order_list_optimized(request: HttpRequest) -> JsonResponse:
    orders = Order.objects.prefetch_related("medications").order_by("id")[:40]
    return JsonResponse({"results": [_order_row(o, list(o.medications.all())) for o in orders]})


# -- 11. /clinic/visits/new/: a ModelForm whose option labels follow a relation --------------------


def visit_new_naive(request: HttpRequest) -> HttpResponse:
    return render(request, "clinic/visit_form.html", {"form": VisitForm()})


def visit_new_optimized(request: HttpRequest) -> HttpResponse:
    return render(request, "clinic/visit_form.html", {"form": VisitFormOptimized()})
