"""``seed_hms``: fill the hms tables with deterministic, synthetic data.

The tables are emptied first (TRUNCATE ... RESTART IDENTITY), so ids always start at 1 and the
same ``--seed`` gives the same rows. Only dates move: they are placed around ``--anchor-date``
(default: today, UTC) so that "upcoming" appointments exist whenever the demo runs.

Shape, for the defaults (200 patients): 4 facilities with 3 departments each, 12 practitioners,
and per patient 1-2 emergency contacts, one medical record, 3 encounters, 2 appointments and one
note. Patients with an odd id have insurance (exactly half). Encounters and appointments are
created round by round, so encounter k and appointment k belong to patient k for k <= patients.
Notes alternate: patient k's note is on the patient when k is odd, else on its first encounter.
The clinic app's tables are seeded too (``seed_clinic``, same seed and anchor date).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.color import no_style
from django.db import connection, transaction

from ...models import (
    Appointment,
    Department,
    EmergencyContact,
    Encounter,
    Facility,
    Insurance,
    MedicalRecord,
    Note,
    Patient,
    Practitioner,
)

GIVEN_NAMES = (
    "Ada", "Ben", "Chloe", "Dev", "Elif", "Farah", "Goran", "Hana", "Ivan", "Jade", "Kofi", "Lena",
    "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Viktor", "Wen", "Yusuf",
)  # fmt: skip
FAMILY_NAMES = (
    "Abbott", "Baker", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
    "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe", "Rossi", "Silva",
    "Tanaka", "Umarov", "Varga", "Weber", "Young",
)  # fmt: skip
FACILITIES = (
    ("Northside General", "Springfield"),
    ("Lakeview Medical Center", "Riverton"),
    ("St. Aurelia Hospital", "Fairview"),
    ("Harbor Community Clinic", "Bayport"),
    ("Mesa Regional", "Dry Creek"),
    ("Pinecrest Children's", "Springfield"),
)
DEPARTMENTS = (
    "Cardiology", "Emergency", "Pediatrics", "Oncology", "Radiology", "Orthopedics", "Neurology",
    "Dermatology",
)  # fmt: skip
SPECIALTIES = ("Cardiology", "Emergency medicine", "Pediatrics", "Oncology", "Family medicine")
PROVIDERS = (("Acme Health", "ACM"), ("BlueRiver Mutual", "BRM"), ("Civic Care", "CVC"))
RELATIONSHIPS = ("spouse", "parent", "sibling", "child", "friend")
BLOOD_TYPES = ("O+", "O-", "A+", "A-", "B+", "B-", "AB+", "AB-")
ALLERGIES = ("", "", "penicillin", "peanuts", "latex", "shellfish")
REASONS = (
    "Annual check-up", "Chest pain", "Follow-up visit", "Fever", "Fracture", "Headache",
    "Shortness of breath", "Vaccination",
)  # fmt: skip
ENCOUNTER_STATUSES = ("finished", "finished", "finished", "in-progress", "cancelled")
NOTE_TEXTS = (
    "Discussed medication plan.", "Patient reports improvement.", "Lab results pending.",
    "Referred to specialist.", "No acute distress.",
)  # fmt: skip


def _phone(rng: random.Random) -> str:
    return f"555-{rng.randint(100, 999)}-{rng.randint(0, 9999):04d}"


def _national_id(rng: random.Random) -> str:
    return f"9{rng.randint(0, 99):02d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _before(anchor: dt.datetime, rng: random.Random, days_from: int, days_to: int) -> dt.datetime:
    return anchor - dt.timedelta(days=rng.randint(days_from, days_to), minutes=rng.randint(0, 1439))


def _at(anchor: dt.datetime, rng: random.Random, days_from: int, days_to: int) -> dt.datetime:
    """A time on a quarter hour between 08:00 and 17:45, ``days_from``..``days_to`` days off anchor."""
    day = anchor + dt.timedelta(days=rng.randint(days_from, days_to))
    return day.replace(hour=rng.randint(8, 17), minute=15 * rng.randint(0, 3))


class Command(BaseCommand):
    help = "Replace the hms tables with deterministic synthetic data (fake names, no real PHI)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
        parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
        parser.add_argument("--facilities", type=int, default=4, help="facilities, at most 6 (default 4)")
        parser.add_argument("--practitioners", type=int, default=12, help="practitioners (default 12)")
        parser.add_argument(
            "--anchor-date",
            type=dt.date.fromisoformat,
            default=None,
            help="YYYY-MM-DD that dates are placed around (default: today, UTC)",
        )
        parser.add_argument("--flush-cache", action="store_true", help="also clear the Django cache")

    def handle(self, *args: Any, **options: Any) -> None:
        patients, facilities = options["patients"], options["facilities"]
        practitioners = options["practitioners"]
        if patients < 0 or not 1 <= facilities <= len(FACILITIES) or practitioners < 1:
            raise CommandError(
                f"need patients >= 0, 1 <= facilities <= {len(FACILITIES)}, practitioners >= 1"
            )
        anchor_date = options["anchor_date"] or dt.datetime.now(dt.timezone.utc).date()
        anchor = dt.datetime.combine(anchor_date, dt.time(), tzinfo=dt.timezone.utc)
        with transaction.atomic():
            self._clear()
            counts = self._seed(random.Random(options["seed"]), anchor, patients, facilities, practitioners)
            # The second example app's tables, from the same seed and anchor.
            call_command("seed_clinic", seed=options["seed"], anchor_date=anchor_date, verbosity=0)
        if options["flush_cache"]:
            cache.clear()
        if options["verbosity"] >= 1:
            summary = ", ".join(f"{n} {name}" for name, n in counts.items())
            self.stdout.write(
                f"seeded {summary}" + (" and cleared the cache" if options["flush_cache"] else "")
            )

    def _clear(self) -> None:
        models = (Note, Appointment, Encounter, MedicalRecord, EmergencyContact, Patient, Insurance,
                  Practitioner, Department, Facility)  # fmt: skip
        tables = [m._meta.db_table for m in models] + [Practitioner.departments.through._meta.db_table]
        sql = connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
        connection.ops.execute_sql_flush(sql)

    def _seed(
        self,
        rng: random.Random,
        anchor: dt.datetime,
        n_patients: int,
        n_facilities: int,
        n_practitioners: int,
    ) -> dict[str, int]:
        facilities = Facility.objects.bulk_create(
            [Facility(name=name, city=city) for name, city in FACILITIES[:n_facilities]]
        )
        departments = Department.objects.bulk_create(
            [Department(name=name, facility=f) for f in facilities for name in rng.sample(DEPARTMENTS, 3)]
        )
        departments_of = {f.pk: [d for d in departments if d.facility_id == f.pk] for f in facilities}

        practitioners = Practitioner.objects.bulk_create(
            [
                Practitioner(
                    given_name=rng.choice(GIVEN_NAMES),
                    family_name=rng.choice(FAMILY_NAMES),
                    specialty=rng.choice(SPECIALTIES),
                    facility=facilities[i % n_facilities],
                )
                for i in range(n_practitioners)
            ]
        )
        through = Practitioner.departments.through
        through.objects.bulk_create(
            [
                through(practitioner_id=pr.pk, department_id=d.pk)
                for pr in practitioners
                for d in rng.sample(departments_of[pr.facility_id], rng.randint(1, 2))
            ]
        )
        practitioners_of = {f.pk: [p for p in practitioners if p.facility_id == f.pk] for f in facilities}

        insured = range(0, n_patients, 2)  # patients 1, 3, 5, ... (ids start at 1)
        insurances = Insurance.objects.bulk_create(
            [
                Insurance(
                    provider=provider,
                    plan_code=f"{code}-{rng.randint(100, 999)}",
                    member_number=f"{code}{rng.randint(10**8, 10**9 - 1)}",
                )
                for provider, code in (rng.choice(PROVIDERS) for _ in insured)
            ]
        )
        insurance_of = dict(zip(insured, insurances, strict=True))
        mrns = rng.sample(range(1, 1_000_000), n_patients)
        patients = []
        for i in range(n_patients):
            given, family = rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES)
            born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randint(0, 80 * 365))
            patients.append(
                Patient(
                    mrn=f"MRN-{mrns[i]:06d}",
                    given_name=given,
                    family_name=family,
                    date_of_birth=born,
                    email=f"{given}.{family}@example.org".lower(),
                    phone=_phone(rng),
                    national_id=_national_id(rng),
                    insurance=insurance_of.get(i),
                    created_at=_before(anchor, rng, 30, 3000),
                )
            )
        patients = Patient.objects.bulk_create(patients)

        contacts = EmergencyContact.objects.bulk_create(
            [
                EmergencyContact(
                    patient=p,
                    name=f"{rng.choice(GIVEN_NAMES)} {rng.choice(FAMILY_NAMES)}",
                    phone=_phone(rng),
                    relationship=rng.choice(RELATIONSHIPS),
                )
                for p in patients
                for _ in range(rng.randint(1, 2))
            ]
        )
        records = MedicalRecord.objects.bulk_create(
            [
                MedicalRecord(patient=p, blood_type=rng.choice(BLOOD_TYPES), allergies=rng.choice(ALLERGIES))
                for p in patients
            ]
        )

        encounters: list[Encounter] = []
        for _round in range(3):
            for p in patients:
                facility = rng.choice(facilities)
                encounters.append(
                    Encounter(
                        patient=p,
                        facility=facility,
                        practitioner=rng.choice(practitioners_of[facility.pk] or practitioners),
                        department=rng.choice([*departments_of[facility.pk], None]),
                        started_at=_at(anchor, rng, -365, -1),
                        reason=rng.choice(REASONS),
                        status=rng.choice(ENCOUNTER_STATUSES),
                    )
                )
        encounters = Encounter.objects.bulk_create(encounters)

        appointments: list[Appointment] = []
        for _round in range(2):
            for p in patients:
                when = _at(anchor, rng, -30, 60)
                status = "fulfilled" if when < anchor else rng.choice(("booked", "booked", "cancelled"))
                appointments.append(
                    Appointment(
                        patient=p,
                        practitioner=rng.choice(practitioners),
                        scheduled_for=when,
                        status=status,
                        duration_minutes=rng.choice((15, 30, 45, 60)),
                    )
                )
        Appointment.objects.bulk_create(appointments)

        first_encounter = {e.patient_id: e for e in encounters[: len(patients)]}  # round 0
        notes = []
        for i, p in enumerate(patients):
            subject: Patient | Encounter = p if i % 2 == 0 else first_encounter[p.pk]
            notes.append(
                Note(
                    subject=subject,
                    text=rng.choice(NOTE_TEXTS),
                    created_at=_before(anchor, rng, 1, 365),
                )
            )
        Note.objects.bulk_create(notes)

        return {
            "facilities": len(facilities),
            "departments": len(departments),
            "practitioners": len(practitioners),
            "patients": len(patients),
            "insurances": len(insurances),
            "emergency contacts": len(contacts),
            "medical records": len(records),
            "encounters": len(encounters),
            "appointments": len(appointments),
            "notes": len(notes),
        }
