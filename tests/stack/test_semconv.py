"""transform/semconv(_events): the collector fills in the stable semantic-convention names from the old ones.

Checked against independent sources: the renames against the deprecation notes of the
opentelemetry-semantic-conventions package ("Deprecated: Replaced by `db.query.text`."), the set
of old names against those the contrib instrumentations can emit (the deprecated constants that
opentelemetry-instrumentation's _semconv module imports), the URL split against urllib; and run
(tests/stack/ottl.py) on hypothesis-made spans: it only ever adds attributes. Real payloads of
both generations go through it in tests/e2e/test_collector_semconv.py.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .ottl import Span, Transform
from .stackfiles import otelcol, semconv_deprecated, semconv_stable

SET_FROM = re.compile(
    r'^set\((span|spanevent)\.attributes\["([^"]+)"\],\s*'
    r'(?:Format\("%d",\s*\[)?\1\.attributes\["([^"]+)"\]'
)

# Renames the deprecation notes do not name, each made for a reason.
NOT_IN_THE_NOTES = {
    # what opentelemetry-instrumentation's HTTP server code emits for the peer in stable mode
    ("net.peer.ip", "client.address"),
    # not a rename: error.type is the status code of a failed request, as contrib sets it
    ("http.status_code", "error.type"),
    # a server span's full URL (Django under runserver sends no http.target): the stable server
    # conventions have no url.full, its path and query go to url.path and url.query
    ("http.url", "url.path"),
    ("http.url", "url.query"),
}


SEMCONV_PROCESSORS = ("transform/semconv", "transform/semconv_events")  # span, span-event context


def semconv_statements() -> list[str]:
    return [s for p in SEMCONV_PROCESSORS for s in otelcol()["processors"][p]["trace_statements"]]


def semconv_transform() -> Transform:
    """Both processors, in pipeline order."""
    transforms = [Transform.from_config(otelcol()["processors"][p]) for p in SEMCONV_PROCESSORS]
    return Transform([s for t in transforms for s in t.statements])


def renames() -> list[tuple[str, str]]:
    """(old, new) for every statement that copies an old attribute into a new one."""
    found = []
    for statement in semconv_statements():
        m = SET_FROM.match(statement)
        if m:
            found.append((m.group(3), m.group(2)))
    return found


def contrib_old_names() -> set[str]:
    """Old attribute names the contrib instrumentations (opentelemetry-instrumentation) can emit."""
    import opentelemetry.instrumentation._semconv as contrib

    names = set()
    source = Path(contrib.__file__).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "opentelemetry.semconv._incubating.attributes"
        ):
            module = importlib.import_module(node.module or "")
            names |= {getattr(module, alias.name) for alias in node.names}
    return names


def test_every_statement_is_one_the_interpreter_runs() -> None:
    transform = semconv_transform()
    assert len(transform.statements) == len(semconv_statements())
    processors = otelcol()["service"]["pipelines"]["traces/in"]["processors"]
    positions = [processors.index(p) for p in SEMCONV_PROCESSORS]
    assert positions == sorted(positions), "the order semconv_transform runs them in"
    assert len(renames()) >= 25


def test_every_rename_follows_the_semantic_conventions() -> None:
    stable, deprecated = semconv_stable(), semconv_deprecated()
    for old, new in renames():
        assert new in stable, f"{new} is not a stable semantic-convention attribute"
        assert old in deprecated, f"{old} is not a deprecated semantic-convention attribute"
        if (old, new) not in NOT_IN_THE_NOTES:
            assert f"`{new}`" in deprecated[old], f"{old} -> {new}, but the note says {deprecated[old]!r}"
    assert set(renames()) >= NOT_IN_THE_NOTES, "an exception that is no longer needed"


def test_every_old_name_the_contrib_instrumentations_emit_is_renamed() -> None:
    old_names = contrib_old_names()
    assert {"db.statement", "db.system", "http.method", "http.target", "net.peer.name"} <= old_names
    renamed = {old for old, _ in renames()}
    for name in sorted(old_names):
        note = semconv_deprecated()[name]
        if "Removed" in note:
            assert name not in renamed
            continue
        assert name in renamed, f"{name} ({note}) has no stable name in transform/semconv"


def test_the_stable_names_go_where_the_conventions_put_them_for_each_span_kind() -> None:
    """net.peer.* is the server of a client span but the client of a server span."""
    transform = semconv_transform()
    client = Span("SELECT", "SPAN_KIND_CLIENT", {"net.peer.name": "db.internal", "net.peer.port": 5432})
    server = Span("GET", "SPAN_KIND_SERVER", {"net.peer.name": "10.1.2.3", "net.peer.port": 40000})
    transform.apply(client)
    transform.apply(server)
    assert (client.attributes["server.address"], client.attributes["server.port"]) == ("db.internal", 5432)
    assert "client.address" not in client.attributes
    assert (server.attributes["client.address"], server.attributes["client.port"]) == ("10.1.2.3", 40000)
    assert "server.address" not in server.attributes


def test_old_database_and_http_spans_get_the_stable_names() -> None:
    transform = semconv_transform()
    db = Span(
        "SELECT",
        "SPAN_KIND_CLIENT",
        {"db.system": "postgresql", "db.name": "hms", "db.statement": "SELECT 1", "db.user": "hms"},
    )
    redis = Span(
        "GET",
        "SPAN_KIND_CLIENT",
        {
            "db.system": "redis",
            "db.redis.database_index": 13,
            "db.statement": "GET ?",
            "net.transport": "ip_tcp",
        },
    )
    http = Span(
        "GET patients/",
        "SPAN_KIND_SERVER",
        {"http.method": "GET", "http.target": "/patients/?limit=5", "http.status_code": 503},
    )
    ok = Span("GET", "SPAN_KIND_SERVER", {"http.method": "GET", "http.status_code": 404})
    event_span = Span("GET", "SPAN_KIND_SERVER", {}, events=[_event({"db.system": "postgresql"})])
    for span in (db, redis, http, ok, event_span):
        transform.apply(span)
    assert {k: db.attributes[k] for k in ("db.system.name", "db.namespace", "db.query.text")} == {
        "db.system.name": "postgresql",
        "db.namespace": "hms",
        "db.query.text": "SELECT 1",
    }
    assert db.attributes["db.user"] == "hms"  # no stable name, left alone
    assert redis.attributes["db.namespace"] == "13"  # the stable one is a string
    assert redis.attributes["network.transport"] == "tcp"
    assert http.attributes["http.request.method"] == "GET"
    assert http.attributes["http.response.status_code"] == 503
    assert (http.attributes["url.path"], http.attributes["url.query"]) == ("/patients/", "limit=5")
    assert http.attributes["error.type"] == "503"
    assert "error.type" not in ok.attributes  # a 404 answer is no server error
    assert event_span.events[0].attributes["db.system.name"] == "postgresql"


def _event(attributes: dict[str, Any]) -> Any:
    from .ottl import Event

    return Event("hms.db.connect", attributes)


# --- properties -----------------------------------------------------------------------------------

KNOWN = sorted({name for pair in renames() for name in pair})
VALUES = st.one_of(st.text(max_size=30), st.integers(-5, 70000), st.booleans())
KINDS = st.sampled_from(["SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_INTERNAL"])


@given(st.dictionaries(st.sampled_from(KNOWN), VALUES, max_size=12), KINDS)
def test_it_never_changes_or_removes_an_attribute_the_span_had(attributes: dict[str, Any], kind: str) -> None:
    """A span in dup mode (old and stable names) or with only the stable ones passes unchanged
    in what it had; only missing stable names are added."""
    span = Span("x", kind, dict(attributes))
    semconv_transform().apply(span)
    for key, value in attributes.items():
        assert span.attributes[key] == value, key
    for key in set(span.attributes) - set(attributes):
        assert key in semconv_stable(), key


PATH_CHARS = st.text(alphabet="abcz/%-._~09", max_size=20)
QUERY_CHARS = st.text(alphabet="abz=&%+/?:09", max_size=20)


@given(PATH_CHARS, st.one_of(st.none(), QUERY_CHARS), st.booleans())
def test_url_path_and_query_are_what_urlsplit_makes_of_the_old_target(
    path: str, query: str | None, full_url: bool
) -> None:
    target = "/" + path + ("" if query is None else "?" + query)
    key = "http.url" if full_url else "http.target"
    value = f"http://hms.example:8000{target}" if full_url else target
    span = Span("GET", "SPAN_KIND_SERVER", {key: value})
    semconv_transform().apply(span)
    parts = urlsplit(value if full_url else "http://h" + value)  # an origin-form target: no netloc
    assert span.attributes["url.path"] == parts.path
    if parts.query:
        assert span.attributes["url.query"] == parts.query
    else:
        assert "url.query" not in span.attributes
    assert span.attributes[key] == value


@pytest.mark.parametrize("kind", ["SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"])
def test_a_stable_url_is_never_rewritten_from_an_old_one(kind: str) -> None:
    span = Span(
        "GET",
        kind,
        {
            "http.target": "/old?x=1",
            "http.url": "http://h/old?x=1",
            "url.path": "/new",
            "url.query": "a=b?c",
            "url.full": "http://h/new?a=b?c",
        },
    )
    before = dict(span.attributes)
    semconv_transform().apply(span)
    assert span.attributes == before
