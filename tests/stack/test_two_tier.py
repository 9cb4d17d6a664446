"""The two-tier collector layout: collector-config/two-tier/ (gateway, sampling tier, Prometheus)
and docker-compose.two-tier.yml, checked against each other, against the single-collector
configuration they share their settings with, and against the compose model they run in (the
generic checks of every collector config and of the merged compose model are in
test_collector.py and test_compose.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .ottl import Event, Span
from .pipeline import ctype, process
from .stackfiles import (
    ALERTS,
    GATEWAY,
    PROMETHEUS,
    PROMETHEUS_TWO_TIER,
    compose_two_tier,
    gateway,
    host_port,
    load_yaml,
    otelcol,
    published,
    sampler,
)
from .test_collector import check_span_metrics_before_tail_sampling
from .test_prometheus import promtool

LOAD_BALANCING = ("load_balancing", "loadbalancing")  # the type, and its alias before 0.154
RESOLVERS = ("static", "dns", "k8s", "aws_cloud_map")
STATEFUL_PROCESSORS = ("tail_sampling", "groupbytrace")


def services() -> dict[str, Any]:
    return compose_two_tier()["services"]


def load_balancer() -> dict[str, Any]:
    (exporter,) = [e for e in gateway()["exporters"] if ctype(e) in LOAD_BALANCING]
    return gateway()["exporters"][exporter]


def sampler_grpc_port() -> int:
    return host_port(sampler()["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1]


def test_the_gateway_sends_every_span_to_the_sampling_tier_by_trace_id() -> None:
    pipelines = gateway()["service"]["pipelines"]
    traces = [pid for pid in pipelines if pid.split("/")[0] == "traces"]
    assert len(traces) == 1
    assert [ctype(e) for e in pipelines[traces[0]]["exporters"]] in ([t] for t in LOAD_BALANCING)
    config = load_balancer()
    assert config["routing_key"] == "traceID", "tail sampling needs every span of a trace in one place"
    assert not config.get("routing_attributes")
    otlp = config["protocol"]["otlp"]
    assert "endpoint" not in otlp, "the resolver gives the endpoints"
    assert (
        otlp["tls"]["insecure"] is True and "tls" not in sampler()["receivers"]["otlp"]["protocols"]["grpc"]
    )


def test_the_gateway_resolves_the_sampling_tier_by_dns_to_its_otlp_port() -> None:
    resolver = load_balancer()["resolver"]
    assert [r for r in RESOLVERS if r in resolver] == ["dns"], "one resolver"
    dns = resolver["dns"]
    assert isinstance(dns["port"], str), "the resolver's port is a string"
    assert int(dns["port"]) == sampler_grpc_port()
    sampling_tier = services()[dns["hostname"]]
    assert sampling_tier["volumes"][0].startswith("./collector-config/two-tier/sampler.yaml:")
    assert sampling_tier["deploy"]["replicas"] >= 2, "the demo shows traces split over replicas"
    assert not published(dns["hostname"], compose_two_tier()), "only the gateways talk to the sampling tier"


def test_the_static_resolver_alternative_in_the_comments_names_the_same_port() -> None:
    text = GATEWAY.read_text()
    static = yaml.safe_load(
        "\n".join(
            line.split("#", 1)[1][1:]
            for line in text.splitlines()
            if line.strip().startswith("#   static:") or line.strip().startswith("#     hostnames:")
        )
    )
    for hostname in static["static"]["hostnames"]:
        assert host_port(hostname)[1] == sampler_grpc_port()


def test_the_gateway_holds_no_trace_state_and_computes_no_span_metrics() -> None:
    assert not gateway().get("connectors")
    for processor in gateway()["processors"]:
        assert ctype(processor) not in STATEFUL_PROCESSORS
    traces = gateway()["service"]["pipelines"]["traces"]["processors"]
    assert traces[:4] == [
        "memory_limiter",
        "transform/redact",
        "transform/semconv",
        "transform/semconv_events",
    ], "masked and renamed before the spans leave the gateway"


def test_the_sampling_tier_computes_span_metrics_from_every_span_before_tail_sampling() -> None:
    check_span_metrics_before_tail_sampling(sampler())
    assert "otlp" not in sampler()["service"]["pipelines"]["metrics"]["receivers"]


def test_the_tiers_run_the_single_collectors_settings() -> None:
    single = otelcol()
    for name in (
        "transform/redact",
        "transform/semconv",
        "transform/semconv_events",
        "transform/instance",
        "memory_limiter",
        "batch",
    ):
        assert gateway()["processors"][name] == single["processors"][name], name
    for name in ("tail_sampling", "memory_limiter", "batch"):
        assert sampler()["processors"][name] == single["processors"][name], name
    assert sampler()["connectors"] == single["connectors"]
    for name in ("otlp_grpc/jaeger", "otlp_grpc/tempo"):
        assert sampler()["exporters"][name] == single["exporters"][name]
    assert gateway()["receivers"] == single["receivers"], "apps send to the gateway as to one collector"
    assert (
        gateway()["service"]["telemetry"]
        == sampler()["service"]["telemetry"]
        == single["service"]["telemetry"]
    )
    assert gateway()["service"]["pipelines"]["metrics"] == single["service"]["pipelines"]["metrics"] | {
        "receivers": ["otlp"]
    }


def test_the_chain_of_tiers_transforms_spans_as_the_single_collector_does() -> None:
    spans = [
        Span(
            "SELECT",
            "SPAN_KIND_CLIENT",
            {"db.system": "postgresql", "db.statement": "SELECT * FROM t WHERE a = 'x'", "db.name": "hms"},
        ),
        Span(
            "GET",
            "SPAN_KIND_SERVER",
            {"http.method": "GET", "http.target": "/p/?q=1", "hms.cache.key": "patient:7"},
            events=[Event("hms.db.connect", {"db.system": "postgresql"})],
        ),
    ]
    through_tiers = process(sampler(), "traces/in", process(gateway(), "traces", spans))
    assert through_tiers == process(otelcol(), "traces/in", spans)
    assert through_tiers[0].attributes["db.query.text"] == "SELECT * FROM t WHERE a = ?"


def test_metrics_of_several_collectors_never_share_a_series() -> None:
    """Prometheus scrapes every gateway and every sampling-tier replica: the span metrics carry
    the connector's collector.instance.id (on by default since 0.152: not excluded here), the
    gateways' series a collector_instance_id label of their own."""
    assert "collector.instance.id" not in (
        sampler()["connectors"]["spanmetrics"].get("exclude_dimensions") or []
    )
    assert "const_labels" not in sampler()["exporters"]["prometheus"], "would clash with the connector's"
    labels = gateway()["exporters"]["prometheus"]["const_labels"]
    assert labels == {"collector_instance_id": "${env:HOSTNAME}"}


def test_compose_runs_the_gateway_in_place_of_the_single_collector() -> None:
    collector = services()["otel-collector"]
    mounts = dict(v.split(":")[:2] for v in collector["volumes"])
    assert mounts == {"./collector-config/two-tier/gateway.yaml": "/etc/otelcol-contrib/config.yaml"}
    assert collector["command"] == ["--config=/etc/otelcol-contrib/config.yaml"]
    assert collector["depends_on"]["otel-sampler"]["condition"] == "service_started"
    sampling_tier = services()["otel-sampler"]
    assert sampling_tier["image"] == collector["image"]
    assert sampling_tier["command"] == collector["command"]
    assert {"jaeger", "tempo"} <= set(sampling_tier["depends_on"])
    for exporter in ("otlp_grpc/jaeger", "otlp_grpc/tempo"):
        host = host_port(sampler()["exporters"][exporter]["endpoint"])[0]
        assert host in services()


def test_the_gateway_listens_where_the_single_collector_did() -> None:
    """docker-compose.yml publishes the collector's ports, Prometheus scrapes them: same ports."""

    def ports(config: dict[str, Any]) -> set[int]:
        found = {host_port(s["endpoint"])[1] for s in config["receivers"]["otlp"]["protocols"].values()}
        found.add(host_port(config["exporters"]["prometheus"]["endpoint"])[1])
        reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
        return found | {reader["port"]}

    assert ports(gateway()) == ports(otelcol())


def scrape_jobs(path: Path) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(path)["scrape_configs"]}


def test_prometheus_scrapes_both_tiers_and_every_sampling_replica() -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services()["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./collector-config/two-tier/prometheus.yml"
    jobs = scrape_jobs(PROMETHEUS_TWO_TIER)
    single = scrape_jobs(PROMETHEUS)
    for name, job in single.items():
        assert jobs[name] == job, f"{name}: as with one collector (the gateway keeps its name and ports)"
    sampler_exporter = host_port(sampler()["exporters"]["prometheus"]["endpoint"])[1]
    reader = sampler()["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    dns = load_balancer()["resolver"]["dns"]["hostname"]
    found = {}
    for job in jobs.values():
        for sd in job.get("dns_sd_configs") or []:
            assert sd["names"] == [dns] and sd["type"] == "A", "every replica, as the gateway finds them"
            found[sd["port"]] = job
    assert set(found) == {sampler_exporter, reader["port"]}
    assert found[sampler_exporter].get("honor_labels") is True
    assert load_yaml(PROMETHEUS_TWO_TIER)["rule_files"] == load_yaml(PROMETHEUS)["rule_files"]


def test_promtool_checks_the_two_tier_prometheus_config(tmp_path: Path) -> None:
    import subprocess

    config = load_yaml(PROMETHEUS_TWO_TIER)
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ["gateway.yaml", "sampler.yaml"])
def test_the_configs_name_the_pinned_collector_version(path: str) -> None:
    image = services()["otel-sampler"]["image"]
    version = image.rpartition(":")[2]
    first_line = (GATEWAY.parent / path).read_text().splitlines()[0]
    assert f"contrib {version}" in first_line
