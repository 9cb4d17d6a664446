"""Cache keys -> low-cardinality patterns that are safe to export.

``key_pattern(":1:patient:12345:summary")`` is ``"patient:{id}:summary"``. Values that identify
a person or a record are replaced by a placeholder naming their shape:

======== ======================================================================
{email}  anything around an ``@`` (up to the next ``:``, ``/``, ``|`` or space)
{uuid}   8-4-4-4-12 hex
{date}   2024-01-31, 2024-01-31T10:00:00Z, 20240131, 2024/01/31, 01/31/2024
{ssn}    123-45-6789
{phone}  555-123-4567, (555) 123-4567, +1 555 123 4567, 555.123.4567, +15551234567
{mrn}    1-4 letters, optional - or #, 4+ digits: MRN-004211, MRN004211, A1234567
{hash}   16+ hex characters with a digit (md5, sha1, sha256, ...)
{token}  20+ characters of the base64 / url-safe alphabet with letters and digits that do
         not read as identifier words (session keys, API tokens, JWT parts)
{mrn}    also a word mixing capitals or trailing letters with 3+ digits: ``QZ48213X``
{id}     any other run of digits: a whole number (``user_12345``) or a run of 3+ digits
         inside a word (``page100`` -> ``page{id}``)
{name}   a capitalised word standing alone (``Quillfeather``, ``search:Zebediah Quillfeather``):
         key structure is written in lower case or CamelCase, names are capitalised
======== ======================================================================

Guarantees (tested with hypothesis): the result never contains an ``@`` or a run of three
or more digits; it is a pure function of its arguments; it is at most ``MAX_PATTERN_CHARS``
long. Lower-case and CamelCase words without digits are kept as written: they are the key's
structure (``patient``, ``summary``, ``PatientSummary``). A name written in lower case
(``john``) cannot be told from structure and is *not* recognised: build keys from ids, or let
HMS_OTEL_CAPTURE_CACHE_KEYS stay off and check the patterns in `hms-otel report`.

Keys written as ``label:value:label:value`` (the Redis convention) get one more rule: a word
in a value position (the 2nd, 4th, ... ``:``-separated segment) is data, not structure, unless
it is one of the common structural words in ``STRUCTURAL_WORDS`` (``recent``, ``stats``,
``summary``, ...): ``patient:{id}:allergy:penicillin`` -> ``patient:{id}:allergy:{value}``,
``search:john smith`` -> ``search:{value}``, while ``encounters:recent`` stays.

Django's default key function builds ``KEY_PREFIX:VERSION:key``; a leading ``:<digits>:``
(empty prefix) is always removed, and ``<django_prefix>:<digits>:`` when ``django_prefix`` is
given. ``django.contrib.sessions`` cache keys keep their prefix: ``...sessions.cache{token}``.

Standard library only; memoised (bounded); never raises.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

__all__ = ["MAX_KEY_CHARS", "MAX_PATTERN_CHARS", "key_pattern"]

MAX_KEY_CHARS: Final = 256
"""Longer keys are cut to this many characters first; the pattern then ends in ``…``."""
MAX_PATTERN_CHARS: Final = 8 * MAX_KEY_CHARS
TRUNCATION_MARK: Final = "…"
_CACHE_SIZE: Final = 4096
_FAILED: Final = "{key}"

_SESSION_PREFIXES: Final = ("django.contrib.sessions.cached_db", "django.contrib.sessions.cache")

# Everything around an "@", up to a coarse separator: replaced on its own (after the shapes,
# which may have taken a date or phone out of the run, before the segments), so every "@" goes.
_EMAIL_RE: Final = re.compile(r"(?<![^\s:/|])[^\s:/|]*@[^\s:/|]*")

# Shapes that span separators ("-", ".", " ", ":", "/", "(" ...), tried left to right.
_B: Final = r"(?<![0-9A-Za-z])"  # not preceded by a letter or digit
_E: Final = r"(?![0-9A-Za-z])"  # not followed by a letter or digit
_SHAPES_RE: Final = re.compile(
    rf"(?P<uuid>{_B}[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}{_E})"
    rf"|(?P<date>{_B}(?:"
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
    r"|[0-9]{4}/[0-9]{1,2}/[0-9]{1,2}|[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}"
    r"|(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])(?:T[0-9]{4,6}(?:Z|[+-][0-9]{2,4})?)?"
    rf"){_E})"
    rf"|(?P<ssn>{_B}[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}{_E})"
    rf"|(?P<phone>(?<![0-9A-Za-z+])(?:"
    r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}"
    r"|\+[0-9]{8,15}"
    rf"){_E})"
    # (not when the digits go on as a date / phone: "ward-2024-01-31" is ward-{date})
    rf"|(?P<mrn>{_B}[A-Za-z]{{1,4}}[-#]?[0-9]{{4,}}(?![0-9A-Za-z]|[-/][0-9]))"
)
_SHAPE_PLACEHOLDER: Final = {
    "uuid": "{uuid}",
    "date": "{date}",
    "ssn": "{ssn}",
    "phone": "{phone}",
    "mrn": "{mrn}",
}

# A segment: the text between coarse separators; may hold "_", "-", "+", "=".
_SEGMENT_RE: Final = re.compile(r"[\w\-+=]+")
# A part of a segment: letters and digits only.
_PART_RE: Final = re.compile(r"[^\W_]+")
_DIGIT_RE: Final = re.compile(r"\d")
_ALL_DIGITS_RE: Final = re.compile(r"\d+")
_DIGIT_RUN_RE: Final = re.compile(r"\d{3,}")
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]{16,}")
_TOKEN_CHARS_RE: Final = re.compile(r"[A-Za-z0-9_\-+=]{20,}")
_LETTER_RE: Final = re.compile(r"[A-Za-z]")
_WORD_SPLIT_RE: Final = re.compile(r"[_\-+=]+")
# What a part of an identifier looks like: letters, then at most two digits (v2, utf8, page10).
_IDENT_PART_RE: Final = re.compile(r"[A-Za-z]*[0-9]{0,2}")
# A word (letters only, any script); a capitalised one standing alone is a name.
_LETTERS_RE: Final = re.compile(r"[^\W\d_]+")


# Words that describe a key rather than hold data, kept in value positions of a:b:c keys.
STRUCTURAL_WORDS: Final = frozenset(
    """
    all any active archive by cache config count counts count_by current daily data default
    detail details feed first hits hourly ids index info items keys last latest list lock
    locks meta metadata monthly new next page pages prev previous profile queue rate recent
    schedule session settings state stats status summary today top total totals upcoming
    v1 v2 v3 version views weekly
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_VALUE_WORD_RE: Final = re.compile(r"[^\W\d]+(?:[-\s][^\W\d]+)*")


def _value_positions(key: str) -> str:
    """Words in the value positions of ``label:value`` keys become ``{value}``."""
    segments = key.split(":")
    if len(segments) < 2:
        return key
    for index in range(1, len(segments), 2):
        segment = segments[index]
        if segment and _VALUE_WORD_RE.fullmatch(segment) and segment.lower() not in STRUCTURAL_WORDS:
            segments[index] = "{value}"
    return ":".join(segments)


def _name(match: re.Match[str]) -> str:
    word = match.group()
    return "{name}" if len(word) > 1 and word[0].isupper() and word[1:].islower() else word


def _shape(match: re.Match[str]) -> str:
    return _SHAPE_PLACEHOLDER[match.lastgroup or "mrn"]


def _is_token(segment: str) -> bool:
    """20+ base64 / url-safe characters with letters and digits that are not identifier words."""
    if _TOKEN_CHARS_RE.fullmatch(segment) is None or _LETTER_RE.search(segment) is None:
        return False
    parts = _WORD_SPLIT_RE.split(segment)
    return not all(_IDENT_PART_RE.fullmatch(part) for part in parts)


def _part(match: re.Match[str]) -> str:
    """One run of letters and digits inside a segment."""
    part = match.group()
    if _DIGIT_RE.search(part) is None:
        return part
    if _ALL_DIGITS_RE.fullmatch(part):
        return "{id}"
    if len(part) >= 16 and _HEX_RE.fullmatch(part):
        return "{hash}"
    if len(part) >= 20 and _IDENT_PART_RE.fullmatch(part) is None:
        return "{token}"
    if _DIGIT_RUN_RE.search(part) and (not part.islower() or not part[-1].isdigit()):
        return "{mrn}"  # QZ48213X, Smith123: letters around a record number
    return _DIGIT_RUN_RE.sub("{id}", part)


def _segment(match: re.Match[str]) -> str:
    """The text between two coarse separators (":", "/", ".", "|", space, ...)."""
    segment = match.group()
    if _DIGIT_RE.search(segment) is None:
        return _LETTERS_RE.sub(_name, segment)
    if len(segment) >= 16 and _HEX_RE.fullmatch(segment) and not _ALL_DIGITS_RE.fullmatch(segment):
        return "{hash}"
    if len(segment) >= 20 and _is_token(segment):
        return "{token}"
    return _PART_RE.sub(_part, segment)


def _strip_django_prefix(key: str, django_prefix: str | None) -> str:
    if django_prefix and key.startswith(django_prefix + ":"):
        rest = key[len(django_prefix) + 1 :]
        version, sep, tail = rest.partition(":")
        if sep and version.isdigit() and version.isascii():
            return tail
    if key.startswith(":"):
        version, sep, tail = key[1:].partition(":")
        if sep and version.isdigit() and version.isascii():
            return tail
    return key


def _pattern(key: str, django_prefix: str | None) -> str:
    try:
        truncated = len(key) > MAX_KEY_CHARS
        if truncated:
            key = key[:MAX_KEY_CHARS]
        key = _strip_django_prefix(key, django_prefix)
        for prefix in _SESSION_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                return prefix + "{token}"
        has_digit = _DIGIT_RE.search(key) is not None
        if has_digit:
            key = _SHAPES_RE.sub(_shape, key)
        if "@" in key:
            key = _EMAIL_RE.sub("{email}", key)
        if has_digit or not key.islower():
            key = _SEGMENT_RE.sub(_segment, key)
        if ":" in key:
            key = _value_positions(key)
        if truncated:
            key += TRUNCATION_MARK
        return key[:MAX_PATTERN_CHARS]
    except Exception:  # pragma: no cover - defensive: a bug here must never break the host app
        return _FAILED


_pattern_cached = lru_cache(maxsize=_CACHE_SIZE)(_pattern)


def key_pattern(key: str | bytes, django_prefix: str | None = None) -> str:
    """Normalize a cache key into a low-cardinality pattern that holds no identifying values."""
    try:
        if key.__class__ is not str:
            if isinstance(key, (bytes, bytearray, memoryview)):
                key = bytes(key).decode("utf-8", errors="replace")
            else:
                key = str(key)
        if django_prefix is not None and django_prefix.__class__ is not str:
            django_prefix = str(django_prefix)
        return _pattern_cached(key[: MAX_KEY_CHARS + 1], django_prefix)
    except Exception:
        return _FAILED
