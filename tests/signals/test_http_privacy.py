"""The user agent, captured headers and span attributes of HTTP spans (pure functions)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import user_agent
from hms_otel_agent.signals.http_privacy import (
    ALWAYS_REDACTED_HEADERS,
    HttpPrivacy,
    header_key,
    named_headers,
)
from hms_otel_agent.signals.urls import REDACTED, route_literals

LITERALS = route_literals(["patients/", "patients/<int:pk>/summary/", "patients/search/"])


@pytest.mark.parametrize(
    ("header", "family"),
    [
        ("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0", "Firefox 120 / Linux"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            "Chrome 120 / Windows",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
            "Edge 120 / Windows",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "Safari 17 / iOS",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.1 Safari/605.1.15",
            "Safari 17 / macOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.6099.43 Mobile Safari/537.36",
            "Chrome 120 / Android",
        ),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot"),
        ("kube-probe/1.29", "kube-probe"),
        ("curl/8.4.0", "curl 8"),
        ("python-requests/2.31.0", "python-requests 2"),
        ("Python-urllib/3.11", "Python-urllib 3"),
        # devices and apps named after their owner: only the system stack they run on is said
        ("Zebediah Quillfeather's iPhone/17.1 CFNetwork/1474 Darwin/23.1.0", "CFNetwork / iOS"),
        ("QuillfeatherWard7/2.0 CFNetwork/1410.0.3 Darwin/22.6.0", "CFNetwork / Darwin"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; Zebediah's Galaxy Build/RP1A)", "Dalvik 2 / Android"),
        ("Firefox/19310717", None),  # no three-digit version: a date of birth is not a version
    ],
)
def test_user_agent_family(header: str, family: str | None) -> None:
    described = user_agent.describe(header)
    assert (described.family() if described else None) == (family or _no_version(header))


def _no_version(header: str) -> str | None:
    described = user_agent.describe(header)
    assert described is None or described.version == ""
    return described.family() if described else None


@pytest.mark.parametrize(
    "header", ["Zebediah Quillfeather", "MRN-QZ7731X", "", "Mozilla/5.0", "Quillfeather-Tablet"]
)
def test_unknown_user_agents_say_nothing(header: str) -> None:
    assert user_agent.describe(header) is None


VOCABULARY = set()
for module_names in (user_agent._BOTS, user_agent._TOOLS, [n for n, _ in user_agent._BROWSERS]):
    VOCABULARY.update(module_names)
SYSTEMS = {name for name, _ in user_agent._SYSTEMS}


@settings(max_examples=400)
@given(
    prefix=st.text(max_size=60),
    product=st.sampled_from(["", "Firefox/", "Chrome/", "curl/", "Version/", "CFNetwork/", "Googlebot/"]),
    suffix=st.text(max_size=60),
)
def test_a_user_agent_is_reduced_to_the_vocabulary(prefix: str, product: str, suffix: str) -> None:
    described = user_agent.describe(prefix + product + suffix)
    if described is not None:
        assert described.name in VOCABULARY
        assert described.os in SYSTEMS | {""}
        assert re.fullmatch(r"[0-9]{0,3}", described.version)


def server_attributes(**extra: object) -> dict[str, object]:
    return {
        "http.method": "GET",
        "http.route": "patients/<int:pk>/summary/",
        "http.target": "/patients/7/summary/?page=2&mrn=MRN-QZ7731X",
        "http.url": "http://h:8000/patients/7/summary/?page=2&mrn=MRN-QZ7731X",
        "url.path": "/patients/7/summary/",
        "url.query": "page=2&mrn=MRN-QZ7731X",
        "url.full": "http://h:8000/patients/7/summary/?page=2&mrn=MRN-QZ7731X",
        "http.user_agent": "Zebediah's Firefox/120.0 (X11; Linux x86_64)",
        "user_agent.original": "Zebediah's Firefox/120.0 (X11; Linux x86_64)",
        "http.status_code": 200,
        **extra,
    }


def apply(
    privacy: HttpPrivacy, attributes: dict[str, object], name: str = "GET"
) -> tuple[dict[str, object], str]:
    changes, new_name = privacy.changes(attributes, name, LITERALS)
    out = dict(attributes)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out, new_name


def test_default_server_span() -> None:
    out, _ = apply(HttpPrivacy(), server_attributes())
    assert out["http.target"] == "/patients/{pk}/summary/?page=2&mrn=REDACTED"
    assert out["url.path"] == "/patients/{pk}/summary/"
    assert out["url.query"] == "page=2&mrn=REDACTED"
    assert out["http.url"] == out["url.full"] == "http://h:8000/patients/{pk}/summary/?page=2&mrn=REDACTED"
    assert "http.user_agent" not in out and "user_agent.original" not in out
    assert (out["user_agent.name"], out["user_agent.version"], out["user_agent.os.name"]) == (
        "Firefox",
        "120",
        "Linux",
    )
    assert out["http.status_code"] == 200 and out["http.route"] == "patients/<int:pk>/summary/"
    assert "Zebediah" not in repr(out) and "QZ7731X" not in repr(out)


def test_unrouted_paths_use_the_route_literals() -> None:
    attributes = {"http.target": "/patients/zebediah/notes/?x=1", "url.path": "/patients/zebediah/notes/"}
    out, _ = apply(HttpPrivacy(), attributes)
    assert out == {"http.target": "/patients/{id}/{id}/?x=REDACTED", "url.path": "/patients/{id}/{id}/"}


def test_span_names_that_carry_the_path() -> None:
    privacy = HttpPrivacy()
    assert apply(privacy, {}, "GET /patients/MRN-1/")[1] == "GET /patients/{id}/"
    assert apply(privacy, {}, "GET /patients/MRN-1/ http send")[1] == "GET /patients/{id}/ http send"
    assert apply(privacy, {}, "GET /patients/x/ Zebediah Quillfeather")[1] == "GET /patients/{id}/ REDACTED"
    assert apply(privacy, {}, "GET patients/<int:pk>/summary/")[1] == "GET patients/<int:pk>/summary/"
    assert apply(privacy, {}, "/patients/MRN-1/")[1] == "/patients/{id}/"
    assert apply(privacy, {}, "websocket /patients/MRN-1/ Connect")[1] == "websocket /patients/{id}/ Connect"
    assert apply(HttpPrivacy(raw_paths=True), {}, "GET /patients/MRN-1/")[1] == "GET /patients/MRN-1/"


def test_opt_ins() -> None:
    out, _ = apply(HttpPrivacy(raw_paths=True), server_attributes())
    assert out["url.path"] == "/patients/7/summary/" and out["url.query"] == "page=2&mrn=REDACTED"
    out, _ = apply(HttpPrivacy(raw_query_values=True, safe_query_params=["ward"]), server_attributes())
    assert out["url.path"] == "/patients/{pk}/summary/" and out["url.query"] == "page=2&mrn=REDACTED"
    out, _ = apply(HttpPrivacy(raw_user_agent=True), server_attributes())
    assert out["user_agent.original"] == server_attributes()["user_agent.original"]
    assert "user_agent.name" not in out


HEADERS = {
    "http.request.header.authorization": ["Bearer eyJhbGciOi.Zebediah"],
    "http.request.header.cookie": ["sessionid=abc; csrftoken=def"],
    "http.request.header.x_patient_mrn": ["MRN-QZ7731X"],
    "http.request.header.content_type": ["application/json"],
    "http.request.header.accept_language": ["en-US,en;q=0.9"],
    "http.request.header.referer": ["http://h/patients/zebediah/?q=Quillfeather"],
    "http.request.header.user_agent": ["Zebediah's Firefox/120.0 (X11; Linux x86_64)"],
    "http.request.header.x_mrn_qz7731x": ["1"],
    "http.request.header.x_ward": ["Zebediah Quillfeather"],
    "http.request.header.accept": ["text/html; name=Zebediah\u00e9"],
    "http.response.header.set_cookie": ["sessionid=abc"],
    "http.response.header.content_length": ["42"],
    "http.response.header.location": ["/patients/MRN-QZ7731X/"],
}


def test_captured_headers_by_default() -> None:
    # As with OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=x-patient-mrn,x-.*,...
    named = named_headers("Authorization, X-Patient-MRN,x-.*,content-type,[a-z]+")
    assert named == {"authorization", "x_patient_mrn", "content_type"}
    out, _ = apply(HttpPrivacy(named_headers=named), dict(HEADERS))
    assert out == {
        "http.request.header.authorization": [REDACTED],
        "http.request.header.cookie": [REDACTED],
        "http.request.header.x_patient_mrn": [REDACTED],  # a custom header: redacted, fail-closed
        "http.request.header.content_type": ["application/json"],
        "http.request.header.accept_language": ["en-US,en;q=0.9"],
        "http.request.header.referer": ["http://h/patients/{id}/?q=REDACTED"],
        "http.request.header.user_agent": ["Firefox 120 / Linux"],
        # x_mrn_qz7731x, x_ward: names nobody listed (a pattern matched them) may be data: dropped
        "http.request.header.accept": [REDACTED],  # not printable ASCII
        "http.response.header.set_cookie": [REDACTED],
        "http.response.header.content_length": ["42"],
        "http.response.header.location": ["/patients/{id}/"],
    }


def test_captured_header_settings() -> None:
    privacy = HttpPrivacy(safe_headers=["X-Ward"], redact_headers=["Content-Type"])
    out, _ = apply(privacy, dict(HEADERS))
    assert out["http.request.header.x_ward"] == ["Zebediah Quillfeather"]
    assert out["http.request.header.content_type"] == [REDACTED]
    raw = HttpPrivacy(raw_header_values=True, redact_headers=["x-patient-mrn"])
    out, _ = apply(raw, dict(HEADERS))
    assert out["http.request.header.x_mrn_qz7731x"] == ["1"]
    assert out["http.request.header.referer"] == HEADERS["http.request.header.referer"]
    assert out["http.request.header.x_patient_mrn"] == [REDACTED]
    for header in ALWAYS_REDACTED_HEADERS:  # credentials: even with the opt-in
        for prefix in ("http.request.header.", "http.response.header."):
            out, _ = apply(raw, {prefix + header: ["secret", "secret2"]})
            assert out[prefix + header] == [REDACTED, REDACTED]
    assert header_key(" X-Api-Key ") == "x_api_key" and "x_api_key" in ALWAYS_REDACTED_HEADERS
