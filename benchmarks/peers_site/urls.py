"""URLs of the peer benchmark's pages."""

from __future__ import annotations

from django.urls import path

from hms_otel_agent.sample.hms import views as sample_views

from . import views

urlpatterns = [
    path("health/", sample_views.health),
    path("bench/list/", views.encounter_list),
    path("bench/list/optimized/", views.encounter_list_optimized),
    path("bench/cache/", views.cache_reads),
    path("stats/", sample_views.stats),
]
