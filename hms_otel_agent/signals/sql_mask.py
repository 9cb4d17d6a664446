"""Mask inline SQL literals: the statement as written, with every literal value replaced by ``?``.

This is what is exported as ``db.statement`` / ``db.query.text`` by default: no SQL literal
leaves the process. The statement is read by `sql_lexer` (PostgreSQL's lexical rules), and each
token is kept or replaced; whitespace, case, keywords, unquoted identifiers, operators and
placeholders (``%s``, ``%(name)s``, ``$1``, ``:name``, ``?``) are kept exactly as written.
Standard library only.

What is replaced (fail closed: what is not certainly structure is replaced):

* string constants of every kind (``'..'``, ``E'..'``, ``B'..'``, ``X'..'``, ``N'..'``,
  ``U&'..'``, ``$$..$$``, ``$tag$..$tag$``), numbers (a leading sign is kept: ``-?``),
  ``TRUE`` / ``FALSE``, and a number glued to a word (``1abc``) by ``?``;
* an unquoted identifier holding ``$`` (``SELECT$$John$$`` is one identifier to PostgreSQL)
  by ``?``;
* a quoted identifier by ``"?"`` unless it is one PostgreSQL would read the same unquoted (a
  lower-case identifier such as ``"hms_patient"``) or a Django alias (``"U0"``, ``"T3"``: one
  capital, digits): an alias like ``AS "John Smith"`` can hold anything;
* comments by ``/*?*/`` and ``--?`` (nested ones too): a comment can hold anything, including
  values (sqlcommenter tags, hand-written notes);
* everything from a point where the lexer is uncertain (an unterminated string, quoted
  identifier, dollar quote or comment; a standard string holding a backslash, whose end depends on
  ``standard_conforming_strings``) to the end, by one ``?``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

from hms_otel_agent.signals.sql_lexer import (
    COMMENT,
    END,
    JUNK,
    NUMBER,
    QIDENT,
    STRING,
    UNCERTAIN,
    WORD,
    lex,
)

__all__ = ["MASK_CACHE_MAX_CHARS", "mask_sql_literals", "safe_quoted_identifier"]

MASK_CACHE_MAX_CHARS: Final = 8 * 1024
"""Only statements up to this length are memoised (4096 entries)."""
_CACHE_SIZE: Final = 4096
_FAILED: Final = "?"
_BOOLEANS: Final = frozenset({"true", "false"})
_MASKED: Final = frozenset({STRING, NUMBER, JUNK, UNCERTAIN})
# What a quoted identifier may hold to be kept: a lower-case identifier (as PostgreSQL folds an
# unquoted one), or a Django alias (T3, U0).
_SAFE_QUOTED: Final = re.compile(r'"(?:[^\W\dA-Z][^\WA-Z]*|[A-Z][0-9]{0,4})"')


@lru_cache(maxsize=4096)  # the same few names in every statement of an application
def safe_quoted_identifier(text: str) -> bool:
    """Whether a quoted identifier token can be shown: it names what the same word unquoted would
    (or is a Django alias), so it is structure, not a value someone typed."""
    if _SAFE_QUOTED.fullmatch(text) is None:
        return False
    inner = text[1:-1]
    return inner[0].isupper() or inner == inner.lower()  # the alias branch is ASCII only


def _mask(sql: str) -> str:
    try:
        out: list[str] = []
        append = out.append
        for space, kind, text in lex(sql).tokens:
            append(space)
            if kind == WORD:
                if "$" in text or text.lower() in _BOOLEANS:
                    append("?")
                else:
                    append(text)
            elif kind in _MASKED:
                append("?")
            elif kind == QIDENT:
                append(text if safe_quoted_identifier(text) else '"?"')
            elif kind == COMMENT:
                append("--?" if text[0] == "-" else "/*?*/")
            elif kind != END:
                append(text)
        return "".join(out)
    except Exception:  # pragma: no cover - defensive: never export an unmasked statement
        return _FAILED


_mask_cached = lru_cache(maxsize=_CACHE_SIZE)(_mask)


def mask_sql_literals(sql: str) -> str:
    """Return ``sql`` with every inline literal replaced by ``?``. Never raises.

    Linear in the length of the input. Memoised for statements up to
    ``MASK_CACHE_MAX_CHARS``. ``bytes`` are decoded as UTF-8 with replacement; any other
    object is masked through ``str()``.
    """
    if sql.__class__ is not str:
        try:
            if isinstance(sql, (bytes, bytearray, memoryview)):
                sql = bytes(sql).decode("utf-8", errors="replace")
            else:
                sql = str(sql)
        except Exception:
            return _FAILED
    if len(sql) <= MASK_CACHE_MAX_CHARS:
        return _mask_cached(sql)
    return _mask(sql)
