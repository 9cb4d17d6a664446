"""No patient data leaves the process by default: the byte-level proof.

The sample database and cache hold a corpus of distinctive fake PHI (names, MRNs, SSN-like
numbers, dates of birth, e-mails, phone numbers, notes; see conftest.FAKE_PATIENTS). Every
sample endpoint is driven, including the failing ones (an IntegrityError that echoes the MRN,
a ValueError that echoes a query value) and the ones with identifying query strings, with
PHI in form bodies and headers too, under hms-otel-run:

* gunicorn (sync) exporting OTLP/gRPC with gzip,
* uvicorn (ASGI) exporting OTLP/HTTP protobuf,
* gunicorn (gthread) on the embedded default (OTLP-JSON files in ./.hms-otel/),
* a script that runs SQL with PHI written inline as literals (psycopg2, psycopg 3, Django's
  cursor) and where a regex scanner misreads PostgreSQL (nested comments, a comment ended by
  ``\r``, quoted aliases, literals glued to keywords, ``SELECT$$..$$``), failing statements whose
  errors quote them, and Redis and Django cache calls whose
  keys and values are PHI.

Everything those processes export or print is captured: every request body the OTLP receiver
got (decompressed), every file in the local dirs, stdout and stderr, and the findings report
(`hms-otel report` in every format). No corpus value may appear in any of it, in any encoding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess, run, venv_executable

from hms_otel_agent.signals.semconv import stable_value

from .conftest import (
    BEARER_TOKEN,
    DEVICE,
    FAKE_PATIENTS,
    FAST_EXPORT,
    REDIS_NOTE,
    PhiDb,
    Req,
    corpus_values,
    find_leaks,
    gunicorn,
    local_files,
    send,
    start_many,
    uvicorn,
)

pytestmark = pytest.mark.e2e
FORMATS = ("terminal", "json", "markdown")


def phi_requests(ids: list[int]) -> list[Req]:
    """Every endpoint of hms_otel_agent/sample/urls.py, reaching the fake patients' rows (the
    first two have negative ids, so lists show them first; the third has an ordinary id)."""
    a, b, c = FAKE_PATIENTS
    pa, pb, pc = ids
    header = (("X-Patient-Name", f"{a.given_name} {a.family_name}"), ("X-Patient-MRN", a.mrn))
    form = urlencode({"pk": pc, "given_name": b.given_name, "ssn": b.ssn, "email": b.email, "dob": b.dob})
    requests = [
        Req("GET", "/"),
        Req("GET", "/health/"),
        Req("GET", "/stats/"),
        Req("GET", "/stats/", headers=header),
    ]
    for base in (
        "/patients/",
        "/encounters/",
        "/appointments/schedule/",
        "/patients/records/",
        "/notes/",
        "/patients/birthdays/",
        "/facilities/",
        "/reports/raw-encounters/",
        "/patients/cached/",
        "/encounters/recent/",
    ):
        requests.append(Req("GET", f"{base}?limit=6"))
        requests.append(Req("GET", f"{base}optimized/?limit=6"))
    requests += [
        Req("GET", f"/patients/lookup/?ids={pa},{pb},{pc},1"),
        Req("GET", f"/patients/lookup/optimized/?ids={pa},{pb},{pc},1"),
        Req("GET", f"/patients/{pc}/summary/"),  # miss: read from the database, cached
        Req("GET", f"/patients/{pc}/summary/"),  # hit
        Req("GET", f"/patients/{pc}/flaky-summary/"),  # the seeded PHI profile
        Req("GET", "/patients/1/flaky-summary/"),  # miss, then the database
        Req("POST", f"/patients/{pc}/touch/"),
        Req("POST", f"/patients/{pc}/touch/optimized/"),
        # IntegrityError: "Key (mrn)=(MRN-...) already exists", with PHI in the form body too
        Req("POST", f"/patients/duplicate/?pk={pc}", body=form, headers=header),
        Req("POST", "/patients/duplicate/"),  # the lowest id: a fake patient
        # ValueError(f"bad patient {mrn}")
        Req("GET", "/boom/?" + urlencode({"mrn": a.mrn, "name": a.family_name})),
        Req("GET", "/boom/?" + urlencode({"mrn": b.mrn, "limit": 3})),
        # identifying query strings, every default-redacted name
        Req("GET", "/patients/search/?" + urlencode({"q": a.family_name, "mrn": a.mrn})),
        Req("GET", "/patients/search/?" + urlencode({"q": b.family_name})),
        Req("GET", "/patients/search/?" + urlencode({"mrn": c.mrn, "limit": 5})),
        Req(
            "GET",
            "/patients/search/?"
            + urlencode(
                {
                    "name": f"{c.given_name} {c.family_name}",
                    "email": c.email,
                    "phone": c.phone,
                    "dob": c.dob,
                    "ssn": c.ssn,
                    "patient": c.contact_name,
                    "date_of_birth": a.dob,
                    "MRN": b.mrn,  # any case
                }
            ),
        ),
        Req("GET", f"/patients/{pc}/summary/?" + urlencode({"patient_id": a.mrn, "search": a.note})),
        Req("GET", "/admin/login/?" + urlencode({"next": "/admin/", "q": b.family_name})),
        Req("GET", "/patients/999999/summary/"),
        # Unrouted paths (404s) naming the patient, and credentials / a named device in headers.
        Req("GET", f"/patients/{a.mrn}/"),
        Req("GET", f"/patients/{a.family_name}/{a.dob}/"),
        Req(
            "GET",
            "/stats/",
            headers=(
                ("Authorization", f"Bearer {BEARER_TOKEN}"),
                ("User-Agent", f"{DEVICE} ({a.given_name} {a.family_name}) Mobile/15E148"),
                ("Cookie", f"sessionid={BEARER_TOKEN}; patient={a.mrn}"),
            ),
        ),
    ]
    return requests


SCRIPT = (Path(__file__).parent / "scripts" / "phi_job.py").read_text(encoding="utf-8")


def write_corpus_module(directory: Path) -> None:
    """The script imports the corpus: its own source (shown in tracebacks) holds no value."""
    patients = [dataclasses.asdict(p) for p in FAKE_PATIENTS]
    (directory / "phi_corpus.py").write_text(f"PATIENTS = {patients!r}\n", encoding="utf-8")


def test_no_phi_in_anything_exported_written_or_printed(
    phi_app_db: PhiDb,
    otlp_receiver: OtlpReceiver,
    app_process: Callable[..., AppProcess],
    tmp_path: Path,
) -> None:
    env = {**phi_app_db.env, **FAST_EXPORT}
    grpc = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    http = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    local_cwd = tmp_path / "local"
    local_cwd.mkdir()
    # The script: inline literals, failing statements, PHI cache values. Once over OTLP/HTTP,
    # once on the embedded default (local file); both run while the apps are driven.
    script_dir = tmp_path / "script"
    script_dir.mkdir()
    write_corpus_module(script_dir)
    (script_dir / "phi_job.py").write_text(SCRIPT, encoding="utf-8")
    script_envs = {
        "script": {**http, "PHI_DIR": str(script_dir)},
        "local script": {**env, "PHI_DIR": str(script_dir)},
    }

    def run_script(name: str) -> subprocess.CompletedProcess[str]:
        command = [venv_executable("hms-otel-run"), "--", "python", str(script_dir / "phi_job.py")]
        return run(command, env=script_envs[name], cwd=script_dir, timeout=120)

    with ThreadPoolExecutor(2) as script_pool:
        scripts = {name: script_pool.submit(run_script, name) for name in script_envs}
        apps = start_many(
            app_process,
            [
                {"build": gunicorn, "env": grpc, "name": "grpc"},
                {"build": uvicorn, "env": http, "name": "http", "extra": ["--no-access-log"]},
                {
                    "build": gunicorn,
                    "env": env,
                    "name": "local",
                    "cwd": local_cwd,
                    "extra": ["-k", "gthread"],
                },
            ],
        )
        requests = phi_requests(phi_app_db.patient_ids)
        phi_app_db.seed_cache()  # again: a shared Redis may have been flushed since the fixture ran

        def drive_all(app: AppProcess) -> list[tuple[int, bytes]]:
            return [(answer.status, answer.body) for answer in (send(app, req) for req in requests)]

        with ThreadPoolExecutor(len(apps)) as pool:
            results = list(pool.map(drive_all, apps))
            # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is its normal exit.
            codes = list(pool.map(lambda app: app.stop(), apps))
            assert codes[0] == codes[2] == 0 and codes[1] in (0, -15), [a.output_tail() for a in apps]
        script, local_script = scripts["script"].result(), scripts["local script"].result()
    assert script.returncode == 0, script.stderr
    assert local_script.returncode == 0, local_script.stderr

    # --- positive controls: the data went through the app and the telemetry is there ---------
    for app_results in results:
        bodies = b"".join(body for _, body in app_results)
        for p in FAKE_PATIENTS:
            assert p.mrn.encode() in bodies and json.dumps(p.family_name)[1:-1].encode() in bodies
        assert REDIS_NOTE.encode() in bodies
        statuses = [status for status, _ in app_results]
        assert statuses.count(500) == 4 and 404 in statuses and statuses.count(200) >= len(requests) - 10
    for transport in ("grpc", "http"):
        assert otlp_receiver.raw_payloads("traces", transport), transport
        assert otlp_receiver.raw_payloads("metrics", transport), transport
    spans = otlp_receiver.spans()
    assert any(
        "REDACTED" in str(s.attributes.get("url.query", s.attributes.get("http.url", ""))) for s in spans
    )
    assert any(
        e.attributes.get("exception.type", "").endswith("IntegrityError") for s in spans for e in s.events
    )
    assert any("hms_patient" in str(stable_value(s.attributes, "db.query.text")) for s in spans)
    assert any(str(stable_value(s.attributes, "db.query.text")).startswith("SET") for s in spans)
    assert any(s.attributes.get("hms.findings.count") for s in spans)
    sent = script.stdout.strip().splitlines()[-1]
    assert '"UniqueViolation"' in sent and '"InvalidTextRepresentation"' in sent and '"ResponseError"' in sent

    # --- everything that left the processes ----------------------------------------------------
    sources: dict[str, bytes] = {}
    for index, payload in enumerate(otlp_receiver.raw_payloads()):
        sources[f"OTLP request {index}"] = payload
    sources.update(local_files(local_cwd / ".hms-otel"))
    sources.update(local_files(script_dir / ".hms-otel"))
    assert any(name.endswith("traces.jsonl") for name in sources) and any(
        name.endswith("metrics.jsonl") for name in sources
    )
    for app in apps:
        sources[f"{app.name} stderr"] = app.stderr.encode()
        sources[f"{app.name} stdout"] = app.stdout.encode()
    for name, result in (("script", script), ("local script", local_script)):
        sources[f"{name} stderr"] = result.stderr.encode()
    # The findings report of the local runs, in every format.
    reports_dir = tmp_path / "reports"
    reports_dir.mkdir()

    def report(directory: Path, fmt: str) -> tuple[str, bytes]:
        command = [venv_executable("hms-otel"), "report", "--format", fmt, str(directory)]
        result = run(command, env=env, cwd=reports_dir, timeout=60)
        assert result.returncode in (0, 1), result.stderr
        return f"hms-otel report --format {fmt} {directory}", (result.stdout + result.stderr).encode()

    def analyze(directory: Path, fmt: str) -> tuple[str, bytes]:
        command = [venv_executable("hms-otel"), "analyze", "--format", fmt, str(directory)]
        result = run(command, env=env, cwd=reports_dir, timeout=60)
        assert result.returncode in (0, 1), result.stderr
        return f"hms-otel analyze --format {fmt} {directory}", (result.stdout + result.stderr).encode()

    jobs = [(d, fmt) for d in (local_cwd / ".hms-otel", script_dir / ".hms-otel") for fmt in FORMATS]
    with ThreadPoolExecutor(len(jobs)) as pool:
        sources.update(pool.map(lambda job: report(*job), jobs))
        sources.update(pool.map(lambda job: analyze(*job), jobs))
    assert any(
        b"n+1" in data.lower() or b"n_plus_one" in data for name, data in sources.items() if "report" in name
    )

    leaks = find_leaks(sources, corpus_values())
    assert not leaks, "PHI left the process:\n" + "\n".join(leaks[:200])
    assert os.path.getsize(local_cwd / ".hms-otel" / "traces.jsonl") > 0


def test_no_phi_from_cache_keys_built_from_patient_data(phi_app_db: PhiDb, tmp_path: Path) -> None:
    write_corpus_module(tmp_path)
    (tmp_path / "phi_job.py").write_text(SCRIPT, encoding="utf-8")
    env = {**phi_app_db.env, **FAST_EXPORT, "PHI_DIR": str(tmp_path), "PHI_KEYS": "1"}
    result = run(
        [venv_executable("hms-otel-run"), "--", "python", str(tmp_path / "phi_job.py")],
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    sources = local_files(tmp_path / ".hms-otel")
    assert sources
    sources["stderr"] = result.stderr.encode()
    report = run([venv_executable("hms-otel"), "report", str(tmp_path / ".hms-otel")], env=env, timeout=60)
    sources["report"] = (report.stdout + report.stderr).encode()
    leaks = find_leaks(sources, corpus_values())
    assert not leaks, "PHI left the process:\n" + "\n".join(leaks[:50])
