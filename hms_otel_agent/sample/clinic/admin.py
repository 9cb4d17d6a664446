"""Admin of the clinic: a changelist with foreign-key columns and a callable, and its twin.

``VisitAdmin`` leaves ``list_select_related`` at its default: the changelist then calls
``select_related()``, which joins the non-null foreign keys (``patient__home_site``,
``clinician``, ``ward__site``) but not the nullable ``clinician.ward`` that the ``clinician``
column (``Clinician.__str__``) and the ``clinician_ward`` callable read: one more query per row.
Writing only the missing path into ``list_select_related`` would turn the admin's own joins off
(the patient column then loads each patient); the twin on ``optimized_site`` lists every relation
the page reads, and ``show_full_result_count = False`` drops the second ``COUNT(*)``.
"""

from __future__ import annotations

from django.contrib import admin

from .models import Visit


class VisitAdmin(admin.ModelAdmin):
    list_display = ("id", "patient", "clinician", "started_at", "clinician_ward")
    list_per_page = 25

    @admin.display(description="ward of the clinician")
    def clinician_ward(self, visit: Visit) -> str:
        ward = visit.clinician.ward  # lazy: clinic.Clinician.ward
        return ward.name if ward is not None else "-"


class VisitAdminOptimized(VisitAdmin):
    list_select_related = ("patient__home_site", "clinician__ward", "ward__site")
    show_full_result_count = False


admin.site.register(Visit, VisitAdmin)

optimized_site = admin.AdminSite(name="clinic_optimized_admin")
optimized_site.register(Visit, VisitAdminOptimized)
