"""``seed_clinic``: fill the clinic tables with deterministic, synthetic data (``seed_hms`` runs it).

The tables (and django-taggit's) are emptied first, so ids start at 1 and the same ``--seed``
gives the same rows. Shape: 3 sites (``NTH``, ``STH``, ``EST``) with wards ``A``, ``B`` each (ward
codes repeat across sites), 12 clinicians (every fourth without a ward), 30 outpatients, 60
visits (every third open, each with 0-3 of 5 tags), 2 orders per visit with 0-2 of 12
medications (ATC codes shared by two brands each, so ``atc_code`` is not unique), and per ward
one handover of 5 items (alternately a visit and an order).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.core.management.color import no_style
from django.db import connection, transaction
from taggit.models import Tag, TaggedItem

from ...models import (
    Clinician,
    Handover,
    HandoverItem,
    Medication,
    Order,
    Outpatient,
    Site,
    Visit,
    Ward,
)

SITES = (("NTH", "North campus"), ("STH", "South campus"), ("EST", "East clinic"))
WARDS = (("A", "Admissions"), ("B", "Day surgery"))
ROLES = ("physician", "nurse", "physiotherapist")
NAMES = (
    "Ada Moreau", "Ben Okafor", "Chloe Ito", "Dev Larsen", "Elif Rossi", "Farah Silva", "Goran Weber",
    "Hana Petrov", "Ivan Garcia", "Jade Tanaka", "Kofi Dubois", "Lena Haddad", "Mateo Young",
    "Nia Castillo", "Omar Fischer",
)  # fmt: skip
REASONS = ("Follow-up", "Dressing change", "Blood test", "Physiotherapy", "Consultation")
TAGS = ("urgent", "follow-up", "interpreter", "wheelchair", "fasting")
ORDER_CODES = ("CBC", "BMP", "XR-CHEST", "ECG", "PT-EVAL")
MEDICATIONS = (
    ("N02BE01", "Paracetamol"), ("N02BE01", "Acetaminophen"), ("J01CA04", "Amoxicillin"),
    ("J01CA04", "Amoxil"), ("C09AA05", "Ramipril"), ("C09AA05", "Tritace"), ("A02BC01", "Omeprazole"),
    ("A02BC01", "Losec"), ("B01AC06", "Aspirin"), ("B01AC06", "Aspegic"), ("R03AC02", "Salbutamol"),
    ("R03AC02", "Ventolin"),
)  # fmt: skip
SEED_PATIENTS = 30
SEED_VISITS = 60
SEED_CLINICIANS = 12
HANDOVER_ITEMS = 5


class Command(BaseCommand):
    help = "Replace the clinic tables with deterministic synthetic data (fake names, no real PHI)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
        parser.add_argument(
            "--anchor-date",
            type=dt.date.fromisoformat,
            default=None,
            help="YYYY-MM-DD that visit times are placed before (default: today, UTC)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        anchor_date = options["anchor_date"] or dt.datetime.now(dt.timezone.utc).date()
        anchor = dt.datetime.combine(anchor_date, dt.time(), tzinfo=dt.timezone.utc)
        with transaction.atomic():
            self._clear()
            counts = self._seed(random.Random(options["seed"]), anchor)
        if options["verbosity"] >= 1:
            self.stdout.write("seeded clinic: " + ", ".join(f"{n} {name}" for name, n in counts.items()))

    def _clear(self) -> None:
        models = (HandoverItem, Handover, TaggedItem, Tag, Order, Visit, Medication, Outpatient, Clinician,
                  Ward, Site)  # fmt: skip
        tables = [m._meta.db_table for m in models] + [Order.medications.through._meta.db_table]
        sql = connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
        connection.ops.execute_sql_flush(sql)

    def _seed(self, rng: random.Random, anchor: dt.datetime) -> dict[str, int]:
        sites = Site.objects.bulk_create([Site(code=code, name=name) for code, name in SITES])
        wards = Ward.objects.bulk_create(
            [Ward(site=site, code=code, name=f"{name} {site.code}") for site in sites for code, name in WARDS]
        )
        clinicians = Clinician.objects.bulk_create(
            [
                Clinician(
                    name=NAMES[i % len(NAMES)],
                    role=ROLES[i % len(ROLES)],
                    ward=None if i % 4 == 3 else wards[i % len(wards)],
                )
                for i in range(SEED_CLINICIANS)
            ]
        )
        patients = Outpatient.objects.bulk_create(
            [
                Outpatient(mrn=f"CL-{1000 + i}", name=rng.choice(NAMES), home_site=sites[i % len(sites)])
                for i in range(SEED_PATIENTS)
            ]
        )
        visits = Visit.objects.bulk_create(
            [
                Visit(
                    patient=patients[i % len(patients)],
                    clinician=clinicians[rng.randrange(len(clinicians))],
                    ward=wards[rng.randrange(len(wards))],
                    started_at=anchor
                    - dt.timedelta(days=rng.randint(1, 90), minutes=15 * rng.randint(0, 40)),
                    status="open" if i % 3 == 0 else "closed",
                    reason=rng.choice(REASONS),
                )
                for i in range(SEED_VISITS)
            ]
        )
        tags = Tag.objects.bulk_create([Tag(name=name, slug=name) for name in TAGS])
        tagged = [(v, t) for v in visits for t in rng.sample(tags, rng.randint(0, 3))]
        visit_type = TaggedItem.content_type.field.related_model.objects.get_for_model(Visit)
        TaggedItem.objects.bulk_create(
            [TaggedItem(tag=t, content_type=visit_type, object_id=v.pk) for v, t in tagged]
        )
        medications = Medication.objects.bulk_create([Medication(atc_code=c, name=n) for c, n in MEDICATIONS])
        orders = Order.objects.bulk_create(
            [
                Order(
                    visit=v,
                    code=rng.choice(ORDER_CODES),
                    status=rng.choice(("open", "done")),
                    placed_at=v.started_at + dt.timedelta(minutes=rng.randint(5, 60)),
                )
                for v in visits
                for _ in range(2)
            ]
        )
        through = Order.medications.through
        through.objects.bulk_create(
            [
                through(order_id=o.pk, medication_id=m.pk)
                for o in orders
                for m in rng.sample(medications, rng.randint(0, 2))
            ]
        )
        handovers = Handover.objects.bulk_create(
            [
                Handover(ward=w, written_at=anchor - dt.timedelta(hours=8 * (i + 1)))
                for i, w in enumerate(wards)
            ]
        )
        items = []
        for handover in handovers:
            for k in range(HANDOVER_ITEMS):
                subject: Visit | Order = rng.choice(visits) if k % 2 == 0 else rng.choice(orders)
                items.append(HandoverItem(handover=handover, subject=subject, note=f"check {k + 1}"))
        HandoverItem.objects.bulk_create(items)
        return {
            "sites": len(sites),
            "wards": len(wards),
            "clinicians": len(clinicians),
            "outpatients": len(patients),
            "visits": len(visits),
            "tag assignments": len(tagged),
            "medications": len(medications),
            "orders": len(orders),
            "handovers": len(handovers),
            "handover items": len(items),
        }
