"""Every attribute and metric name the stack uses is one docs/attributes.md lists.

Sources: collector-config/** (spanmetrics dimensions, tail sampling, redaction, Grafana data
sources, the dashboard, alert rules), docs/stack.md (TraceQL, PromQL, Jaeger tags) and
scripts/verify-stack.sh. OTLP metric names become Prometheus names as the collector's exporter
writes them: dots -> underscores, counters get `_total`, unit `s` gives `_seconds`, histograms
`_bucket`/`_sum`/`_count`; attribute labels dots -> underscores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .stackfiles import (
    CONFIG,
    DASHBOARD,
    PROMETHEUS,
    PROMETHEUS_TWO_TIER,
    STACK_DOC,
    TRACEQL_COMPARISON,
    VERIFY,
    allowed_labels,
    allowed_metrics,
    attribute_doc,
    load_yaml,
    prometheus_base,
    prometheus_names,
    promql_labels,
    promql_matchers,
    promql_metrics,
    promql_queries,
    traceql_queries,
)

SPAN_KINDS = {
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
    "SPAN_KIND_UNSPECIFIED",
}
RESOURCE_NAMES = {"service.name"}  # standard resource attributes a query may use


def test_the_metrics_table_is_consistent_with_the_prometheus_naming_rules() -> None:
    doc = attribute_doc()
    assert doc.metrics, "no metrics table found in docs/attributes.md"
    for metric in doc.metrics.values():
        assert metric.prometheus in prometheus_names(metric.name, metric.kind, metric.unit), metric
    assert prometheus_base("hms.cache.write_ttl", "s") == "hms_cache_write_ttl_seconds"
    assert prometheus_names("hms.findings", "counter", "{finding}") == {"hms_findings_total"}


def test_attributes_doc_has_what_the_stack_relies_on() -> None:
    doc = attribute_doc()
    assert doc.span_types["hms.n_plus_one"] == "bool"
    assert doc.span_types["hms.db.query_count"] == "int"
    assert doc.span_types["hms.findings.count"] == "int"
    assert {"hms.n_plus_one", "hms.cache"} <= doc.event_names
    assert "n_plus_one" in doc.values["hms.finding.kind"]
    assert doc.values["hms.cache.result"] == {"hit", "miss"}


QUERIES = promql_queries()


@pytest.mark.parametrize("query", QUERIES, ids=[q.where for q in QUERIES])
def test_promql_uses_documented_metrics_and_labels(query) -> None:
    metrics = promql_metrics(query.text)
    assert metrics, f"no metric found in {query.text!r}"
    assert metrics <= allowed_metrics(), (
        f"{query.where}: unknown metrics {sorted(metrics - allowed_metrics())}"
    )
    labels = promql_labels(query.text)
    assert labels <= allowed_labels(), f"{query.where}: unknown labels {sorted(labels - allowed_labels())}"


def test_promql_label_values_are_documented_values() -> None:
    doc = attribute_doc()
    enumerated = {
        "hms_finding_kind": doc.values["hms.finding.kind"],
        "hms_cache_result": doc.values["hms.cache.result"],
        "hms_reason": doc.values["hms.reason"],
        "span_kind": SPAN_KINDS,
        "hms_n_plus_one": {"true", "false"},
    }
    jobs = {
        job["job_name"]
        for path in (PROMETHEUS, PROMETHEUS_TWO_TIER)
        for job in load_yaml(path)["scrape_configs"]
    }
    checked = 0
    for query in QUERIES:
        for label, op, value in promql_matchers(query.text):
            if op == "=" and label in enumerated:
                assert value in enumerated[label], f"{query.where}: {label}={value!r}"
                checked += 1
            if label == "job" and op == "=":
                assert value in jobs, f"{query.where}: no scrape job {value!r}"
            if op == "=~" and label in enumerated:
                for alternative in value.split("|"):
                    pattern = re.compile(alternative)
                    assert any(pattern.fullmatch(v) for v in enumerated[label]), f"{query.where}: {value}"
    assert checked >= 5


TRACEQL = traceql_queries()


@pytest.mark.parametrize("query", TRACEQL, ids=[f"{q.where}: {q.text}" for q in TRACEQL])
def test_traceql_uses_documented_names_with_their_types(query) -> None:
    doc = attribute_doc()
    refs = re.findall(r"\b(span|event|resource)\.([A-Za-z_][\w.]*[\w])", query.text)
    assert refs or "event:name" in query.text, query.text
    for scope, name in refs:
        allowed = {"span": doc.span_names, "event": set(doc.event_types), "resource": RESOURCE_NAMES}[scope]
        assert name in allowed, f"{query.where}: {scope}.{name} is not documented for that scope"
    for event_name in re.findall(r'event:name\s*=\s*"([^"]+)"', query.text):
        assert event_name in doc.event_names, f"{query.where}: no finding event {event_name!r}"
    for scope, name, op, literal in TRACEQL_COMPARISON.findall(query.text):
        if scope == "resource":
            continue
        kind = (doc.span_types if scope == "span" else doc.event_types).get(name, "string")
        if kind == "bool":
            assert literal in ("true", "false") and op in ("=", "!="), (
                f"{query.where}: {scope}.{name} is a bool"
            )
        elif kind in ("int", "double"):
            assert re.fullmatch(r"-?\d+(\.\d+)?", literal), f"{query.where}: {scope}.{name} is a number"
        else:
            assert literal.startswith('"'), f"{query.where}: {scope}.{name} is a string"
        if name == "hms.finding.kind" and op == "=":
            assert literal.strip('"') in doc.values["hms.finding.kind"]


def test_docs_give_the_three_traceql_examples_of_the_issue() -> None:
    blocks = {q.text for q in TRACEQL if q.where.endswith("traceql block")}
    assert "{ span.hms.n_plus_one = true }" in blocks
    assert "{ span.hms.db.query_count > 20 }" in blocks
    assert '{ event:name = "hms.n_plus_one" && event.hms.orm.relation = "hms.Encounter.patient" }' in blocks


def test_jaeger_tag_searches_and_attribute_filters_use_documented_names() -> None:
    doc = attribute_doc()
    text = STACK_DOC.read_text() + VERIFY.read_text()
    tags = re.findall(r"`([a-z_][\w.]*)=([^`\s]+)`", STACK_DOC.read_text())
    assert ("hms.n_plus_one", "true") in tags
    filters = re.findall(r"query\.attributes=(\{[^}]*\})", text)
    assert filters
    names = {name for name, _ in tags} | {k for f in filters for k in json.loads(f)}
    assert names <= doc.span_names, sorted(names - doc.span_names)


STACK_FILES = [*sorted(p for p in CONFIG.rglob("*") if p.is_file()), STACK_DOC, VERIFY]


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: str(p.name))
def test_every_hms_name_in_the_stack_files_is_documented(path: Path) -> None:
    """A catch-all over the raw text: `hms.x.y` tokens are attribute, event or OTLP metric names,
    `hms_x_y` tokens are Prometheus metric or label names."""
    doc = attribute_doc()
    text = path.read_text()
    dotted = set(re.findall(r"(?<![\w.])hms\.[a-z_][a-z0-9_.]*[a-z0-9_]", text))
    unknown = dotted - doc.all_names - set(doc.metrics)
    assert not unknown, f"{path.name}: {sorted(unknown)} not in docs/attributes.md"
    underscored = set(re.findall(r"(?<![\w.])hms_[a-z0-9_]+", text)) - {"hms_otel_agent"}
    underscored = {u for u in underscored if not u.startswith(("hms_patient", "hms_encounter"))}  # SQL tables
    prom = allowed_metrics() | allowed_labels()
    assert underscored <= prom, (
        f"{path.name}: {sorted(underscored - prom)} are no Prometheus names of the agent"
    )


def test_the_dashboard_covers_the_issue_panels() -> None:
    exprs = " ".join(q.text for q in QUERIES if q.where.startswith("dashboard panel"))
    assert 'hms_findings_total{hms_finding_kind="n_plus_one"' in exprs
    assert "histogram_quantile(0.95, sum by (le, http_route) (rate(hms_db_queries_per_request_bucket" in exprs
    assert "hms_cache_reads_total" in exprs and "hms_cache_key_pattern" in exprs
    assert "traces_span_metrics_duration_milliseconds_bucket" in exprs
    assert DASHBOARD.exists()
