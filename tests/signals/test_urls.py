"""Table and property tests for ``hms_otel_agent.signals.urls`` (paths, query strings, URLs)."""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from hms_otel_agent.signals import urls
from hms_otel_agent.signals.http_privacy import REDACTED_QUERY_PARAMS, HttpPrivacy
from hms_otel_agent.signals.urls import (
    PLACEHOLDER,
    REDACTED,
    SAFE_QUERY_PARAMS,
    route_literals,
    route_template,
    sanitize_path,
    sanitize_query,
    templated_path,
)

# The sample app's routes (hms_otel_agent/sample/urls.py) and a few of the admin's.
ROUTES = [
    "",
    "health/",
    "patients/",
    "patients/optimized/",
    "patients/<int:pk>/summary/",
    "patients/search/",
    "encounters/",
    "encounters/recent/",
    "admin/",
    "admin/hms/patient/<path:object_id>/change/",
    "^legacy/(?P<mrn>[A-Z0-9-]+)/notes\\.json$",
]
LITERALS = route_literals(ROUTES)
SAFE = frozenset(SAFE_QUERY_PARAMS) - frozenset(REDACTED_QUERY_PARAMS)
REDACTED_NAMES = frozenset(REDACTED_QUERY_PARAMS)
DEFAULT = HttpPrivacy()


def test_route_literals_are_the_fixed_segments_of_the_routes() -> None:
    assert {
        "health",
        "patients",
        "optimized",
        "summary",
        "search",
        "encounters",
        "recent",
        "admin",
        "hms",
        "patient",
        "change",
        "legacy",
        "notes.json",
    } == LITERALS


@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("patients/<int:pk>/summary/", "patients/{pk}/summary/"),
        ("patients/<pk>/", "patients/{pk}/"),
        ("files/<path:rest>", "files/{rest}"),
        ("report-<int:pk>.pdf", "report-{pk}.pdf"),
        ("", ""),
        ("^legacy/(?P<mrn>[A-Z0-9-]+)/notes\\.json$", "legacy/{mrn}/notes.json"),
        ("^legacy/([0-9]+)/\\Z", "legacy/{id}/"),
        ("^api/v1/patients/<int:pk>/", "api/v1/patients/{pk}/"),  # path() included under re_path()
        ("^x/(?P<a>(?:[0-9]+))/$", "x/{a}/"),
        ("^x/[0-9]+/$", None),  # a bare character class: no value slot to name with certainty
        ("^x/(?:a|b)/$", None),
        ("^x/.*$", None),
        ("^x/(unclosed$", None),
    ],
)
def test_route_template(route: str, template: str | None) -> None:
    assert route_template(route) == template


@pytest.mark.parametrize(
    ("path", "literals", "expected"),
    [
        ("/patients/MRN-QZ7731X/", LITERALS, "/patients/{id}/"),
        ("/patients/smith/", LITERALS, "/patients/{id}/"),  # a name in lower case: no route literal
        ("/patients/smith/", None, "/{id}/{id}/"),  # without routes: only API words stay
        ("/api/v2/patients/smith/", None, "/api/v2/{id}/{id}/"),
        ("/patients/Smith/", None, "/{id}/{id}/"),
        ("/patients/12345/summary/", LITERALS, "/patients/{id}/summary/"),
        ("/patients/1931-07-17/", None, "/{id}/{id}/"),
        ("/patients/zeb%40example.org/", None, "/{id}/{id}/"),
        ("/patients/V%C3%B6r%C3%B6smarty/", None, "/{id}/{id}/"),
        ("/patients/Vörösmarty/", None, "/{id}/{id}/"),
        ("/patients/123e4567-e89b-12d3-a456-426614174000/", LITERALS, "/patients/{id}/"),
        ("/p%61tients/", LITERALS, "/{id}/"),  # an encoded literal is not the literal
        ("/favicon.ico", LITERALS, "/favicon.ico"),
        ("/.well-known/security.txt", LITERALS, "/.well-known/security.txt"),
        ("/", LITERALS, "/"),
        ("", LITERALS, ""),
        ("//patients//", LITERALS, "//patients//"),
        ("/patients;jsessionid=ABC/", LITERALS, "/{id}/"),
    ],
)
def test_sanitize_path(path: str, literals: frozenset[str] | None, expected: str) -> None:
    assert sanitize_path(path, literals) == expected


def test_path_segments_are_bounded() -> None:
    path = "/x" * 10_000
    out = sanitize_path(path, None)
    assert out.count("/") == urls.MAX_SEGMENTS
    assert out.endswith("/" + PLACEHOLDER)


@pytest.mark.parametrize(
    ("path", "route", "expected"),
    [
        ("/patients/1/summary/", "patients/<int:pk>/summary/", "/patients/{pk}/summary/"),
        ("/", "", "/"),
        ("/hms/patients/1/summary/", "patients/<int:pk>/summary/", "/hms/patients/{pk}/summary/"),
        ("/mount/patients/1/summary/", "patients/<int:pk>/summary/", "/{id}/patients/{pk}/summary/"),
        # a route that does not fit the path (a <path:> value with slashes): segment by segment
        ("/admin/hms/patient/a/b/change/", "admin/hms/patient/<path:object_id>/change/", None),
        ("/legacy/MRN-1/notes.json", "^legacy/(?P<mrn>[A-Z0-9-]+)/notes\\.json$", "/legacy/{mrn}/notes.json"),
        ("/files/MRN-1/x", "^files/", None),  # a prefix-only regex: segment by segment
    ],
)
def test_templated_path(path: str, route: str, expected: str | None) -> None:
    assert templated_path(path, route, LITERALS) == (expected or sanitize_path(path, LITERALS))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=2&limit=20", "page=2&limit=20"),
        ("ordering=-created_at,family_name&format=json&lang=en-US", None),
        ("mrn=MRN-1&page=2", "mrn=REDACTED&page=2"),
        ("patient_name=Zeb&fullname=x&birthdate=1931&tel=1&mail=a&social=1&visit_reason=fall", None),
        ("MRN-123", REDACTED),  # a bare value
        ("MRN=MRN-1", REDACTED),  # names are kept in lower case only
        ("mrn%20=x&mrn[]=x&patient[name]=x&first+name=x", "&".join([REDACTED] * 4)),
        ("a=1;mrn=2", "a=REDACTED&mrn=REDACTED"),
        ("next=%2Fpatients%2F%3Fdob%3D1931-07-17", "next=REDACTED"),
        ("next=/patients/?dob=1931-07-17&page=1", "next=REDACTED&page=1"),  # ASGI's decoded http.url
        ("page=%32", "page=REDACTED"),  # encoded: not a plain number with certainty
        ("page=%252", "page=REDACTED"),
        ("page=%zz", "page=REDACTED"),
        ("page=1234567", "page=REDACTED"),  # 7+ digits: an identifier, not a page
        ("page=MRN-1", "page=REDACTED"),
        ("page=Smith", "page=REDACTED"),
        ("page", "page"),
        ("page=", "page="),
        ("name=", "name=REDACTED"),
        ("&&page=1&&", "page=1"),
        ("", ""),
        ("q=a+b", "q=REDACTED"),
    ],
)
def test_sanitize_query(query: str, expected: str | None) -> None:
    out = sanitize_query(query, SAFE, REDACTED_NAMES)
    if expected is None:  # every name kept, values by the rule
        names = [part.split("=")[0] for part in query.split("&")]
        assert [part.split("=")[0] for part in out.split("&")] == names
        for part, original in zip(out.split("&"), query.split("&"), strict=True):
            name = original.split("=")[0]
            assert part == (original if name in SAFE else f"{name}={REDACTED}")
    else:
        assert out == expected


def test_query_parameters_are_bounded() -> None:
    out = sanitize_query("&".join(f"a{i}=x" for i in range(1000)), SAFE, REDACTED_NAMES)
    assert out.split("&") == [REDACTED] * (urls.MAX_PARAMETERS + 1)


def test_redacted_names_win_over_safe_ones() -> None:
    privacy = HttpPrivacy(safe_query_params=["ward", "page"], redact_query_params=["page"])
    assert privacy.query("ward=b&page=2&limit=3") == "ward=b&page=REDACTED&limit=3"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ward=4B&bed=12", "ward=4B&bed=12"),
        ("mrn=MRN-1&ward=4B", "mrn=REDACTED&ward=4B"),
        ("MRN=MRN-1&mrn%20=x&mrn[]=y&patient[name]=z&Patient%5Bname%5D=w", None),
        ("4B", "4B"),  # a bare value is kept: the opt-in is to raw values ...
        ("MRN-123", REDACTED),  # ... unless it reads as a redacted name
    ],
)
def test_raw_query_keeps_values_but_for_redacted_names(query: str, expected: str | None) -> None:
    out = urls.raw_query(query, REDACTED_NAMES)
    if expected is None:
        assert all(part.endswith("=" + REDACTED) for part in out.split("&")), out
    else:
        assert out == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/patients/1/summary/?limit=5&mrn=MRN-1", "/patients/{id}/summary/?limit=5&mrn=REDACTED"),
        ("http://h:8000/patients/MRN-1/?q=Smith", "http://h:8000/patients/{id}/?q=REDACTED"),
        ("https://user:secret@h/x", "https://REDACTED@h/{id}"),
        ("http://[::1]:8000/patients/", "http://[::1]:8000/patients/"),
        ("http://bad host/patients/", "http://REDACTED/patients/"),
        ("/patients/?page=1#Smith", "/patients/?page=1"),
        ("/patients/#?mrn=MRN-1", "/patients/"),
        ("/patients/?", "/patients/?"),
        ("*", "*"),
        ("patients/MRN-1", REDACTED),
        ("example.org:443", REDACTED),
        ("", REDACTED),
    ],
)
def test_sanitize_target(target: str, expected: str) -> None:
    assert DEFAULT.target(target, None, LITERALS) == expected


def test_opt_ins_keep_what_they_promise_and_nothing_else() -> None:
    target = "/patients/MRN-1/?ward=4B&mrn=MRN-1&B-9"
    assert (
        HttpPrivacy(raw_paths=True).target(target) == "/patients/MRN-1/?ward=REDACTED&mrn=REDACTED&REDACTED"
    )
    assert HttpPrivacy(raw_query_values=True).target(target, None, LITERALS) == (
        "/patients/{id}/?ward=4B&mrn=REDACTED&B-9"
    )
    both = HttpPrivacy(raw_paths=True, raw_query_values=True)
    assert both.target(target) == "/patients/MRN-1/?ward=4B&mrn=REDACTED&B-9"
    assert both.target("https://u:p@h/x#frag") == "https://REDACTED@h/x"  # never credentials


# --- properties -------------------------------------------------------------------------------

# Values a hospital's URLs carry: record numbers, names (any case, non-ASCII), dates, e-mails,
# phone and SSN-like numbers, UUIDs, free text.
PHI_VALUES = st.one_of(
    st.from_regex(r"[A-Z]{1,4}-?[0-9]{4,9}[A-Z]?", fullmatch=True),
    st.from_regex(r"[A-Z][a-z]{3,12}", fullmatch=True),
    st.from_regex(r"[A-Z][a-z]{2,10} [A-Z][a-z]{2,12}", fullmatch=True),
    st.from_regex(r"(?:19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]", fullmatch=True),
    st.from_regex(r"[a-z]{2,8}\.[a-z]{2,8}@[a-z]{3,8}\.test", fullmatch=True),
    st.from_regex(r"\(?[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}", fullmatch=True),
    st.from_regex(r"[0-9]{3}-[0-9]{2}-[0-9]{4}", fullmatch=True),
    st.uuids().map(str),
    st.from_regex(r"[0-9]{7,12}", fullmatch=True),
    st.text(alphabet="äöüßéñøåÖÄ", min_size=1, max_size=3).map(lambda s: "V" + s + "rösmarty"),
    st.from_regex(r"[a-z]{2,6}[0-9]{2,6}[a-z]{0,3}", fullmatch=True),
)


def encoded(value: str, how: str) -> str:
    if how == "raw":
        return value
    if how == "quote":
        return quote(value, safe="")
    if how == "quote_plus":
        return quote_plus(value, safe="")
    if how == "double":
        return quote(quote(value, safe=""), safe="")
    if how == "lower":
        return value.lower()
    return quote(value.lower(), safe="")


ENCODINGS = st.sampled_from(["raw", "quote", "quote_plus", "double", "lower", "lower-quoted"])
STRUCTURE = "/".join(sorted(LITERALS)) + "".join(SAFE_QUERY_PARAMS) + REDACTED + PLACEHOLDER + "http://h:8000"


def forms(value: str) -> set[str]:
    """What would betray the value in exported text: the value and its encodings (long enough
    to mean something), case-insensitively."""
    found = {value, quote(value, safe=""), quote_plus(value, safe=""), value.replace(" ", "+")}
    return {f.lower() for f in found if len(f) >= 4}


def positions(value: str, lower_case_word: bool = False) -> list[str]:
    """`value` (already encoded) in every place of a URL the issue lists, and more. A lower-case
    word is kept as a parameter name and as the value of a safe parameter that takes words
    (documented): those places are left out for one."""
    word_places = [
        f"/patients/search/?limit=1&ordering={value}",
        f"/patients/search/?lang={value}",
        f"http://h:8000/patients/?format={value}",
        f"/patients/search/?{value}=1",
    ]
    return ([] if lower_case_word else word_places) + [
        f"/patients/{value}/",
        f"/patients/{value}/summary/?page=2",
        f"/{value}",
        f"/patients/search/?q={value}",
        f"/patients/search/?page={value}",
        f"/patients/search/?limit={value}&offset={value}&per_page={value}",
        f"/patients/search/?{value}",
        f"/patients/search/?mrn%20={value}",
        f"/patients/search/?mrn[]={value}&patient[name]={value}",
        f"/patients/search/?a=1;mrn={value}",
        f"/patients/search/?next={quote('/patients/?dob=' + value, safe='')}",
        f"/patients/search/?next=/patients/?dob={value}&page=1",  # as ASGI's http.url decodes it
        f"/patients/search/?page=1#{value}",
        f"http://h:8000/patients/{value}/?page=1",
        f"http://{value}:{value}@h:8000/x",
    ]


@settings(max_examples=400)
@given(value=PHI_VALUES, how=ENCODINGS, with_routes=st.booleans())
@example(value="MRN-QZ7731X", how="raw", with_routes=True)
@example(value="Quillfeather", how="lower", with_routes=True)
@example(value="zeb.quillfeather@phi-corpus.test", how="quote", with_routes=False)
def test_phi_never_survives_in_any_position_or_encoding(value: str, how: str, with_routes: bool) -> None:
    literals = LITERALS if with_routes else None
    if how.startswith("lower") and not with_routes:
        # Without a route table a lower-case word in a path is kept (documented); the property
        # holds for every value that is not one.
        assume(re.fullmatch(r"[a-z][a-z_-]{0,30}", value.lower()) is None)
    betraying = forms(value)
    assume(not any(form in STRUCTURE.lower() for form in betraying))
    sent = encoded(value, how)
    word = re.fullmatch(r"-?[a-z_][a-z_.-]{0,39}|[a-z]{2,3}(?:[-_][A-Za-z]{2,4})?", sent) is not None
    for url in positions(sent, lower_case_word=word):
        for route in (None, "patients/<int:pk>/summary/"):
            out = DEFAULT.target(url, route, literals).lower()
            assert not any(form in out for form in betraying), (url, out)


ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=200)
URL_TEXT = st.text(alphabet="/?#&;=%+@:.-_ aZ09[]ö", max_size=80)


@settings(max_examples=400)
@given(target=st.one_of(ANY_TEXT, URL_TEXT.map(lambda t: "/" + t), URL_TEXT.map(lambda t: "http://h/" + t)))
def test_output_is_always_plain_and_idempotent(target: str) -> None:
    out = DEFAULT.target(target, None, LITERALS)
    # Nothing encoded, non-ASCII, spaced or any digit run longer than a safe value's can pass.
    assert out.isascii() and not re.search(r"[%+ \s]|[0-9]{7}", out), out
    assert "@" not in out or out.split("@")[0].endswith("REDACTED")
    assert DEFAULT.target(out, None, LITERALS) == out


@settings(max_examples=300)
@given(query=st.text(alphabet="&;=%+ab_.-Pn0123456789[] ö", max_size=60))
def test_kept_query_parts_are_certainly_structural(query: str) -> None:
    for part in sanitize_query(query, SAFE, REDACTED_NAMES).split("&"):
        if not part or part == REDACTED:
            continue
        name, _, value = part.partition("=")
        assert re.fullmatch(r"[a-z_][a-z_.-]{0,39}", name), part
        assert value in ("", REDACTED) or (name in SAFE and re.fullmatch(r"[-,a-z_0-9]{1,60}", value)), part


@settings(max_examples=200)
@given(route=st.text(alphabet="abc/<>:^$()?P[]\\.*+{}-_09", max_size=40), path=URL_TEXT)
def test_a_route_contributes_only_its_own_text(route: str, path: str) -> None:
    """Whatever the route and the path, the exported path is made of the route's template and
    sanitized segments: no segment of the path that is not structural."""
    out = templated_path("/" + path, route, LITERALS)
    template = route_template(route)
    allowed = set(LITERALS) | set(urls.WELL_KNOWN_SEGMENTS) | {"", PLACEHOLDER}
    if template is not None:
        allowed |= set(template.split("/"))
    assert set(out.split("/")) <= allowed, (route, path, out)
