"""URLs of the sample project: the JSON endpoints of the ``hms`` app and the admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from .hms import outbound, views

urlpatterns = [
    path("", views.index, name="index"),
    path("health/", views.health, name="health"),
    path("stats/", views.stats, name="stats"),
    path("patients/", views.patient_list_naive, name="patients"),
    path("patients/optimized/", views.patient_list_optimized, name="patients-optimized"),
    path("encounters/", views.encounter_list_naive, name="encounters"),
    path("encounters/optimized/", views.encounter_list_optimized, name="encounters-optimized"),
    path("appointments/schedule/", views.schedule_naive, name="schedule"),
    path("appointments/schedule/optimized/", views.schedule_optimized, name="schedule-optimized"),
    path("patients/records/", views.patient_records_naive, name="records"),
    path("patients/records/optimized/", views.patient_records_optimized, name="records-optimized"),
    path("notes/", views.note_list_naive, name="notes"),
    path("notes/optimized/", views.note_list_optimized, name="notes-optimized"),
    path("patients/birthdays/", views.birthdays_naive, name="birthdays"),
    path("patients/birthdays/optimized/", views.birthdays_optimized, name="birthdays-optimized"),
    path("patients/lookup/", views.patient_lookup_naive, name="lookup"),
    path("patients/lookup/optimized/", views.patient_lookup_optimized, name="lookup-optimized"),
    path("facilities/", views.facility_list_naive, name="facilities"),
    path("facilities/optimized/", views.facility_list_optimized, name="facilities-optimized"),
    path("reports/raw-encounters/", views.raw_encounters_naive, name="raw-encounters"),
    path(
        "reports/raw-encounters/optimized/",
        views.raw_encounters_optimized,
        name="raw-encounters-optimized",
    ),
    path("patients/<int:pk>/summary/", views.patient_summary, name="summary"),
    path("patients/cached/", views.cached_patients_naive, name="cached"),
    path("patients/cached/optimized/", views.cached_patients_optimized, name="cached-optimized"),
    path("encounters/recent/", views.recent_encounters_naive, name="recent"),
    path("encounters/recent/optimized/", views.recent_encounters_optimized, name="recent-optimized"),
    path("patients/<int:pk>/flaky-summary/", views.flaky_summary, name="flaky-summary"),
    path("patients/<int:pk>/touch/", views.touch_patient_naive, name="touch"),
    path("patients/<int:pk>/touch/optimized/", views.touch_patient_optimized, name="touch-optimized"),
    path("patients/duplicate/", views.duplicate_patient, name="duplicate"),
    path("boom/", views.boom, name="boom"),
    path("patients/search/", views.patient_search, name="search"),
    path("patients/export/", views.patient_export_naive, name="export"),
    path("patients/export/optimized/", views.patient_export_optimized, name="export-optimized"),
    path("encounters/search/", views.encounter_search, name="encounter-search"),
    path("patients/cached/lookup/", views.cached_lookup_naive, name="cached-lookup"),
    path("patients/cached/lookup/optimized/", views.cached_lookup_optimized, name="cached-lookup-optimized"),
    path("appointments/upcoming/", views.upcoming_appointments_naive, name="upcoming"),
    path(
        "appointments/upcoming/optimized/", views.upcoming_appointments_optimized, name="upcoming-optimized"
    ),
    path("patients/fhir/", outbound.fhir_summaries_naive, name="fhir"),
    path("patients/fhir/optimized/", outbound.fhir_summaries_optimized, name="fhir-optimized"),
    path("clinic/", include("hms_otel_agent.sample.clinic.urls")),
    path("admin/", admin.site.urls),
]
