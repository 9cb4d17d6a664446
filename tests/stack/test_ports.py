"""Ports and addresses agree across compose, the collector, Jaeger, Tempo, Prometheus, Grafana,
the Dockerfile and scripts/verify-stack.sh; everything listens on 0.0.0.0 inside its container."""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit

from .stackfiles import (
    DATASOURCES,
    DOCKERFILE,
    JAEGER,
    PROMETHEUS,
    TEMPO,
    VERIFY,
    compose,
    host_port,
    load_yaml,
    otelcol,
    published,
)


def services() -> dict:
    return compose()["services"]


def jaeger() -> dict:
    return load_yaml(JAEGER)


def tempo() -> dict:
    return load_yaml(TEMPO)


def collector_receiver_ports() -> dict[str, int]:
    return {
        proto: host_port(spec["endpoint"])[1]
        for proto, spec in otelcol()["receivers"]["otlp"]["protocols"].items()
    }


def jaeger_otlp_ports() -> dict[str, int]:
    return {
        proto: host_port(spec["endpoint"])[1]
        for proto, spec in jaeger()["receivers"]["otlp"]["protocols"].items()
    }


def tempo_otlp_ports() -> dict[str, int]:
    return {
        proto: host_port(spec["endpoint"])[1]
        for proto, spec in tempo()["distributor"]["receivers"]["otlp"]["protocols"].items()
    }


def listen_ports() -> dict[str, set[int]]:
    """What each service listens on, as its own configuration says."""
    app_cmd = shlex.split(re.search(r"^CMD \[(.*)\]$", DOCKERFILE.read_text(), flags=re.M).group(1))
    gunicorn = app_cmd[-1]
    bind = re.search(r"-b (\S+)", gunicorn).group(1)
    assert host_port(bind)[0] == "0.0.0.0"
    telemetry = otelcol()["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    return {
        "otel-collector": set(collector_receiver_ports().values())
        | {host_port(otelcol()["exporters"]["prometheus"]["endpoint"])[1], telemetry["port"]},
        "jaeger": set(jaeger_otlp_ports().values())
        | {host_port(jaeger()["extensions"]["jaeger_query"][k]["endpoint"])[1] for k in ("http", "grpc")},
        "tempo": set(tempo_otlp_ports().values()) | {tempo()["server"]["http_listen_port"]},
        "prometheus": {9090},
        "grafana": {3000},
        "app": {host_port(bind)[1]},
        "postgres": {5432},
        "redis": {6379},
    }


def test_every_in_container_listener_binds_every_interface() -> None:
    addresses = [spec["endpoint"] for spec in otelcol()["receivers"]["otlp"]["protocols"].values()]
    addresses.append(otelcol()["exporters"]["prometheus"]["endpoint"])
    telemetry = otelcol()["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    addresses.append(f"{telemetry['host']}:{telemetry['port']}")
    addresses += [spec["endpoint"] for spec in jaeger()["receivers"]["otlp"]["protocols"].values()]
    addresses += [jaeger()["extensions"]["jaeger_query"][k]["endpoint"] for k in ("http", "grpc")]
    addresses += [
        spec["endpoint"] for spec in tempo()["distributor"]["receivers"]["otlp"]["protocols"].values()
    ]
    addresses.append(f"{tempo()['server']['http_listen_address']}:{tempo()['server']['http_listen_port']}")
    for address in addresses:
        assert host_port(address)[0] == "0.0.0.0", address
    prometheus_flags = " ".join(services()["prometheus"]["command"])
    assert "--web.listen-address" not in prometheus_flags  # default 0.0.0.0:9090
    assert "GF_SERVER_HTTP_PORT" not in (services()["grafana"].get("environment") or {})  # default 3000


def test_published_ports_are_ports_the_services_listen_on() -> None:
    ports = listen_ports()
    for name in services():
        for container_port in published(name):
            assert container_port in ports[name], (
                f"{name} publishes {container_port} but listens on {ports[name]}"
            )


def test_healthchecks_probe_the_port_the_service_listens_on() -> None:
    ports = listen_ports()
    for name, service in services().items():
        test = " ".join((service.get("healthcheck") or {}).get("test", []))
        for url in re.findall(r"https?://[^\s'\"]+", test):
            assert host_port(url)[1] in ports[name], f"{name} healthcheck probes {url}"


def test_the_app_exports_to_a_collector_receiver_with_the_matching_protocol() -> None:
    env = services()["app"]["environment"]
    host, port = host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == "otel-collector" and host in services()
    receivers = collector_receiver_ports()
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert port == receivers["grpc" if protocol == "grpc" else "http"]


def test_the_app_reaches_postgres_and_redis_as_compose_configures_them() -> None:
    env = services()["app"]["environment"]
    db = urlsplit(env["DATABASE_URL"])
    pg = services()["postgres"]["environment"]
    assert (db.hostname, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)


def test_collector_exporters_reach_jaeger_and_tempo_otlp_grpc_receivers() -> None:
    targets = {}
    for exporter_id, spec in otelcol()["exporters"].items():
        if exporter_id.split("/")[0] in ("otlp", "otlp_grpc"):
            host, port = host_port(spec["endpoint"])
            assert host in services(), f"{exporter_id}: {host} is not a compose service"
            targets[host] = port
    assert targets == {"jaeger": jaeger_otlp_ports()["grpc"], "tempo": tempo_otlp_ports()["grpc"]}


def test_prometheus_scrapes_what_the_collector_and_tempo_expose() -> None:
    scrape = {job["job_name"]: job for job in load_yaml(PROMETHEUS)["scrape_configs"]}
    targets = {t for job in scrape.values() for sc in job["static_configs"] for t in sc["targets"]}
    collector_metrics = host_port(otelcol()["exporters"]["prometheus"]["endpoint"])[1]
    telemetry = otelcol()["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert f"otel-collector:{collector_metrics}" in targets
    assert f"otel-collector:{telemetry['port']}" in targets
    assert f"tempo:{tempo()['server']['http_listen_port']}" in targets
    for target in targets:
        host, port = host_port(target)
        if host != "localhost":
            assert host in services() and port in listen_ports()[host], target
    # the exporter sets job/instance from service.name/service.instance.id: keep them
    (exporter_job,) = [
        j
        for j in scrape.values()
        if f"otel-collector:{collector_metrics}" in j["static_configs"][0]["targets"]
    ]
    assert exporter_job.get("honor_labels") is True


def test_tempo_remote_writes_to_prometheus_with_the_receiver_enabled() -> None:
    (remote,) = tempo()["metrics_generator"]["storage"]["remote_write"]
    url = urlsplit(remote["url"])
    assert (url.hostname, url.port, url.path) == ("prometheus", 9090, "/api/v1/write")
    assert "--web.enable-remote-write-receiver" in services()["prometheus"]["command"]


def test_grafana_data_sources_point_at_the_services() -> None:
    urls = {ds["uid"]: ds["url"] for ds in load_yaml(DATASOURCES)["datasources"]}
    expected = {
        "prometheus": ("prometheus", 9090),
        "tempo": ("tempo", tempo()["server"]["http_listen_port"]),
        "jaeger": ("jaeger", host_port(jaeger()["extensions"]["jaeger_query"]["http"]["endpoint"])[1]),
    }
    assert {uid: host_port(url) for uid, url in urls.items()} == expected


def test_verify_script_uses_the_published_ports() -> None:
    script = VERIFY.read_text()
    expected = {
        "APP": ("app", 8000),
        "JAEGER": ("jaeger", 16686),
        "TEMPO": ("tempo", 3200),
        "PROMETHEUS": ("prometheus", 9090),
        "GRAFANA": ("grafana", 3000),
    }
    for var, (service, container_port) in expected.items():
        port = int(re.search(rf'^{var}="http://\$HOST:(\d+)"$', script, flags=re.M).group(1))
        assert published(service)[container_port][1] == port, var
