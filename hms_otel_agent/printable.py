"""Text the agent prints, made safe for a terminal and a log: `printable`.

Keys, routes, span names, file names and setting values come from the application and its
users. Printed as they are, a ``\\n`` or ``\\r`` in one forges a log line, an ANSI escape colors or
clears the terminal, a bidi override (U+202E) shows text in another order. Every place the agent
prints (the live log and its other warnings, the report in every format, ``hms-otel analyze``,
``hms-otel config``, the problems of the configuration) goes through `printable`, field by
field. Imports nothing of the agent: any layer may use it.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["PrintableFormatter", "json_printable", "printable"]

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object) -> str:
    """`text` with every character that is not printable (C0 and C1 controls, DEL, format
    characters such as bidi overrides and zero-width marks, line and paragraph separators,
    surrogates, unassigned and private-use code points, spaces other than " ") written as a
    visible escape (``\\n``, ``\\x1b``, ``\\u202e``): one line, shown as it reads."""
    shown = text if isinstance(text, str) else str(text)
    if shown.isprintable():
        return shown
    return "".join(char if char.isprintable() else _escape(char) for char in shown)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:  # JSON escapes astral code points as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def json_printable(document: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with every non-printable
    character inside its strings written as a ``\\uXXXX`` escape: the same document once
    parsed. (json.dumps escapes only U+0000-U+001F; the structure's own whitespace is ``\\n``
    and spaces, which stay.)"""
    if document.isprintable():
        return document
    return "".join(char if char.isprintable() or char == "\n" else _json_escape(char) for char in document)


class PrintableFormatter(logging.Formatter):
    """The agent's log lines, each one line whatever its arguments held."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))
