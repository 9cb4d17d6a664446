"""A ModelForm whose option labels follow a relation: ``Clinician.__str__`` reads ``ward``, so
rendering the clinician ``<select>`` loads each option's ward (``models.py``)."""

from __future__ import annotations

from typing import Any

from django import forms

from .models import Clinician, Visit


class VisitForm(forms.ModelForm):
    class Meta:
        model = Visit
        fields = ["patient", "clinician", "ward", "reason"]


class VisitFormOptimized(VisitForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        clinician = self.fields["clinician"]
        assert isinstance(clinician, forms.ModelChoiceField)
        clinician.queryset = Clinician.objects.select_related("ward")
