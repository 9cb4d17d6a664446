"""Table and property tests for ``hms_otel_agent.signals.key_pattern``."""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
import uuid

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import key_pattern as key_pattern_module
from hms_otel_agent.signals.key_pattern import (
    MAX_KEY_CHARS,
    MAX_PATTERN_CHARS,
    MIN_KEYS,
    STRUCTURAL_WORDS,
    TRUNCATION_MARK,
    KeyPatterns,
    key_pattern,
)

# Guards against catastrophic (super-linear) scanning only: a correct scanner takes milliseconds
# here, a backtracking one would take minutes. Speed itself is measured in
# benchmarks/micro_signals.py, not asserted.
TERMINATION_GUARD_S = 10.0

KEYS = [
    pytest.param(":1:patient:12345:summary", None, "patient:{id}:summary", id="django-default-prefix"),
    pytest.param(":2:patient:12345:summary", None, "patient:{id}:summary", id="django-version-2"),
    pytest.param("hms:2:encounter:42", "hms", "encounter:{id}", id="django-prefix-given"),
    pytest.param(":1:encounter:42", "hms", "encounter:{id}", id="django-prefix-given-empty-prefix-key"),
    pytest.param("other:2:encounter:42", "hms", "{value}:{id}:encounter:{id}", id="django-prefix-other"),
    pytest.param("hms:2:encounter:42", None, "{value}:{id}:encounter:{id}", id="django-prefix-not-given"),
    pytest.param("patient:12345:summary", None, "patient:{id}:summary", id="no-prefix-number-segment"),
    pytest.param(":v1:patient", None, ":v1:patient", id="version-not-digits"),
    pytest.param(":1:", None, "", id="only-prefix"),
    pytest.param("a:b:3:ward:7", "a:b", "ward:{id}", id="prefix-with-colon"),
    pytest.param("::1:x", None, "::{id}:{value}", id="double-colon-start"),
    pytest.param("user_12345", None, "user_{id}", id="id-underscore"),
    pytest.param("user-7", None, "user-{id}", id="id-dash"),
    pytest.param("page:2", None, "page:{id}", id="small-number"),
    pytest.param("patient_summary", None, "patient_summary", id="identifier-kept"),
    pytest.param("api:v2:utf8:h264x", None, "api:v2:utf{id}:{mrn}", id="identifier-with-small-digits"),
    pytest.param("page100:row12", None, "page{id}:{id}", id="digits-in-word"),
    pytest.param("abc123def45", None, "{mrn}", id="digits-inside-word"),
    pytest.param("order:12345678901234567890", None, "order:{id}", id="long-number"),
    pytest.param("price:12.50", None, "price:{id}.{id}", id="decimal"),
    pytest.param("delta:-42", None, "{value}:-{id}", id="negative"),
    pytest.param("rate:192.168.1.10", None, "rate:{id}.{id}.{id}.{id}", id="ip-address"),
    pytest.param("hits:1706700000", None, "hits:{id}", id="epoch"),
    pytest.param("batch:1,2,3", None, "{value}:{id},{id},{id}", id="list-of-ids"),
    pytest.param("/patients/?page=12&ward=7", None, "/patients/?page={id}&ward={id}", id="query-string"),
    pytest.param("encounter:123e4567-e89b-12d3-a456-426614174000", None, "encounter:{uuid}", id="uuid"),
    pytest.param(
        "E:123E4567-E89B-12D3-A456-426614174000:notes", None, "{value}:{uuid}:notes", id="uuid-upper"
    ),
    pytest.param("enc:123e4567e89b12d3a456426614174000", None, "{value}:{hash}", id="uuid-hex32"),
    pytest.param(
        "template.cache.sidebar.5f4dcc3b5aa765d61d8327deb882cf99",
        None,
        "template.cache.sidebar.{hash}",
        id="md5",
    ),
    pytest.param("etag:da39a3ee5e6b4b0d3255bfef95601890afd80709", None, "etag:{hash}", id="sha1"),
    pytest.param(
        "blob:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        None,
        "blob:{hash}",
        id="sha256",
    ),
    pytest.param("span:00f067aa0ba902b7", None, "span:{hash}", id="hex16"),
    pytest.param(
        "views.decorators.cache.cache_page..GET.5f4dcc3b5aa765d61d8327deb882cf99.d41d8cd98f00b204e9800998ecf8427e.en-us.UTC",
        None,
        "views.decorators.cache.cache_page..GET.{hash}.{hash}.en-us.UTC",
        id="cache-page",
    ),
    pytest.param(
        "views.decorators.cache.cache_header..d41d8cd98f00b204e9800998ecf8427e.en-us.UTC",
        None,
        "views.decorators.cache.cache_header..{hash}.en-us.UTC",
        id="cache-header",
    ),
    pytest.param(
        "django.contrib.sessions.cacheq8x2l1m0z9y7w6v5u4t3s2r1p0o9n8m7",
        None,
        "django.contrib.sessions.cache{token}",
        id="session-cache",
    ),
    pytest.param(
        "django.contrib.sessions.cached_dbabcdefghijklmnopqrstuvwxyz012345",
        None,
        "django.contrib.sessions.cached_db{token}",
        id="session-cached-db",
    ),
    pytest.param(
        ":1:django.contrib.sessions.cacheq8x2l1m0z9y7w6v5u4t3s2r1p0o9n8m7",
        None,
        "django.contrib.sessions.cache{token}",
        id="session-with-version",
    ),
    pytest.param("reset:aB3dE5fG7hJ9kL1mN3pQ5rS7", None, "reset:{token}", id="token-urlsafe"),
    pytest.param("api_token:Xk3_9dPq-2mZ7wL0aB4cD8", None, "api_token:{token}", id="token-with-dashes"),
    pytest.param(
        "jwt:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        None,
        "jwt:{token}.{token}.{token}",
        id="jwt",
    ),
    pytest.param(
        "patient_summary_v2_cache_key_list:9",
        None,
        "patient_summary_v2_cache_key_list:{id}",
        id="long-identifier-not-token",
    ),
    pytest.param("abcdefghijklmnopqrstuvwxyzABCDEF", None, "{value}", id="long-word-no-digits"),
    pytest.param("patient:john.doe@example.com:profile", None, "patient:{email}:profile", id="email"),
    pytest.param("user:Jane+tag@Example.ORG", None, "user:{email}", id="email-plus"),
    pytest.param("user_john@x.io_summary:1", None, "{email}:{id}", id="email-in-segment"),
    pytest.param("weird:@:x", None, "{value}:{email}:{value}", id="at-sign-alone"),
    pytest.param("a@b@c:x", None, "{email}:{value}", id="several-at"),
    pytest.param(
        "patient:7:allergy:penicillin", None, "patient:{id}:allergy:{value}", id="word-in-value-position"
    ),
    pytest.param("search:john smith", None, "search:{value} {value}", id="free-text-value"),
    pytest.param("hms:stats:hits", None, "{value}:stats:hits", id="unknown-prefix-masked"),
    pytest.param("report:2024-01-31:x", None, "report:{date}:{value}", id="date"),
    pytest.param("report:20240131", None, "report:{date}", id="date-compact"),
    pytest.param("appt:2024-01-31T10:00:00Z:list", None, "appt:{date}:list", id="datetime-z"),
    pytest.param("appt:2024-01-31T10:00:00+01:00", None, "appt:{date}", id="datetime-offset"),
    pytest.param("log:2024-01-31 10:00:00.123456", None, "log:{date}", id="datetime-fraction"),
    pytest.param("dob:1980/02/03", None, "dob:{date}", id="date-slashes"),
    pytest.param("dob:02/03/1980", None, "dob:{date}", id="date-us"),
    pytest.param("snap:20240131T100000Z", None, "{value}:{date}", id="date-compact-time"),
    pytest.param("code:20241399", None, "code:{id}", id="not-a-date"),
    pytest.param("phone:555-123-4567", None, "phone:{phone}", id="phone-dashes"),
    pytest.param("phone:(555) 123-4567", None, "phone:{phone}", id="phone-parens"),
    pytest.param("phone:+1 555 123 4567", None, "phone:{phone}", id="phone-intl"),
    pytest.param("phone:555.123.4567", None, "phone:{phone}", id="phone-dots"),
    pytest.param("sms:+15551234567", None, "sms:{phone}", id="phone-e164"),
    pytest.param("ssn:123-45-6789", None, "ssn:{ssn}", id="ssn"),
    pytest.param("patient_123-45-6789", None, "patient_{ssn}", id="ssn-underscore"),
    pytest.param("mrn:MRN-004211", None, "mrn:{mrn}", id="mrn-dash"),
    pytest.param("mrn:MRN004211", None, "mrn:{mrn}", id="mrn-plain"),
    pytest.param("chart:A1234567:v2", None, "chart:{mrn}:v2", id="mrn-letter"),
    pytest.param("mrn:PT#88231", None, "mrn:{mrn}", id="mrn-hash"),
    pytest.param(b":1:patient:99", None, "patient:{id}", id="bytes"),
    pytest.param(b"patient:\xff\xfe:123", None, "patient:{value}:{id}", id="invalid-utf8"),
    pytest.param("", None, "", id="empty"),
    pytest.param(":::", None, ":::", id="only-separators"),
    pytest.param("{user123}:profile", None, "{user{id}}:profile", id="redis-hashtag"),
    pytest.param("patient:*:summary", None, "patient:*:summary", id="wildcard"),
    pytest.param("patient:١٢٣٤", None, "patient:{id}", id="unicode-digits"),
    pytest.param("patiënt:José:42", None, "{value}:{value}:{id}", id="non-ascii-name"),
    pytest.param(
        "patient:Quillfeather:summary", None, "patient:{value}:summary", id="capitalised-name-masked"
    ),
    pytest.param("search:Zebediah Quillfeather", None, "search:{value} {value}", id="full-name"),
    pytest.param("mrn:QZ48213X", None, "mrn:{mrn}", id="alphanumeric-record-number"),
    pytest.param("views.PatientSummary.GET", None, "views.{value}.GET", id="camel-case-masked-method-kept"),
    pytest.param("ward-2000-01-01T10:20:30Z:", None, "ward-{date}:", id="date-after-word-dash"),
    pytest.param("0@0.com.2000-01-01T10:20:30Z:", None, "{email}:", id="date-after-email"),
    pytest.param("mrn:MRN004211:2", None, "mrn:{mrn}:{id}", id="mrn-then-version"),
]


@pytest.mark.parametrize(("key", "django_prefix", "expected"), KEYS)
def test_key_pattern(key: str | bytes, django_prefix: str | None, expected: str) -> None:
    assert key_pattern(key, django_prefix) == expected


@pytest.mark.parametrize(("key", "django_prefix", "expected"), KEYS)
def test_key_pattern_is_idempotent(key: str | bytes, django_prefix: str | None, expected: str) -> None:
    assert key_pattern(expected) == expected


@pytest.mark.parametrize(("key", "django_prefix", "expected"), KEYS)
def test_no_digit_run_or_at_sign_survives(key: str | bytes, django_prefix: str | None, expected: str) -> None:
    assert not re.search(r"\d{3}", expected)
    assert "@" not in expected


def test_spec_examples() -> None:
    assert key_pattern(":1:patient:12345:summary") == "patient:{id}:summary"
    assert key_pattern("hms:2:encounter:42", django_prefix="hms") == "encounter:{id}"
    assert key_pattern("patient:12345:summary") == "patient:{id}:summary"
    assert key_pattern("user_12345") == "user_{id}"
    assert key_pattern("patient_summary") == "patient_summary"


def test_number_segment_is_not_mistaken_for_a_version() -> None:
    # Only a leading ":<digits>:" (or "<django_prefix>:<digits>:") is Django's prefix + version.
    assert key_pattern("patient:12345:summary") == "patient:{id}:summary"
    assert key_pattern("patient:12345:summary", django_prefix="hms") == "patient:{id}:summary"
    assert key_pattern("patient:1:summary", django_prefix="patient") == "summary"


def test_long_keys_are_truncated_and_marked() -> None:
    key = "patient:" + "x" * 1000 + ":12345"
    pattern = key_pattern(key)
    assert pattern.endswith(TRUNCATION_MARK)
    assert len(pattern) <= MAX_KEY_CHARS + len(TRUNCATION_MARK)


def test_truncation_cutting_a_value_does_not_leak_it() -> None:
    key = "p:" + "a" * (MAX_KEY_CHARS - 10) + ":555-123-4567"
    pattern = key_pattern(key)
    assert not re.search(r"\d{3}", pattern)


def test_megabyte_key_is_cheap() -> None:
    import time

    start = time.perf_counter()
    key_pattern("1" * 1_000_000)
    key_pattern("@" * 1_000_000)
    key_pattern(":" * 1_000_000)
    assert time.perf_counter() - start < TERMINATION_GUARD_S


@pytest.mark.parametrize(
    ("key", "django_prefix"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(12345, None, id="int"),
        pytest.param(bytearray(b":1:x:42"), None, id="bytearray"),
        pytest.param(memoryview(b"x:42"), None, id="memoryview"),
        pytest.param("x:42", 7, id="non-str-prefix"),
        pytest.param(["x"], None, id="list"),
        pytest.param("\ud800:123", None, id="lone-surrogate"),
    ],
)
def test_odd_inputs_never_raise(key: object, django_prefix: object) -> None:
    pattern = key_pattern(key, django_prefix)  # type: ignore[arg-type]
    assert isinstance(pattern, str)
    assert not re.search(r"\d{3}", pattern)


def test_cache_is_bounded_and_keys_are_cut_before_caching() -> None:
    info = key_pattern_module._analyze_cached.cache_info()
    assert info.maxsize is not None and info.maxsize <= 4096
    key_pattern("k" * 100_000)
    assert key_pattern_module._static.cache_info().maxsize == info.maxsize


# --------------------------------------------------------------------------------------------
# Properties: keys mixing identifier words and PHI-like values.

_IDENTIFIERS = st.sampled_from(
    [
        "patient",
        "summary",
        "encounter",
        "ward",
        "hms",
        "cache",
        "profile",
        "by_mrn",
        "v2",
        "utf8",
        "list",
        "VitalSigns",
        "x",
    ]
)
_SEPARATORS = st.sampled_from([":", "/", "|", ".", "_", "-", ",", "="])

_digits = st.integers
_ids = _digits(min_value=100, max_value=10**15).map(str)
_ssns = st.tuples(_digits(100, 999), _digits(10, 99), _digits(1000, 9999)).map(
    lambda t: f"{t[0]}-{t[1]}-{t[2]}"
)
_phones = st.tuples(_digits(200, 999), _digits(200, 999), _digits(1000, 9999), st.sampled_from(range(5))).map(
    lambda t: [
        f"{t[0]}-{t[1]}-{t[2]}",
        f"({t[0]}) {t[1]}-{t[2]}",
        f"+1 {t[0]} {t[1]} {t[2]}",
        f"{t[0]}.{t[1]}.{t[2]}",
        f"+1{t[0]}{t[1]}{t[2]}",
    ][t[3]]
)
_emails = st.from_regex(r"[A-Za-z0-9._%+-]{1,12}@[a-z0-9-]{1,10}\.(com|org|io)", fullmatch=True)
_mrns = st.tuples(st.sampled_from(["MRN-", "MRN", "A", "PT#", "hc"]), _digits(1000, 99_999_999)).map(
    lambda t: f"{t[0]}{t[1]:06d}"
)
_dates = st.tuples(st.dates(), st.sampled_from(range(4))).map(
    lambda t: [
        t[0].isoformat(),
        t[0].strftime("%Y%m%d"),
        t[0].isoformat() + "T10:20:30Z",
        t[0].strftime("%m/%d/%Y"),
    ][t[1]]
)
_uuids = st.uuids().map(str)
_hex_digests = st.binary(max_size=20).map(lambda b: hashlib.md5(b).hexdigest())
_tokens = (
    st.binary(min_size=15, max_size=40)
    .map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
    .filter(lambda t: re.search(r"[0-9][A-Za-z]|[0-9]{3}", t) is not None)
)
_PHI = st.one_of(_ids, _ssns, _phones, _emails, _mrns, _dates, _uuids, _hex_digests, _tokens)


@st.composite
def _keys(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts: list[str] = []
    values: list[str] = []
    if draw(st.booleans()):
        parts.append(f":{draw(_digits(1, 9))}:")
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            value = draw(_PHI)
            values.append(value)
            parts.append(value)
        else:
            parts.append(draw(_IDENTIFIERS))
        parts.append(draw(_SEPARATORS) if parts[-1][-1:] != ":" else "")
    return "".join(parts), values


def _phi_windows(value: str) -> set[str]:
    """Substrings of length 4 that hold a digit or an @: what must never be exported."""
    return {value[i : i + 4] for i in range(len(value) - 3) if re.search(r"[\d@]", value[i : i + 4])}


@settings(max_examples=1000, deadline=None)
@given(_keys())
def test_property_no_phi_survives(key_and_values: tuple[str, list[str]]) -> None:
    key, values = key_and_values
    assume(len(key) <= MAX_KEY_CHARS)
    pattern = key_pattern(key)
    assert not re.search(r"\d{3}", pattern), (key, pattern)
    assert "@" not in pattern
    for value in values:
        for window in _phi_windows(value):
            assert window not in pattern, (key, value, window, pattern)


@settings(max_examples=500, deadline=None)
@given(_keys())
def test_property_stable_bounded_idempotent(key_and_values: tuple[str, list[str]]) -> None:
    key, _ = key_and_values
    pattern = key_pattern(key)
    assert key_pattern(key) == pattern
    assert len(pattern) <= MAX_PATTERN_CHARS
    assert key_pattern(pattern) == pattern


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400), st.one_of(st.none(), st.text(max_size=10)))
def test_property_arbitrary_text(key: str, django_prefix: str | None) -> None:
    pattern = key_pattern(key, django_prefix)
    assert not re.search(r"\d{3}", pattern)
    assert "@" not in pattern
    assert len(pattern) <= MAX_PATTERN_CHARS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes(key: bytes) -> None:
    pattern = key_pattern(key)
    assert not re.search(r"\d{3}", pattern)
    assert "@" not in pattern


@settings(max_examples=300, deadline=None)
@given(_IDENTIFIERS, _ids)
def test_property_id_segments_collapse(word: str, number: str) -> None:
    # Keys that differ only by an id share one pattern (low cardinality). An 8-digit number that
    # reads as a date (19090101) is a date by design.
    assume(re.fullmatch(r"(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])", number) is None)
    assert key_pattern(f":1:{word}:{number}:summary") == f"{key_pattern(word)}:{{id}}:summary"


# --------------------------------------------------------------------------------------------
# Fail closed: names in any case, joined by any separator, in any segment; free text.

# Anything a person may be called: letters (ASCII and not), in any case.
_NAME_PARTS = st.from_regex(r"[A-Za-zÀ-ÿ]{3,12}", fullmatch=True).filter(
    lambda w: w.lower() not in STRUCTURAL_WORDS and w not in ("GET", "PUT", "UTC", "GMT", "HEAD", "POST")
)
_CASES = st.sampled_from([str.lower, str.upper, str.capitalize, str.title, lambda w: w])
_ALL_SEPARATORS = st.sampled_from([":", "/", ".", "_", "-", " ", "|", "#", "=", ",", ";", "+", "~"])
_STRUCTURE = st.sampled_from(
    ["patient", "summary", "search", "page", "v2", "hms", "cache", "list", "by_name", "notes", "{id}"]
)


@st.composite
def _named_keys(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A key of structural words, numbers and a full name (1-3 parts, any case, any joiner)."""
    case = draw(_CASES)
    parts = [case(p) for p in draw(st.lists(_NAME_PARTS, min_size=1, max_size=3))]
    name = draw(_ALL_SEPARATORS).join(parts)
    segments = [
        draw(_STRUCTURE).replace("{id}", str(draw(st.integers(0, 10**6))))
        for _ in range(draw(st.integers(0, 4)))
    ]
    segments.insert(draw(st.integers(0, len(segments))), name)
    separator = draw(_ALL_SEPARATORS)
    prefix = draw(st.sampled_from(["", ":1:", "hms:2:"]))
    return prefix + separator.join(segments), parts


def _words(pattern: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", pattern.replace("{", " {").replace("}", "} ")))


@settings(max_examples=1500, deadline=None)
@given(_named_keys())
def test_property_no_name_survives_in_any_case_separator_or_segment(
    key_and_parts: tuple[str, list[str]],
) -> None:
    key, parts = key_and_parts
    pattern = key_pattern(key)
    words = _words(pattern)
    for part in parts:
        assert part not in words and part.lower() not in words, (key, pattern)


_FIXED_UPPER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "UTC", "GMT")
_FREE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(["search:", "note:", "q/", ":1:patient:7:"]), _FREE_TEXT)
def test_property_free_text_leaves_only_structure(prefix: str, text: str) -> None:
    """Whatever follows a label, the pattern holds only structural words, placeholders,
    ASCII punctuation and the fixed upper-case words: no letter outside a-z, no control
    character, no capital, no word that is not structural."""
    pattern = key_pattern(prefix + text)
    rest = re.sub(r"\{(id|value|name|hash|uuid|email|date|ssn|phone|mrn|token|key)\}", "", pattern)
    rest = rest.replace(TRUNCATION_MARK, "")
    assert all(c.isascii() and (c.isprintable()) for c in rest), (text, pattern)
    for word in re.findall(r"[A-Za-z]+", rest):
        assert (
            word in STRUCTURAL_WORDS
            or word in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "UTC", "GMT")
            or re.fullmatch(r"v", word)
        ), (text, pattern)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_property_no_control_or_bidi_character_survives(text: str) -> None:
    pattern = key_pattern("patient:" + text + "\x1b[31m\u202e\n\r\x85")
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in pattern), repr(pattern)


# --------------------------------------------------------------------------------------------
# Learning: a word becomes structural only where the other words of its shape vary.


def _names(count: int) -> list[str]:
    return [
        f"{a}{b}"
        for a in ("quill", "brindle", "vorosm", "okafor", "zeb")
        for b in ("ax", "ey", "ios", "ard", "ine")
    ][:count]


def test_a_prefix_is_learned_once_other_words_vary_and_the_group_stays() -> None:
    patterns = KeyPatterns()
    raw = [f"hms:{name}:stats" for name in _names(MIN_KEYS + 4)]
    seen = [patterns.pattern(key) for key in raw]
    assert seen[0] == "{value}:{value}:stats"  # the first request: nothing known, fail closed
    assert seen[-1] == "hms:{value}:stats"  # learned: "hms" stayed while the names varied
    assert seen.index("hms:{value}:stats") == MIN_KEYS - 1
    # One group, before and after: findings and report rows stay one.
    assert {key_pattern(p) for p in seen} == {key_pattern(raw[0])} == {"{value}:{value}:stats"}
    # The names were never learned: their position varies.
    for key in raw:
        assert patterns.pattern(key) == "hms:{value}:stats"


def test_names_are_never_learned_where_they_vary() -> None:
    patterns = KeyPatterns()
    names = _names(25)
    for round_ in range(3):
        for name in names:
            for field in ("summary", "notes", "allergies", "visits", "labs"):
                pattern = patterns.pattern(f"pat:{name}:{field}:{round_}")
                assert name not in pattern
    assert all(entry[2] == "pat" for entry in patterns.learned)


def test_a_word_seen_only_with_numbers_around_it_is_not_learned() -> None:
    """Numbers do not count as variety: one patient's many visits do not teach his name."""
    patterns = KeyPatterns()
    for visit in range(200):
        assert patterns.pattern(f"quillfeather:visit:{visit}") == "{value}:visit:{id}"
    assert not patterns.learned


def test_learning_is_bounded() -> None:
    patterns = KeyPatterns()
    for index in range(5000):
        shape = "." * (index % 600)
        patterns.pattern(f"w{shape}x{index % 7}y")
    assert len(patterns._positions) <= key_pattern_module._MAX_POSITIONS
    assert all(len(p.candidates) <= key_pattern_module._MAX_CANDIDATES for p in patterns._positions.values())


def test_cache_n_plus_one_while_a_pattern_is_learned_is_one_finding() -> None:
    """Half of a loop's keys read before a word was learned, half after: one finding, with the
    fingerprint of the pattern's group, shown with the learned pattern."""
    from hms_otel_agent.config import load
    from hms_otel_agent.signals import cache_signals
    from hms_otel_agent.signals.records import CacheCall, CodeLocation, OwnerActivity

    location = CodeLocation("hms/views.py", 10, "summaries")
    calls = [
        CacheCall(
            "get", pattern, start_ns=i, duration_ns=1, reads=1, hits=1, location=location, django_api=True
        )
        for i, pattern in enumerate(["{value}:{id}:summary"] * 3 + ["hms:{id}:summary"] * 3)
    ]
    activity = OwnerActivity(name="GET patients/", cache_calls=calls)
    [finding] = cache_signals.detect(activity, load({}).settings)
    assert finding.repetitions == 6 and finding.key_pattern == "hms:{id}:summary"
    before = OwnerActivity(name="GET patients/", cache_calls=calls[:3] * 2)
    [earlier] = cache_signals.detect(before, load({}).settings)
    assert earlier.fingerprint == finding.fingerprint


# --------------------------------------------------------------------------------------------
# Keys written by real libraries: one stable pattern each, whatever the values.


def test_django_and_library_keys(django_app: object) -> None:
    from django.contrib.sessions.backends.cache import KEY_PREFIX as SESSION_PREFIX
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.utils import make_template_fragment_key
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.utils.cache import learn_cache_key

    locmem = LocMemCache("x", {})
    factory = RequestFactory()
    found: dict[str, set[str]] = {}

    def add(kind: str, key: str) -> None:
        found.setdefault(kind, set()).add(key_pattern(key))

    for index, name in enumerate(["Zebediah Quillfeather", "xanthippe", "MRN-QZ7731X"]):
        add("make_key", locmem.make_key(f"patient:{index * 1000 + 7}:summary"))
        add("make_key v3", locmem.make_key(f"patient:{index * 1000 + 7}:summary", version=3))
        add("fragment", make_template_fragment_key("sidebar", [name, index]))
        add("session", SESSION_PREFIX + f"q8x2l1m0z9y7w6v5u4t3s2r1p0o9n8{index:02d}")
        request = factory.get(f"/patients/?q={name}&page={index}")
        add("cache_page", learn_cache_key(request, HttpResponse("x"), 60, "", cache=locmem))
        add("rq job", f"rq:job:{uuid.uuid4()}")
        add("rq queue", "rq:queue:default")
        add("rq wip", "rq:wip:default")
        add("celery result", f"celery-task-meta-{uuid.uuid4()}")
        add("kombu", "_kombu.binding.celery")
        add(
            "redis cache",
            caches["default"].make_key(f"encounter:{index + 40}")
            if hasattr(caches["default"], "make_key")
            else ":1:encounter:40",
        )
    assert {kind: len(patterns) for kind, patterns in found.items()} == dict.fromkeys(found, 1)
    shown = {kind: next(iter(patterns)) for kind, patterns in found.items()}
    assert shown["make_key"] == shown["make_key v3"] == "patient:{id}:summary"
    assert shown["fragment"] == "template.cache.sidebar.{hash}"
    assert shown["session"] == "django.contrib.sessions.cache{token}"
    assert shown["cache_page"].startswith("views.decorators.cache.cache_page..GET.{hash}.{hash}")
    assert shown["rq job"] == "rq:job:{uuid}" and shown["rq queue"] == "rq:queue:default"
    assert shown["celery result"] == "celery-task-meta-{uuid}" and shown["kombu"] == "_kombu.binding.celery"
    assert shown["redis cache"] == "encounter:{id}"
