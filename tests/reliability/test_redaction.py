"""Redaction in-process: tracebacks keep their frames and lose every message, and when the
redaction itself fails the span is exported with less, never with the data."""

from __future__ import annotations

import traceback

import pytest
from harness.traced import Traced
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan

from hms_otel_agent import guard
from hms_otel_agent.processors import redaction
from hms_otel_agent.signals import redact
from hms_otel_agent.signals.redact import scrub_stacktrace

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

    monkeypatch.setattr(redaction.HttpPrivacy, "changes", broken)
    monkeypatch.setattr(redaction.redact, "exception_message", broken)
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


# --- messages that embed another traceback ------------------------------------------------------

FIRST, LAST = "Zebe" + "diah", "Quill" + "feather"
# A traceback from another process (a worker, a job runner) quoted in a message: its source
# line shows the call with its arguments.
QUOTED = (
    "Traceback (most recent call last):\n"
    '  File "/srv/jobs/admissions.py", line 12, in run\n'
    f"    admit(name='{FIRST} {LAST}', mrn='{MRN}')\n"
    '  File "/srv/jobs/admissions.py", line 40, in admit\n'
    "    raise ValueError(mrn)\n"
    f"ValueError: {MRN}\n"
)
EMBEDDED_SECRETS = (FIRST, LAST, MRN, MRN2, NAME, "admit(name=")


def lookup(name: str) -> None:
    raise ValueError(f"no patient {name}")


def reraised_with_traceback() -> None:
    """The common worker pattern: the caught traceback as the message of a new exception."""
    try:
        lookup(name=FIRST + " " + LAST)
    except ValueError:
        raise RuntimeError("job failed:\n" + traceback.format_exc())  # noqa: B904 - on purpose


def quoted_from_elsewhere() -> None:
    raise RuntimeError("import failed:\n" + QUOTED)


def quoted_chain() -> None:
    """A message holding a whole chained traceback, separators and all."""
    chain = QUOTED + "\nThe above exception was the direct cause of the following exception:\n\n" + QUOTED
    raise LookupError(chain)


def embedded_twice() -> None:
    try:
        quoted_from_elsewhere()
    except RuntimeError as exc:
        raise LookupError(f"retry failed {exc}") from exc


EMBEDDED = [reraised_with_traceback, quoted_from_elsewhere, quoted_chain, embedded_twice]


def _leaked(text: str) -> list[str]:
    return [v for v in EMBEDDED_SECRETS if v in text]


def _first_traceback(text: str) -> list[str]:
    """The lines of the first traceback before its exception line: the interpreter's own."""
    lines = []
    for line in text.splitlines()[1:]:
        if not line.startswith(" "):
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("make", EMBEDDED, ids=lambda f: f.__name__)
def test_text_scrubber_fails_closed_on_a_message_that_embeds_a_traceback(make: object) -> None:
    text = formatted(make)
    assert _leaked(text)  # the raw traceback quotes them (positive control)
    scrubbed = scrub_stacktrace(text)
    assert not _leaked(scrubbed), scrubbed
    # The first traceback is the interpreter's own: its frames and source lines stay.
    first = _first_traceback(text)
    assert first and all(line in scrubbed for line in first)


@pytest.mark.parametrize("make", [*EMBEDDED, *CASES], ids=lambda f: f.__name__)
def test_structural_traceback_keeps_every_real_frame_and_no_message(make: object) -> None:
    try:
        make()  # type: ignore[operator]
    except BaseException as exc:
        caught = exc
    raw = "".join(traceback.format_exception(type(caught), caught, caught.__traceback__))
    built = redact.format_exception_redacted(caught)
    for secret in (*SECRETS, *EMBEDDED_SECRETS):
        assert secret not in built, built
    # Every frame the interpreter recorded, with its source line (they are the app's code).
    frames = traceback.extract_tb(caught.__traceback__)
    for frame in frames:
        assert f'File "{frame.filename}", line {frame.lineno}, in {frame.name}' in built
        assert (frame.line or "") in built
    assert built.count("(message redacted)") >= 1
    assert raw.count("Traceback (most recent call last)") >= built.count("Traceback (most recent call last)")


def test_syntax_errors_and_notes_lose_their_data() -> None:
    try:
        compile(f"x = '{LAST}", "<patient form>", "exec")
    except SyntaxError as exc:
        if hasattr(exc, "add_note"):
            exc.add_note(f"while parsing {FIRST}")
        built = redact.format_exception_redacted(exc)
    assert FIRST not in built and LAST not in built
    assert "SyntaxError: (message redacted)" in built


def test_recorded_exceptions_carry_the_structural_traceback(traced: Traced) -> None:
    """Every exception the SDK records (contrib middleware, the agent's wrappers, use_span) goes
    through the agent's record_exception hook: no message is read, the stack trace is built
    from the exception object."""
    traced.clear()
    with pytest.raises(RuntimeError), traced.tracer.start_as_current_span("job"):
        reraised_with_traceback()
    [job] = [s for s in traced.spans() if s.name == "job"]
    [event] = [e for e in job.events if e.name == "exception"]
    attributes = dict(event.attributes or {})
    stacktrace = str(attributes["exception.stacktrace"])
    assert attributes["exception.type"] == "RuntimeError"
    assert attributes["exception.message"] == "RuntimeError (message redacted)"
    assert not _leaked(exported_text([job])), exported_text([job])
    # The real frames keep their source lines, after the first exception line too (the text
    # scrubber drops those).
    assert 'raise RuntimeError("job failed:\\n" + traceback.format_exc())' in stacktrace
    assert 'lookup(name=FIRST + " " + LAST)' in stacktrace


def test_an_exception_that_cannot_be_printed_is_recorded(traced: Traced) -> None:
    """The SDK's record_exception calls str() on it and raises; the agent's never reads it."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    traced.clear()
    span = traced.tracer.start_span("job")
    span.record_exception(Unprintable())
    span.end()
    [job] = [s for s in traced.spans() if s.name == "job"]
    [event] = [e for e in job.events if e.name == "exception"]
    assert str((event.attributes or {})["exception.type"]).endswith("Unprintable")
    assert "Unprintable: (message redacted)" in str((event.attributes or {})["exception.stacktrace"])


_PHI_TOKEN = st.from_regex(r"[A-Z][a-z]{5,9}|MRN-[0-9]{6}|[0-9]{3}-[0-9]{2}-[0-9]{4}", fullmatch=True)
_TB_PIECES = st.sampled_from(
    [
        "Traceback (most recent call last):",
        "Exception Group Traceback (most recent call last):",
        '  File "/srv/a.py", line 3, in f',
        '  | File "/srv/a.py", line 3, in f',
        "    f(name='{phi}')",
        "    ^^^^^^^^^^^^^^",
        "ValueError: {phi}",
        "  | ValueError: {phi}",
        "+---------------- 1 ----------------",
        "",
        "The above exception was the direct cause of the following exception:",
        "During handling of the above exception, another exception occurred:",
        "    [Previous line repeated 3 more times]",
        "{phi}",
    ]
)


def raise_with(message: str) -> None:
    raise RuntimeError(message)


def caught_with(message: str) -> RuntimeError:
    try:
        raise_with(message)
    except RuntimeError as exc:
        return exc
    raise AssertionError("did not raise")


@settings(max_examples=300, deadline=None)
@given(st.lists(_TB_PIECES, min_size=1, max_size=12), _PHI_TOKEN)
def test_property_no_quoted_traceback_survives_either_scrubber(pieces: list[str], phi: str) -> None:
    """Quoted source lines, messages and exception lines go; (quoted frame lines, which name a
    file and a function, are kept by the text scrubber: they read as frames)."""
    message = "\n".join(pieces).replace("{phi}", phi)
    assume(phi in message)
    caught = caught_with(message)
    text = "".join(traceback.format_exception(type(caught), caught, caught.__traceback__))
    assert phi not in scrub_stacktrace(text)
    assert phi not in redact.format_exception_redacted(caught)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_property_structural_traceback_never_holds_the_message(message: str) -> None:
    built = redact.format_exception_redacted(caught_with(message))
    assume(message.strip() and message not in redact.format_exception_redacted(caught_with("")))
    assert message not in built
