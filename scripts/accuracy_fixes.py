"""Fixes applied by hand for the accuracy study (scripts/accuracy_run.py count --fix ID).

Each fix changes the application at run time the way a developer would edit it (a view's
queryset, a serializer's prefetch, an admin option), so that its effect is measured on the
unchanged checkout: query count before/after, and the page's status. The agent's own
suggestion, applied literally, is a fix here too (ids ending in ``-agent``): a suggestion that
breaks the page shows up as status 599 with the exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FIXES: dict[str, dict[str, Callable[[], None]]] = {"netbox": {}, "babybuddy": {}}


def fix(app: str, name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        FIXES[app][name] = fn
        return fn

    return register


def apply(app: str, name: str) -> None:
    FIXES[app][name]()


def _add(cls: Any, attr: str, method: str, *lookups: Any) -> None:
    """cls.attr = getattr(cls.attr, method)(*lookups): edit a view's or viewset's queryset."""
    setattr(cls, attr, getattr(getattr(cls, attr), method)(*lookups))


# Source edits: (file under the project directory, text, replacement). Applied to the checkout
# before Django starts, restored when the count step ends (scripts/accuracy_run.py).
SOURCE_EDITS: dict[str, dict[str, list[tuple[str, str, str]]]] = {
    "netbox": {
        # The search backend prefetches the display attributes only for the results whose
        # `object_type` equals the ObjectType being processed; the FK points to ContentType, and a
        # ContentType never equals an ObjectType (Model.__eq__ compares concrete models), so the
        # list is always empty and every display attribute loads lazily. Compare ids instead.
        "search": [
            (
                "netbox/search/backends.py",
                "r.object_type == object_type]",
                "r.object_type_id == object_type.pk]",
            )
        ],
        # ObjectCountsWidget hands the template the bound method `qs.count`; the template calls it
        # in `{% if count is None %}` and again in `{{ count }}`. Count once in the widget.
        "home-counts": [
            ("extras/dashboard/widgets.py", "object_count = qs.count\n", "object_count = qs.count()\n")
        ],
    },
    "babybuddy": {
        # The agent's hint for timeline/ and children/<slug>/ (issue 15 re-run): "add
        # .prefetch_related('tags') to the Note queryset at core/timeline.py:271 in _add_notes".
        "timeline-notes-agent": [
            (
                "core/timeline.py",
                'instances = Note.objects.filter(time__range=(min_date, max_date)).order_by("-time")\n',
                'instances = Note.objects.filter(time__range=(min_date, max_date)).order_by("-time")'
                '.prefetch_related("tags")\n',
            )
        ],
    },
}


# --- NetBox ------------------------------------------------------------------------------------


@fix("netbox", "cables-agent")
def _cables_agent() -> None:
    """The agent's hint for api/dcim/cables/, applied literally to CableViewSet.queryset."""
    from dcim.api.views import CableViewSet

    _add(CableViewSet, "queryset", "select_related", "terminations__termination__device")


@fix("netbox", "cables")
def _cables() -> None:
    """CableViewSet.queryset (dcim/api/views.py): the terminations' GenericForeignKey prefetched
    per content type, with the relations each nested serializer reads."""
    from circuits.models import CircuitTermination
    from dcim.api.views import CableViewSet
    from dcim.models import (
        Cable,
        CableTermination,
        ConsolePort,
        ConsoleServerPort,
        FrontPort,
        Interface,
        PowerFeed,
        PowerOutlet,
        PowerPort,
        RearPort,
    )
    from django.contrib.contenttypes.prefetch import GenericPrefetch
    from django.db.models import Prefetch

    per_type = [
        m.objects.select_related("device", "cable")
        for m in (Interface, FrontPort, RearPort, ConsolePort, ConsoleServerPort, PowerPort, PowerOutlet)
    ]
    per_type.append(CircuitTermination.objects.select_related("circuit__provider", "cable"))
    per_type.append(PowerFeed.objects.select_related("power_panel", "cable"))
    terminations = CableTermination.objects.prefetch_related(GenericPrefetch("termination", per_type))
    CableViewSet.queryset = Cable.objects.prefetch_related(Prefetch("terminations", queryset=terminations))


@fix("netbox", "circuits-agent")
def _circuits_agent() -> None:
    """The agent's hint for the larger of the two findings on api/circuits/circuits/."""
    from circuits.api.views import CircuitViewSet

    _add(CircuitViewSet, "queryset", "select_related", "termination_z__circuit")


@fix("netbox", "circuits")
def _circuits() -> None:
    """CircuitViewSet.queryset (circuits/api/views.py): both terminations' circuit (their
    __str__ reads it for the nested `display`)."""
    from circuits.api.views import CircuitViewSet

    _add(CircuitViewSet, "queryset", "select_related", "termination_a__circuit", "termination_z__circuit")


@fix("netbox", "racks-agent")
def _racks_agent() -> None:
    """The agent's two hints for dcim/racks/ on RackListView.queryset (the placeholder of the
    Prefetch filled with the filter get_available_units uses)."""
    from dcim.models import Device
    from dcim.views import RackListView
    from django.db.models import Prefetch

    devices = Prefetch("devices", queryset=Device.objects.filter(position__gte=1), to_attr="devices_list")
    _add(RackListView, "queryset", "prefetch_related", "reservations", devices)


@fix("netbox", "racks-reservations")
def _racks_reservations() -> None:
    from dcim.views import RackListView

    _add(RackListView, "queryset", "prefetch_related", "reservations")


@fix("netbox", "console-ports")
def _console_ports() -> None:
    """ConsolePortListView.queryset and ConsolePortViewSet.queryset: the agent's hint."""
    from dcim.api.views import ConsolePortViewSet
    from dcim.views import ConsolePortListView

    _add(ConsolePortListView, "queryset", "select_related", "device__virtual_chassis")
    _add(ConsolePortViewSet, "queryset", "select_related", "device__virtual_chassis")


@fix("netbox", "interfaces-path")
def _interfaces_path() -> None:
    """DeviceInterfacesView.get_children: prefetch the cable path's GenericArrayForeignKey
    (NetBox's own field supports prefetching) instead of one get() per path node."""
    from dcim.views import DeviceInterfacesView

    original = DeviceInterfacesView.get_children

    def get_children(self: Any, request: Any, parent: Any) -> Any:
        return original(self, request, parent).prefetch_related("_path__path_objects")

    DeviceInterfacesView.get_children = get_children  # type: ignore[method-assign]


@fix("netbox", "search")
def _search() -> None:
    """Source edit only (SOURCE_EDITS)."""


@fix("netbox", "home-counts")
def _home_counts() -> None:
    """Source edit only (SOURCE_EDITS)."""


# --- Baby Buddy --------------------------------------------------------------------------------


@fix("babybuddy", "timeline-notes-agent")
def _bb_timeline_notes_agent() -> None:
    """Source edit only (SOURCE_EDITS)."""


_BB_LISTS = ("Feeding", "DiaperChange", "Sleep", "Note", "TummyTime", "Temperature", "Weight")


@fix("babybuddy", "lists-agent")
def _bb_lists_agent() -> None:
    """The agent's hints for the list pages, applied where they say: `.select_related('child')`
    on each list view's queryset (core/views.py: the views set `model`, not `queryset`)."""
    from core import models, views

    for name in _BB_LISTS:
        view = getattr(views, f"{name}List")
        view.queryset = getattr(models, name).objects.select_related("child")


@fix("babybuddy", "lists")
def _bb_lists() -> None:
    """Each list view's queryset with its child joined and its tags prefetched (the template's
    tag list reads instance.tags.all() per row)."""
    from core import models, views

    for name in _BB_LISTS:
        view = getattr(views, f"{name}List")
        view.queryset = getattr(models, name).objects.select_related("child").prefetch_related("tags")


@fix("babybuddy", "api-tags")
def _bb_api_tags() -> None:
    """The API viewsets' querysets (api/views.py): prefetch the taggit tags the serializer
    lists per object."""
    from api import views

    for name in ("FeedingViewSet", "DiaperChangeViewSet", "SleepViewSet", "NoteViewSet"):
        _add(getattr(views, name), "queryset", "prefetch_related", "tags")


# --- the agent's fix expressions, compiled on the app's models ---------------------------------
# (label, the hint as the agent printed it, a function building it): `count --check-hints` builds
# each queryset and compiles its SQL without running it (in_bulk runs: it is a read).


def _compile(qs: Any) -> str:
    sql, _ = qs.query.get_compiler(qs.db).as_sql()
    return sql


def _model(label: str) -> Any:
    from django.apps import apps

    return apps.get_model(label)


HINTS: dict[str, list[tuple[str, str, Callable[[], Any]]]] = {
    "netbox": [
        (
            "api/dcim/cables/ Interface.device",
            "Cable: .select_related('terminations__termination__device')",
            lambda: _compile(
                _model("dcim.Cable").objects.select_related("terminations__termination__device")
            ),
        ),
        (
            "api/dcim/cables/ Circuit.provider",
            "Cable: .select_related('terminations__termination__circuit__provider')",
            lambda: _compile(
                _model("dcim.Cable").objects.select_related("terminations__termination__circuit__provider")
            ),
        ),
        (
            "search/ Device.rack (and 5 more)",
            "CachedValue: .select_related('object__rack')",
            lambda: _compile(_model("extras.CachedValue").objects.select_related("object__rack")),
        ),
        (
            "home ObjectType.objects.get() 24x",
            "ObjectType.objects.in_bulk(ids) -- the loop has (app_label, model) pairs, not ids",
            lambda: _model("core.ObjectType").objects.in_bulk(["dcim"], field_name="app_label"),
        ),
        (
            "api/circuits/circuits/ (per request)",
            "Circuit: .select_related('termination_z__circuit')",
            lambda: _compile(_model("circuits.Circuit").objects.select_related("termination_z__circuit")),
        ),
        (
            "dcim/console-ports/",
            "ConsolePort: .select_related('device__virtual_chassis')",
            lambda: _compile(_model("dcim.ConsolePort").objects.select_related("device__virtual_chassis")),
        ),
        (
            "dcim/devices/<pk>/interfaces/ Interface.device",
            "Interface: .select_related('device')",
            lambda: _compile(_model("dcim.Interface").objects.select_related("device")),
        ),
        (
            "dcim/devices/<pk>/interfaces/ Cable.objects.get() 24x",
            "Cable.objects.in_bulk(ids)",
            lambda: len(_model("dcim.Cable").objects.in_bulk([1, 2])),
        ),
    ],
    "babybuddy": [
        (
            "list pages / API: core.Tag 25-168x",
            "Tag.objects.filter(app_label__in=values) once, outside the loop",
            lambda: _compile(_model("core.Tag").objects.filter(app_label__in=["core"])),
        ),
        (
            "tags/<slug>/: core.Tag get() 9x",
            "Tag.objects.in_bulk(ids)",
            lambda: len(_model("core.Tag").objects.in_bulk([1, 2])),
        ),
        (
            "list pages: <Model>.child",
            "Feeding: .select_related('child')",
            lambda: _compile(_model("core.Feeding").objects.select_related("child")),
        ),
    ],
}


@fix("babybuddy", "admin-count")
def _bb_admin_count() -> None:
    """The admin's second COUNT(*) (the unfiltered total next to the paginator's count) is Django's
    ChangeList design; the admin option that drops it is ModelAdmin.show_full_result_count."""
    from django.contrib import admin

    for model_admin in admin.site._registry.values():
        model_admin.show_full_result_count = False
