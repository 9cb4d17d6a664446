"""No patient data leaves the process through cache keys, RediSearch or exception texts.

A job (scripts/phi_keys_job.py) runs under hms-otel-run with default settings: cache keys built
from the PHI corpus in every shape (names in lower, upper and title case, joined by ``_ - / . |
# = :`` and space, in the first, second, third and last segment; MRNs, e-mails, dates, SSNs,
phone numbers, contacts, notes, allergies; newlines, ANSI escapes and bidi overrides) through
redis-py (single commands, MGET, pipelines, a command written as one string) and Django's cache
(single and multi-key), in loops that make cache findings; exceptions whose messages quote a
traceback with the patient's name, MRN, e-mail and date of birth; and, where a RediSearch server
can run here (tests/harness/redisearch.py), FT.CREATE and FT.SEARCH by name with redis-py 8's
default protocol.

Once exporting OTLP/HTTP to a receiver, once on the embedded default (local files). Searched, in
every encoding of conftest.encodings and in lower and upper case: every OTLP request body (spans
and metrics), the local files, stdout and stderr, `hms-otel report` and `hms-otel analyze` of the
local files in every format.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import run, venv_executable
from harness.redisearch import RediSearchServer, module_and_server

from .conftest import FAKE_PATIENTS, FAST_EXPORT, corpus_values, find_leaks, local_files

pytestmark = pytest.mark.e2e
FORMATS = ("terminal", "json", "markdown")
SCRIPT = (Path(__file__).parent / "scripts" / "phi_keys_job.py").read_text(encoding="utf-8")


def key_corpus() -> list[str]:
    """The corpus, and the names in the cases the keys hold them."""
    values = corpus_values()
    for p in FAKE_PATIENTS:
        for name in (p.given_name, p.family_name):
            values += [name.lower(), name.upper()]
        values += [p.mrn.lower(), p.reason.upper()]
    return list(dict.fromkeys(values))


@pytest.fixture(scope="module")
def search_url() -> Iterator[str | None]:
    """A RediSearch server when this platform can run one (x86-64 Linux, Python 3.11+)."""
    if isinstance(module_and_server(), str):
        yield None
        return
    server = RediSearchServer()
    try:
        yield server.start()
    finally:
        server.stop()


def test_no_phi_from_keys_redisearch_or_quoted_tracebacks(
    sample_app_db: dict[str, str], otlp_receiver: OtlpReceiver, search_url: str | None, tmp_path: Path
) -> None:
    patients = [dataclasses.asdict(p) for p in FAKE_PATIENTS]
    env = {**sample_app_db, **FAST_EXPORT}
    if search_url:
        env["REDISEARCH_URL"] = search_url
    runs = {
        "otlp": {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
        "local": env,
    }
    dirs = {}
    for name in runs:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "phi_corpus.py").write_text(f"PATIENTS = {patients!r}\n", encoding="utf-8")
        (directory / "phi_keys_job.py").write_text(SCRIPT, encoding="utf-8")
        runs[name] = {**runs[name], "PHI_DIR": str(directory)}
        dirs[name] = directory

    def job(name: str) -> tuple[str, str, str]:
        command = [venv_executable("hms-otel-run"), "--", "python", str(dirs[name] / "phi_keys_job.py")]
        result = run(command, env=runs[name], cwd=dirs[name], timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        return name, result.stdout, result.stderr

    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(job, runs))

    # --- positive controls: the calls ran and the telemetry is there -----------------------
    for _, stdout, _ in outputs:
        ran = json.loads(stdout.strip().splitlines()[-1])
        for label in ("redis get", "cache get", "redis pipeline", "redis one-string command", "exception"):
            assert ran.get(label), (label, ran)
        if search_url:
            assert ran.get("ft.search") == len(FAKE_PATIENTS) and ran.get("ft.search raw") == len(
                FAKE_PATIENTS
            )
    otlp_receiver.wait_for_spans(lambda s: s.name == "nightly-import", timeout=30)
    spans = otlp_receiver.spans()
    patterns = {
        str(s.attributes.get("hms.cache.key_pattern"))
        for s in spans
        if "hms.cache.key_pattern" in s.attributes
    }
    assert "patient:{value}:summary" in patterns and "search:{id}:{value}_{value}:page" in patterns
    assert "hmsjob:{value}:state" in patterns  # learned in the run: learning ran
    assert any(s.attributes.get("hms.findings.count") for s in spans)
    exception_events = [e for s in spans for e in s.events if e.name == "exception"]
    assert any(
        "RuntimeError: (message redacted)" in str(e.attributes.get("exception.stacktrace"))
        for e in exception_events
    )
    if search_url:
        assert any(s.name == "redis.search" for s in spans)
    assert otlp_receiver.raw_payloads("metrics")

    # --- everything that left the processes ----------------------------------------------
    sources: dict[str, bytes] = {}
    for index, payload in enumerate(otlp_receiver.raw_payloads()):
        sources[f"OTLP request {index}"] = payload
    for name, stdout, stderr in outputs:
        sources[f"{name} stdout"] = stdout.encode()
        sources[f"{name} stderr"] = stderr.encode()
    local = dirs["local"] / ".hms-otel"
    sources.update(local_files(local))
    assert any(name.endswith("traces.jsonl") for name in sources) and any(
        name.endswith("metrics.jsonl") for name in sources
    )

    def tool(command: str, fmt: str) -> tuple[str, bytes]:
        result = run(
            [venv_executable("hms-otel"), command, "--format", fmt, str(local)], env=env, timeout=120
        )
        assert result.returncode in (0, 1), result.stderr
        return f"hms-otel {command} --format {fmt}", (result.stdout + result.stderr).encode()

    jobs = [(command, fmt) for command in ("report", "analyze") for fmt in FORMATS]
    with ThreadPoolExecutor(3) as pool:
        sources.update(pool.map(lambda job: tool(*job), jobs))
    reports = b"".join(data for name, data in sources.items() if name.startswith("hms-otel "))
    assert b"cache N+1" in reports or b"cache_n_plus_one" in reports

    leaks = find_leaks(sources, key_corpus())
    assert not leaks, "PHI left the process:\n" + "\n".join(leaks[:100])
    raw = b"".join(sources.values())
    for forbidden in (b"\x1b[31m", "\u202e".encode()):
        assert forbidden not in raw
