"""Redaction of exception messages (pure functions; URLs: test_urls.py)."""

from __future__ import annotations

from hms_otel_agent.signals import redact

TRACEBACK = """Traceback (most recent call last):
  File "/app/hms/views.py", line 10, in duplicate
    Patient.objects.create(mrn=mrn)
psycopg.errors.UniqueViolation: duplicate key value violates unique constraint "hms_patient_mrn_key"
DETAIL:  Key (mrn)=(MRN-004211) already exists.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/app/hms/views.py", line 10, in duplicate
    Patient.objects.create(mrn=mrn)
django.db.utils.IntegrityError: duplicate key value violates unique constraint "hms_patient_mrn_key"
DETAIL:  Key (mrn)=(MRN-004211) already exists.
"""


def test_stacktrace_keeps_frames_and_drops_messages() -> None:
    scrubbed = redact.scrub_stacktrace(TRACEBACK)
    assert "MRN-004211" not in scrubbed
    assert 'File "/app/hms/views.py", line 10, in duplicate' in scrubbed
    assert "psycopg.errors.UniqueViolation: (message redacted)" in scrubbed
    assert "django.db.utils.IntegrityError: (message redacted)" in scrubbed
    assert "The above exception was the direct cause" in scrubbed


def test_status_description_and_message() -> None:
    assert redact.scrub_status_description("IntegrityError: duplicate key (MRN-1)") == (
        "IntegrityError (message redacted)"
    )
    assert redact.scrub_status_description("something about MRN-1") == "(message redacted)"
    assert redact.exception_message("django.db.utils.IntegrityError") == "IntegrityError (message redacted)"
