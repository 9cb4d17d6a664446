"""docs/attributes.md is true: every hms.* name a real run exports is documented, with its type,
and every documented name is exported by a run that exercises every signal."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess

from hms_otel_agent.signals.registry import FINDING_KINDS

from .conftest import otlp_env, runserver

pytestmark = pytest.mark.e2e

DOC = (Path(__file__).resolve().parents[2] / "docs" / "attributes.md").read_text()

# Documented, but produced only by conditions a healthy run does not have.
NOT_PRODUCED_BY_THE_RUN = {
    "hms.agent.errors",  # an internal error of the agent
    "hms.component",
    "hms.agent.dropped_spans",  # a backend that does not keep up
    "hms.reason",
}


def documented() -> tuple[dict[str, set[str]], set[str], set[str]]:
    """(attribute name -> documented types, metric names, optional names)."""
    types: dict[str, set[str]] = {}
    metrics: set[str] = set()
    optional: set[str] = set()
    section = ""
    for line in DOC.splitlines():
        if line.startswith("## "):
            section = line[3:]
            continue
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([a-z][\w.]*)`", cells[0])
        if section == "Metrics":
            metrics.update(names)
            for attribute in re.findall(r"`([a-z][\w.]*)`", cells[3]):
                types.setdefault(attribute, set())
            if "opt-in" in cells[3]:
                optional.update(names)
            continue
        kinds = [t.strip() for t in cells[1].split(",")]
        for index, name in enumerate(names):
            kind = kinds[index] if len(kinds) == len(names) else kinds[0]
            types.setdefault(name, set()).add(kind)
            if "opt-in" in cells[2] or "opt-in" in section.lower():
                optional.add(name)
    return types, metrics, optional


def type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, list):
        return "string[]"
    return "string"


PATHS = [
    "/stats/",
    "/health/",
    "/patients/?limit=10",
    "/patients/optimized/?limit=10",
    "/encounters/?limit=10",
    "/appointments/schedule/?limit=12",
    "/patients/records/?limit=10",
    "/notes/?limit=10",
    "/patients/birthdays/?limit=10",
    "/patients/lookup/?ids=1,2,3,4,5,6",
    "/facilities/",
    "/reports/raw-encounters/?limit=10",
    "/patients/1/summary/",
    "/patients/1/summary/",
    "/patients/cached/lookup/?ids=11,12,13,14,15,16,17,18",
    "/patients/cached/?limit=10",
    "/patients/cached/optimized/?limit=10",
    "/encounters/recent/",
    "/encounters/recent/optimized/",
    "/patients/2/flaky-summary/",
    "/patients/export/",
    "/encounters/search/?reason=checkup",
    "/encounters/search/?reason=checkup",
    "/boom/?mrn=MRN-1",
    "/clinic/wards/board/",  # template spans
    "/clinic/visits/export/",  # one list read in LIMIT/OFFSET slices (hms.db.paged)
    "/patients/fhir/?limit=6",  # outbound HTTP (the fake FHIR server below)
] + ["/appointments/upcoming/"] * 4
PATHS.append("/encounters/search/?reason=checkup")  # a later occurrence: the plan is ready by now


def test_the_document_matches_what_a_real_run_exports(
    otlp_receiver: OtlpReceiver, run_sample: Callable[..., AppProcess], sample_app_db: dict[str, str]
) -> None:
    env = {
        **otlp_env(otlp_receiver, "http/protobuf"),
        "HMS_SAMPLE_CONN_MAX_AGE": "0",  # connection churn
        "HMS_OTEL_LARGE_RESULT_ROWS": "20",
        "HMS_OTEL_WIDE_RESULT_COLUMNS": "5",
        "HMS_OTEL_SLOW_QUERY_MS": "0.01",
        "HMS_OTEL_EXPLAIN": "true",
        "HMS_OTEL_EXPLAIN_SEQ_SCAN_ROWS": "0",
        "HMS_OTEL_UNUSED_EAGER_LOADS": "true",
        "HMS_OTEL_UNUSED_EAGER_MIN_LOADS": "2",
        "HMS_OTEL_CACHE_INVALIDATION_THRESHOLD": "5",
    }
    import redis

    from hms_otel_agent.demo.fhir_server import FakeFhirServer

    redis.Redis.from_url(sample_app_db["REDIS_URL"]).flushdb()  # cold cache: misses, fills, groups
    with FakeFhirServer() as fhir_url:
        env["HMS_SAMPLE_FHIR_URL"] = fhir_url
        app = run_sample(lambda port: runserver(port, "--noreload"), env, stop_signal=signal.SIGINT)
        for path in PATHS:
            app.request("GET", path)
        app.request("POST", "/patients/3/touch/")
        app.request("POST", "/patients/duplicate/?pk=1")
        app.stop()  # flush: the aggregate findings and metrics go at exit
    otlp_receiver.wait_for_spans(lambda s: any(e.name == "hms.explain" for e in s.events), timeout=20)

    emitted_types: dict[str, set[str]] = {}
    event_names: set[str] = set()

    def note(attributes: dict[str, Any]) -> None:
        for key, value in attributes.items():
            if key.startswith("hms.") or key in ("db.response.returned_rows",):
                emitted_types.setdefault(key, set()).add(type_of(value))

    for span in otlp_receiver.spans():
        note(span.attributes)
        note(span.resource)
        for event in span.events:
            event_names.add(event.name)
            note(event.attributes)
    metric_names = {p.name for p in otlp_receiver.metrics() if p.name.startswith("hms.")}
    for point in otlp_receiver.metrics():
        if point.name.startswith("hms."):
            for key in point.attributes:
                emitted_types.setdefault(key, set())

    types, metrics, optional = documented()
    undocumented = sorted(n for n in emitted_types if n not in types)
    assert undocumented == [], f"exported but not in docs/attributes.md: {undocumented}"
    assert sorted(metric_names - metrics) == [], "metrics exported but not documented"
    for name, seen in emitted_types.items():
        if seen and types[name]:
            assert seen <= types[name], f"{name}: exported as {seen}, documented as {types[name]}"

    hms_documented = {n for n in types if n.startswith("hms.")} | {m for m in metrics if m.startswith("hms.")}
    missing = sorted(
        n
        for n in hms_documented - optional - NOT_PRODUCED_BY_THE_RUN
        if n not in emitted_types and n not in metric_names
    )
    assert missing == [], f"documented but not exported by the run: {missing}"

    finding_events = {
        n for n in event_names if n.startswith("hms.") and n not in ("hms.db.connect", "hms.explain")
    }
    for name in finding_events:
        assert f"`{name}`" in DOC, f"event {name} not documented"
    kinds_line = next(line for line in DOC.splitlines() if line.startswith("| `hms.finding.kind`"))
    assert re.findall(r"`(\w+)`", kinds_line.split("|")[4]) == list(FINDING_KINDS)
