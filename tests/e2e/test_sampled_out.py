"""Findings on every request, tracing on a sample (HMS_OTEL_DETECT_SAMPLED_OUT, on by default):
the sample app under hms-otel-run with head sampling that traces nothing
(``parentbased_traceidratio``, 0) finds what it finds at 100% — the same findings in the metrics
and in the report — and exports, of each request with findings, its owner span alone with the
finding events; requests without findings export nothing."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedDataPoint
from harness.processes import AppProcess

from hms_otel_agent.launch.cli import main

from .conftest import request_path, runserver

pytestmark = pytest.mark.e2e

N_PLUS_ONE = "/encounters/?limit=20"
TRAFFIC = [N_PLUS_ONE, "/encounters/optimized/?limit=20", "/health/", "/stats/", N_PLUS_ONE]
NAIVE_RELATIONS = {"Encounter.patient", "Encounter.facility", "Patient.insurance"}


def run(
    run_sample: Callable[..., AppProcess], receiver: OtlpReceiver, local_dir: Path, sampler: dict[str, str]
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp,hms_file",  # the report reads the local file
        "HMS_OTEL_LOCAL_DIR": str(local_dir),
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "HMS_OTEL_REPORT": "false",
        **sampler,
    }
    app = run_sample(runserver, env, stop_signal=signal.SIGINT)
    receiver.clear()  # /health/ polled until the app answered
    for path in TRAFFIC:
        assert app.request("GET", path).status == 200, path
    assert app.stop() == 0, app.stderr


def findings_metric(receiver: OtlpReceiver) -> dict[tuple[Any, ...], Any]:
    """The last cumulative value of hms.findings per (route, kind, relation, key pattern)."""
    points: dict[tuple[Any, ...], ReceivedDataPoint] = {}
    for point in receiver.metrics("hms.findings"):
        a = point.attributes
        key = (a.get("http.route"), a["hms.finding.kind"], a["hms.orm.relation"], a["hms.cache.key_pattern"])
        if key not in points or point.time_unix_nano >= points[key].time_unix_nano:
            points[key] = point
    return {key: point.value for key, point in points.items()}


def queries_per_route(receiver: OtlpReceiver) -> dict[Any, tuple[Any, Any]]:
    last: dict[Any, ReceivedDataPoint] = {}
    for point in receiver.metrics("hms.db.queries_per_request"):
        route = point.attributes.get("http.route")
        if route not in last or point.time_unix_nano >= last[route].time_unix_nano:
            last[route] = point
    return {route: (point.count, point.sum) for route, point in last.items() if route != "health/"}


def report(local_dir: Path, capsys: pytest.CaptureFixture[str]) -> Counter[tuple[Any, ...]]:
    capsys.readouterr()
    assert main(["report", str(local_dir), "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)["findings"]
    return Counter((f["kind"], f["route"], f.get("relation"), f.get("occurrences")) for f in found)


def test_a_sampled_out_request_is_detected_and_exports_its_owner_alone(
    run_sample: Callable[..., AppProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with OtlpReceiver() as traced, OtlpReceiver() as sampled_out:
        run(run_sample, traced, tmp_path / "traced", {})
        run(
            run_sample,
            sampled_out,
            tmp_path / "sampled_out",
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
        )
        traced_findings = findings_metric(traced)
        sampled_out_findings = findings_metric(sampled_out)
        spans = sampled_out.spans()
        assert queries_per_route(sampled_out) == queries_per_route(traced)

    # The same findings in the metrics: kinds, relations and counts per route.
    relations = {str(key[2]).removeprefix("hms.") for key in traced_findings if key[0] == "encounters/"}
    assert relations >= NAIVE_RELATIONS
    assert sampled_out_findings == traced_findings
    # ... and in the report (read from the exported spans).
    reported = report(tmp_path / "traced", capsys)
    assert sum(n for (kind, route, *_), n in reported.items() if kind == "n_plus_one" and route) >= 3
    assert report(tmp_path / "sampled_out", capsys) == reported

    # Exported: the owner span of each N+1 request, alone and marked; nothing else.
    assert [s.kind for s in spans] == ["SPAN_KIND_SERVER", "SPAN_KIND_SERVER"], [s.short() for s in spans]
    for span in spans:
        assert request_path(span) == "/encounters/"
        assert span.attributes["hms.sampled_out"] is True
        assert span.attributes["hms.n_plus_one"] is True
        assert span.attributes["hms.db.query_count"] > 20
        relations = {
            str(e.attributes.get("hms.orm.relation")).removeprefix("hms.")
            for e in span.events
            if e.name == "hms.n_plus_one"
        }
        assert relations == NAIVE_RELATIONS
    assert len({s.trace_id for s in spans}) == 2
