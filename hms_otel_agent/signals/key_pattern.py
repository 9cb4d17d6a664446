"""Cache keys -> low-cardinality patterns that are safe to export: they fail closed.

A key is cut into words at every separator (any ASCII punctuation or space: ``:`` ``/`` ``.``
``_`` ``-`` ``|`` ``#`` ``=`` ...), the separators are kept, and each word is kept only when it is
certainly structure; everything else is replaced by a placeholder::

    :1:patient:12345:summary          -> patient:{id}:summary
    search:{value}:Zebediah Quillfeather:page -> search:{value}:{value} {value}:page
    patient:MRN-QZ7731X:allergy:penicillin   -> patient:{value}-{mrn}:allergy:{value}

What a word becomes:

======== ======================================================================
{email}  anything around an ``@`` (up to the next ``:``, ``/``, ``|`` or space)
{uuid}   8-4-4-4-12 hex
{date}   2024-01-31, 2024-01-31T10:00:00Z, 20240131, 2024/01/31, 01/31/2024
{ssn}    123-45-6789
{phone}  555-123-4567, (555) 123-4567, +1 555 123 4567, 555.123.4567, +15551234567
{mrn}    1-4 letters, optional - or #, 4+ digits (MRN-004211, A1234567); any other word that
         mixes letters with 3 or more digits (QZ48213X)
{hash}   16+ hex characters with a digit (md5, sha1, sha256, ...)
{token}  20+ letters and digits mixed (session keys, API tokens, JWT parts)
{id}     a number; ``page100`` is ``page{id}`` when ``page`` is a structural word
(kept)   ``v2``-style versions (``v`` and 1-3 digits), and structural words (below)
{value}  every other word: capitalised, ALL-CAPS or CamelCase words, words with letters
         outside a-z, words with digits not covered above, and lower-case words that are
         not known to be structural
======== ======================================================================

Structural words are ASCII lower-case words that are

* in `STRUCTURAL_WORDS`: the words of the keys Django and common libraries write (Django's
  cache, sessions, ``cache_page`` and template fragments, django-redis, rq, celery/kombu), the
  usual words of cache keys (``list``, ``summary``, ``count``, ...) and of hospital records
  (``patient``, ``encounter``, ``ward``, ...); or
* learned by a `KeyPatterns` (the live agent's, `instrument.cache_hooks.PATTERNS`): a word
  becomes structural at one position of one key *shape* (the sequence of separators) after it
  was seen there in `MIN_KEYS` keys that differ in their other words, while that position held
  at most `MAX_VALUES` different words. A position whose words vary more is a variable: nothing
  is learned there, and what was learned is forgotten. A word seen once, or only with numbers
  around it, is never proof.

`key_pattern` is the pure function: built-in words only, the same in every process and run. It
is also how findings, fingerprints and report rows group patterns: ``key_pattern(p)`` of a
learned pattern ``p`` is ``p`` with its learned words masked again, so while a process learns
(``{value}:{id}:summary`` becomes ``hms:{id}:summary``) its cache N+1 findings keep their
fingerprint and the report one row (shown with the most informative pattern).

Keys in Django's format ``KEY_PREFIX:VERSION:key`` lose a leading ``:<digits>:`` (empty prefix),
and ``<django_prefix>:<digits>:`` when ``django_prefix`` is given. ``django.contrib.sessions``
cache keys are ``django.contrib.sessions.cache{token}``; template fragments keep their fragment
name (it is written in the template): ``template.cache.sidebar.{hash}``.

Guarantees (tested with hypothesis): no ``@``, no run of three digits, no capital letter
outside placeholders and the fixed ``GET``/``HEAD``/``UTC``-style words, no letter outside
ASCII, no control character; idempotent; at most `MAX_PATTERN_CHARS` long; never raises.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Final

__all__ = ["MAX_KEY_CHARS", "MAX_PATTERN_CHARS", "KeyPatterns", "key_pattern"]

MAX_KEY_CHARS: Final = 256
"""Longer keys are cut to this many characters first; the pattern then ends in ``…``."""
MAX_PATTERN_CHARS: Final = 8 * MAX_KEY_CHARS
TRUNCATION_MARK: Final = "…"
_CACHE_SIZE: Final = 4096
_FAILED: Final = "{key}"
VALUE: Final = "{value}"

MIN_KEYS: Final = 16
"""Keys, differing in their other words, in which a word is seen before it is learned."""
MAX_VALUES: Final = 12
"""Different words a position may hold and still be structure (more: a variable)."""
_MAX_POSITIONS: Final = 512  # (shape, position) pairs learned about; then nothing new is
_MAX_CANDIDATES: Final = 8  # words followed per position at once

PLACEHOLDERS: Final = frozenset(
    "{id} {value} {name} {hash} {uuid} {email} {date} {ssn} {phone} {mrn} {token} {key}".split()  # noqa: SIM905
)

# Words of the keys Django and common libraries write, and the usual words of cache keys.
STRUCTURAL_WORDS: Final = frozenset(
    """
    django contrib sessions session cache cached db views decorators page header template
    fragment rq job jobs queue queues worker workers wip started finished failed scheduled
    deferred canceled results result registry registries clean dependents dependencies
    celery task tasks meta kombu binding unacked index mutex pidbox reply group chord lock idx
    locks ratelimit throttle
    all any active archive by config count counts current daily data default detail details
    feed first hits hourly ids info items keys key last latest list lists monthly new next
    pages prev previous profile profiles rate recent schedule settings state stats status
    summary today top total totals upcoming version versions views weekly user users
    account accounts auth token tokens permissions perms groups search query filter sort
    by_id by_mrn by_name count_by api v1 v2 v3 utf en us
    id ids uuid name names mrn ssn dob phone email mail sms date dates time report reports appt
    log logs code codes price etag blob span trace jwt chart reset otp verify password
    patient patients encounter encounters appointment appointments ward wards bed beds
    practitioner practitioners facility facilities note notes record records visit visits
    allergy allergies insurance insurances medication medications lab labs result results
    admission admissions discharge discharges referral referrals vitals vital order orders
    department departments clinic clinics doctor doctors nurse nurses staff shift shifts
    invoice invoices billing claim claims diagnosis diagnoses procedure procedures
    prescription prescriptions contact contacts emergency birthdays birthday lookup optimized
    """.split()  # noqa: SIM905 - a word list reads better as text
)
# Upper-case words that Django's keys hold (cache_page: the method; the time zone).
_UPPER_WORDS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "UTC", "GMT"))

_SESSION_PREFIXES: Final = ("django.contrib.sessions.cached_db", "django.contrib.sessions.cache")
_FRAGMENT_PREFIX: Final = "template.cache."

# Everything around an "@", up to a coarse separator.
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

# A session key, an API token, a JWT part: 20+ of the url-safe alphabet with a digit, a capital
# and a small letter (identifiers such as patient_summary_v2_cache_list have no capital).
_TOKEN_RE: Final = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]{0,200}[0-9])(?=[A-Za-z0-9_-]{0,200}[A-Z])"
    r"(?=[A-Za-z0-9_-]{0,200}[a-z])[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])"
)

# Separators: ASCII punctuation and space (but not a placeholder's brace); words: the rest.
_PUNCT: Final = r"\x20-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e"
_PLACEHOLDER: Final = r"\{(?:id|value|name|hash|uuid|email|date|ssn|phone|mrn|token|key)\}"
_PIECES_RE: Final = re.compile(
    rf"(?P<p>{_PLACEHOLDER})|(?P<w>[^{_PUNCT}]+)|(?P<s>(?:(?!{_PLACEHOLDER})[{_PUNCT}])+)"
)
_LOWER_RE: Final = re.compile(r"[a-z]+")
_VERSION_RE: Final = re.compile(r"v[0-9]{1,3}")
_PREFIXED_NUMBER_RE: Final = re.compile(r"([a-z]+)([0-9]+)")
_HEX_RE: Final = re.compile(r"[0-9a-fA-F]{16,}")
_DIGIT_RE: Final = re.compile(r"[0-9]")
_FRAGMENT_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class _Analysis:
    """A key cut into pieces: fixed output text, and the lower-case words whose fate depends
    on the vocabulary (``slots``: piece index, word position, word)."""

    __slots__ = ("pieces", "shape", "slots", "tokens")

    def __init__(
        self, pieces: list[str], shape: str, slots: tuple[tuple[int, int, str], ...], tokens: tuple[str, ...]
    ) -> None:
        self.pieces = pieces
        self.shape = shape
        self.slots = slots
        self.tokens = tokens  # every word position: the word, or what replaced it

    def fill(self, keep: frozenset[str] | set[tuple[str, int, str]] | None = None) -> str:
        if not self.slots:
            return "".join(self.pieces)
        pieces = list(self.pieces)
        for index, position, word in self.slots:
            if word in STRUCTURAL_WORDS or (keep is not None and (self.shape, position, word) in keep):
                pieces[index] = word
            else:
                pieces[index] = VALUE
        return "".join(pieces)


def _word(word: str) -> str | None:
    """What a word between separators becomes; None: a lower-case word (the vocabulary decides)."""
    if word.isascii():
        if word.isalpha():
            if _LOWER_RE.fullmatch(word):
                return None
            return word if word in _UPPER_WORDS else VALUE
        if word.isdigit():
            return "{id}"
        if not word.isalnum():
            return VALUE  # control characters and the like
        if _VERSION_RE.fullmatch(word):
            return word
        if len(word) >= 16 and _HEX_RE.fullmatch(word):
            return "{hash}"
        if len(word) >= 20:
            return "{token}"
        prefixed = _PREFIXED_NUMBER_RE.fullmatch(word)
        if prefixed is not None:
            prefix = prefixed.group(1)
            return f"{prefix}{{id}}" if prefix in STRUCTURAL_WORDS else "{id}"
        return "{mrn}" if len(_DIGIT_RE.findall(word)) >= 3 else VALUE
    if word.isdigit() or word.isdecimal():
        return "{id}"
    return VALUE  # letters outside a-z: a name (José), a script, a symbol


def _shape(match: re.Match[str]) -> str:
    return "{" + (match.lastgroup or "mrn") + "}"


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


def _special(key: str) -> str | None:
    """The keys of Django's own formats that cutting at separators would get wrong."""
    for prefix in _SESSION_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix + "{token}"
    if key.startswith(_FRAGMENT_PREFIX):
        name, dot, digest = key[len(_FRAGMENT_PREFIX) :].rpartition(".")
        if dot and _FRAGMENT_NAME_RE.fullmatch(name) and (digest == "{hash}" or _HEX_RE.fullmatch(digest)):
            return f"{_FRAGMENT_PREFIX}{name}.{{hash}}"
    return None


def _analyze(key: str, django_prefix: str | None) -> _Analysis:
    truncated = len(key) > MAX_KEY_CHARS
    if truncated:
        key = key[:MAX_KEY_CHARS]
    elif key.endswith(TRUNCATION_MARK):  # a pattern of a truncated key: stays one
        key, truncated = key[: -len(TRUNCATION_MARK)], True
    key = _strip_django_prefix(key, django_prefix)
    special = _special(key)
    if special is not None:
        return _Analysis([special + (TRUNCATION_MARK if truncated else "")], "", (), ())
    if _DIGIT_RE.search(key) is not None:
        key = _TOKEN_RE.sub("{token}", key)
        key = _SHAPES_RE.sub(_shape, key)
    if "@" in key:
        key = _EMAIL_RE.sub("{email}", key)
    pieces: list[str] = []
    separators: list[str] = []
    slots: list[tuple[int, int, str]] = []
    tokens: list[str] = []
    for match in _PIECES_RE.finditer(key):
        text = match.group()
        kind = match.lastgroup
        if kind == "s":
            pieces.append(text)
            separators.append(text)
            continue
        if len(separators) <= len(tokens):
            separators.append("")  # two words in a row (a placeholder next to a word)
        position = len(tokens)
        if kind == "p":
            replaced: str | None = text
        else:
            replaced = _word(text)
        if replaced is None:
            slots.append((len(pieces), position, text))
            tokens.append(text)
            pieces.append(text)
        else:
            tokens.append(replaced)
            pieces.append(replaced)
    if truncated:
        pieces.append(TRUNCATION_MARK)
    return _Analysis(pieces, "\x1f".join(separators), tuple(slots), tuple(tokens))


def _analyze_safely(key: str, django_prefix: str | None) -> _Analysis:
    try:
        return _analyze(key, django_prefix)
    except Exception:  # pragma: no cover - defensive: a bug here must never break the host app
        return _Analysis([_FAILED], "", (), ())


_analyze_cached = lru_cache(maxsize=_CACHE_SIZE)(_analyze_safely)


def _text(key: object) -> str:
    if key.__class__ is str:
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key).decode("utf-8", errors="replace")
    return str(key)


def analysis(key: str | bytes, django_prefix: str | None = None) -> _Analysis:
    if django_prefix is not None and django_prefix.__class__ is not str:
        django_prefix = str(django_prefix)
    return _analyze_cached(_text(key)[: MAX_KEY_CHARS + 1], django_prefix)


@lru_cache(maxsize=_CACHE_SIZE)
def _static(key: str, django_prefix: str | None) -> str:
    return _analyze_cached(key, django_prefix).fill()[:MAX_PATTERN_CHARS]


def key_pattern(key: str | bytes, django_prefix: str | None = None) -> str:
    """The key's pattern with the built-in structural words only: a pure function, the same
    in every process; also the group of a pattern learned by `KeyPatterns`."""
    try:
        if django_prefix is not None and django_prefix.__class__ is not str:
            django_prefix = str(django_prefix)
        return _static(_text(key)[: MAX_KEY_CHARS + 1], django_prefix)
    except Exception:
        return _FAILED


class _Position:
    __slots__ = ("candidates", "values", "variable")

    def __init__(self) -> None:
        self.values: set[str] = set()  # different words seen here (up to MAX_VALUES + 1)
        self.candidates: dict[str, set[int]] = {}  # word -> hashes of the other words
        self.variable = False


class KeyPatterns:
    """Key patterns with structural words learned from the keys seen (see the module doc).

    Bounded: at most `_MAX_POSITIONS` positions, `_MAX_CANDIDATES` words followed per position,
    `MIN_KEYS` hashes per word. Thread-safe; never raises.
    """

    def __init__(self, min_keys: int = MIN_KEYS, max_values: int = MAX_VALUES) -> None:
        self.min_keys = min_keys
        self.max_values = max_values
        self.learned: set[tuple[str, int, str]] = set()
        self._positions: dict[tuple[str, int], _Position] = {}
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str | None], str] = {}
        self._version = 0
        self._results_version = 0

    def pattern(self, key: str | bytes, django_prefix: str | None = None) -> str:
        try:
            text = _text(key)[: MAX_KEY_CHARS + 1]
            cache_key = (text, django_prefix)
            version, results = self._version, self._results
            if self._results_version != version:
                results = self._results = {}
                self._results_version = version
            found = results.get(cache_key)
            if found is not None:
                return found
            parsed = analysis(text, django_prefix)
            if parsed.slots:
                self._observe(parsed)
            result = parsed.fill(self.learned)[:MAX_PATTERN_CHARS]
            # Kept only if nothing was learned or forgotten meanwhile (another thread may have).
            if self._version == version:
                if len(results) >= _CACHE_SIZE:
                    results.clear()
                results[cache_key] = result
            return result
        except Exception:
            return _FAILED

    def _observe(self, parsed: _Analysis) -> None:
        shape, tokens = parsed.shape, parsed.tokens
        with self._lock:
            for _, position, word in parsed.slots:
                if word in STRUCTURAL_WORDS:
                    continue
                state = self._positions.get((shape, position))
                if state is None:
                    if len(self._positions) >= _MAX_POSITIONS:
                        continue
                    state = self._positions[(shape, position)] = _Position()
                if state.variable:
                    continue
                state.values.add(word)
                if len(state.values) > self.max_values:
                    self._forget(state, shape, position)
                    continue
                if (shape, position, word) in self.learned:
                    continue
                seen = state.candidates.get(word)
                if seen is None:
                    if len(state.candidates) >= _MAX_CANDIDATES:
                        continue
                    seen = state.candidates[word] = set()
                seen.add(hash(tokens[:position] + tokens[position + 1 :]))
                if len(seen) >= self.min_keys:
                    del state.candidates[word]
                    self.learned.add((shape, position, word))
                    self._version += 1

    def _forget(self, state: _Position, shape: str, position: int) -> None:
        """A position whose words vary is a variable: what was learned there goes."""
        state.variable = True
        state.values.clear()
        state.candidates.clear()
        gone = {entry for entry in self.learned if entry[0] == shape and entry[1] == position}
        if gone:
            self.learned -= gone
            self._version += 1
