"""Outbound URLs (no route table): a path segment survives only when it is structural with
certainty (`urls.API_WORDS`, versions, HMS_OTEL_SAFE_PATH_SEGMENTS, FHIR's words); names, MRNs
and dates of birth never do, in any position and in any case (signals/urls.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_otel_agent import config
from hms_otel_agent.signals import fhir, urls
from hms_otel_agent.signals.http_privacy import HttpPrivacy

DEFAULT = HttpPrivacy()
CONFIGURED = HttpPrivacy.from_settings(
    config.load({"HMS_OTEL_SAFE_PATH_SEGMENTS": "patients, notes"}).settings
)
SEEDED = ("smith", "quillfeather", "zeb", "mrn-0042", "MRN-QZ7731X", "1931-07-17", "Smith", "o'brien")
STRUCTURAL = ("api", "v2", "search", "fhir", "patients")


@pytest.mark.parametrize("seed", SEEDED)
@pytest.mark.parametrize("position", range(len(STRUCTURAL) + 1))
def test_a_seeded_value_never_survives_in_any_position(seed: str, position: int) -> None:
    segments = [*STRUCTURAL[:position], seed, *STRUCTURAL[position:]]
    url = "https://api.example/" + "/".join(segments)
    for privacy in (DEFAULT, CONFIGURED):
        out = privacy.target(url)
        assert seed not in out.split("/")[3:]
        assert out.split("/")[3 + position] == urls.PLACEHOLDER


def test_the_issue_example() -> None:
    assert DEFAULT.target("https://api.example/api/patients/smith") == "https://api.example/api/{id}/{id}"
    assert CONFIGURED.target("https://api.example/api/patients/smith/notes") == (
        "https://api.example/api/patients/{id}/notes"
    )


def test_api_words_and_versions_stay() -> None:
    assert DEFAULT.target("http://h/api/v1/rest/batch/v12/health") == "http://h/api/v1/rest/batch/v12/health"
    assert DEFAULT.target("http://h/v100/vx/V1") == "http://h/{id}/{id}/{id}"


def test_the_unrouted_server_path_follows_the_same_rule() -> None:
    # a SERVER span for which no route table is known (another framework's span) gets no more
    assert DEFAULT.target("/patients/smith/") == "/{id}/{id}/"
    assert DEFAULT.path("/api/patients/smith") == "/api/{id}/{id}"


words = st.from_regex(r"[a-z][a-z_-]{0,30}", fullmatch=True)
allowed = urls.API_WORDS | {"patients", "notes"}


@given(st.lists(words, min_size=1, max_size=8))
def test_random_lower_case_words_never_survive_unless_allowed(path: list[str]) -> None:
    out = CONFIGURED.target("https://h.example/" + "/".join(path)).split("/")[3:]
    assert len(out) == len(path)
    for raw, kept in zip(path, out, strict=True):
        if kept != urls.PLACEHOLDER:
            assert kept == raw and (raw in allowed or fhir.is_keyword(raw) or raw in fhir.RESOURCE_TYPES)


@given(st.lists(st.sampled_from(SEEDED) | words, min_size=1, max_size=8), st.sampled_from(sorted(allowed)))
def test_seeded_values_never_survive_beside_allowed_words(path: list[str], word: str) -> None:
    out = CONFIGURED.path("/" + "/".join([word, *path]))
    for seed in SEEDED:
        if seed not in allowed:
            assert seed not in out.split("/")
