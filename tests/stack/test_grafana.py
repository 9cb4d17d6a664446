"""Grafana provisioning: data sources with fixed uids and trace-to-metrics links, the dashboard
provider, and the "HMS performance hints" dashboard (parses, uses only provisioned uids)."""

from __future__ import annotations

import json
from typing import Any

from .stackfiles import (
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DASHBOARDS,
    DATASOURCES,
    compose,
    dashboard,
    load_yaml,
)

UIDS = {"prometheus": "prometheus", "tempo": "tempo", "jaeger": "jaeger"}  # uid -> type


def datasources() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in load_yaml(DATASOURCES)["datasources"]}


def test_data_sources_have_fixed_uids() -> None:
    provisioned = datasources()
    assert {uid: ds["type"] for uid, ds in provisioned.items()} == UIDS
    assert [uid for uid, ds in provisioned.items() if ds.get("isDefault")] == ["prometheus"]
    for ds in provisioned.values():
        assert ds["access"] == "proxy"


def test_trace_data_sources_link_to_prometheus_without_logs() -> None:
    for uid in ("tempo", "jaeger"):
        data = datasources()[uid]["jsonData"]
        links = data["tracesToMetrics"]
        assert links["datasourceUid"] == "prometheus"
        assert links["queries"] and all("$$__tags" in q["query"] for q in links["queries"])
        assert {t["key"]: t["value"] for t in links["tags"]} == {"http.route": "http_route"}
        assert not any(key.startswith("tracesToLogs") for key in data), f"{uid}: there is no log store"
    assert datasources()["tempo"]["jsonData"]["serviceMap"]["datasourceUid"] == "prometheus"


def test_every_data_source_reference_in_provisioning_is_provisioned() -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k in ("datasourceUid", "uid") and isinstance(v, str)]
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    assert set(refs(load_yaml(DATASOURCES))) <= set(UIDS)


def test_dashboard_provider_loads_the_mounted_dashboards() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./collector-config/grafana/dashboards"] == provider["options"]["path"]
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_every_dashboard_file_parses() -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files == [DASHBOARD]
    for path in files:
        json.loads(path.read_text())


def all_datasource_refs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [r for v in node.values() for r in all_datasource_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_datasource_refs(v)]
    return []


def test_dashboard_uses_only_provisioned_datasource_uids() -> None:
    refs = all_datasource_refs(dashboard())
    assert refs
    for ref in refs:
        assert ref.get("uid") in UIDS, ref
        assert ref.get("type") == UIDS[ref["uid"]], ref
    text = json.dumps(dashboard())
    assert "${DS_" not in text and "__inputs" not in dashboard(), "no import-time data source inputs"


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def test_dashboard_identity_and_layout() -> None:
    d = dashboard()
    assert d["title"] == "HMS performance hints"
    assert d["uid"] == "hms-performance-hints"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no query"


def test_dashboard_has_a_traceql_table_of_n_plus_one_traces() -> None:
    tables = [p for p in panels() if p["type"] == "table" and p["datasource"]["uid"] == "tempo"]
    assert len(tables) == 1
    (target,) = tables[0]["targets"]
    assert target["queryType"] == "traceql"
    assert target["query"] == "{ span.hms.n_plus_one = true }"
    assert target["tableType"] == "traces"


def test_dashboard_trace_panel_follows_the_trace_id_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["trace_id"]["type"] == "textbox"
    (trace_panel,) = [p for p in panels() if p["type"] == "traces"]
    assert trace_panel["datasource"]["uid"] == "tempo"
    (target,) = trace_panel["targets"]
    assert target["query"] in ("$trace_id", "${trace_id}")
    # the table's trace ids fill the variable
    links = json.dumps([p["fieldConfig"] for p in panels() if p["type"] == "table"])
    assert "var-trace_id=${__value.raw}" in links
    assert f"/d/{dashboard()['uid']}/" in links


def test_dashboard_route_variable_comes_from_the_span_metrics() -> None:
    route = {v["name"]: v for v in dashboard()["templating"]["list"]}["route"]
    assert route["datasource"]["uid"] == "prometheus"
    assert route["includeAll"] and route["allValue"] == ".*"
    for panel in panels():
        for target in panel["targets"]:
            expr = target.get("expr", "")
            if "http_route" in expr and "hms_cache_reads_total" not in expr and "hms_agent" not in expr:
                assert 'http_route=~"$route"' in expr, panel["title"]
