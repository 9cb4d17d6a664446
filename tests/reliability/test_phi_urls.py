"""No patient data in URLs, user agents or captured headers leaves the process: the byte-level
proof, and the opt-ins that restore raw values.

The sample app runs under hms-otel-run with the contrib's header capture turned on
(``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`` naming credentials, custom
patient headers and a pattern ``x-.*``) and recording request attributes
(``OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS``: the path, ``GET``, ``COOKIES``), on

* gunicorn (sync; ``http.target`` is the raw request target) exporting OTLP/HTTP, with
  ``OTEL_SEMCONV_STABILITY_OPT_IN=database/dup,http/dup`` (the old names and the default stable ones),
* uvicorn (ASGI; ``http.url`` has the query *decoded*) exporting OTLP/gRPC with gzip, with
  ``OTEL_SEMCONV_STABILITY_OPT_IN=http/dup`` (``url.path``, ``url.query``, ``url.full``,
  ``user_agent.original``, ``http.server.request.duration`` too),
* gunicorn (gthread) on the embedded default (local files), also ``http/dup``,

and is sent the fake patients' values (conftest.FAKE_PATIENTS) in unrouted paths (404s:
``/patients/MRN-.../``, ``/patients/<name>/``, in every case and encoding), in routed paths,
in query strings of every shape (bare values, names with spaces, brackets and encodings, ``;``
separators, encoded nested URLs, double encoding, ``+``, fragments, invalid escapes, names
outside any list, PHI as the value of safe parameters), in absolute-form request targets,
user agents naming their owner, and captured headers (``Authorization``, ``Cookie``, custom
patient headers, a header named after a patient). Every byte the receiver got (spans and
metrics), the local files, the processes' output, ``hms-otel report`` (every format) and
``hms-otel analyze`` must hold none of it, in any encoding or case.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode

import pytest
from harness.otlp_receiver import OtlpReceiver
from harness.processes import AppProcess, run, venv_executable

from .conftest import (
    FAKE_PATIENTS,
    FAST_EXPORT,
    Req,
    corpus_values,
    find_leaks,
    gunicorn,
    local_files,
    send,
    start_many,
    start_sample,
    uvicorn,
)

pytestmark = pytest.mark.e2e
FORMATS = ("terminal", "json", "markdown")

CAPTURE = {
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": (
        "authorization,proxy-authorization,cookie,x-api-key,x-patient-id,x-patient-name,"
        "content-type,accept-language,referer,user-agent,x-.*"
    ),
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "content-type,x-frame-options,set-cookie",
    # request attributes recorded under their own names: the raw path and the request's data
    "OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS": "path_info,path,method,GET,COOKIES,body",
}
A, B, C = FAKE_PATIENTS
# Values this module sends besides the corpus: the owners of devices, a token, a header name.
TOKEN = "tok-QZ7731X-" + "Quillfeather"
DEVICE = f"{A.given_name} {A.family_name}'s iPhone"
EXTRA_VALUES = [TOKEN, DEVICE, "Quillfeather-Tablet", "X-Quillfeather"]


def phi_values() -> list[str]:
    """The corpus, the extra values, and every name in lower case too (paths and query names
    are where lower-case words could pass)."""
    values = corpus_values() + EXTRA_VALUES
    names = [p.given_name for p in FAKE_PATIENTS] + [p.family_name for p in FAKE_PATIENTS]
    return values + [name.lower() for name in names] + [p.mrn.lower() for p in FAKE_PATIENTS]


def user_agents() -> list[str]:
    return [
        f"{DEVICE}/17.1 CFNetwork/1474 Darwin/23.1.0",
        f"Mozilla/5.0 (Linux; Android 14; {B.contact_name}'s Pixel 8) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/120.0.6099.43 Mobile Safari/537.36",
        "Quillfeather-Tablet",
        f"Mozilla/5.0 (X11; Linux x86_64; rv:120.0; {A.mrn}) Gecko/20100101 Firefox/120.0",
    ]


def headers_for(index: int) -> tuple[tuple[str, str], ...]:
    return (
        ("User-Agent", user_agents()[index % 4]),
        ("Authorization", f"Bearer {TOKEN}"),
        ("Proxy-Authorization", f"Basic {TOKEN}"),
        ("Cookie", f"sessionid={TOKEN}; last_patient={A.mrn}"),
        ("X-Api-Key", TOKEN),
        ("X-Patient-Id", C.mrn),
        ("X-Patient-Name", f"{C.given_name} {C.family_name}"),
        ("X-Quillfeather", "1"),  # a header named after a patient, matched by x-.*
        ("X-Patient-DOB", A.dob),  # matched by x-.* only
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Referer", f"http://127.0.0.1/patients/{A.mrn}/?q={quote(A.family_name)}"),
    )


def url_requests(pk: int) -> list[Req]:
    """PHI in every part of a URL; `pk`: a patient id that exists."""
    nested = quote(f"/patients/?dob={A.dob}&name={A.given_name} {A.family_name}", safe="")
    paths = [
        # unrouted: 404s
        f"/patients/{A.mrn}/",
        f"/patients/{A.family_name}/",
        f"/patients/{A.family_name.lower()}/",
        f"/patients/{quote(B.family_name)}/",
        f"/patients/{quote(B.family_name.lower())}/notes/",
        f"/{quote(A.given_name + ' ' + A.family_name)}/",
        f"/patients/{quote(C.email)}/",
        f"/patients/{C.dob}/{C.ssn}/",
        f"/patients/{quote(C.phone)}/",
        f"/patients/{quote(quote(C.family_name))}/",
        f"/search/{quote_plus(C.given_name + ' ' + C.family_name)}/",
        f"/patients/{C.mrn.lower()}/summary/",
        f"/patients/{pk}/summary/{A.mrn}/",
        # routed
        f"/patients/{pk}/summary/?" + urlencode({"mrn": A.mrn, "page": 2}),
        f"/patients/search/?{A.mrn}",
        f"/patients/search/?mrn%20={A.mrn}&mrn[]={B.mrn}&patient[name]={quote(A.family_name)}",
        f"/patients/search/?patient%5Bname%5D={quote(B.family_name)}&limit=5;mrn={C.mrn};{C.ssn}",
        f"/patients/search/?next={nested}&page=1",
        f"/patients/search/?q={quote(quote(A.family_name))}&name={quote_plus(A.contact_name)}",
        f"/patients/search/?q=%zz{A.family_name}&%G{B.mrn}=1",
        "/patients/search/?"
        + urlencode(
            {
                "patient_name": A.family_name,
                "fullname": f"{A.given_name} {A.family_name}",
                "birthdate": A.dob,
                "medical_record_number": A.mrn,
                "tel": A.phone,
                "mail": A.email,
                "social": A.ssn,
                "visit_reason": A.reason,
                "ward_note": A.note,
            }
        ),
        f"/patients/search/?page={A.mrn}&limit={C.ssn}&ordering={A.family_name}&format={quote(C.email)}",
        f"/patients/search/?{A.family_name}=1&{quote(B.given_name)}",
        f"/patients/?limit=5&q={quote(B.contact_name)}",
    ]
    return [Req("GET", path, headers=headers_for(index)) for index, path in enumerate(paths)]


def raw_targets(port: int) -> list[str]:
    """Request targets urllib would not send: a fragment, the absolute form."""
    return [
        f"/patients/search/?page=1#{A.mrn}",
        f"http://127.0.0.1:{port}/patients/{C.mrn}/?q={quote(C.family_name)}",
    ]


def raw_get(port: int, target: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def port_of(app: AppProcess) -> int:
    return int(app.base_url.rsplit(":", 1)[1])


def test_no_phi_from_urls_user_agents_or_headers(
    sample_app_db: dict[str, str],
    otlp_receiver: OtlpReceiver,
    app_process: Callable[..., AppProcess],
    tmp_path: Path,
) -> None:
    env = {**sample_app_db, **FAST_EXPORT, **CAPTURE}
    http = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        # both generations: the old http.target / http.server.duration checked below, and the
        # agent's default stable names (url.path, url.query, http.server.request.duration)
        "OTEL_SEMCONV_STABILITY_OPT_IN": "database/dup,http/dup",
    }
    grpc = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup",
    }
    local = {**env, "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup"}
    local_cwd = tmp_path / "local"
    local_cwd.mkdir()
    apps = start_many(
        app_process,
        [
            {"build": gunicorn, "env": http, "name": "gunicorn"},
            {"build": uvicorn, "env": grpc, "name": "uvicorn", "extra": ["--no-access-log"]},
            {"build": gunicorn, "env": local, "name": "local", "cwd": local_cwd, "extra": ["-k", "gthread"]},
        ],
    )
    requests = url_requests(pk=1)

    def drive(app: AppProcess) -> list[int]:
        statuses = [send(app, req).status for req in requests]
        return statuses + [raw_get(port_of(app), target) for target in raw_targets(port_of(app))]

    with ThreadPoolExecutor(len(apps)) as pool:
        results = list(pool.map(drive, apps))
        codes = list(pool.map(lambda app: app.stop(), apps))
    # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is its normal exit.
    assert codes[0] == codes[2] == 0 and codes[1] in (0, -15), [a.output_tail() for a in apps]

    # --- positive controls: the requests reached Django, the telemetry is there ---------------
    for statuses in results:
        assert statuses.count(404) >= 13 and statuses.count(200) >= 10, statuses
    spans = [s for s in otlp_receiver.spans() if s.kind == "SPAN_KIND_SERVER"]
    assert len(spans) >= 2 * (len(requests) + 1), len(spans)
    targets = {str(s.attributes.get("http.target")) for s in spans}
    assert "/patients/{id}/" in targets  # gunicorn: the raw target, templated
    assert "/patients/{pk}/summary/?mrn=REDACTED&page=2" in targets
    assert any(str(s.attributes.get("url.path")) == "/patients/{id}/{id}/" for s in spans)  # uvicorn
    assert any(s.attributes.get("user_agent.name") == "Firefox" for s in spans)
    assert any(s.attributes.get("http.request.header.authorization") == ["REDACTED"] for s in spans)
    assert any(s.attributes.get("http.request.header.accept_language") == ["en-US,en;q=0.9"] for s in spans)
    assert not any("http.request.header.x_quillfeather" in s.attributes for s in spans)
    assert any(s.attributes.get("path_info") == "/patients/{id}/" for s in spans)
    assert any(s.attributes.get("GET") == "REDACTED" for s in spans)
    durations = otlp_receiver.metrics("http.server.duration")
    assert {"/patients/{id}/", "/patients/{id}/{id}/"} <= {
        str(p.attributes.get("http.target")) for p in durations
    }
    assert otlp_receiver.metrics("http.server.request.duration")  # http/dup: the new metric too

    # --- everything that left the processes ----------------------------------------------------
    sources: dict[str, bytes] = {}
    for index, payload in enumerate(otlp_receiver.raw_payloads()):
        sources[f"OTLP request {index}"] = payload
    sources.update(local_files(local_cwd / ".hms-otel"))
    assert any(name.endswith("metrics.jsonl") for name in sources)
    for app in apps:
        sources[f"{app.name} stderr"] = app.stderr.encode()
        sources[f"{app.name} stdout"] = app.stdout.encode()
    traces = local_cwd / ".hms-otel" / "traces.jsonl"
    commands = {
        **{
            f"report --format {fmt}": ["report", "--format", fmt, str(local_cwd / ".hms-otel")]
            for fmt in FORMATS
        },
        **{f"analyze --format {fmt}": ["analyze", "--format", fmt, str(traces)] for fmt in FORMATS},
    }

    def tool(item: tuple[str, list[str]]) -> tuple[str, bytes]:
        name, args = item
        result = run([venv_executable("hms-otel"), *args], env=env, cwd=tmp_path, timeout=60)
        assert result.returncode in (0, 1), result.stderr
        return f"hms-otel {name}", (result.stdout + result.stderr).encode()

    with ThreadPoolExecutor(3) as pool:
        sources.update(pool.map(tool, commands.items()))
    analyzed = json.loads(sources["hms-otel analyze --format json"])
    assert analyzed["summary"]["requests"] >= len(requests)

    leaks = find_leaks(sources, phi_values())
    assert not leaks, "PHI left the process:\n" + "\n".join(leaks[:100])


def test_each_opt_in_exports_what_it_promises_and_nothing_else(
    sample_app_db: dict[str, str], otlp_receiver: OtlpReceiver, app_process: Callable[..., AppProcess]
) -> None:
    """With every URL, user-agent and header opt-in on, the raw values are exported — in the
    span and in the duration metric — but for the always-redacted parameters and headers."""
    env = {
        **sample_app_db,
        **FAST_EXPORT,
        **CAPTURE,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
        "HMS_OTEL_CAPTURE_URL_PATHS": "true",
        "HMS_OTEL_CAPTURE_QUERY_VALUES": "true",
        "HMS_OTEL_CAPTURE_USER_AGENT": "true",
        "HMS_OTEL_CAPTURE_HEADER_VALUES": "true",
        "HMS_OTEL_REDACT_QUERY_PARAMS": "ward",
        "HMS_OTEL_REDACT_HEADERS": "x-patient-name",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "database/dup,http/dup",  # http.target, as checked below
    }
    app = start_sample(app_process, gunicorn, env)
    headers = {
        "User-Agent": "WardTablet-7/3.1 (bed 12)",
        "Authorization": "Bearer not-exported",
        "X-Patient-Id": "P-000123",
        "X-Patient-Name": "not exported",
        "X-Bed": "12",
    }
    assert app.request("GET", "/rooms/B-12/?bed=12&ward=4B&mrn=M-1", headers=headers).status == 404
    assert app.request("GET", "/patients/1/summary/?bed=12", headers=headers).status == 200
    # The metric reader exports every 300 ms: wait for both requests' points rather than relying
    # on the flush at exit, which a loaded machine can cut off at the shutdown deadline.
    otlp_receiver.wait_for_metrics(
        lambda p: p.name == "http.server.duration" and "/rooms/" in str(p.attributes.get("http.target")),
        timeout=60,
    )
    app.stop()
    spans = [s for s in otlp_receiver.spans() if s.kind == "SPAN_KIND_SERVER"]
    by_target = {str(s.attributes.get("http.target")): s for s in spans}
    unrouted = by_target["/rooms/B-12/?bed=12&ward=REDACTED&mrn=REDACTED"]
    routed = by_target["/patients/1/summary/?bed=12"]
    for span in (unrouted, routed):
        attributes = span.attributes
        assert attributes["http.user_agent"] == "WardTablet-7/3.1 (bed 12)"
        assert attributes["http.request.header.x_patient_id"] == ["P-000123"]
        assert attributes["http.request.header.x_bed"] == ["12"]  # named by x-.* only: kept raw
        assert attributes["http.request.header.authorization"] == ["REDACTED"]
        assert attributes["http.request.header.x_patient_name"] == ["REDACTED"]
    durations = {str(p.attributes.get("http.target")) for p in otlp_receiver.metrics("http.server.duration")}
    assert "/rooms/B-12/?bed=12&ward=REDACTED&mrn=REDACTED" in durations
    assert "patients/<int:pk>/summary/" in durations  # the contrib's route for a routed request
    assert not any("4B" in t or "M-1" in t for t in durations)
