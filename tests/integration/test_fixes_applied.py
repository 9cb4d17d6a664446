"""Every fix the agent offers on the sample apps, applied: the page's query count falls to its
optimized twin's and the page renders the same (real PostgreSQL, in-process).

The fix text is taken from the finding as shown (``hms.hint.fix``) and applied literally:
queryset fixes (``.select_related(...)``, ``.prefetch_related(...)``, ``GenericPrefetch``) are
evaluated on the root model's default manager queryset for the duration of one request ("add X
to the Visit queryset"); admin fixes (``list_select_related = (...) on VisitAdmin``,
``show_full_result_count = False``) are set on the registered ModelAdmin. Fixes that need a code
change (``in_bulk``, a dict query, ``annotate``, a filtered ``Prefetch`` with ``to_attr``) are
evaluated as written, with the page's values for ``values`` / ``...``, and their result compared
with what the naive loop read, in one or two queries.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness.traced import Traced

from hms_otel_agent.sample.clinic.pages import PAGES_BY_NAME


@pytest.fixture
def count_queries(traced: Traced) -> Callable[[], Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    return lambda: CaptureQueriesContext(connection)


QUERYSET_KINDS = {"select_related", "prefetch_related", "prefetch_queryset", "generic_prefetch"}


def _namespace() -> dict[str, Any]:
    from django.apps import apps
    from django.db import models
    from django.db.models import Count, Exists, F, Max, OuterRef, Prefetch, Q

    names: dict[str, Any] = {
        m.__name__: m for m in apps.get_models() if m._meta.app_label in ("clinic", "hms")
    }
    names["Tag"] = apps.get_model("taggit", "Tag")
    names.update(
        Prefetch=Prefetch, Count=Count, Max=Max, Exists=Exists, OuterRef=OuterRef, Q=Q, F=F, models=models
    )
    with contextlib.suppress(ImportError):
        from django.contrib.contenttypes.prefetch import GenericPrefetch

        names["GenericPrefetch"] = GenericPrefetch
    return names


@contextlib.contextmanager
def applied_to_queryset(model: Any, calls: str) -> Iterator[None]:
    """``model.objects`` querysets get ``calls`` (the fix text) for the duration."""
    manager_cls = type(model._default_manager)
    original = manager_cls.get_queryset
    namespace = _namespace()

    def get_queryset(self: Any) -> Any:
        queryset = original(self)
        if self.model is model:
            return eval(f"queryset{calls}", {**namespace, "queryset": queryset})
        return queryset

    manager_cls.get_queryset = get_queryset  # type: ignore[method-assign]
    try:
        yield
    finally:
        manager_cls.get_queryset = original  # type: ignore[method-assign]


@contextlib.contextmanager
def applied_to_admin(model: Any, fix: str) -> Iterator[None]:
    from django.contrib import admin

    model_admin = admin.site._registry[model]
    name, _, value = fix.partition(" = ")
    value = value.rsplit(" on ", 1)[0]
    before = model_admin.__dict__.get(name, None)
    setattr(model_admin, name, eval(value, {"__builtins__": {}}))
    try:
        yield
    finally:
        if before is None:
            delattr(model_admin, name)
        else:
            setattr(model_admin, name, before)


def _staff() -> Any:
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(
        username="fix-test-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def _findings(traced: Traced, path: str, client: Any) -> list[dict[str, Any]]:
    from hms_otel_agent.signals import fixes

    traced.request(path, client=client)
    assert fixes.checker is not None and fixes.checker.wait_idle(10)
    _, server = traced.request(path, client=client)
    return [e for e in traced.events(server) if e.get("hms.hint.fix_kind")]


def _count(client: Any, path: str, count_queries: Callable[[], Any]) -> tuple[int, Any]:
    client.get(path)
    with count_queries() as queries:
        response = client.get(path)
    return len(queries), response


@contextlib.contextmanager
def applied_to_viewset(calls: str) -> Iterator[None]:
    """The viewset's ``queryset`` class attribute (built once, at import)."""
    from hms_otel_agent.sample.clinic.api import VisitViewSet

    before = VisitViewSet.queryset
    VisitViewSet.queryset = eval(f"queryset{calls}", {**_namespace(), "queryset": before})
    try:
        yield
    finally:
        VisitViewSet.queryset = before


@contextlib.contextmanager
def applied_to_form_field(calls: str) -> Iterator[None]:
    """The ModelChoiceField's queryset (built once, with the form class)."""
    from hms_otel_agent.sample.clinic.forms import VisitForm

    field = VisitForm.base_fields["clinician"]
    before = field.queryset  # type: ignore[attr-defined]
    field.queryset = eval(f"queryset{calls}", {**_namespace(), "queryset": before})  # type: ignore[attr-defined]
    try:
        yield
    finally:
        field.queryset = before  # type: ignore[attr-defined]


# page -> where its queryset lives (the place a person edits)
PAGE_FIXES = {
    "visit-list": "view",
    "handovers": "view",
    "orders": "view",
    "api-visits": "viewset",
    "visit-form": "form",
    "admin-visits": "admin",
}


@pytest.mark.parametrize("name", list(PAGE_FIXES))
def test_queryset_and_admin_fixes_bring_the_page_to_its_optimized_count(
    traced: Traced, count_queries: Callable[[], Any], name: str
) -> None:
    from django.apps import apps

    page = PAGES_BY_NAME[name]
    client = _staff()
    found = _findings(traced, page.naive, client)
    n_plus_one = [
        f for f in found if f.get("hms.finding.kind") == "n_plus_one" or "admin" in f["hms.hint.fix_kind"]
    ]
    assert n_plus_one, "the naive page has findings with fixes"
    fixes_by_kind = {f["hms.hint.fix"]: f["hms.hint.fix_kind"] for f in n_plus_one}
    naive_count, naive = _count(client, page.naive, count_queries)
    optimized_count, optimized = _count(client, page.optimized, count_queries)
    with contextlib.ExitStack() as stack:
        for fix, kind in fixes_by_kind.items():
            hint = next(f["hms.hint"] for f in n_plus_one if f["hms.hint.fix"] == fix)
            if kind.startswith("admin_"):
                stack.enter_context(applied_to_admin(apps.get_model("clinic", "Visit"), fix))
            elif PAGE_FIXES[name] == "viewset":
                stack.enter_context(applied_to_viewset(fix))
            elif PAGE_FIXES[name] == "form":
                stack.enter_context(applied_to_form_field(fix))
            else:
                assert kind in QUERYSET_KINDS, (kind, fix)
                root = re.search(r"to the (\w+) queryset", hint)
                assert root is not None, hint
                model = next(m for m in apps.get_models() if m.__name__ == root.group(1))
                stack.enter_context(applied_to_queryset(model, fix))
        fixed_count, fixed = _count(client, page.naive, count_queries)
    assert fixed.status_code == optimized.status_code == naive.status_code == 200
    assert page.compare(fixed.content) == page.compare(naive.content)
    assert fixed_count == optimized_count < naive_count, (
        fixes_by_kind,
        fixed_count,
        optimized_count,
        naive_count,
    )


def test_in_bulk_and_dict_fixes_read_the_same_rows_in_one_query(
    traced: Traced, count_queries: Callable[[], Any]
) -> None:
    from django.test import Client

    page = PAGES_BY_NAME["lookup"]
    found = {f["hms.hint.fix_kind"]: f["hms.hint.fix"] for f in _findings(traced, page.naive, Client())}
    assert set(found) == {"in_bulk", "dict_query"}
    names = _namespace()
    naive = Client().get(page.naive).json()
    codes = [s["code"] for s in naive["sites"]]
    medications = [m["name"] for m in naive["medications"]]
    with count_queries() as queries:
        sites = eval(found["in_bulk"], {**names, "values": codes})
    assert len(queries) == 1
    assert [{"code": sites[c].code, "name": sites[c].name} for c in codes] == naive["sites"]
    with count_queries() as queries:
        by_name = eval(found["dict_query"], {**names, "values": medications})
    assert len(queries) == 1
    assert [{"atc": by_name[n].atc_code, "name": by_name[n].name} for n in medications] == naive[
        "medications"
    ]


def _values(text: str, value: str) -> str:
    return text.replace("=...", f"={value!r}")


def test_annotate_fix_reads_count_aggregate_and_exists_in_one_query(
    traced: Traced, count_queries: Callable[[], Any]
) -> None:
    from django.test import Client

    page = PAGES_BY_NAME["workload"]
    [finding] = [f for f in _findings(traced, page.naive, Client()) if f["hms.hint.fix_kind"] == "annotate"]
    calls = finding["hms.hint.fix"].split(", and ")[0]
    names = _namespace()
    naive = Client().get(page.naive).json()["results"]
    with count_queries() as queries:
        clinicians = list(eval(_values(f"Clinician.objects{calls}.order_by('id')", "open"), names))
    assert len(queries) == 1
    got = [
        {
            "id": c.pk,
            "visits": c.visits_count,
            "last_visit": c.last.isoformat() if c.last else None,
            "has_open": c.has_visits,
        }
        for c in clinicians
    ]
    assert got == naive


def test_filtered_prefetch_fix_reads_the_same_sets_in_two_queries(
    traced: Traced, count_queries: Callable[[], Any]
) -> None:
    from django.test import Client

    page = PAGES_BY_NAME["open-visits"]
    [finding] = _findings(traced, page.naive, Client())
    assert finding["hms.hint.fix_kind"] == "prefetch_queryset"
    calls, _, change = finding["hms.hint.fix"].partition(", and ")
    assert change.startswith("read .prefetched_visits (a list) instead of .visits.filter(...).order_by(...)")
    names = _namespace()
    naive = Client().get(page.naive).json()["results"]
    with count_queries() as queries:
        wards = list(eval(_values(f"Ward.objects{calls}.order_by('id')", "open"), names))
    assert len(queries) == 2
    got = [
        {
            "ward": w.pk,
            "open": [
                {"id": v.pk, "started_at": v.started_at.isoformat(), "reason": v.reason}
                for v in w.prefetched_visits
            ],
        }
        for w in wards
    ]
    assert got == naive


# -- fix kinds no sample page shows: proven on a loop and on the registered ModelAdmin -----------


def _patients_by_ward(wards: Any) -> list[list[str]]:
    return [[visit.patient.name for visit in ward.visits.all()] for ward in wards]


def test_prefetch_with_a_select_related_queryset_loads_the_nested_relation_in_two_queries(
    traced: Traced, count_queries: Callable[[], Any]
) -> None:
    """A reverse FK, then a forward FK from its rows: ``Prefetch('visits',
    queryset=Visit.objects.select_related('patient'))`` on the Ward queryset."""
    from hms_otel_agent.sample.clinic.models import Ward
    from hms_otel_agent.signals import fixes

    def run() -> list[dict[str, Any]]:
        traced.clear()
        with traced.tracer.start_as_current_span("ward loop") as span:
            _patients_by_ward(Ward.objects.order_by("id"))
        return [e for e in traced.events(span) if e.get("hms.finding.kind") == "n_plus_one"]  # type: ignore[arg-type]

    run()
    assert fixes.checker is not None and fixes.checker.wait_idle(10)
    found = {f["hms.orm.relation"]: f for f in run()}
    assert set(found) == {"clinic.Ward.visits", "clinic.Visit.patient"}
    fix = found["clinic.Visit.patient"]["hms.hint.fix"]
    assert found["clinic.Ward.visits"]["hms.hint.fix"] == fix  # one queryset, one combined fix
    assert fix == ".prefetch_related(Prefetch('visits', queryset=Visit.objects.select_related('patient')))"
    assert found["clinic.Visit.patient"]["hms.hint.fix_kind"] == "prefetch_queryset"
    with count_queries() as queries:
        naive = _patients_by_ward(Ward.objects.order_by("id"))
    with count_queries() as fixed_queries:
        fixed = _patients_by_ward(eval(f"Ward.objects{fix}.order_by('id')", _namespace()))
    assert fixed == naive and any(naive)
    assert len(fixed_queries) == 2 < len(queries)


def test_admin_get_queryset_fix_prefetches_what_a_column_reads(
    traced: Traced, count_queries: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changelist column reading a many-to-many (the tags): a prefetch, so the fix is the
    ModelAdmin's ``get_queryset`` (with ``list_select_related`` keeping the admin's own joins)."""
    from django.apps import apps
    from django.contrib import admin

    visit = apps.get_model("clinic", "Visit")
    model_admin = admin.site._registry[visit]
    monkeypatch.setattr(model_admin, "list_display", (*model_admin.list_display, "tag_names"), raising=False)
    monkeypatch.setattr(
        model_admin, "tag_names", lambda v: ", ".join(sorted(t.name for t in v.tags.all())), raising=False
    )
    client = _staff()
    path = "/admin/clinic/visit/"
    found = {f["hms.orm.relation"]: f for f in _findings(traced, path, client) if f.get("hms.orm.relation")}
    tags = found["clinic.Visit.tags"]
    assert tags["hms.hint.fix_kind"] == "admin_get_queryset"
    fix = tags["hms.hint.fix"]
    prefetch = re.search(r"\.prefetch_related\((.*)\) on VisitAdmin", fix)
    joins = re.search(r"list_select_related = (\(.*\))$", fix)
    assert prefetch is not None and joins is not None, fix
    naive_count, naive = _count(client, path, count_queries)
    original = type(model_admin).get_queryset
    lookups = eval(f"({prefetch.group(1)},)", _namespace())
    monkeypatch.setattr(
        model_admin,
        "get_queryset",
        lambda request: original(model_admin, request).prefetch_related(*lookups),
        raising=False,
    )
    monkeypatch.setattr(
        model_admin, "list_select_related", eval(joins.group(1), {"__builtins__": {}}), raising=False
    )
    fixed_count, fixed = _count(client, path, count_queries)
    page = PAGES_BY_NAME["admin-visits"]
    assert fixed.status_code == naive.status_code == 200
    assert page.compare(fixed.content) == page.compare(naive.content)
    assert fixed_count < naive_count - 20  # 25 rows: one tags query and one ward query each, gone
    _, server = traced.request(path, client=client)
    assert [e for e in traced.events(server) if e.get("hms.finding.kind") == "n_plus_one"] == []


# -- the hospital sample app's (hms) pages: their queryset fixes, applied -------------------------

HMS_PAGES = {
    "/patients/?limit=10": "/patients/optimized/?limit=10",  # select_related + prefetch_related
    "/encounters/?limit=10": "/encounters/optimized/?limit=10",  # select_related along two steps
    # reverse one-to-one + generic relation
    "/patients/records/?limit=10": "/patients/records/optimized/?limit=10",
    "/notes/?limit=10": "/notes/optimized/?limit=10",  # GenericPrefetch (prefetch_related on 4.2)
}


@pytest.mark.parametrize("path", list(HMS_PAGES))
def test_hms_page_fixes_bring_the_page_to_its_optimized_count(
    traced: Traced, count_queries: Callable[[], Any], path: str
) -> None:
    from django.apps import apps
    from django.test import Client

    client = Client()
    found = [f for f in _findings(traced, path, client) if f.get("hms.finding.kind") == "n_plus_one"]
    assert found, "the naive page has N+1 findings with checked fixes"
    naive_count, naive = _count(client, path, count_queries)
    optimized_count, _ = _count(client, HMS_PAGES[path], count_queries)
    with contextlib.ExitStack() as stack:
        for fix, hint, kind in {(f["hms.hint.fix"], f["hms.hint"], f["hms.hint.fix_kind"]) for f in found}:
            assert kind in QUERYSET_KINDS, (kind, fix)
            root = re.search(r"to the (\w+) queryset", hint)
            assert root is not None, hint
            model = next(m for m in apps.get_models() if m.__name__ == root.group(1))
            stack.enter_context(applied_to_queryset(model, fix))
        fixed_count, fixed = _count(client, path, count_queries)
    assert fixed.status_code == naive.status_code == 200
    assert fixed.json() == naive.json()
    assert fixed_count == optimized_count < naive_count, (fixed_count, optimized_count, naive_count)


# -- every fix kind the sample apps offer is proven above -----------------------------------------

# fix kind -> the tests above that apply it
PROVEN = {
    "select_related": "test_queryset_and_admin_fixes_*, test_hms_page_fixes_*",
    "prefetch_related": "test_queryset_and_admin_fixes_*, test_hms_page_fixes_*",
    "generic_prefetch": "test_queryset_and_admin_fixes_* (handovers), test_hms_page_fixes_* (notes)",
    "prefetch_queryset": "test_filtered_prefetch_fix_*, test_prefetch_with_a_select_related_queryset_*",
    "annotate": "test_annotate_fix_*",
    "in_bulk": "test_in_bulk_and_dict_fixes_*",
    "dict_query": "test_in_bulk_and_dict_fixes_*",
    "admin_list_select_related": "test_queryset_and_admin_fixes_* (admin-visits)",
    "admin_get_queryset": "test_admin_get_queryset_fix_*",
    "admin_show_full_result_count": "test_queryset_and_admin_fixes_* (admin-visits)",
}
HMS_NAIVE = (
    "/patients/?limit=10",
    "/encounters/?limit=10",
    "/appointments/schedule/?limit=12",
    "/patients/records/?limit=10",
    "/notes/?limit=10",
    "/patients/birthdays/?limit=10",
    "/patients/lookup/?ids=1,2,3,4,5,6,7,8",
    "/facilities/",
    "/reports/raw-encounters/?limit=10",
    "/patients/cached/lookup/?ids=71,72,73,74,75,76",
)


def test_every_fix_kind_the_sample_apps_offer_is_proven_by_a_test_that_applies_it(traced: Traced) -> None:
    from hms_otel_agent.signals import fixes

    client = _staff()
    offered: dict[str, str] = {}
    with traced.use_settings(n_plus_one_threshold=3):  # facilities/ has 4 rows
        for path in (*(p.naive for p in PAGES_BY_NAME.values()), *HMS_NAIVE):
            for finding in _findings(traced, path, client):
                offered.setdefault(finding["hms.hint.fix_kind"], path)
    assert set(offered) <= set(PROVEN), {k: v for k, v in offered.items() if k not in PROVEN}
    # and the agent has no other kind to offer
    assert set(fixes.FIX_KINDS) == set(PROVEN)
