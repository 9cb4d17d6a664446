"""Django REST framework serializers of the clinic API, nested the way real APIs nest them.

``VisitSerializer`` nests the patient (with its home site) and the clinician, lists the tags with
django-taggit's ``TagListSerializerField`` and the orders' codes with a ``SerializerMethodField``.
Over ``Visit.objects.all()`` every one of those is a query per visit.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from taggit.serializers import TaggitSerializer, TagListSerializerField

from .models import Clinician, Outpatient, Site, Visit


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "code", "name"]


class OutpatientSerializer(serializers.ModelSerializer):
    home_site = SiteSerializer()

    class Meta:
        model = Outpatient
        fields = ["id", "mrn", "name", "home_site"]


class ClinicianSerializer(serializers.ModelSerializer):
    class Meta:
        model = Clinician
        fields = ["id", "name", "role", "ward"]


class SortedTagListField(TagListSerializerField):
    """Tag names in name order (a related set's order differs between a query and a prefetch)."""

    def to_representation(self, value: Any) -> Any:
        return sorted(super().to_representation(value))


class VisitSerializer(TaggitSerializer, serializers.ModelSerializer):
    patient = OutpatientSerializer()
    clinician = ClinicianSerializer()
    tags = SortedTagListField()
    order_codes = serializers.SerializerMethodField()

    class Meta:
        model = Visit
        fields = ["id", "started_at", "status", "reason", "patient", "clinician", "tags", "order_codes"]

    def get_order_codes(self, visit: Visit) -> list[Any]:
        return [order.code for order in visit.orders.all()]  # lazy: clinic.Visit.orders
