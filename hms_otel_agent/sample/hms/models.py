"""Data model of the sample hospital: every kind of relation Django has.

forward FK (Encounter.patient), nullable FK (Patient.insurance), reverse FK (Patient.encounters),
many-to-many (Practitioner.departments), one-to-one (MedicalRecord.patient, reverse
Patient.medical_record), generic FK (Note.subject) and generic relation (Patient.notes).

Default orderings use the model's own columns only (never a related model's field, which would
add a join to every query) and end in ``id`` so that per-row queries and prefetches agree.
"""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey, GenericRelation
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone


class Insurance(models.Model):
    provider = models.CharField(max_length=100)
    plan_code = models.CharField(max_length=20)
    member_number = models.CharField(max_length=30)

    def __str__(self) -> str:
        return f"{self.provider} {self.plan_code}"


class Facility(models.Model):
    name = models.CharField(max_length=100)
    city = models.CharField(max_length=100)

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "facilities"

    def __str__(self) -> str:
        return f"{self.name} ({self.city})"


class Department(models.Model):
    name = models.CharField(max_length=100)
    facility = models.ForeignKey(Facility, on_delete=models.CASCADE, related_name="departments")

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Practitioner(models.Model):
    given_name = models.CharField(max_length=50)
    family_name = models.CharField(max_length=50)
    specialty = models.CharField(max_length=50)
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="practitioners")
    departments = models.ManyToManyField(Department, related_name="practitioners", blank=True)

    class Meta:
        ordering = ["family_name", "given_name", "id"]

    def __str__(self) -> str:
        return f"Dr. {self.given_name} {self.family_name}"


class Patient(models.Model):
    mrn = models.CharField("medical record number", max_length=20, unique=True)
    given_name = models.CharField(max_length=50)
    family_name = models.CharField(max_length=50)
    date_of_birth = models.DateField()
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=20, blank=True)
    national_id = models.CharField(max_length=11, blank=True)
    insurance = models.ForeignKey(
        Insurance, on_delete=models.SET_NULL, null=True, blank=True, related_name="patients"
    )
    created_at = models.DateTimeField(default=timezone.now)

    notes = GenericRelation("Note")

    class Meta:
        ordering = ["family_name", "given_name", "id"]

    def __str__(self) -> str:
        return f"{self.given_name} {self.family_name} ({self.mrn})"


class EmergencyContact(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="emergency_contacts")
    name = models.CharField(max_length=100)
    phone = models.CharField(max_length=20)
    relationship = models.CharField(max_length=30)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.relationship})"


class MedicalRecord(models.Model):
    patient = models.OneToOneField(Patient, on_delete=models.CASCADE, related_name="medical_record")
    blood_type = models.CharField(max_length=3)
    allergies = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"Medical record #{self.pk}"


class Encounter(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="encounters")
    facility = models.ForeignKey(Facility, on_delete=models.PROTECT, related_name="encounters")
    practitioner = models.ForeignKey(Practitioner, on_delete=models.PROTECT, related_name="encounters")
    department = models.ForeignKey(
        Department, on_delete=models.SET_NULL, null=True, blank=True, related_name="encounters"
    )
    started_at = models.DateTimeField()
    reason = models.CharField(max_length=200)
    status = models.CharField(max_length=20)

    notes = GenericRelation("Note")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"Encounter #{self.pk} ({self.status})"


class Appointment(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="appointments")
    practitioner = models.ForeignKey(Practitioner, on_delete=models.CASCADE, related_name="appointments")
    scheduled_for = models.DateTimeField()
    status = models.CharField(max_length=20)
    duration_minutes = models.PositiveSmallIntegerField(default=30)

    class Meta:
        ordering = ["scheduled_for", "id"]

    def __str__(self) -> str:
        return f"Appointment #{self.pk} at {self.scheduled_for:%Y-%m-%d %H:%M}"


class Note(models.Model):
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveIntegerField()
    subject = GenericForeignKey("content_type", "object_id")
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["content_type", "object_id"], name="hms_note_subject_idx")]

    def __str__(self) -> str:
        return f"Note #{self.pk}"
