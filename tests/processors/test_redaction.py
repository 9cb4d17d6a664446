"""No patient data in what the agent exports by default (in-process; the end-to-end byte-level
check over OTLP lives with the reliability tests)."""

from __future__ import annotations

from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan


def everything_exported(spans: list[ReadableSpan]) -> str:
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.append(repr(dict(span.attributes or {})))
        parts.append(repr(span.status.description))
        for event in span.events:
            parts.append(event.name + repr(dict(event.attributes or {})))
    return "\n".join(parts)


def test_failing_request_exports_no_mrn(traced: Traced) -> None:
    from hms_otel_agent.sample.hms.models import Patient

    mrn = Patient.objects.order_by("pk").values_list("mrn", flat=True).first()
    response, _ = traced.request("/patients/duplicate/?pk=1", method="post")
    assert response.status_code == 500
    text = everything_exported(traced.spans())
    assert mrn and mrn not in text
    assert "IntegrityError" in text  # the type is kept: the error is still diagnosable
    assert any(e.name == "exception" for s in traced.spans() for e in s.events)


def test_identifying_query_values_are_redacted(traced: Traced) -> None:
    response, server = traced.request("/boom/?mrn=MRN-777777&limit=3")
    assert response.status_code == 500
    text = everything_exported(traced.spans())
    assert "MRN-777777" not in text
    assert server.attributes["http.url"].endswith("/boom/?mrn=REDACTED&limit=3")
    assert "ValueError: bad patient" not in text  # the message; the source line may stay


def test_search_terms_are_redacted(traced: Traced) -> None:
    response, _ = traced.request("/patients/search/?q=Okafor&mrn=MRN-000002")
    assert response.status_code == 200
    text = everything_exported(traced.spans())
    assert "Okafor" not in text and "MRN-000002" not in text
