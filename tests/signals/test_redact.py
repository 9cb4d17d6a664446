"""Redaction of identifying query values and exception messages (pure functions)."""

from __future__ import annotations

import pytest

from hms_otel_agent.config import DEFAULT_REDACTED_QUERY_PARAMS
from hms_otel_agent.signals import redact

NAMES = DEFAULT_REDACTED_QUERY_PARAMS


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://h/patients/search/?q=Smith&mrn=MRN-004211&limit=5",
            "http://h/patients/search/?q=REDACTED&mrn=REDACTED&limit=5",
        ),
        ("/patients/search/?MRN=MRN-004211", "/patients/search/?MRN=REDACTED"),
        ("/encounters/?limit=20&offset=40", "/encounters/?limit=20&offset=40"),
        ("/encounters/", "/encounters/"),
        ("http://h/p/?email=a%40b.org&x=1", "http://h/p/?email=REDACTED&x=1"),
        ("http://h/p/?name=", "http://h/p/?name=REDACTED"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact.redact_url(url, NAMES) == expected


def test_unlisted_parameters_are_kept_and_list_is_configurable() -> None:
    assert redact.redact_query("ward=4B&bed=12", NAMES) == "ward=4B&bed=12"
    assert redact.redact_query("ward=4B&bed=12", ["bed"]) == "ward=4B&bed=REDACTED"


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
