"""RediSearch and other Redis commands the contrib's helpers mishandle, on a real RediSearch.

``FT.SEARCH`` with redis-py 8's default protocol (RESP3) answers a dict; the contrib's
``_add_search_attributes`` indexes it as a list and raises KeyError, which failed the
application's call (a 500) under the agent. It also exported the query and every field of every
document found. Here the server is valkey-server with the RediSearch module (harness/redisearch.py):
the application must get exactly what it gets without the agent, and the span must hold no value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import wrapt
from harness.redisearch import RediSearchServer, module_and_server
from harness.traced import Traced
from opentelemetry.instrumentation.utils import suppress_instrumentation

from hms_otel_agent.instrument import cache_hooks
from hms_otel_agent.signals.key_pattern import key_pattern

NAME = "Zebediah " + "Quillfeather"  # built at run time: not in this file's source as one string
MRN = "MRN-" + "QZ7731X"
SECRETS = ("Zebediah", "Quillfeather", "QZ7731X", "1931")
REDIS_SCOPE = "opentelemetry.instrumentation.redis"


@pytest.fixture(scope="module")
def search_url() -> Iterator[str]:
    found = module_and_server()
    if isinstance(found, str):
        pytest.skip(found)
    server = RediSearchServer()
    try:
        yield server.start()
    finally:
        server.stop()


def _client(url: str, protocol: int | None) -> Any:
    import redis

    if protocol is None:
        return redis.Redis.from_url(url)  # redis-py's default
    return redis.Redis.from_url(url, protocol=protocol)


@pytest.fixture(scope="module")
def patients_index(search_url: str) -> str:
    from redis.commands.search.field import NumericField, TextField
    from redis.commands.search.index_definition import IndexDefinition

    client = _client(search_url, 2)
    with suppress_instrumentation():
        client.flushall()
        client.ft("idx:patients").create_index(
            [TextField("name"), TextField("mrn"), NumericField("born")],
            definition=IndexDefinition(prefix=["patient:"]),
        )
        client.hset("patient:1", mapping={"name": NAME, "mrn": MRN, "born": 1931})
        client.hset("patient:2", mapping={"name": "Xanthippe Vorosmarty", "mrn": "MRN-XV4408K", "born": 1948})
        deadline = time.monotonic() + 10
        while client.ft("idx:patients").info()["num_docs"] not in (2, "2", b"2"):
            assert time.monotonic() < deadline, "RediSearch did not index the documents"
            time.sleep(0.02)
    client.close()
    return "idx:patients"


def _exported(span: Any) -> str:
    parts = [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
    parts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    return "\n".join(parts)


def _search_spans(traced: Traced) -> list[Any]:
    return [s for s in traced.spans() if s.name == "redis.search"]


@pytest.mark.parametrize("protocol", [None, 3, 2], ids=["default", "resp3", "resp2"])
def test_ft_search_returns_what_it_returns_without_the_agent(
    traced_session: Traced, search_url: str, patients_index: str, protocol: int | None
) -> None:
    from redis.commands.search.query import Query

    client = _client(search_url, protocol)
    try:
        raw = ("FT.SEARCH", patients_index, "@mrn:{MRN\\-QZ7731X}|Zebediah")
        with suppress_instrumentation():
            expected = client.ft(patients_index).search(Query("Quillfeather"))
            expected_raw = client.execute_command(*raw)
        traced_session.clear()
        with traced_session.tracer.start_as_current_span("job"):
            got = client.ft(patients_index).search(Query("Quillfeather"))
            got_raw = client.execute_command(*raw)
    finally:
        client.close()
    assert repr(got) == repr(expected) and got_raw == expected_raw  # Result has no __eq__
    assert NAME in repr(got)  # the application got the document
    spans = _search_spans(traced_session)
    assert len(spans) == 2
    for span in spans:
        attributes = dict(span.attributes or {})
        assert attributes["redis.search.index"] == key_pattern("idx:patients")
        assert [name for name in attributes if name.startswith("redis.search.")] == ["redis.search.index"]
        assert str(attributes["db.statement"]).startswith("FT.SEARCH ? ?")
        assert span.status.status_code.name == "UNSET"
        text = _exported(span)
        for secret in SECRETS:
            assert secret not in text, text


def test_the_contribs_own_wrapper_no_longer_fails_or_exports_documents(
    traced_session: Traced, search_url: str, patients_index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contrib's wrapper stays on cluster clients and ``Pipeline.immediate_execute_command``:
    it calls the helpers the agent replaced in its module."""
    import redis
    from opentelemetry.instrumentation.redis import RedisInstrumentor, _traced_execute_factory

    ours = redis.Redis.__dict__["execute_command"]
    contrib = wrapt.FunctionWrapper(
        ours.__wrapped__,
        _traced_execute_factory(
            RedisInstrumentor._get_tracer(tracer_provider=traced_session.tracer_provider),
            cache_hooks.redis_request_hook(traced_session.base_settings),
            cache_hooks.redis_response_hook(traced_session.base_settings),
        ),
    )
    monkeypatch.setattr(redis.Redis, "execute_command", contrib)
    client = _client(search_url, 3)
    traced_session.clear()
    try:
        with traced_session.tracer.start_as_current_span("job"):
            reply = client.execute_command("FT.SEARCH", patients_index, "Quillfeather")
    finally:
        client.close()
    assert reply[b"total_results"] == 1
    [span] = _search_spans(traced_session)
    assert set(k for k in (span.attributes or {}) if k.startswith("redis.")) == {"redis.search.index"}
    for secret in SECRETS:
        assert secret not in _exported(span)


def test_ft_create_keeps_the_schema(traced_session: Traced, search_url: str) -> None:
    from redis.commands.search.field import TagField, TextField

    client = _client(search_url, 3)
    traced_session.clear()
    try:
        with traced_session.tracer.start_as_current_span("job"):
            client.ft(f"idx:{MRN}").create_index([TextField("given_name"), TagField("ward")])
    finally:
        client.close()
    [span] = [s for s in traced_session.spans() if s.name == "redis.create_index"]
    attributes = dict(span.attributes or {})
    assert "Field(name: given_name, type: TEXT)" in str(attributes["redis.create_index.fields"])
    assert attributes["redis.create_index.index"] == key_pattern(f"idx:{MRN}")
    assert "QZ7731X" not in _exported(span)


def test_a_command_written_as_one_string_exports_only_the_command(
    traced_session: Traced, redis_client: Any
) -> None:
    """redis-py splits a first argument on whitespace: ``execute_command(f"GET {key}")`` is a GET
    of `key`, and the contrib named the span and the statement after the whole string."""
    redis_client.set(f"patient:{MRN}:summary", b"x")
    traced_session.clear()
    with traced_session.tracer.start_as_current_span("job"):
        assert redis_client.execute_command(f"GET patient:{MRN}:summary") == b"x"
        assert redis_client.execute_command("CONFIG GET maxmemory") is not None
        assert redis_client.execute_command(f"ECHO {MRN}") == MRN.encode()
        pipe = redis_client.pipeline(transaction=False)
        pipe.execute_command(f"GET patient:{MRN}:summary")
        assert pipe.execute() == [b"x"]
        with pytest.raises(redis.ResponseError):  # an identifier sent as a command: no command name
            redis_client.execute_command(f"{MRN} summary")
    spans = [s for s in traced_session.spans() if s.instrumentation_scope.name == REDIS_SCOPE]
    assert [s.name for s in spans] == ["GET", "CONFIG GET", "ECHO", "GET", "?"]
    assert [s.attributes["db.statement"] for s in spans] == [
        "GET ?",
        "CONFIG GET ?",
        "ECHO ?",
        "GET ?",
        "? ?",
    ]
    get = dict(spans[0].attributes or {})
    assert get["hms.cache.operation"] == "GET" and get["hms.cache.hit"] is True
    for span in spans:
        for secret in SECRETS:
            assert secret not in _exported(span)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_the_applications_exception_passes_untouched_even_when_it_cannot_be_printed(
    traced_session: Traced, redis_client: Any
) -> None:
    raised = _Unprintable()

    def callback(response: Any, **options: Any) -> Any:
        raise raised

    redis_client.set_response_callback("GET", callback)
    traced_session.clear()
    with traced_session.tracer.start_as_current_span("job"), pytest.raises(_Unprintable) as caught:
        redis_client.get("patient:1:summary")
    assert caught.value is raised
    [span] = [s for s in traced_session.spans() if s.name == "GET"]
    assert span.end_time is not None
