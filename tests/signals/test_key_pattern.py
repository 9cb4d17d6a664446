"""Table and property tests for ``hms_otel_agent.signals.key_pattern``."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import key_pattern as key_pattern_module
from hms_otel_agent.signals.key_pattern import MAX_KEY_CHARS, MAX_PATTERN_CHARS, TRUNCATION_MARK, key_pattern

# Guards against catastrophic (super-linear) scanning only: a correct scanner takes milliseconds
# here, a backtracking one would take minutes. Speed itself is measured in
# benchmarks/micro_signals.py, not asserted.
TERMINATION_GUARD_S = 10.0

KEYS = [
    pytest.param(":1:patient:12345:summary", None, "patient:{id}:summary", id="django-default-prefix"),
    pytest.param(":2:patient:12345:summary", None, "patient:{id}:summary", id="django-version-2"),
    pytest.param("hms:2:encounter:42", "hms", "encounter:{id}", id="django-prefix-given"),
    pytest.param(":1:encounter:42", "hms", "encounter:{id}", id="django-prefix-given-empty-prefix-key"),
    pytest.param("other:2:encounter:42", "hms", "other:{id}:encounter:{id}", id="django-prefix-other"),
    pytest.param("hms:2:encounter:42", None, "hms:{id}:encounter:{id}", id="django-prefix-not-given"),
    pytest.param("patient:12345:summary", None, "patient:{id}:summary", id="no-prefix-number-segment"),
    pytest.param(":v1:patient", None, ":v1:patient", id="version-not-digits"),
    pytest.param(":1:", None, "", id="only-prefix"),
    pytest.param("a:b:3:ward:7", "a:b", "ward:{id}", id="prefix-with-colon"),
    pytest.param("::1:x", None, "::{id}:{value}", id="double-colon-start"),
    pytest.param("user_12345", None, "user_{id}", id="id-underscore"),
    pytest.param("user-7", None, "user-{id}", id="id-dash"),
    pytest.param("page:2", None, "page:{id}", id="small-number"),
    pytest.param("patient_summary", None, "patient_summary", id="identifier-kept"),
    pytest.param("api:v2:utf8:h264x", None, "api:v2:utf8:{mrn}", id="identifier-with-small-digits"),
    pytest.param("page100:row12", None, "page{id}:row12", id="digits-in-word"),
    pytest.param("abc123def45", None, "abc{id}def45", id="digits-inside-word"),
    pytest.param("order:12345678901234567890", None, "order:{id}", id="long-number"),
    pytest.param("price:12.50", None, "price:{id}.{id}", id="decimal"),
    pytest.param("delta:-42", None, "delta:-{id}", id="negative"),
    pytest.param("rate:192.168.1.10", None, "rate:{id}.{id}.{id}.{id}", id="ip-address"),
    pytest.param("hits:1706700000", None, "hits:{id}", id="epoch"),
    pytest.param("batch:1,2,3", None, "batch:{id},{id},{id}", id="list-of-ids"),
    pytest.param("/patients/?page=12&ward=7", None, "/patients/?page={id}&ward={id}", id="query-string"),
    pytest.param("encounter:123e4567-e89b-12d3-a456-426614174000", None, "encounter:{uuid}", id="uuid"),
    pytest.param("E:123E4567-E89B-12D3-A456-426614174000:notes", None, "E:{uuid}:notes", id="uuid-upper"),
    pytest.param("enc:123e4567e89b12d3a456426614174000", None, "enc:{hash}", id="uuid-hex32"),
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
    pytest.param(
        "abcdefghijklmnopqrstuvwxyzABCDEF", None, "abcdefghijklmnopqrstuvwxyzABCDEF", id="long-word-no-digits"
    ),
    pytest.param("patient:john.doe@example.com:profile", None, "patient:{email}:profile", id="email"),
    pytest.param("user:Jane+tag@Example.ORG", None, "user:{email}", id="email-plus"),
    pytest.param("user_john@x.io_summary:1", None, "{email}:{id}", id="email-in-segment"),
    pytest.param("weird:@:x", None, "weird:{email}:x", id="at-sign-alone"),
    pytest.param("a@b@c:x", None, "{email}:{value}", id="several-at"),
    pytest.param(
        "patient:7:allergy:penicillin", None, "patient:{id}:allergy:{value}", id="word-in-value-position"
    ),
    pytest.param("search:john smith", None, "search:{value}", id="free-text-value"),
    pytest.param("hms:stats:hits", None, "hms:stats:hits", id="structural-word-in-value-position"),
    pytest.param("report:2024-01-31:x", None, "report:{date}:x", id="date"),
    pytest.param("report:20240131", None, "report:{date}", id="date-compact"),
    pytest.param("appt:2024-01-31T10:00:00Z:list", None, "appt:{date}:list", id="datetime-z"),
    pytest.param("appt:2024-01-31T10:00:00+01:00", None, "appt:{date}", id="datetime-offset"),
    pytest.param("log:2024-01-31 10:00:00.123456", None, "log:{date}", id="datetime-fraction"),
    pytest.param("dob:1980/02/03", None, "dob:{date}", id="date-slashes"),
    pytest.param("dob:02/03/1980", None, "dob:{date}", id="date-us"),
    pytest.param("snap:20240131T100000Z", None, "snap:{date}", id="date-compact-time"),
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
    pytest.param(b"patient:\xff\xfe:123", None, "patient:��:{id}", id="invalid-utf8"),
    pytest.param("", None, "", id="empty"),
    pytest.param(":::", None, ":::", id="only-separators"),
    pytest.param("{user123}:profile", None, "{user{id}}:profile", id="redis-hashtag"),
    pytest.param("patient:*:summary", None, "patient:*:summary", id="wildcard"),
    pytest.param("patient:١٢٣٤", None, "patient:{id}", id="unicode-digits"),
    pytest.param("patiënt:José:42", None, "patiënt:{name}:{id}", id="non-ascii-name"),
    pytest.param("patient:Quillfeather:summary", None, "patient:{name}:summary", id="capitalised-name"),
    pytest.param("search:Zebediah Quillfeather", None, "search:{name} {name}", id="full-name"),
    pytest.param("mrn:QZ48213X", None, "mrn:{mrn}", id="alphanumeric-record-number"),
    pytest.param(
        "views.PatientSummary.GET", None, "views.PatientSummary.GET", id="camel-case-and-capitals-kept"
    ),
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
    info = key_pattern_module._pattern_cached.cache_info()
    assert info.maxsize is not None and info.maxsize <= 4096
    key_pattern("k" * 100_000)
    cached_keys = key_pattern_module._pattern_cached.cache_parameters()
    assert cached_keys["maxsize"] == info.maxsize


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
    assert key_pattern(f":1:{word}:{number}:summary") == f"{word}:{{id}}:summary"
