"""Admin for the sample app.

``EncounterAdmin`` leaves ``list_select_related`` at its default on purpose: the changelist then
joins the non-null foreign keys (patient, facility, practitioner) but not the nullable
``patient.insurance`` that ``patient_insurance`` reads, so each row runs one more query.
Setting ``list_select_related = ("patient__insurance",)`` removes that N+1.
"""

from __future__ import annotations

from django.contrib import admin

from .models import Encounter, Patient


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("mrn", "given_name", "family_name", "date_of_birth")
    search_fields = ("mrn", "family_name")


@admin.register(Encounter)
class EncounterAdmin(admin.ModelAdmin):
    list_display = ("id", "patient", "started_at", "status", "patient_insurance")

    @admin.display(description="insurance")
    def patient_insurance(self, obj: Encounter) -> str:
        insurance = obj.patient.insurance
        return str(insurance) if insurance is not None else "-"
