"""scripts/verify-stack.sh, run without Docker: against a fake `docker` (records its calls) and a
fake `curl` (answers with canned Jaeger, Tempo and Prometheus responses), plus its JSON checks
run on sample responses."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .stackfiles import ROOT, VERIFY

BASH = shutil.which("bash") or "/bin/bash"


def embedded_python() -> dict[str, str]:
    text = VERIFY.read_text()
    return dict(re.findall(r"read -r -d '' (\w+) <<'PY' \|\| true\n(.*?)\nPY\n", text, flags=re.S))


def run_check(name: str, payload: object, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", embedded_python()[name], *args],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=30,
    )


def jaeger_response(value: dict) -> dict:
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "GET encounters/",
        "attributes": [
            {"key": "http.route", "value": {"stringValue": "encounters/"}},
            {"key": "hms.n_plus_one", "value": value},
        ],
    }
    return {"result": {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": [span]}]}]}}


def test_script_is_executable_and_parses() -> None:
    assert os.access(VERIFY, os.X_OK)
    result = subprocess.run([BASH, "-n", str(VERIFY)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_shellcheck_if_available() -> None:
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(
        [shellcheck, "-S", "warning", str(VERIFY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_jaeger_check_wants_a_boolean_n_plus_one() -> None:
    ok = run_check("JAEGER_CHECK", jaeger_response({"boolValue": True}))
    assert ok.returncode == 0 and "5b8efff798038103d269b633813fc60c" in ok.stdout
    as_string = run_check("JAEGER_CHECK", jaeger_response({"stringValue": "true"}))
    assert as_string.returncode == 1 and "not a boolean" in as_string.stderr
    assert run_check("JAEGER_CHECK", jaeger_response({"boolValue": False})).returncode == 1
    assert run_check("JAEGER_CHECK", {"result": {}}).returncode == 1


def test_tempo_and_prometheus_checks() -> None:
    assert run_check("TEMPO_CHECK", {"traces": [{"traceID": "abc"}], "metrics": {}}).returncode == 0
    assert run_check("TEMPO_CHECK", {"traces": [], "metrics": {}}).returncode == 1
    vector = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "3"]}]},
    }
    assert run_check("PROM_CHECK", vector).returncode == 0
    vector["data"]["result"][0]["value"][1] = "0"
    assert run_check("PROM_CHECK", vector).returncode == 1
    assert run_check("PROM_CHECK", {"status": "success", "data": {"result": []}}).returncode == 1


def test_time_window_is_rfc3339_and_unix_seconds() -> None:
    out = subprocess.run(
        [sys.executable, "-c", embedded_python()["TIMES"], "30"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out[0]) and re.fullmatch(r"\d{4}-.*Z", out[1])
    assert int(out[3]) - int(out[2]) == 31 * 60


def test_demo_traffic_uses_routes_of_the_sample_app() -> None:
    urls = (ROOT / "hms_otel_agent" / "sample" / "urls.py").read_text()
    routes = {"/" + r for r in re.findall(r'path\("([^"<]*)"', urls)}
    script = VERIFY.read_text()
    paths = re.findall(
        r"(/[\w/-]+/)", " ".join(re.findall(r"^(?:NAIVE|OPTIMIZED)=\((.*?)\)", script, re.M | re.S))
    )
    assert paths and set(paths) <= routes, set(paths) - routes
    assert {"/encounters/", "/patients/", "/patients/cached/", "/stats/"} <= set(paths)


# --- the whole script against fake docker and curl ---------------------------------------------

FAKE_DOCKER = """#!/bin/sh
[ -n "$COMPOSE_FILE" ] && echo "COMPOSE_FILE=$COMPOSE_FILE" >> "$FAKE_LOG"
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "compose up"*) exit "${FAKE_UP_STATUS:-0}" ;;
esac
exit 0
"""

FAKE_CURL = """#!PYTHON
import json, os, sys
args = sys.argv[1:]
url = next(a for a in args if a.startswith("http"))
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write("curl " + " ".join(args) + "\\n")
if "-o" in args:
    sys.exit(0)
responses = json.load(open(os.environ["FAKE_RESPONSES"]))
for path, body in responses.items():
    if path in url:
        print(json.dumps(body))
        sys.exit(0)
sys.exit(22)
"""


def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL.replace("PYTHON", sys.executable))):
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    # the real interpreter, not a pyenv shim that needs more of PATH
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    for tool in ("dirname", "sed", "sleep", "seq"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def run_script(
    tmp_path: Path, responses: dict, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = fake_bin(tmp_path)
    log = tmp_path / "calls.log"
    log.touch()
    (tmp_path / "responses.json").write_text(json.dumps(responses))
    environ = {
        "PATH": str(bin_dir),
        "FAKE_LOG": str(log),
        "FAKE_RESPONSES": str(tmp_path / "responses.json"),
        "HMS_VERIFY_TIMEOUT": "1",
        "HMS_VERIFY_READY_TIMEOUT": "1",
        "HMS_VERIFY_ROUNDS": "1",
        "HOME": str(tmp_path),
        **env,
    }
    result = subprocess.run(
        [BASH, str(VERIFY), *args], capture_output=True, text=True, env=environ, timeout=180
    )
    return result, log.read_text()


def good_responses(jaeger_value: dict | None = None) -> dict:
    vector = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "2"]}]},
    }
    return {
        "/api/v3/traces": jaeger_response(jaeger_value or {"boolValue": True}),
        "/api/search": {"traces": [{"traceID": "5b8efff798038103d269b633813fc60c"}]},
        "/api/v1/query": vector,
    }


def test_full_run_against_fakes_passes_and_always_tears_down(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, good_responses())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert "compose up -d --build --wait --wait-timeout 900" in calls
    assert calls.rstrip().splitlines()[-1] == "compose down -v --remove-orphans"
    jaeger = [line for line in calls.splitlines() if "/api/v3/traces" in line]
    assert jaeger and 'query.attributes={"hms.n_plus_one":"true"}' in jaeger[0]
    assert "query.serviceName=hms-sample" in jaeger[0] and "query.service_name=hms-sample" in jaeger[0]
    tempo = " ".join(line for line in calls.splitlines() if "/api/search" in line)
    assert "q={ span.hms.n_plus_one = true }" in tempo
    for line in calls.splitlines():
        if line.startswith("curl"):
            assert "--max-time" in line, f"unbounded request: {line}"
    assert "/boom/" in calls


def test_a_string_typed_finding_fails_with_status_1(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, good_responses({"stringValue": "true"}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Jaeger /api/v3/traces" in result.stderr
    assert "compose down -v --remove-orphans" in calls


def test_stack_that_does_not_come_up_fails_with_status_3_and_is_torn_down(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, good_responses(), FAKE_UP_STATUS="1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "compose ps" in calls and "compose down -v --remove-orphans" in calls


def test_keep_leaves_the_stack_running(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, good_responses(), "--keep", "--no-build")
    assert result.returncode == 0, result.stderr
    assert "compose up -d --wait" in calls and "down" not in calls


def test_missing_docker_or_bad_arguments_fail_with_status_2(tmp_path: Path) -> None:
    result, _ = run_script(tmp_path, {}, "--bogus")
    assert result.returncode == 2
    (tmp_path / "bin" / "docker").unlink()
    result, calls = run_script_again(tmp_path)
    assert result.returncode == 2 and "docker is required" in result.stderr
    assert "compose" not in calls


def run_script_again(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "calls.log"
    log.write_text("")
    environ = {
        "PATH": str(tmp_path / "bin"),
        "FAKE_LOG": str(log),
        "FAKE_RESPONSES": str(tmp_path / "responses.json"),
    }
    result = subprocess.run([BASH, str(VERIFY)], capture_output=True, text=True, env=environ, timeout=60)
    return result, log.read_text()


def test_two_tier_runs_compose_on_both_files_and_waits_for_both_sampling_replicas(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, good_responses(), "--two-tier")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = calls.splitlines()
    up = lines.index("compose up -d --build --wait --wait-timeout 900")
    files = lines[up - 1].removeprefix("COMPOSE_FILE=").split(":")
    assert files == ["docker-compose.yml", "docker-compose.two-tier.yml"]
    assert all((ROOT / f).exists() for f in files)
    assert lines[-2:] == [lines[up - 1], "compose down -v --remove-orphans"]
    assert 'query=count(up{job="otel-sampler-internal"} == 1) >= 2' in calls
    single, single_calls = (
        run_script(tmp_path / "single", good_responses())
        if (tmp_path / "single").mkdir() is None
        else (None, "")
    )
    assert single is not None and single.returncode == 0
    assert "COMPOSE_FILE" not in single_calls and "otel-sampler" not in single_calls
