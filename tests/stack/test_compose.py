"""docker-compose.yml, alone and with docker-compose.two-tier.yml merged in (the application model
`docker compose -f docker-compose.yml -f docker-compose.two-tier.yml` runs): schema, pinned
images, healthchecks, dependencies, volumes, ports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .stackfiles import COMPOSE, COMPOSE_TWO_TIER, ROOT, STACK_DOC, compose, compose_two_tier, published

# Services whose image has no shell and no HTTP client, so no healthcheck command can run in it.
NO_HEALTHCHECK = {
    "otel-collector": "otel/opentelemetry-collector-contrib is built FROM scratch",
    "otel-sampler": "otel/opentelemetry-collector-contrib is built FROM scratch",
}

EXPECTED_IMAGES = {
    "otel-collector": "otel/opentelemetry-collector-contrib:0.155.0",
    "otel-sampler": "otel/opentelemetry-collector-contrib:0.155.0",
    "jaeger": "jaegertracing/jaeger:2.20.0",
    "tempo": "grafana/tempo:2.10.7",
    "prometheus": "prom/prometheus:v3.5.0",
    "grafana": "grafana/grafana:12.4.3",
}

# container port -> service, for the ports users are told about
DOCUMENTED_PORTS = {
    16686: "jaeger",
    3000: "grafana",
    4317: "otel-collector",
    4318: "otel-collector",
    3200: "tempo",
}


MODELS = {"docker-compose.yml": compose, "with docker-compose.two-tier.yml": compose_two_tier}


@pytest.fixture(params=list(MODELS))
def model(request: pytest.FixtureRequest) -> dict:
    return MODELS[request.param]()


def services(model: dict | None = None) -> dict:
    return (model or compose())["services"]


def check_jsonschema() -> str:
    candidate = Path(sys.executable).parent / "check-jsonschema"
    found = str(candidate) if candidate.exists() else shutil.which("check-jsonschema")
    if not found:
        pytest.fail("check-jsonschema is not installed (it is in the test extra)")
    return found


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.two-tier.yml", "merged"])
def test_compose_files_validate_against_the_compose_spec_schema(name: str, tmp_path: Path) -> None:
    path = {"docker-compose.yml": COMPOSE, "docker-compose.two-tier.yml": COMPOSE_TWO_TIER}.get(name)
    if path is None:
        path = tmp_path / "merged.yml"
        path.write_text(yaml.safe_dump(compose_two_tier()))
    result = subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_image_is_pinned_to_a_release(model: dict) -> None:
    for name, service in services(model).items():
        if "build" in service:
            assert service.get("image", "").endswith(":local"), f"{name}: a built image gets a local tag"
            continue
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+(\.\d+)?", tag), f"{name}: {image} is not pinned"
    for name, image in EXPECTED_IMAGES.items():
        if name in services(model):  # otel-sampler: two tiers only
            assert services(model)[name]["image"] == image


def test_postgres_15_and_redis_7(model: dict) -> None:
    assert re.fullmatch(r"postgres:15\.\d+", services(model)["postgres"]["image"])
    assert re.fullmatch(r"redis:7\.\d+\.\d+", services(model)["redis"]["image"])


def test_every_service_has_a_healthcheck_unless_its_image_cannot_run_one(model: dict) -> None:
    for name, service in services(model).items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in service, (
                f"{name}: {NO_HEALTHCHECK[name]}: a healthcheck could never pass"
            )
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"


def test_http_healthchecks_probe_the_service_on_ipv4_loopback(model: dict) -> None:
    # busybox wget resolves localhost to ::1 first, where these services do not listen
    for name, service in services(model).items():
        test = " ".join((service.get("healthcheck") or {}).get("test", []))
        if "http" in test:
            assert "127.0.0.1" in test and "localhost" not in test, name


def test_depends_on_uses_conditions_that_can_be_met(model: dict) -> None:
    all_services = services(model)
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form with conditions"
        for target, spec in depends.items():
            assert target in all_services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], f"{name} waits for {target} to be healthy"
            elif target not in NO_HEALTHCHECK:
                pytest.fail(f"{name} -> {target}: {target} has a healthcheck, wait for service_healthy")


def test_depends_on_has_no_cycle_and_orders_the_pipeline(model: dict) -> None:
    graph = {n: set(s.get("depends_on") or {}) for n, s in services(model).items()}
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"dependency cycle: {' -> '.join((*path, node))}"
        if node in seen:
            return
        for nxt in graph[node]:
            visit(nxt, (*path, node))
        seen.add(node)

    for node in graph:
        visit(node, ())
    assert {"postgres", "redis", "otel-collector"} <= graph["app"]
    assert {"jaeger", "tempo"} <= graph["otel-collector"]
    assert "prometheus" in graph["tempo"]  # its metrics generator remote-writes into Prometheus
    assert {"prometheus", "tempo", "jaeger"} <= graph["grafana"]


def test_state_lives_in_named_volumes_and_bind_mounts_exist(model: dict) -> None:
    declared = set(model.get("volumes") or {})
    used = set()
    for name, service in services(model).items():
        for volume in service.get("volumes") or []:
            assert isinstance(volume, str)
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name}: bind mount {source} does not exist"
                assert volume.endswith(":ro"), f"{name}: configuration is mounted read-only"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"unused volumes: {declared - used}"
    for stateful, path in {
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        "tempo": "/var/tempo",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }.items():
        mounts = dict(v.split(":")[:2][::-1] for v in services(model)[stateful]["volumes"])
        assert mounts.get(path) in declared, f"{stateful}: {path} is not a named volume"


def test_documented_ports_are_published_and_bound_to_the_configurable_address(model: dict) -> None:
    for port, service in DOCUMENTED_PORTS.items():
        assert published(service, model).get(port, (None, None))[1] == port, (
            f"{service} does not publish {port}"
        )
    for name in services(model):
        for container, (address, host) in published(name, model).items():
            assert address == "${HMS_STACK_BIND:-127.0.0.1}", f"{name}:{container} ignores HMS_STACK_BIND"
            assert host == container


def test_the_ports_table_of_docs_stack_md_matches_compose() -> None:
    rows = re.findall(r"^\| (\d+) \| ([\w-]+) \|", STACK_DOC.read_text(), flags=re.M)
    documented = {int(port): service for port, service in rows}
    actual = {port: name for name in services() for port in published(name)}
    assert documented == actual
