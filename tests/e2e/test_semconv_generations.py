"""OTEL_SEMCONV_STABILITY_OPT_IN as the agent honours it, from what an OTLP receiver gets.

For each value (unset: the agent's default, the stable names; ``database/dup,http/dup``: both;
``old``: the old names only) the sample app runs under hms-otel-run and answers requests, and a
script run under hms-otel-run uses psycopg 3, psycopg2 and redis-py directly: a batch
(``executemany``), a statement that fails (a unique violation), a pipeline. Each generation's
spans carry its names and not the other's; the names contrib 0.66 leaves out are there
(``db.query.summary`` as the span name, ``db.operation.name``, ``db.collection.name``,
``db.response.status_code``, ``error.type``, ``db.operation.batch.size``, Redis ``db.namespace``,
server ``url.path``); every name is in docs/attributes.md; and ``hms-otel analyze`` finds the
same in the spans of each generation.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness.otlp_receiver import OtlpReceiver, ReceivedDataPoint, ReceivedSpan
from harness.processes import AppProcess, run, venv_executable
from harness.services import free_port
from report.test_analyze_live import collector_line, offline_findings, without_fixes

from hms_otel_agent import config

from .conftest import otlp_env, runserver

pytestmark = pytest.mark.e2e

GENERATIONS: dict[str, dict[str, str]] = {
    "default": {},
    "dup": {"OTEL_SEMCONV_STABILITY_OPT_IN": "database/dup,http/dup"},
    "old": {"OTEL_SEMCONV_STABILITY_OPT_IN": config.SEMCONV_OLD},
    # The default on the stock paths (instrument/sdk_internals.py): contrib's own span code.
    "stock": {"HMS_OTEL_FAST_PATHS": "false"},
}

PATHS = [
    "/encounters/?limit=6",
    "/patients/optimized/?limit=6",
    "/patients/cached/?limit=6",
    "/patients/1/summary/",
    "/patients/1/summary/",
    "/encounters/search/?reason=checkup&mrn=MRN-000001",
    "/boom/?mrn=MRN-1",
]

SCRIPT = """
import json, os, psycopg, psycopg2, redis
from opentelemetry import trace

with trace.get_tracer("semconv-script").start_as_current_span("semconv-job"):
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE semconv_probe (id int PRIMARY KEY, label text)")
        cur.executemany(
            "INSERT INTO semconv_probe (id, label) VALUES (%s, %s)",
            [(1, "Jane Roe"), (2, "John Doe"), (3, "Ann Lee")],
        )
        cur.executemany("INSERT INTO semconv_probe (id, label) VALUES (%s, %s)", [(4, "Solo")])
        cur.execute("SELECT label FROM semconv_probe WHERE id = %s", (1,))
        try:
            cur.execute("INSERT INTO semconv_probe (id, label) VALUES (1, 'MRN-424242')")
        except psycopg.errors.UniqueViolation:
            pass
        peer = {"host": conn.info.host, "port": conn.info.port, "dbname": conn.info.dbname}
    other = psycopg2.connect(os.environ["DATABASE_URL"])
    other.cursor().execute("SELECT count(*) FROM hms_patient WHERE mrn = 'MRN-000001'")
    other.close()
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    r.set("semconv:1:name", "Jane Roe")
    r.get("semconv:1:name")
    pipe = r.pipeline(transaction=False)
    pipe.get("semconv:1:name")
    pipe.get("semconv:2:name")
    pipe.execute()
print("PEER", json.dumps(peer))
"""

OLD_DB = {
    "db.system",
    "db.statement",
    "db.name",
    "db.user",
    "net.peer.name",
    "net.peer.port",
    "db.statement.parameters",
}
STABLE_DB = {"db.system.name", "db.query.text", "db.namespace", "server.address", "server.port"}
AGENT_STABLE_DB = {"db.query.summary", "db.operation.name", "db.collection.name"}
OLD_HTTP = {"http.method", "http.status_code", "http.scheme", "http.flavor", "http.host", "net.host.port"}
STABLE_HTTP = {"http.request.method", "http.response.status_code", "url.scheme", "url.path", "server.address"}
OLD_REDIS = {"db.system", "db.statement", "db.redis.database_index", "net.peer.name", "net.peer.port"}
STABLE_REDIS = {"db.system.name", "db.query.text", "db.namespace", "db.operation.name", "server.address"}
SQL_SCOPES = ("opentelemetry.instrumentation.psycopg", "opentelemetry.instrumentation.psycopg2")
REDIS_SCOPE = "opentelemetry.instrumentation.redis"
DJANGO_SCOPE = "opentelemetry.instrumentation.django"


@dataclass
class Generation:
    name: str
    app: list[ReceivedSpan]
    script: list[ReceivedSpan]
    points: list[ReceivedDataPoint]
    peer: dict[str, Any]
    collector_file: Path

    def spans(self) -> list[ReceivedSpan]:
        return self.app + self.script

    def sql(self, spans: list[ReceivedSpan] | None = None) -> list[ReceivedSpan]:
        return [s for s in (self.script if spans is None else spans) if s.scope_name in SQL_SCOPES]

    def redis(self) -> list[ReceivedSpan]:
        return [s for s in self.script if s.scope_name == REDIS_SCOPE]

    def servers(self) -> list[ReceivedSpan]:
        spans = [
            s
            for s in self.app
            if s.kind == "SPAN_KIND_SERVER" and s.attributes.get("http.route") != "health/"
        ]
        return sorted(spans, key=lambda s: s.start_time_unix_nano)


def _run(name: str, env: dict[str, str], sample_app_db: dict[str, str], tmp: Path) -> Generation:
    import redis

    redis.Redis.from_url(sample_app_db["REDIS_URL"]).flushdb()  # the same cold cache each time
    with OtlpReceiver() as receiver:
        base = {
            **sample_app_db,
            **otlp_env(receiver, "http/protobuf"),
            "HMS_OTEL_CAPTURE_SQL_PARAMETERS": "true",  # for analyze to tell duplicates apart
            "HMS_OTEL_CAPTURE_CACHE_KEYS": "true",
            "HMS_OTEL_LIVE_LOG": "false",
            **env,
        }
        port = free_port()
        app = AppProcess(
            [venv_executable("hms-otel-run"), "--", *runserver(port, "--noreload")],
            env=base,
            base_url=f"http://127.0.0.1:{port}",
            stop_signal=signal.SIGINT,
            log_dir=tmp,
            name=name,
        ).start()
        try:
            app.wait_http("/health/", timeout=60)
            for path in PATHS:
                app.request("GET", path)
        finally:
            app.stop()
        receiver.wait_for_spans(lambda s: s.kind == "SPAN_KIND_SERVER", count=len(PATHS) + 1)
        app_ids = {s.span_id for s in receiver.spans()}
        collector_file = tmp / f"{name}.jsonl"
        requests = [r.message for r in receiver.requests("traces") if r.message is not None]
        collector_file.write_text("".join(collector_line(m) + "\n" for m in requests))

        script = run([venv_executable("hms-otel-run"), sys.executable, "-c", SCRIPT], env=base, timeout=120)
        assert script.returncode == 0, script.stderr
        receiver.wait_for_spans(lambda s: s.name == "semconv-job")
        receiver.wait_for_spans(lambda s: s.scope_name == REDIS_SCOPE, count=3)
        peer = json.loads(script.stdout.split("PEER ", 1)[1])
        spans = receiver.spans()
        return Generation(
            name,
            app=[s for s in spans if s.span_id in app_ids],
            script=[s for s in spans if s.span_id not in app_ids],
            points=receiver.metrics(),
            peer=peer,
            collector_file=collector_file,
        )


@pytest.fixture(scope="module")
def generations(
    sample_app_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Generation]]:
    tmp = tmp_path_factory.mktemp("semconv-generations")
    try:
        yield {name: _run(name, env, sample_app_db, tmp) for name, env in GENERATIONS.items()}
    except Exception:
        for path in sorted(tmp.glob("*.log")) + sorted(tmp.glob("*out*")):
            print(f"--- {path.name}\n{path.read_text()[-4000:]}")
        raise


def names(spans: list[ReceivedSpan]) -> set[str]:
    return set().union(*(s.attributes for s in spans)) if spans else set()


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def test_each_generation_has_its_names_and_not_the_others(generations: dict[str, Generation]) -> None:
    for generation, emits_old, emits_stable in (
        ("default", False, True),
        ("dup", True, True),
        ("old", True, False),
    ):
        g = generations[generation]
        for spans, old, stable in (
            (g.sql(g.spans()), OLD_DB, STABLE_DB | AGENT_STABLE_DB),
            (g.redis(), OLD_REDIS, STABLE_REDIS),
            (g.servers(), OLD_HTTP, STABLE_HTTP),
        ):
            found = names(spans)
            assert spans, generation
            if emits_old:
                assert old <= found, (generation, sorted(old - found))
            else:
                assert not old & found, (generation, sorted(old & found))
            if emits_stable:
                assert stable <= found, (generation, sorted(stable - found))
            else:
                assert not stable & found, (generation, sorted(stable & found))
        # Every SQL span of the generation, not just some, has what it promises.
        for span in g.sql(g.spans()):
            if emits_stable:
                assert span.attributes["db.system.name"] == "postgresql", span.name
            if emits_old:
                assert span.attributes["db.system"] == "postgresql", span.name


def test_sql_spans_are_named_by_their_summary_with_operation_and_collection(
    generations: dict[str, Generation],
) -> None:
    for generation in ("default", "dup"):
        g = generations[generation]
        select = by_name(g.sql(), "SELECT semconv_probe")
        assert select.attributes["db.operation.name"] == "SELECT"
        assert select.attributes["db.collection.name"] == "semconv_probe"
        assert select.attributes["db.query.summary"] == "SELECT semconv_probe"
        assert select.attributes["db.query.parameter.0"] == "1"
        assert select.attributes["db.namespace"] == g.peer["dbname"]
        assert select.attributes["server.address"] == g.peer["host"]
        assert select.attributes["server.port"] == int(g.peer["port"])
        by_name(g.sql(), "SELECT hms_patient")  # psycopg2 too
        # The ORM's statements, in the app's requests.
        app_names = {s.name for s in g.sql(g.app)}
        assert {"SELECT hms_patient", "SELECT hms_encounter"} <= app_names, app_names
    old = generations["old"]
    assert {s.name for s in old.sql()} >= {"SELECT", "INSERT"}
    assert not any(" " in s.name for s in old.sql()), "old names: the contrib's first keyword"


def test_the_stock_paths_give_the_same_statement_names(generations: dict[str, Generation]) -> None:
    """With HMS_OTEL_FAST_PATHS=false the contrib makes the SQL span and the agent's hooks add the
    statement's names; the batch is the one thing they cannot tell (the method is not passed)."""
    stock, fast = generations["stock"], generations["default"]
    assert {s.name for s in stock.sql()} == {s.name for s in fast.sql()} - {"BATCH INSERT semconv_probe"} | {
        "INSERT semconv_probe"
    }
    for span in stock.sql():
        twin = [s for s in fast.sql() if s.name == span.name]
        if twin and span.name != "INSERT semconv_probe":
            keys = ("db.operation.name", "db.collection.name", "db.query.summary", "db.response.status_code")
            assert {k: span.attributes.get(k) for k in keys} == {k: twin[0].attributes.get(k) for k in keys}
    [failed] = [s for s in stock.sql() if s.status_code == "STATUS_CODE_ERROR"]
    assert failed.attributes["error.type"] == failed.attributes["db.response.status_code"] == "23505"


def test_executemany_of_two_or_more_sets_is_a_batch(generations: dict[str, Generation]) -> None:
    for generation in ("default", "dup"):
        g = generations[generation]
        batch = by_name(g.sql(), "BATCH INSERT semconv_probe")
        assert batch.attributes["db.operation.batch.size"] == 3
        assert batch.attributes["db.operation.name"] == "BATCH INSERT"
        assert batch.attributes["db.query.summary"] == "BATCH INSERT semconv_probe"
        inserts = [s for s in g.sql() if s.name == "INSERT semconv_probe"]
        assert len(inserts) == 2  # the single-set executemany and the failing insert
        assert all("db.operation.batch.size" not in s.attributes for s in inserts)
    assert "db.operation.batch.size" not in names(generations["old"].sql())


def test_a_failed_statement_has_its_sqlstate_and_no_literal(generations: dict[str, Generation]) -> None:
    for generation, g in generations.items():
        [failed] = [s for s in g.sql() if s.status_code == "STATUS_CODE_ERROR"]
        text = failed.attributes.get("db.query.text", failed.attributes.get("db.statement"))
        assert "MRN-424242" not in str(text) and "?" in str(text), text
        if generation == "old":
            assert (
                "db.response.status_code" not in failed.attributes and "error.type" not in failed.attributes
            )
        else:
            assert failed.attributes["db.response.status_code"] == "23505"  # unique_violation
            assert failed.attributes["error.type"] == "23505"
    assert not [
        s
        for s in generations["default"].sql()
        if s.status_code != "STATUS_CODE_ERROR" and "error.type" in s.attributes
    ]


def test_redis_spans_have_the_command_and_the_database_index(
    generations: dict[str, Generation], sample_app_db: dict[str, str]
) -> None:
    index = urlsplit(sample_app_db["REDIS_URL"]).path.strip("/") or "0"
    for generation in ("default", "dup"):
        g = generations[generation]
        set_span = by_name(g.redis(), "SET")
        assert set_span.attributes["db.operation.name"] == "SET"
        assert set_span.attributes["db.namespace"] == index
        assert set_span.attributes["db.query.text"] == "SET ? ?"
        assert set_span.attributes["db.system.name"] == "redis"
        pipeline = by_name(g.redis(), "GET GET")
        assert pipeline.attributes["db.operation.name"] == "BATCH GET"
        assert pipeline.attributes["db.operation.batch.size"] == 2
        assert pipeline.attributes["db.namespace"] == index
    old = generations["old"]
    assert by_name(old.redis(), "SET").attributes["db.redis.database_index"] == int(index)


def test_server_spans_have_the_templated_path_redacted_query_and_no_client_address(
    generations: dict[str, Generation],
) -> None:
    for generation in ("default", "dup"):
        servers = generations[generation].servers()
        assert [s.attributes["url.path"] for s in servers][3:6] == [
            "/patients/{pk}/summary/",
            "/patients/{pk}/summary/",
            "/encounters/search/",
        ]
        search = servers[5]
        assert search.attributes["url.query"] == "reason=REDACTED&mrn=REDACTED" or (
            "MRN" not in str(search.attributes["url.query"]) and "mrn=" in str(search.attributes["url.query"])
        )
        assert search.attributes["http.route"] == "encounters/search/"
        for span in servers:
            assert ":" not in str(span.attributes["server.address"]), span.attributes["server.address"]
            assert isinstance(span.attributes["server.port"], int)
        boom = servers[-1]
        assert boom.attributes["http.response.status_code"] == 500 and boom.attributes["error.type"] == "500"
    for g in generations.values():
        assert not {"client.address", "net.peer.ip"} & names(g.app), "an IP address identifies a patient"
        assert "MRN-000001" not in json.dumps([s.attributes for s in g.app], default=str)


def test_metrics_have_the_generations_names(generations: dict[str, Generation]) -> None:
    for generation in ("default", "dup"):
        points = generations[generation].points
        db = [p for p in points if p.name == "db.client.operation.duration"]
        assert {"db.system.name", "db.operation.name", "db.collection.name", "db.query.summary"} <= names_of(
            db
        )
        assert any(
            p.attributes.get("error.type") == "23505"
            and p.attributes.get("db.response.status_code") == "23505"
            for p in db
        )
        http = [p for p in points if p.name == "http.server.request.duration"]
        assert {"http.request.method", "http.route", "http.response.status_code"} <= names_of(http)
    default = {p.name for p in generations["default"].points}
    assert "http.server.duration" not in default
    old = {p.name for p in generations["old"].points}
    assert (
        "http.server.duration" in old
        and not {"db.client.operation.duration", "http.server.request.duration"} & old
    )
    connects = [
        e.attributes for s in generations["default"].app for e in s.events if e.name == "hms.db.connect"
    ]
    assert connects and all("db.system.name" in a and "db.system" not in a for a in connects)


def names_of(points: list[ReceivedDataPoint]) -> set[str]:
    return set().union(*(p.attributes for p in points)) if points else set()


def test_analyze_finds_the_same_in_each_generation(generations: dict[str, Generation]) -> None:
    found = {name: without_fixes(offline_findings(g.collector_file)) for name, g in generations.items()}
    by_route = {name: _by_route(found[name], g) for name, g in generations.items()}
    kinds = {k[0] for keys in by_route["default"].values() for k in keys}
    assert {"n_plus_one", "cache_n_plus_one"} <= kinds, kinds
    assert by_route["old"] == by_route["default"] == by_route["dup"]


def _by_route(found: dict[str, set[tuple[Any, ...]]], g: Generation) -> dict[str, set[tuple[Any, ...]]]:
    """Findings per request path (span ids differ between runs)."""
    route_of = {s.span_id: s.attributes.get("http.route") for s in g.app}
    out: dict[str, set[tuple[Any, ...]]] = {}
    for span_id, keys in found.items():
        out.setdefault(str(route_of.get(span_id)), set()).update(keys)
    return out


DOC = (Path(__file__).resolve().parents[2] / "docs" / "attributes.md").read_text()
# Names in backquotes anywhere in the document; <key> and <name> stand for any suffix.
DOCUMENTED = set(re.findall(r"`([a-z][\w.]*(?:<\w+>)?)`", DOC))


def documented(name: str) -> bool:
    if name in DOCUMENTED:
        return True
    return any(d.endswith(">") and name.startswith(d[: d.index("<")]) for d in DOCUMENTED)


def test_every_exported_name_is_in_the_attributes_document(generations: dict[str, Generation]) -> None:
    missing: dict[str, list[str]] = {}
    for generation, g in generations.items():
        exported = names(g.spans()) | names_of(g.points)
        exported |= {k for s in g.spans() for e in s.events for k in e.attributes}
        exported |= {p.name for p in g.points}
        undocumented = sorted(n for n in exported if not documented(n))
        if undocumented:
            missing[generation] = undocumented
    assert missing == {}, f"exported but not in docs/attributes.md: {missing}"
