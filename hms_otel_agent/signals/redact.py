"""Removing patient data from exception texts before they are exported (URLs: `urls`).

Pure functions; the span processor applies them to every span just before it ends.
"""

from __future__ import annotations

import re
import traceback

from hms_otel_agent.signals.urls import REDACTED

__all__ = [
    "MESSAGE_REDACTED",
    "REDACTED",
    "exception_message",
    "scrub_stacktrace",
    "scrub_status_description",
]
MESSAGE_REDACTED = "(message redacted)"


def exception_message(type_name: str) -> str:
    """What replaces an exception's message: its type only, since messages echo data."""
    return f"{type_name.rpartition('.')[2] or 'Exception'} {MESSAGE_REDACTED}"


def format_exception_redacted(exception: BaseException) -> str:
    """The traceback Python prints for `exception`, every message replaced: built from the
    exception's structure (its frames, cause, context and group members), not from text, so a
    message that quotes another traceback (``raise RuntimeError(traceback.format_exc())``) or
    anything shaped like one is replaced whole. Exception notes and the offending line of a
    SyntaxError (data, when the code parsed data) go too; source lines of the frames stay."""
    formatted = traceback.TracebackException(
        type(exception), exception, exception.__traceback__, compact=True
    )
    pending, seen = [formatted], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current._str = MESSAGE_REDACTED  # type: ignore[attr-defined] # what format() prints
        current.__notes__ = None  # type: ignore[attr-defined]
        if current.exc_type is not None and issubclass(current.exc_type, SyntaxError):
            current.text, current.msg = None, MESSAGE_REDACTED  # type: ignore[assignment]
        for related in (current.__cause__, current.__context__):
            if related is not None:
                pending.append(related)
        pending.extend(getattr(current, "exceptions", None) or ())
    return "".join(formatted.format())


# A formatted traceback, line by line: headers, frames (`File "..."` and the source and caret
# lines under it), then the exception line, whose message may continue over any number of
# lines, indented or not, until the next header. Exception groups prefix all of this with
# "| " and separate their members with "+---- n ----" lines.
_TB_HEADERS = (
    "Traceback (most recent call last):",
    "Exception Group Traceback (most recent call last):",
    "The above exception was the direct cause",
    "During handling of the above exception",
)
_TB_GROUP_PREFIX = re.compile(r"^[ \t]*[|+][ \t]?")
_TB_SEPARATOR = re.compile(r"^[ \t]*\+[-+]*-{4,}(?: (?:\d+|\.\.\.) -+)?[ \t]*$")
_TB_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)(?=:|$)")
_TB_SOURCE_LINES = 3  # source line(s) and caret line kept under a `File` line
# How exception class names end (ValueError, UniqueViolation, DoesNotExist, Http404 ...): after
# the first exception line, a type that does not may be a quoted word and is not shown.
_EXCEPTION_SUFFIXES = (
    "Error", "Exception", "Warning", "Exit", "Interrupt", "Group", "Iteration", "Violation",
    "DoesNotExist", "Returned", "NotFound", "Denied", "Operation", "Timeout", "Http404",
)  # fmt: skip


def scrub_stacktrace(text: str) -> str:
    """Keep the structure and frames of a formatted traceback; drop every exception message,
    including indented continuation lines and the members of exception groups.

    For tracebacks that arrive as text only (`format_exception_redacted` is what the agent
    records). Text cannot tell a message that quotes a traceback from the traceback itself, so
    this fails closed: source lines are kept only in the first traceback, before any exception
    line (nothing a message holds can come before it); after that only the lines that name a
    frame (file, line, function), the headers and the exception types (with a usual ending:
    ``...Error``, ``...Exception``, ...) are kept."""
    lines: list[str] = []
    in_message = False
    after_message = False  # an exception line was seen: what follows may be quoted text
    source_lines = 0
    for line in text.splitlines():
        if not line.strip():
            lines.append("")
            continue
        if _TB_SEPARATOR.match(line):
            lines.append(line)
            in_message, source_lines = False, 0
            continue
        match = _TB_GROUP_PREFIX.match(line)
        prefix = match.group(0) if match else ""
        content = line[len(prefix) :]
        if content.startswith(_TB_HEADERS):
            lines.append(line)
            in_message, source_lines = False, 0
            continue
        if in_message or not content.strip():
            continue
        if content[0] in " \t":
            stripped = content.lstrip()
            if stripped.startswith('File "'):
                frame = _frame_line(line) if after_message else line
                if frame:
                    lines.append(frame)
                source_lines = 0 if after_message else _TB_SOURCE_LINES
            elif stripped.startswith("[Previous line repeated"):
                lines.append(line)
            elif source_lines:
                lines.append(line)
                source_lines -= 1
            continue  # any other indented text is not part of a frame: dropped
        exception = _TB_EXCEPTION.match(content)
        if exception:
            name = exception.group(1)
            if after_message and not name.endswith(_EXCEPTION_SUFFIXES):
                name = "Exception"  # a quoted "Quillfeather: ..." line reads as an exception line
            lines.append(f"{prefix}{name}: {MESSAGE_REDACTED}")
        in_message, after_message, source_lines = True, True, 0
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


_FRAME_LINE = re.compile(r'\s*(?:[|+]\s*)*File "[^"]*", line \d+(?:, in [\w.<>]+)?\s*')


def _frame_line(line: str) -> str:
    """A `File` line after an exception line may be quoted text: kept only when it is exactly
    what the interpreter writes (file, line number, function name), else dropped."""
    return line if _FRAME_LINE.fullmatch(line) else ""


def scrub_status_description(description: str) -> str:
    """``IntegrityError: duplicate key ... (MRN-1)`` -> ``IntegrityError (message redacted)``."""
    head = description.split(":", 1)[0].strip()
    if head and " " not in head:
        return exception_message(head)
    return MESSAGE_REDACTED
