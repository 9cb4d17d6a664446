"""The outbound-HTTP detectors on JSON fixtures (tests/signals/fixtures/http/<detector>.json):
each case lists the calls under one owner and the exact findings expected; every positive has a
negative next to it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hms_otel_agent import config
from hms_otel_agent.signals import http_n_plus_one, http_sequential, http_slow, http_timeout, registry
from hms_otel_agent.signals.activity import CodeLocation, OwnerActivity
from hms_otel_agent.signals.http_calls import HttpCall

FIXTURES = Path(__file__).parent / "fixtures" / "http"
SETTINGS = config.load({}).settings
DETECTORS = {
    "http_n_plus_one": http_n_plus_one.detect,
    "http_sequential": http_sequential.detect,
    "http_slow": http_slow.detect,
    "http_timeout": http_timeout.detect,
}


def _call(raw: dict[str, Any]) -> HttpCall:
    location = raw.get("location")
    return HttpCall(
        method=raw["method"],
        url=raw["url"],
        start_ns=int(raw["start_ms"] * 1e6),
        duration_ns=int(raw["duration_ms"] * 1e6),
        timeout=raw.get("timeout"),
        url_hash=raw["url_id"],  # null: offline, not known
        location=CodeLocation(*location) if location else None,
        library=raw.get("library", "requests"),
    )


def _cases() -> list[Any]:
    cases = []
    for detector in DETECTORS:
        for case in json.loads((FIXTURES / f"{detector}.json").read_text()):
            cases.append(pytest.param(detector, case, id=f"{detector}: {case['name']}"))
    return cases


def _owner(case: dict[str, Any]) -> OwnerActivity:
    return OwnerActivity(
        name="GET patients/summary/",
        route="patients/summary/",
        http_calls=[_call(c) for c in case["calls"]],
    )


@pytest.mark.parametrize(("detector", "case"), _cases())
def test_fixture(detector: str, case: dict[str, Any]) -> None:
    findings = DETECTORS[detector](_owner(case), SETTINGS)
    got = [
        {
            "kind": f.kind,
            "repetitions": f.repetitions,
            "duration_ms": round(f.duration_ms, 3),
            "subject": f.subject,
            "location": [f.location.file, f.location.line, f.location.function] if f.location else None,
        }
        for f in findings
    ]
    expected = [{k: v for k, v in e.items() if k != "fix_starts"} for e in case["expected"]]
    assert got == expected
    for finding, wanted in zip(findings, case["expected"], strict=True):
        assert finding.fix.startswith(wanted["fix_starts"]), finding.fix
        assert finding.hint.startswith("GET patients/summary/: "), finding.hint
        assert finding.hint.endswith(finding.fix)
        assert finding.route == "patients/summary/"


@pytest.mark.parametrize(("detector", "case"), _cases())
def test_the_registry_runs_it(detector: str, case: dict[str, Any]) -> None:
    """Registered like every detector: the registry's run gives the same findings of this kind."""
    kinds = {e["kind"] for e in case["expected"]}
    found = [f for d in registry.DETECTORS for f in d(_owner(case), SETTINGS) if f.kind in kinds]
    assert sorted(f.fingerprint for f in found) == sorted(
        f.fingerprint for f in DETECTORS[detector](_owner(case), SETTINGS)
    )
    assert kinds <= set(registry.FINDING_KINDS)


def test_fingerprints_are_stable_across_lines_and_calls() -> None:
    """A line moved or a different count of calls is the same finding (kind, template, site)."""
    case = json.loads((FIXTURES / "http_n_plus_one.json").read_text())[0]
    first = http_n_plus_one.detect(_owner(case), SETTINGS)[0]
    moved = dict(
        case, calls=[dict(c, location=["hms/views.py", 99, "patient_summaries"]) for c in case["calls"]]
    )
    again = http_n_plus_one.detect(_owner(moved), SETTINGS)[0]
    assert first.fingerprint == again.fingerprint


def test_thresholds_are_settings() -> None:
    case = json.loads((FIXTURES / "http_n_plus_one.json").read_text())[1]  # 4 calls: no finding
    assert http_n_plus_one.detect(_owner(case), SETTINGS) == []
    lower = dataclasses.replace(SETTINGS, http_n_plus_one_threshold=4)
    assert [f.repetitions for f in http_n_plus_one.detect(_owner(case), lower)] == [4]
    slow = json.loads((FIXTURES / "http_slow.json").read_text())[1]  # 999 ms
    assert http_slow.detect(_owner(slow), dataclasses.replace(SETTINGS, http_slow_ms=500.0))
