"""Memory and concurrency with real processes: state for spans that never end stays bounded, and
under asyncio (uvicorn, 500 concurrent requests) and threads (gunicorn gthread) every finding
lands on the request that caused it. The 100k-request RSS soak is scripts/soak.py (minutes;
its figures are in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedSpan
from harness.processes import AppProcess, run, venv_executable
from harness.services import PrivatePostgres, create_database

from .conftest import FAST_EXPORT, MANAGE, flush_redis, gunicorn, is_linux, start_sample, uvicorn

pytestmark = pytest.mark.e2e

LEAKY_SCRIPT = Path(__file__).parent / "scripts" / "leaky_spans.py"


@pytest.mark.skipif(not is_linux(), reason="reads /proc")
def test_state_for_spans_that_never_end_is_bounded_in_a_real_process(tmp_path: Path) -> None:
    """50 000 request-like spans (each with a child) started and never ended, in a process under
    hms-otel-run with HMS_OTEL_MAX_TRACKED_SPANS=1000: the agent keeps state for 1000 and its
    memory does not follow the leak."""
    result = run(
        [venv_executable("hms-otel-run"), "--", "python", str(LEAKY_SCRIPT), "50000"],
        env={
            "HMS_OTEL_MAX_TRACKED_SPANS": "1000",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
        },
        cwd=tmp_path,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["tracked"] <= 1000
    assert report["evicted"] >= 2 * 50_000 - 1000
    # Unbounded, the same state takes tens of MB (measured in the script: "unbounded_kib").
    assert report["growth_kib"] < 10 * 1024, report
    assert report["unbounded_kib"] > 3 * report["growth_kib"], report


# --- findings land on their own request ---------------------------------------------------------


def concurrency_urls() -> list[str]:
    """Endpoints whose findings depend only on the URL (no cache state), with varied limits so
    that each URL has its own expected findings (repetitions = the limit)."""
    urls = []
    for k in (5, 6):
        urls += [
            f"/encounters/?limit={k}",
            f"/patients/?limit={k}",
            f"/patients/birthdays/?limit={k}",
            f"/patients/records/?limit={k}",
            f"/notes/?limit={k}",
            f"/reports/raw-encounters/?limit={k}",
            f"/appointments/schedule/?limit={k}",
            f"/patients/lookup/?ids={','.join(str(i) for i in range(1, k + 1))}",
            f"/patients/optimized/?limit={k}",
            f"/encounters/optimized/?limit={k}",
        ]
    return [*urls, "/facilities/", "/facilities/optimized/", "/health/", "/stats/"]


def request_target(span: ReceivedSpan) -> str:
    """Path and query of a server span (WSGI puts the query in http.target, ASGI only in http.url)."""
    attrs = span.attributes
    if attrs.get("url.path"):
        query = attrs.get("url.query")
        return str(attrs["url.path"]) + (f"?{query}" if query else "")
    if "?" in str(attrs.get("http.target", "")):
        return str(attrs["http.target"])
    parts = urlsplit(str(attrs.get("http.url", "")))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def request_id(span: ReceivedSpan) -> str:
    return dict(parse_qsl(urlsplit(request_target(span)).query)).get("req", "")


# Findings that depend only on what the request did (not on how long it took: slow-query
# findings and the like differ between two runs of the same request).
STRUCTURAL_KINDS = frozenset(("n_plus_one", "duplicate_query"))


def signature(span: ReceivedSpan) -> tuple[Any, ...]:
    """What the agent found on a request, minus timings."""
    findings = sorted(
        (
            e.name,
            str(e.attributes.get("hms.finding.kind")),
            str(e.attributes.get("hms.finding.fingerprint")),
            int(e.attributes.get("hms.finding.repetitions", 0)),  # type: ignore[arg-type]
            str(e.attributes.get("hms.orm.relation", "")),
            str(e.attributes.get("code.line.number", "")),
        )
        for e in span.events
        if e.name.startswith("hms.") and e.attributes.get("hms.finding.kind") in STRUCTURAL_KINDS
    )
    return (span.attributes.get("hms.db.query_count"), tuple(findings))


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def _get_all(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    return await asyncio.gather(*(_get(port, path) for path in paths))


def with_id(url: str, req: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}req={req}"


@pytest.fixture(scope="module")
def many_connections_db(redis_url: str) -> Iterator[dict[str, str]]:
    """The sample app on a private PostgreSQL that accepts 800 connections: under ASGI, Django
    runs each request's sync code in a thread of its own, with a connection of its own, so 500
    concurrent requests hold 500 connections (the shared test server allows 100)."""
    server = PrivatePostgres()
    try:
        url = server.start()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_connections = 800")
        server._run("pg_ctl", "-D", str(server.pgdata), "-m", "fast", "-w", "-t", "30", "restart", timeout=60)
        env = {
            "DATABASE_URL": create_database(url, "hms"),
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "hms_otel_agent.sample.settings",
        }
        run([*MANAGE, "migrate", "--noinput"], env=env, timeout=300, check=True)
        run([*MANAGE, "seed_hms", "--patients", "30", "--seed", "1"], env=env, timeout=300, check=True)
        yield env
    finally:
        server.stop()
        flush_redis(redis_url)  # nothing cached from this database for the next test


@pytest.mark.parametrize(
    "server, requests",
    [("uvicorn", 500), ("gthread", 160)],
    ids=["asgi-500-concurrent", "gthread-8-threads"],
)
def test_every_finding_lands_on_its_own_request(
    server: str,
    requests: int,
    otlp_receiver: OtlpReceiver,
    app_process: Callable[..., AppProcess],
    request: pytest.FixtureRequest,
) -> None:
    database = request.getfixturevalue("many_connections_db" if server == "uvicorn" else "sample_app_db")
    env = {
        **database,
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_MAX_QUEUE_SIZE": "200000",  # this test needs every server span
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048",
        "HMS_OTEL_LIVE_LOG": "false",
        # Requests are told apart by their ?req= value (r12, cal3), which is redacted by default.
        "HMS_OTEL_CAPTURE_QUERY_VALUES": "true",
    }
    if server == "uvicorn":
        app = start_sample(app_process, uvicorn, env, extra=["--no-access-log", "--backlog", "2048"])
    else:
        app = start_sample(app_process, gunicorn, env, extra=["-k", "gthread", "--threads", "8"])
    urls = concurrency_urls()
    for url in urls:  # warm-up: per-process caches (content types, ...) filled once
        assert app.request("GET", url).status == 200
    # Calibration: each URL alone, one at a time.
    expected_body = {}
    for index, url in enumerate(urls):
        response = app.request("GET", with_id(url, f"cal{index}"))
        assert response.status == 200, (url, response.status)
        expected_body[url] = response.body
    calibration = {
        url: signature(span)
        for span in otlp_receiver.wait_for_spans(
            lambda s: s.kind == "SPAN_KIND_SERVER" and request_id(s).startswith("cal"), count=len(urls)
        )
        for url in [urls[int(request_id(span)[3:])]]
    }
    assert len(calibration) == len(urls)
    assert sum(1 for sig in calibration.values() if sig[1]) >= 14, calibration  # most URLs have findings
    # The same URLs, all at once.
    plan = [(f"r{i}", urls[i % len(urls)]) for i in range(requests)]
    paths = [with_id(url, req) for req, url in plan]
    if server == "uvicorn":
        answers = asyncio.run(_get_all(int(app.base_url.rsplit(":", 1)[1]), paths))  # type: ignore[union-attr]
    else:
        with ThreadPoolExecutor(32) as pool:
            answers = [(r.status, r.body) for r in pool.map(lambda p: app.request("GET", p), paths)]
    for (req, url), (status, body) in zip(plan, answers, strict=True):
        assert status == 200, (req, url, status)
        if not url.startswith("/stats/"):
            assert body == expected_body[url], url
    spans = otlp_receiver.wait_for_spans(
        lambda s: s.kind == "SPAN_KIND_SERVER" and request_id(s).startswith("r"), count=requests, timeout=60
    )
    by_request = {request_id(s): s for s in spans}
    assert len(by_request) == requests
    wrong = [
        (req, url, signature(by_request[req]), calibration[url])
        for req, url in plan
        if signature(by_request[req]) != calibration[url]
    ]
    assert not wrong, f"{len(wrong)} requests with findings of another request, e.g. {wrong[:2]}"
