"""Data model of the outpatient clinic.

Relations, as real projects have them: ``Visit`` has three forward foreign keys (``patient``,
``clinician``, ``ward``), django-taggit ``tags`` (a custom related manager over a generic
"through" model) and reverse foreign keys (``orders``); ``Clinician.ward`` is nullable (the
admin's ``select_related()`` does not follow it); ``Order.medications`` is a many-to-many;
``HandoverItem.subject`` is a GenericForeignKey (a ``Visit`` or an ``Order``) reached from
``Handover`` through the reverse foreign key ``items``. ``Site.code`` is unique, ``Ward.code``
unique only per site, ``Medication.atc_code`` not unique at all.

Trailing ``# lazy: <relation>`` comments mark the lines whose frame runs a lazy load when the
naive views call them (``markers.py``).
"""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from taggit.managers import TaggableManager


class Site(models.Model):
    code = models.CharField(max_length=10, unique=True)
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["code", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class Ward(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="wards")
    code = models.CharField(max_length=10)
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["site_id", "code", "id"]
        constraints = [models.UniqueConstraint(fields=["site", "code"], name="clinic_ward_site_code")]

    def __str__(self) -> str:
        return self.name


class Clinician(models.Model):
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=30)
    ward = models.ForeignKey(
        Ward, on_delete=models.SET_NULL, null=True, blank=True, related_name="clinicians"
    )

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        ward = self.ward  # lazy: clinic.Clinician.ward
        return f"{self.name} ({ward.name if ward is not None else 'floating'})"


class Outpatient(models.Model):
    mrn = models.CharField("medical record number", max_length=20, unique=True)
    name = models.CharField(max_length=100)
    home_site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="outpatients")

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.mrn})"


class Medication(models.Model):
    atc_code = models.CharField(max_length=10, db_index=True)  # not unique: brands share a code
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["atc_code", "id"]

    def __str__(self) -> str:
        return f"{self.name} [{self.atc_code}]"


class Visit(models.Model):
    patient = models.ForeignKey(Outpatient, on_delete=models.CASCADE, related_name="visits")
    clinician = models.ForeignKey(Clinician, on_delete=models.PROTECT, related_name="visits")
    ward = models.ForeignKey(Ward, on_delete=models.PROTECT, related_name="visits")
    started_at = models.DateTimeField()
    status = models.CharField(max_length=20)  # open, closed
    reason = models.CharField(max_length=200)

    tags = TaggableManager(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        patient = self.patient  # lazy: clinic.Visit.patient
        return f"Visit #{self.pk} of {patient.name}"

    @property
    def location_label(self) -> str:
        """Two relations in one property (and the ward's site through the first)."""
        ward = self.ward  # lazy: clinic.Visit.ward
        site = ward.site  # lazy: clinic.Ward.site
        clinician = self.clinician  # lazy: clinic.Visit.clinician
        return f"{site.code}/{ward.code} with {clinician.name}"


class Order(models.Model):
    visit = models.ForeignKey(Visit, on_delete=models.CASCADE, related_name="orders")
    code = models.CharField(max_length=20)
    status = models.CharField(max_length=20)  # open, done
    placed_at = models.DateTimeField()
    medications = models.ManyToManyField(Medication, related_name="orders", blank=True)

    class Meta:
        ordering = ["placed_at", "id"]

    def __str__(self) -> str:
        visit = self.visit  # lazy: clinic.Order.visit
        return f"Order {self.code} for visit #{visit.pk}"


class Handover(models.Model):
    """A shift handover: a list of visits and orders to look at (the GenericForeignKey items)."""

    ward = models.ForeignKey(Ward, on_delete=models.CASCADE, related_name="handovers")
    written_at = models.DateTimeField()

    class Meta:
        ordering = ["written_at", "id"]

    def __str__(self) -> str:
        return f"Handover #{self.pk}"


class HandoverItem(models.Model):
    handover = models.ForeignKey(Handover, on_delete=models.CASCADE, related_name="items")
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveBigIntegerField()
    subject = GenericForeignKey("content_type", "object_id")
    note = models.CharField(max_length=200)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["content_type", "object_id"], name="clinic_item_subject_idx")]

    def __str__(self) -> str:
        return f"Item #{self.pk}"
