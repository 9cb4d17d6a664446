"""Removing patient data from exception texts before they are exported (URLs: `urls`).

Pure functions; the span processor applies them to every span just before it ends.
"""

from __future__ import annotations

import re

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


def scrub_stacktrace(text: str) -> str:
    """Keep the structure and frames of a formatted traceback; drop every exception message,
    including indented continuation lines and the members of exception groups."""
    lines: list[str] = []
    in_message = False
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
                lines.append(line)
                source_lines = _TB_SOURCE_LINES
            elif stripped.startswith("[Previous line repeated"):
                lines.append(line)
            elif source_lines:
                lines.append(line)
                source_lines -= 1
            continue  # any other indented text is not part of a frame: dropped
        exception = _TB_EXCEPTION.match(content)
        if exception:
            lines.append(f"{prefix}{exception.group(1)}: {MESSAGE_REDACTED}")
        in_message, source_lines = True, 0
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def scrub_status_description(description: str) -> str:
    """``IntegrityError: duplicate key ... (MRN-1)`` -> ``IntegrityError (message redacted)``."""
    head = description.split(":", 1)[0].strip()
    if head and " " not in head:
        return exception_message(head)
    return MESSAGE_REDACTED
