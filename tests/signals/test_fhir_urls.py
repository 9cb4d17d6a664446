"""Outbound URLs against a FHIR server: resource types and keywords kept, ids and identifying
search values never (signals/urls.py with signals/fhir.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_otel_agent.signals import fhir
from hms_otel_agent.signals.http_privacy import HttpPrivacy
from hms_otel_agent.signals.urls import sanitize_path

PRIVACY = HttpPrivacy()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://fhir:8080/fhir/Patient/123", "http://fhir:8080/fhir/Patient/{id}"),
        ("http://fhir:8080/fhir/Patient/smith", "http://fhir:8080/fhir/Patient/{id}"),
        ("/fhir/Patient/p-1/_history/3", "/fhir/Patient/{id}/_history/{id}"),
        ("/fhir/Patient/MRN-0042/$everything", "/fhir/Patient/{id}/$everything"),
        (
            "/fhir/Patient/12/Observation?_sort=-date&_count=20",
            "/fhir/Patient/{id}/Observation?_sort=-date&_count=20",
        ),
        ("/fhir/Patient/_search", "/fhir/Patient/_search"),
        ("/fhir/metadata", "/fhir/metadata"),
        (
            "/fhir/Observation?patient=MRN-0042&code=http://loinc.org|4548-4",
            "/fhir/Observation?patient=REDACTED&code=REDACTED",
        ),
        ("/fhir/Patient?identifier=urn:oid:1.2.3|MRN-0042", "/fhir/Patient?identifier=REDACTED"),
        ("/fhir/Patient?_id=a,b,c&_count=3", "/fhir/Patient?_id=REDACTED&_count=3"),
        (
            "/fhir/Patient?family=Quillfeather&given=zeb&birthdate=1931-07-17",
            "/fhir/Patient?family=REDACTED&given=REDACTED&birthdate=REDACTED",
        ),
        ("/fhir/Patient?_count=1e9", "/fhir/Patient?_count=REDACTED"),
        (
            "https://user:pw@fhir.example.org/r4/Encounter/e1",
            "https://REDACTED@fhir.example.org/r4/Encounter/{id}",
        ),
        ("/api/patients/Quillfeather/notes", "/api/{id}/{id}/{id}"),  # no route: API words only
    ],
)
def test_outbound_fhir_urls(url: str, expected: str) -> None:
    assert PRIVACY.target(url) == expected


ids = st.from_regex(r"[A-Za-z0-9.\-]{1,64}", fullmatch=True)


@given(st.sampled_from(sorted(fhir.RESOURCE_TYPES)), ids)
def test_the_segment_after_a_resource_type_is_never_kept(resource: str, logical_id: str) -> None:
    out = sanitize_path(f"/fhir/{resource}/{logical_id}", None)
    assert out == f"/fhir/{resource}/" + (logical_id if fhir.is_keyword(logical_id) else "{id}")


def test_routes_of_the_application_still_decide_for_server_paths() -> None:
    assert sanitize_path("/fhir/Patient/1/", frozenset({"fhir"})) == "/fhir/{id}/{id}/"


@pytest.mark.parametrize(
    ("path", "names", "fix"),
    [
        ("/fhir/Patient/{id}", (), "one search instead of a read per id: GET /fhir/Patient?_id=id1,id2,id3"),
        ("/Patient/{id}", (), "one search instead of a read per id: GET /Patient?_id=id1,id2,id3"),
        (
            "/fhir/Observation",
            ("patient", "_count"),
            "one search for every value: GET /fhir/Observation?patient=v1,v2,v3",
        ),
        ("/fhir/Patient/{id}/_history/{id}", (), None),
        ("/fhir/Patient/{id}/$everything", (), None),
        ("/api/results/{id}", (), None),
        ("/fhir/Observation", ("_count",), None),
    ],
)
def test_batch_fix(path: str, names: tuple[str, ...], fix: str | None) -> None:
    found = fhir.batch_fix("GET", path, names)
    assert (found if fix is None else (found or "")[: len(fix)]) == fix


mrns = st.from_regex(r"MRN-[0-9]{4,8}", fullmatch=True)
names = st.from_regex(r"[A-Z][a-z]{3,12}(-[A-Z][a-z]{2,8})?", fullmatch=True)
search_params = st.sampled_from(
    (
        *("patient", "subject", "identifier", "family", "given", "name", "birthdate"),
        *("_id", "code", "patient.family"),
    )
)


@given(st.sampled_from(sorted(fhir.RESOURCE_TYPES)), mrns, names, search_params, st.booleans())
def test_no_mrn_or_name_survives_an_outbound_fhir_url(
    resource: str, mrn: str, name: str, param: str, system: bool
) -> None:
    value = f"urn:oid:2.16.840|{name}" if system else name
    for url in (
        f"https://fhir.example.org/r4/{resource}/{mrn}?{param}={value}&_count=10",
        f"http://127.0.0.1:8080/fhir/{resource}?{param}={mrn},{value}",
        f"/fhir/Patient/{mrn}/{resource}?{param}={value}",
    ):
        out = PRIVACY.target(url)
        assert mrn not in out
        if name not in fhir.RESOURCE_TYPES:  # a surname that is also a type name may stay as a type
            # as a whole word: "Pati" is in "Patient"
            assert re.search(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])", out) is None, (url, out)
