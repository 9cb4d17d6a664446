"""Mask inline SQL literals: the statement as written, with every literal value replaced by ``?``.

This is what is exported as ``db.statement`` / ``db.query.text`` by default: no SQL literal
leaves the process. Whitespace, case, identifiers and placeholders (``%s``, ``%(name)s``,
``$1``, ``:name``, ``?``) are kept exactly as written. Standard library only.

What is replaced by ``?``:

* string constants: ``'...'`` (doubled quotes inside), ``E'...'`` (backslash escapes),
  ``B'...'``, ``X'...'``, ``N'...'``, ``U&'...'``, ``$$...$$`` and ``$tag$...$tag$``;
* numbers: integers, decimals, exponents, ``0x``/``0o``/``0b`` forms (a leading sign is
  kept: ``-?``);
* ``TRUE`` / ``FALSE``;
* anything after an unterminated string, dollar quote or quoted identifier (the statement is
  invalid, and what follows must not leak).

Comments are kept as markers but emptied (``/*?*/``, ``--?``): a comment can hold anything,
including values (sqlcommenter tags, hand-written notes).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

from hms_otel_agent.signals._sql_tokens import (
    _P,
    BLOCK_COMMENT,
    DOLLAR_STRING,
    E_STRING,
    LINE_COMMENT,
    NUMBER,
    NUMBERED_PARAM,
    PREFIXED_STRING,
    PYFORMAT,
    QIDENT,
    QIDENT_OPEN,
    STRING,
)

__all__ = ["MASK_CACHE_MAX_CHARS", "mask_sql_literals"]

MASK_CACHE_MAX_CHARS: Final = 8 * 1024
"""Only statements up to this length are memoised (4096 entries)."""
_CACHE_SIZE: Final = 4096
_FAILED: Final = "?"

# Text that is kept as written, consumed in long runs so that a statement without literals is
# a single match: words (not TRUE / FALSE, not the prefix of E'..' and friends), terminated
# quoted identifiers, placeholders, and characters that cannot start a literal or a comment.
# (The repetition is bounded only to cap the regex engine's bookkeeping on huge inputs.)
_KEEP: Final = (
    rf"(?:(?!(?i:true|false)(?![\w$]))[^\W\d][\w$]*{_P}(?!['&])"
    rf"|{QIDENT}|{PYFORMAT}|{NUMBERED_PARAM}"
    rf"|(?:[^-/\"'%$.\w]|\.(?![0-9])|-(?!-)|/(?!\*)|%(?!\())+{_P}"
    rf"){{1,10000}}{_P}"
)
# A literal that starts with a letter or digit must not continue a word (col1, t2, a$1).
_NOT_IN_WORD: Final = r"(?<![\w$])"
_MASK_RE: Final = re.compile(
    rf"(?P<keep>{_KEEP})"
    rf"|(?P<block>{BLOCK_COMMENT})"
    rf"|(?P<line>{LINE_COMMENT})"
    rf"|(?P<lit>{_NOT_IN_WORD}(?:{E_STRING}|{PREFIXED_STRING})"
    rf"|{STRING}"
    rf"|{QIDENT_OPEN}"
    rf"|{_NOT_IN_WORD}{DOLLAR_STRING}"
    rf"|{_NOT_IN_WORD}(?:{NUMBER})"
    rf"|{_NOT_IN_WORD}(?i:true|false)(?![\w$]))"
)


def _replace(match: re.Match[str]) -> str:
    group = match.lastgroup
    if group == "keep":
        return match.group()
    if group == "lit":
        return "?"
    if group == "block":
        return "/*?*/"
    return "--?"


def _mask(sql: str) -> str:
    try:
        return _MASK_RE.sub(_replace, sql)
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
