"""The clinic app (the second example): every naive page and its optimized twin render the same
content, with the query counts the seeded data implies (real PostgreSQL, in-process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import django
import pytest

from hms_otel_agent.sample.clinic.pages import PAGES, Page

GENERIC_PREFETCH = django.VERSION >= (5, 0)


def _with_ward(visits: Any) -> int:
    return sum(1 for v in visits if v.clinician.ward_id is not None)


def _expected(name: str) -> tuple[int, int]:
    """(naive, optimized) queries of one request, from the seeded rows (not from the pages)."""
    from hms_otel_agent.sample.clinic.models import (
        Clinician,
        Handover,
        HandoverItem,
        Site,
        Visit,
        Ward,
    )

    wards = Ward.objects.count()
    if name == "visit-list":  # count + page + per visit: patient, ward, ward.site, clinician, tags
        return 2 + 5 * 10, 3
    if name == "ward-board":  # wards + each ward's site once + each ward's count in both includes
        return 1 + wards + 2 * wards, 1
    if name == "handovers":  # handovers, items per handover, subject per item, its relation
        items = HandoverItem.objects.count()
        # 4.2: the subjects' relations stay lazy, once per subject (items share subject instances)
        subjects = HandoverItem.objects.values("content_type", "object_id").distinct().count()
        optimized = 4 if GENERIC_PREFETCH else 4 + subjects
        return 1 + Handover.objects.count() + 2 * items, optimized
    if name == "open-visits":
        return 1 + wards, 2
    if name == "workload":  # count, aggregate, exists per clinician
        return 1 + 3 * Clinician.objects.count(), 1
    if name == "lookup":
        return 5 + 5, 2
    if name == "lookup-async":
        return 5, 1
    if name == "dashboard":  # the site 6x, 5 widget counts; optimized: the site once
        return 6 + 5, 1 + 5
    if name == "export":  # count + one LIMIT/OFFSET slice per 10 visits
        return 1 + -(-Visit.objects.count() // 10), 1
    if name == "orders":
        return 1 + 40, 2
    if name == "visit-form":  # the 3 selects + the ward of each clinician that has one
        return 3 + Clinician.objects.exclude(ward=None).count(), 3
    if name == "api-visits":  # count + page + per visit: patient, home site, clinician, tags, orders
        return 2 + 5 * 20, 4
    if name == "admin-visits":  # session + user, 2 counts, page, each row's clinician's ward
        page = Visit.objects.select_related("clinician").order_by("-started_at", "-id")[:25]
        return 2 + 2 + 1 + _with_ward(page), 2 + 1 + 1
    assert Site.objects.exists()
    raise AssertionError(f"no expectation for {name}")


@pytest.fixture
def staff_client(sample_app: None) -> Any:
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(
        username="clinic-test-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_twins_render_the_same_with_fewer_queries(
    hms_client: Any, staff_client: Any, count_queries: Callable[[], Any], page: Page
) -> None:
    client = staff_client if page.admin else hms_client
    # Warm the per-process caches (content types) so that only the page's own queries count.
    client.get(page.naive)
    client.get(page.optimized)
    with count_queries() as naive_queries:
        naive = client.get(page.naive)
    with count_queries() as optimized_queries:
        optimized = client.get(page.optimized)
    assert naive.status_code == optimized.status_code == 200
    assert page.compare(naive.content) == page.compare(optimized.content)
    assert len(page.compare(naive.content)) > 200, "the page should show seeded rows"
    naive_count, optimized_count = _expected(page.name)
    assert len(naive_queries) == naive_count, [q["sql"] for q in naive_queries]
    assert len(optimized_queries) == optimized_count, [q["sql"] for q in optimized_queries]


def test_seed_shape(sample_app: None) -> None:
    from django.db.models import Count

    from hms_otel_agent.sample.clinic.models import Clinician, Medication, Site, Visit, Ward

    assert list(Site.objects.values_list("code", flat=True)) == ["EST", "NTH", "STH"]
    assert sorted(Ward.objects.values_list("code", flat=True)) == ["A", "A", "A", "B", "B", "B"]
    assert Clinician.objects.filter(ward=None).count() == 3
    assert Visit.objects.count() == 60 and Visit.objects.filter(status="open").count() == 20
    shared = Medication.objects.values("atc_code").annotate(n=Count("id")).filter(n__gt=1)
    assert shared.count() == 6, "every ATC code is shared by two brands (atc_code is not unique)"
    assert Medication.objects.values("name").distinct().count() == Medication.objects.count()
