"""Prometheus: the scrape config, the alert rules (structure, and evaluated by promtool's rule unit
tests when promtool is installed), and the syntax of every PromQL query of the stack."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .stackfiles import (
    ALERTS,
    PROMETHEUS,
    compose,
    load_yaml,
    promql_labels,
    promql_queries,
    unaggregated_selectors,
)

PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yml"


def rules() -> dict[str, dict]:
    return {r["alert"]: r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]}


def test_prometheus_loads_the_mounted_rule_file() -> None:
    config = load_yaml(PROMETHEUS)
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["prometheus"]["volumes"])
    assert config["rule_files"] == [mounts["./collector-config/prometheus/alerts.yml"]]
    assert mounts["./collector-config/prometheus/prometheus.yml"] in " ".join(
        compose()["services"]["prometheus"]["command"]
    )


def test_alerts_of_the_issue_exist_with_thresholds() -> None:
    found = rules()
    n_plus_one = found["HmsNPlusOneFindingsHigh"]["expr"]
    assert 'hms_findings_total{hms_finding_kind="n_plus_one"}' in n_plus_one
    assert "by (job, http_route)" in n_plus_one and re.search(r"\)\s*>\s*[\d.]+\s*$", n_plus_one)
    cache = found["HmsCacheHitRatioLow"]["expr"]
    assert 'hms_cache_reads_total{hms_cache_result="hit"}' in cache
    assert "by (job, hms_cache_key_pattern)" in cache and re.search(r"<\s*0\.\d+", cache)


def test_every_alert_is_complete_and_its_templates_use_kept_labels() -> None:
    for name, rule in rules().items():
        assert re.fullmatch(r"Hms[A-Z]\w+", name)
        assert rule["for"] and rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        grouping = promql_labels(rule["expr"])
        for annotation in rule["annotations"].values():
            for used in re.findall(r"\$labels\.(\w+)", annotation):
                assert used in grouping, f"{name}: $labels.{used} is aggregated away"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_promtool_checks_the_rules_and_the_config(tmp_path: Path) -> None:
    tool = promtool()
    result = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(PROMETHEUS)
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [tool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_evaluates_the_alerts_on_sample_series() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(PROMTOOL_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$route": ".*", "$__tags": ""}


def test_promtool_parses_every_promql_query_of_the_stack(tmp_path: Path) -> None:
    tool = promtool()
    queries = [q for q in promql_queries() if not q.where.startswith("alerts.yml")]
    recording = []
    for i, query in enumerate(queries):
        expr = query.text
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        # Grafana's label_values(selector, label) is no PromQL: check its selector
        expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr.strip())
        recording.append({"record": f"stack:query_{i}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "stack-queries", "rules": recording}]}))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_adds_up_the_series_of_several_collectors() -> None:
    """Span metrics carry collector_instance_id (the connector's default since collector 0.152),
    and with two tiers (docs/stack.md) every sampling-tier collector counts its share of the
    spans: each query must sum over collectors (and over the workers' instance label)."""
    checked = 0
    for query in promql_queries():
        if query.text.strip().startswith("label_values("):
            continue  # lists label values: duplicates across collectors collapse
        assert unaggregated_selectors(query.text) == [], f"{query.where}: {query.text}"
        checked += 1
    assert checked >= 20
    assert unaggregated_selectors('rate(traces_span_metrics_calls_total{span_kind="SPAN_KIND_SERVER"}[5m])')
    assert unaggregated_selectors("sum by (collector_instance_id) (rate(hms_findings_total[5m]))")
