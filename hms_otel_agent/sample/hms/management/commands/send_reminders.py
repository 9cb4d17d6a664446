"""``send_reminders``: the sample's background job as a management command (see hms/jobs.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...jobs import send_reminders


class Command(BaseCommand):
    help = "Build reminders for the next booked appointments (naive: one patient query each)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=20)
        parser.add_argument("--optimized", action="store_true", help="join the patients")

    def handle(self, *args: Any, **options: Any) -> None:
        sent = send_reminders(options["limit"], optimized=options["optimized"])
        self.stdout.write(f"{sent} reminders")
