"""collector-config/ with real payloads of both semantic-convention generations.

The sample app runs under hms-otel-run once per OTEL_SEMCONV_STABILITY_OPT_IN generation (old
names, stable names, both), answering the same requests from a cold cache. What arrives at the
OTLP receiver goes through the collector's trace pipeline as tests/stack/pipeline.py runs it
(redaction, transform/semconv), then through the span-metrics and tail-sampling models. Whatever
the generation, the spans must carry the stable names, the span-metrics series and the sampling
decisions must be the same, and every label the dashboard and the alerts select on must exist.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedDataPoint, ReceivedSpan
from harness.processes import AppProcess, venv_executable
from harness.services import free_port
from stack.ottl import Span
from stack.pipeline import matching_policies, process, span_from_received, spanmetrics_labels, traces
from stack.stackfiles import (
    gateway,
    label,
    otelcol,
    promql_labels,
    promql_matchers,
    promql_metrics,
    promql_queries,
    sampler,
    spanmetrics_connector,
    spanmetrics_names,
)

from .conftest import otlp_env, runserver

pytestmark = pytest.mark.e2e

# The generation each value of OTEL_SEMCONV_STABILITY_OPT_IN selects. Unset, the agent sends the
# stable names (config.SEMCONV_DEFAULT); "old" (config.SEMCONV_OLD, naming neither signal) the
# old ones only. test_each_run_has_the_generation_it_asked_for says which.
GENERATIONS: dict[str, dict[str, str]] = {
    "old": {"OTEL_SEMCONV_STABILITY_OPT_IN": "old"},
    "stable": {"OTEL_SEMCONV_STABILITY_OPT_IN": "database,http"},
    "dup": {"OTEL_SEMCONV_STABILITY_OPT_IN": "database/dup,http/dup"},
}

# N+1 and duplicate queries, cache misses and hits, a 500 answer (an exception in the view), a
# 404 answer, plain pages.
PATHS = [
    "/encounters/?limit=10",
    "/patients/?limit=10",
    "/patients/optimized/?limit=10",
    "/patients/cached/?limit=10",
    "/patients/1/summary/",
    "/patients/1/summary/",
    "/encounters/search/?reason=checkup",
    "/stats/",
    "/boom/?mrn=MRN-1",
    "/no-such-page/",
]

SERVER_SCOPE = "opentelemetry.instrumentation.django"


def is_request(span: ReceivedSpan) -> bool:
    return span.kind == "SPAN_KIND_SERVER" and span.attributes.get("http.route") != "health/"


@dataclass
class Run:
    generation: str
    received: list[ReceivedSpan]
    points: list[ReceivedDataPoint]

    def requests(self) -> list[ReceivedSpan]:
        """Server spans of the requests in PATHS (not of the readiness probes), in order. Found
        by route, not path: a stable-mode server span under runserver carries no url.path."""
        spans = [s for s in self.received if is_request(s)]
        return sorted(spans, key=lambda s: s.start_time_unix_nano)

    def request_spans(self) -> list[Span]:
        """Every span of the traces of those requests, as received."""
        ids = {s.trace_id for s in self.requests()}
        return [span_from_received(s) for s in self.received if s.trace_id in ids]

    def collected(self) -> list[Span]:
        """The same spans after the collector's traces/in pipeline."""
        return process(otelcol(), "traces/in", self.request_spans())


def _run(generation: str, sample_app_db: dict[str, str], log_dir: Path) -> Run:
    import redis

    redis.Redis.from_url(sample_app_db["REDIS_URL"]).flushdb()  # the same cold cache for each run
    with OtlpReceiver() as receiver:
        port = free_port()
        env = {
            **sample_app_db,
            **otlp_env(receiver, "http/protobuf"),
            "HMS_OTEL_CAPTURE_SQL_PARAMETERS": "true",  # for the collector to delete
            **GENERATIONS[generation],
        }
        cmd = [venv_executable("hms-otel-run"), "--", *runserver(port, "--noreload")]
        app = AppProcess(
            cmd,
            env=env,
            base_url=f"http://127.0.0.1:{port}",
            stop_signal=signal.SIGINT,
            log_dir=log_dir,
            name=generation,
        ).start()
        try:
            app.wait_http("/health/", timeout=60)
            for path in PATHS:
                app.request("GET", path)
        finally:
            app.stop()  # flushes what is left
        receiver.wait_for_spans(is_request, count=len(PATHS))
        return Run(generation, receiver.spans(), receiver.metrics())


@pytest.fixture(scope="module")
def runs(sample_app_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    log_dir = tmp_path_factory.mktemp("semconv-runs")
    try:
        yield {g: _run(g, sample_app_db, log_dir) for g in GENERATIONS}
    except Exception:
        for path in sorted(log_dir.glob("*")):
            print(f"--- {path.name}\n{path.read_text()[-4000:]}")
        raise


def keys_by_scope(spans: list[Span]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for span in spans:
        found.setdefault((span.scope, span.kind), set()).update(span.attributes)
    return found


OLD = {"db.statement", "db.system", "http.method", "http.status_code"}
NEW = {"db.query.text", "db.system.name", "http.request.method", "http.response.status_code"}


def test_each_run_has_the_generation_it_asked_for(runs: dict[str, Run]) -> None:
    for generation, run in runs.items():
        names = set().union(*(s.attributes for s in run.request_spans()))
        expected = {"old": (OLD, NEW), "stable": (NEW, OLD), "dup": (OLD | NEW, set())}[generation]
        assert expected[0] <= names, f"{generation}: {sorted(expected[0] - names)} missing"
        assert not expected[1] & names, (
            f"{generation} ({GENERATIONS[generation]}) sends {sorted(expected[1] & names)}: "
            "update GENERATIONS to the agent's way of selecting this generation"
        )


# Stable names the agent itself derives from the statement on SQL spans, which an old span (only
# db.statement) cannot give the collector, and the parameters, which the collector deletes.
AGENT_DERIVED = re.compile(r"^db\.(query\.summary|operation\.name|collection\.name|query\.parameter\..+)$")


def test_after_the_collector_old_spans_have_every_stable_name_stable_spans_have(runs: dict[str, Run]) -> None:
    stable = keys_by_scope(runs["stable"].request_spans())
    old_names = set().union(*keys_by_scope(runs["old"].request_spans()).values())
    stable_only = {
        scope: {n for n in names - old_names if not AGENT_DERIVED.match(n)} for scope, names in stable.items()
    }
    assert stable_only[(SERVER_SCOPE, "SPAN_KIND_SERVER")] >= {
        "http.request.method",
        "http.response.status_code",
    }
    for generation in ("old", "dup"):
        run = runs[generation]
        after = keys_by_scope(run.collected())
        for scope, names in stable_only.items():
            missing = names - after.get(scope, set())
            assert not missing, f"{generation} {scope}: {sorted(missing)} missing after the collector"


def test_the_stable_values_the_collector_derives_are_those_contrib_sets(runs: dict[str, Run]) -> None:
    """In dup mode contrib sets both names from the same data: drop the stable ones, let the
    collector derive them from the old ones, compare."""
    old_names = set().union(*keys_by_scope(runs["old"].request_spans()).values())
    stable_only = set().union(*keys_by_scope(runs["stable"].request_spans()).values()) - old_names
    derived_by_the_agent = {n for n in stable_only if AGENT_DERIVED.match(n)}
    stable_only -= derived_by_the_agent
    dup = runs["dup"].request_spans()
    stripped = [
        Span(
            s.name,
            s.kind,
            {k: v for k, v in s.attributes.items() if k not in stable_only | derived_by_the_agent},
            resource=s.resource,
        )
        for s in dup
    ]
    compared = Counter[str]()
    for original, derived in zip(dup, process(otelcol(), "traces/in", stripped), strict=True):
        for key in stable_only & set(original.attributes):
            if key in ("db.query.text",):  # redaction rewrites it; compare the masked form below
                continue
            assert derived.attributes.get(key) == original.attributes[key], (original.name, key)
            compared[key] += 1
    assert {"db.system.name", "http.request.method", "http.response.status_code", "server.address"} <= set(
        compared
    )


def series(spans: list[Span]) -> Counter[frozenset[tuple[str, str]]]:
    """The span-metrics series the spans count in, without the span name: the stable DB span
    name is the query summary ("SELECT hms_patient"), the old one the first keyword."""
    counted: Counter[frozenset[tuple[str, str]]] = Counter()
    for span in spans:
        labels = spanmetrics_labels(spanmetrics_connector(), span)
        labels.pop("span_name")
        counted[frozenset(labels.items())] += 1
    return counted


def test_span_metrics_series_are_the_same_whatever_the_generation(runs: dict[str, Run]) -> None:
    reference = series(runs["stable"].collected())
    labels = {name for s in reference for name, _ in s}
    assert {"http_route", "http_request_method", "http_response_status_code", "db_system_name"} <= labels
    for generation in ("old", "dup"):
        assert series(runs[generation].collected()) == reference, generation


def decisions(run: Run) -> list[tuple[str, frozenset[str]]]:
    """(request path, the deterministic policies that keep its trace) for each request."""
    policies = [
        p for p in otelcol()["processors"]["tail_sampling"]["policies"] if p["type"] not in ("latency",)
    ]  # latency: timing, not names
    by_trace = traces(run.collected())
    return [
        (path.split("?")[0], frozenset(matching_policies(policies, by_trace[s.trace_id])))
        for path, s in zip(PATHS, run.requests(), strict=True)
    ]


def test_tail_sampling_keeps_the_same_traces_whatever_the_generation(runs: dict[str, Run]) -> None:
    reference = decisions(runs["stable"])
    kept = {path for path, matched in reference if matched}
    assert {"/encounters/", "/boom/"} <= kept, reference  # an N+1 finding, an error
    assert not dict(reference)["/patients/optimized/"], "the optimized page has no finding"
    for generation in ("old", "dup"):
        assert decisions(runs[generation]) == reference, generation


def test_no_query_parameter_reaches_a_backend(runs: dict[str, Run]) -> None:
    parameter = re.compile(r"^db\.(statement\.parameters|query\.parameter\..+)$")
    for generation, run in runs.items():
        before = [k for s in run.request_spans() for k in s.attributes if parameter.match(k)]
        assert before, f"{generation}: HMS_OTEL_CAPTURE_SQL_PARAMETERS=true exported no parameters"
        after = [k for s in run.collected() for k in s.attributes if parameter.match(k)]
        assert after == [], generation


SPAN_METRIC_NAMES = spanmetrics_names()


def _selects(expr: str, labels: dict[str, str]) -> bool:
    """Whether a series with these labels satisfies every matcher of the query on them."""
    for name, op, value in promql_matchers(expr):
        if name not in labels or "$" in value:
            continue
        if op == "=" and labels[name] != value:
            return False
        if op == "!=" and labels[name] == value:
            return False
        if op == "=~" and not re.fullmatch(value, labels[name]):
            return False
        if op == "!~" and re.fullmatch(value, labels[name]):
            return False
    return True


def _metric_labels(points: list[ReceivedDataPoint]) -> dict[str, list[dict[str, str]]]:
    from stack.stackfiles import attribute_doc, prometheus_names

    names: dict[str, list[dict[str, str]]] = {}
    for metric in attribute_doc().metrics.values():
        for prom in prometheus_names(metric.name, metric.kind, metric.unit):
            names[prom] = [
                {label(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in p.attributes.items()}
                for p in points
                if p.name == metric.name
            ]
    return names


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_every_dashboard_and_alert_query_finds_its_labels(runs: dict[str, Run], generation: str) -> None:
    """Each PromQL query of the stack (dashboard, alerts, data-source links, docs) selects series
    this generation's payload makes: the labels it filters or groups by exist on them, and on the
    span metrics, whose labels come from span attributes of either generation, its label matchers
    match some of them. (The agent's hms_* metrics carry the same attributes in every generation;
    which finding kinds a short run produces is not the point here.)"""
    run = runs[generation]
    span_series = [spanmetrics_labels(spanmetrics_connector(), s) for s in run.collected()]
    metric_series = _metric_labels(run.points)
    checked = Counter[str]()
    for query in promql_queries():
        wanted = promql_labels(query.text) - {"le", "job", "instance", "__name__"}
        for metric in promql_metrics(query.text):
            if metric in SPAN_METRIC_NAMES:
                matching = [s for s in span_series if wanted <= set(s) and _selects(query.text, s)]
                checked["span metrics"] += 1
            elif metric_series.get(metric):
                mine = {n for n in wanted if n.startswith(("hms_", "http_"))}
                matching = [s for s in metric_series[metric] if mine <= set(s)]
                checked["hms metrics"] += 1
            else:
                continue  # a metric this short run does not produce (dropped spans, agent errors)
            assert matching, f"{generation}: {query.where}: no {metric} series with {sorted(wanted)} matches"
    assert checked["span metrics"] >= 5 and checked["hms metrics"] >= 5, checked


def test_the_two_tiers_hand_the_backends_what_one_collector_does(runs: dict[str, Run]) -> None:
    """Gateway (collector-config/two-tier/gateway.yaml) then sampling tier (sampler.yaml): the
    spans that reach the span metrics and tail sampling are those of the single collector."""
    for generation, run in runs.items():
        spans = run.request_spans()
        through_tiers = process(sampler(), "traces/in", process(gateway(), "traces", spans))
        assert through_tiers == process(otelcol(), "traces/in", spans), generation
