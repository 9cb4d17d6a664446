"""URLs of the clinic app, mounted under ``clinic/`` by the sample project's ``urls.py``."""

from __future__ import annotations

from django.urls import include, path

from . import views
from .admin import optimized_site
from .api import router

urlpatterns = [
    path("visits/", views.visit_list_naive, name="clinic-visits"),
    path("visits/optimized/", views.visit_list_optimized, name="clinic-visits-optimized"),
    path("wards/board/", views.ward_board_naive, name="clinic-board"),
    path("wards/board/optimized/", views.ward_board_optimized, name="clinic-board-optimized"),
    path("handovers/", views.handover_list_naive, name="clinic-handovers"),
    path("handovers/optimized/", views.handover_list_optimized, name="clinic-handovers-optimized"),
    path("wards/open-visits/", views.ward_open_visits_naive, name="clinic-open-visits"),
    path(
        "wards/open-visits/optimized/", views.ward_open_visits_optimized, name="clinic-open-visits-optimized"
    ),
    path("clinicians/workload/", views.clinician_workload_naive, name="clinic-workload"),
    path(
        "clinicians/workload/optimized/", views.clinician_workload_optimized, name="clinic-workload-optimized"
    ),
    path("lookup/", views.lookup_naive, name="clinic-lookup"),
    path("lookup/optimized/", views.lookup_optimized, name="clinic-lookup-optimized"),
    path("lookup/async/", views.lookup_async_naive, name="clinic-lookup-async"),
    path("lookup/async/optimized/", views.lookup_async_optimized, name="clinic-lookup-async-optimized"),
    path("dashboard/", views.dashboard_naive, name="clinic-dashboard"),
    path("dashboard/optimized/", views.dashboard_optimized, name="clinic-dashboard-optimized"),
    path("visits/export/", views.visit_export_naive, name="clinic-export"),
    path("visits/export/optimized/", views.visit_export_optimized, name="clinic-export-optimized"),
    path("orders/", views.order_list_naive, name="clinic-orders"),
    path("orders/optimized/", views.order_list_optimized, name="clinic-orders-optimized"),
    path("visits/new/", views.visit_new_naive, name="clinic-visit-new"),
    path("visits/new/optimized/", views.visit_new_optimized, name="clinic-visit-new-optimized"),
    path("api/", include(router.urls)),
    path("admin-optimized/", optimized_site.urls),
]
