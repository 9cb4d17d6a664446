"""Redaction in-process: tracebacks keep their frames and lose every message, and when the
redaction itself fails the span is exported with less, never with the data."""

from __future__ import annotations

import traceback

import pytest
from harness.traced import Traced
from opentelemetry.sdk.trace import ReadableSpan

from hms_otel_agent import guard, processors
from hms_otel_agent.processors import scrub_stacktrace

# Built at run time so that the source lines a traceback shows do not contain them.
NAME, MRN, PHONE = "Quill" + "feather", "MRN-" + "Q7Z9X1", "555-" + "0199"
MRN2, MRN3 = "MRN-" + "2", "MRN-" + "3"
SECRETS = (NAME, MRN, MRN2, MRN3, PHONE)
MULTI_LINE = f"bad patient\n    {NAME} {MRN}\nDETAIL:  Key (mrn)=({MRN}) already exists."


def formatted(make: object) -> str:
    try:
        make()  # type: ignore[operator]
    except BaseException:
        return traceback.format_exc()
    raise AssertionError("did not raise")


def multi_line() -> None:
    raise ValueError(MULTI_LINE)


def chained() -> None:
    try:
        multi_line()
    except ValueError as exc:
        raise KeyError(MRN2) from exc


def during_handling() -> None:
    try:
        multi_line()
    except ValueError:
        raise LookupError(PHONE)  # noqa: B904 - "During handling" chaining on purpose


def group() -> None:
    raise ExceptionGroup(  # noqa: F821 - Python >= 3.11 (skipped below otherwise)
        f"eg {NAME}",
        [ValueError(NAME), ExceptionGroup("inner", [KeyError(MRN3), TypeError(f"x\n  y {MRN3}")])],  # noqa: F821
    )


def noted() -> None:
    exc = ValueError("plain")
    if hasattr(exc, "add_note"):
        exc.add_note(f"    note: {NAME}")
    raise exc


CASES = [multi_line, chained, during_handling]
if hasattr(BaseException, "add_note"):  # exception notes are Python 3.11+
    CASES.append(noted)
try:
    ExceptionGroup  # noqa: B018
    CASES.append(group)
except NameError:  # Python 3.10
    pass


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_tracebacks_keep_frames_and_lose_messages(make: object) -> None:
    text = formatted(make)
    assert any(secret in text for secret in SECRETS)
    scrubbed = scrub_stacktrace(text)
    for secret in SECRETS:
        assert secret not in scrubbed, scrubbed
    # What makes it useful stays: every frame, every exception type.
    frames = [line for line in text.splitlines() if line.strip().lstrip("|").strip().startswith('File "')]
    assert frames and all(frame in scrubbed for frame in frames)
    assert "(message redacted)" in scrubbed
    assert "Traceback (most recent call last):" in scrubbed


def test_source_lines_and_carets_are_kept() -> None:
    text = formatted(multi_line)
    scrubbed = scrub_stacktrace(text)
    assert "raise ValueError(MULTI_LINE)" in scrubbed  # the source line under the frame


def exported_text(spans: list[ReadableSpan]) -> str:
    parts = []
    for span in spans:
        parts += [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
        parts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    return "\n".join(parts)


def test_when_redaction_fails_the_span_loses_the_data_not_the_app(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> str:
        raise RuntimeError("redaction bug")

    monkeypatch.setattr(processors.HttpPrivacy, "changes", broken)
    monkeypatch.setattr(processors.redact, "exception_message", broken)
    guard.reset_for_tests()
    response, server = traced.request(
        "/boom/?mrn=MRN-Q7Z9X1&limit=3", HTTP_USER_AGENT="Quillfeather's Firefox/120.0"
    )
    assert response.status_code == 500
    text = exported_text(traced.spans())
    assert "MRN-Q7Z9X1" not in text and "Quillfeather" not in text
    assert "span processor (redaction)" in guard.error_counts()
    # Every URL attribute is replaced whole (the path may be data too); the user agent is gone.
    assert server.attributes["http.url"] == "REDACTED"
    assert "http.user_agent" not in server.attributes and "user_agent.original" not in server.attributes
    [event] = [e for e in server.events if e.name == "exception"]
    assert set(event.attributes or {}) == {"exception.type"}
    assert server.status.description in (None, "(message redacted)")


def test_huge_statements_are_exported_masked_and_cut(traced: Traced) -> None:
    from django.db import connection

    from hms_otel_agent.instrument.db import MAX_EXPORTED_STATEMENT_CHARS

    literal = "SELECT length('" + "Quillfeather " * 80_000 + "')"  # 1 MB
    in_list = "SELECT 1 WHERE 1 IN (" + ",".join(str(i) for i in range(150_000)) + ")"
    with connection.cursor() as cursor:
        for statement in (literal, in_list):
            traced.clear()
            cursor.execute(statement)
            cursor.fetchall()
            [span] = [s for s in traced.spans() if s.attributes.get("db.system") == "postgresql"]
            exported = str(span.attributes["db.statement"])
            assert len(exported) <= MAX_EXPORTED_STATEMENT_CHARS + 1
            assert "Quillfeather" not in exported
            assert span.attributes["hms.db.fingerprint"]
    assert exported.startswith("SELECT ? WHERE ? IN (?,?,?") and exported.endswith("…")
