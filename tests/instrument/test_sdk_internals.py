"""The fence around private SDK and contrib members (instrument/sdk_internals.py): the version
gate, the HMS_OTEL_FAST_PATHS switch both ways, and that the stock paths make the same spans.

The span-by-span parity of each path is in test_db_spans_like_contrib.py (fast, stock, contrib
alone) and test_redis_spans_like_contrib.py (the agent's wrapper against the contrib's with the
agent's hooks: the stock path); here, one request of the sample app through the whole pipeline.

The agent's attribute writes (set_attributes) leave a span exactly as Span.set_attributes does:
values, order, dropped counts, limits, ended spans, odd values (the last tests).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from hms_otel_agent import config, pipeline
from hms_otel_agent.instrument import db, sdk_internals
from hms_otel_agent.instrument import redis as redis_instrument
from hms_otel_agent.instrument.sdk_internals import set_attributes

TESTED = {name: sorted(versions)[0] for name, versions in sdk_internals.TESTED.items()}


@pytest.fixture
def restore_fast_paths() -> Iterator[None]:
    yield
    sdk_internals.configure(True)


def test_the_installed_versions_are_the_tested_ones() -> None:
    """The pins in pyproject.toml and the gate agree: the suite runs the fast paths."""
    assert sdk_internals.untested(sdk_internals.installed_versions()) == []
    assert sdk_internals.configure(True) is True


def test_an_untested_version_turns_the_fast_paths_off_with_one_line(
    caplog: pytest.LogCaptureFixture, restore_fast_paths: None
) -> None:
    faked = {**TESTED, "opentelemetry-sdk": "1.99.0", "opentelemetry-instrumentation-redis": "0.99b0"}
    with caplog.at_level(logging.WARNING, logger="hms_otel"):
        assert sdk_internals.configure(True, installed=faked) is False
    assert sdk_internals.fast_paths() is False
    lines = [r.getMessage() for r in caplog.records if r.name == "hms_otel"]
    assert len(lines) == 1
    assert "opentelemetry-instrumentation-redis==0.99b0" in lines[0]
    assert "opentelemetry-sdk==1.99.0" in lines[0] and "stock" in lines[0]


def test_the_switch_both_ways(caplog: pytest.LogCaptureFixture, restore_fast_paths: None) -> None:
    with caplog.at_level(logging.WARNING, logger="hms_otel"):
        assert sdk_internals.configure(False, installed=TESTED) is False
        assert sdk_internals.fast_paths() is False
        assert sdk_internals.configure(True, installed=TESTED) is True
        assert sdk_internals.fast_paths() is True
    assert [r for r in caplog.records if r.name == "hms_otel"] == []  # a choice, not a problem
    assert config.load({"HMS_OTEL_FAST_PATHS": "false"}).settings.fast_paths is False
    assert config.load({}).settings.fast_paths is True


def test_missing_distributions_are_not_checked() -> None:
    assert sdk_internals.untested({"opentelemetry-sdk": TESTED["opentelemetry-sdk"]}) == []
    assert sdk_internals.untested({"something-else": "1.0"}) == []


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "stock"])
def test_the_otlp_http_exporter_follows_the_switch(fast: bool, restore_fast_paths: None) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    settings = dataclasses.replace(
        config.load({}).settings, fast_paths=fast, traces_exporter=("otlp",), otlp_protocol="http/protobuf"
    )
    sdk_internals.configure(settings.fast_paths, installed=TESTED)
    exporter = pipeline._otlp_span_exporter(settings)
    made = exporter._inner.get()  # type: ignore[attr-defined]
    assert isinstance(made, OTLPSpanExporter)
    assert (type(made) is OTLPSpanExporter) is not fast  # the agent's encoder subclass when fast
    made.shutdown()


def test_set_attributes_takes_the_public_path_when_off(restore_fast_paths: None) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    span = TracerProvider().get_tracer("t").start_span("s")
    calls: list[dict[str, Any]] = []
    original = span.set_attributes

    def spy(attributes: dict[str, Any]) -> None:
        calls.append(dict(attributes))
        original(attributes)

    span.set_attributes = spy  # type: ignore[method-assign]
    sdk_internals.configure(True, installed=TESTED)
    sdk_internals.set_attributes(span, {"a": 1})
    assert calls == []  # written directly
    sdk_internals.configure(False, installed=TESTED)
    sdk_internals.set_attributes(span, {"b": 2})
    assert calls == [{"b": 2}]
    span.end()
    assert dict(span.attributes or {}) == {"a": 1, "b": 2}


def test_a_failing_hook_is_called_as_the_contrib_calls_it() -> None:
    seen: list[tuple[Any, ...]] = []

    def hook(*args: Any) -> None:
        seen.append(args)
        raise RuntimeError("hook bug")

    sdk_internals.call_hook(hook, "span", "instance")  # no exception reaches the caller
    sdk_internals.call_hook(None, "span")  # not callable: not called, as in the contrib
    assert seen == [("span", "instance")]


def _sample_request(traced: Any) -> list[tuple[Any, ...]]:
    from django.test import Client

    traced.clear()
    Client(raise_request_exception=False).get("/patients/cached/")
    spans = sorted(traced.spans(), key=lambda s: s.start_time or 0)
    timed = ("duration", "_ms", "net.peer.port", "hms.hints", "stacktrace")
    return [
        (
            s.name,
            s.kind,
            s.instrumentation_scope.name if s.instrumentation_scope else "",
            s.status.status_code,
            sorted(e.name for e in s.events),
            {k: v for k, v in (s.attributes or {}).items() if not any(t in k for t in timed)},
        )
        for s in spans
    ]


def test_stock_paths_export_the_same_spans(traced: Any, restore_fast_paths: None) -> None:
    """One page with SQL and Redis through the whole pipeline, with the fast paths and then
    with the stock paths (installed as an untested version would install them)."""
    import redis

    settings = traced.base_settings
    _sample_request(traced)  # warm: the same cache state for both runs below
    fast = _sample_request(traced)
    assert db._original_traced is not None
    fast_wrapper = redis.Redis.__dict__["execute_command"]._self_wrapper
    assert fast_wrapper.__module__ == redis_instrument.__name__
    try:
        sdk_internals.configure(True, installed={**TESTED, "opentelemetry-sdk": "1.99.0"})
        db.uninstall()
        db.install(settings)
        redis_instrument.uninstall()
        redis_instrument.install(settings, traced.tracer_provider)
        assert db._original_traced is None  # the contrib's traced_execution with the agent's hooks
        # The contrib's wrapper, inside the agent's one that folds a Django cache call's commands.
        outer = redis.Redis.__dict__["execute_command"]
        assert outer._self_wrapper is redis_instrument._fold_command
        stock_wrapper = outer.__wrapped__._self_wrapper
        assert stock_wrapper.__module__ == "opentelemetry.instrumentation.redis"
        stock = _sample_request(traced)
    finally:
        sdk_internals.configure(True)
        db.uninstall()
        db.install(settings)
        redis_instrument.uninstall()
        redis_instrument.install(settings, traced.tracer_provider)
    assert stock == fast
    assert any(a.get("hms.db.fingerprint") for *_, a in stock)
    assert any("hms.cache.key_pattern" in a for *_, a in stock)


def test_an_untested_outbound_or_job_instrumentation_turns_the_fast_paths_off(
    caplog: pytest.LogCaptureFixture, restore_fast_paths: None
) -> None:
    """The gate covers every contrib instrumentation the agent drives, not only the SDK and the
    database ones: requests, httpx, urllib3 and Celery too."""
    for name in (
        "opentelemetry-instrumentation-requests",
        "opentelemetry-instrumentation-httpx",
        "opentelemetry-instrumentation-urllib3",
        "opentelemetry-instrumentation-celery",
        "opentelemetry-instrumentation-django",
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hms_otel"):
            assert sdk_internals.configure(True, installed={**TESTED, name: "0.99b0"}) is False
        lines = [r.getMessage() for r in caplog.records if r.name == "hms_otel"]
        assert len(lines) == 1 and f"{name}==0.99b0" in lines[0], lines
        assert sdk_internals.fast_paths() is False
        # The stock paths: the SDK's own exporter class, the spans' public properties.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert sdk_internals.otlp_span_exporter_class("http/protobuf", object) is OTLPSpanExporter
        assert sdk_internals._PUBLIC_FIELDS is not None
        sdk_internals.configure(True, installed=TESTED)
        assert sdk_internals.fast_paths() is True


def test_every_opentelemetry_pin_is_in_the_tested_set() -> None:
    """pyproject.toml pins each OpenTelemetry distribution the agent uses; each is checked at
    start with the pinned version."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"(opentelemetry-[a-z0-9-]+)==([^"]+)"', text))
    pins.pop("opentelemetry-exporter-otlp", None)  # a metapackage: no code of its own
    assert pins
    for name, version in pins.items():
        assert version in sdk_internals.TESTED.get(name, ()), name


def _private_names_outside_the_fence() -> list[str]:
    """Private OpenTelemetry names used outside instrument/sdk_internals.py: imports of a private
    module or name from ``opentelemetry``, and attribute accesses of any private member the
    fence itself names (``span._context``, ``tracer._db_api_integration``, ...)."""
    import ast
    from pathlib import Path

    package = Path(sdk_internals.__file__).resolve().parents[1]
    fence = ast.parse(Path(sdk_internals.__file__).read_text())
    named = {
        node.attr for node in ast.walk(fence) if isinstance(node, ast.Attribute) and node.attr.startswith("_")
    }
    named |= {
        node.value
        for node in ast.walk(fence)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value[:1] == "_"
    }
    named = {n for n in named if not n.startswith("__")} - {"_fast", "_hms_encoder"}
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative == "instrument/sdk_internals.py" or relative.startswith("sample/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
                parts = (node.module or "").split(".")
                names = [alias.name for alias in node.names]
                if any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names):
                    found.append(f"{relative}:{node.lineno} from {node.module} import {', '.join(names)}")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in named
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{relative}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in named:
                found.append(f"{relative}:{node.lineno} {node.value!r}")
    return found


def test_private_opentelemetry_members_are_named_only_in_the_fence() -> None:
    assert _private_names_outside_the_fence() == []


# The agent's attribute writes against Span.set_attributes.


def two_spans(limits: SpanLimits | None = None, initial: dict[str, Any] | None = None) -> tuple[Any, Any]:
    tracer = TracerProvider(span_limits=limits or SpanLimits()).get_tracer("t")
    return tracer.start_span("a", attributes=initial), tracer.start_span("b", attributes=initial)


def same(a: Any, b: Any) -> None:
    assert list(a.attributes.items()) == list(b.attributes.items())
    assert a.dropped_attributes == b.dropped_attributes


_values = (
    st.text(max_size=5)
    | st.integers()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.none()
    | st.lists(st.text(max_size=3), max_size=2)
    | st.binary(max_size=3)
)
_keys = st.sampled_from(["a", "b", "c", "d", "e", "hms.db.fingerprint", ""])


@settings(max_examples=300, deadline=None)
@given(
    initial=st.dictionaries(st.sampled_from(["a", "b", "x"]), st.text(max_size=3), max_size=3),
    writes=st.lists(st.dictionaries(_keys, _values, max_size=4), max_size=3),
    maxlen=st.none() | st.integers(1, 6),
    value_length=st.none() | st.integers(1, 4),
)
def test_the_same_as_set_attributes(initial, writes, maxlen, value_length) -> None:  # type: ignore[no-untyped-def]
    limits = SpanLimits(max_span_attributes=maxlen, max_attribute_length=value_length)
    ours, theirs = two_spans(limits, initial)
    for attributes in writes:
        set_attributes(ours, attributes)
        theirs.set_attributes(attributes)
        same(ours, theirs)


def test_an_ended_span_is_left_alone_with_the_sdks_warning(caplog: pytest.LogCaptureFixture) -> None:
    ours, _ = two_spans()
    ours.end()
    with caplog.at_level(logging.WARNING):
        set_attributes(ours, {"a": "1"})
    assert dict(ours.attributes) == {}
    assert "ended span" in caplog.text


def test_a_key_set_again_moves_to_the_end() -> None:
    ours, theirs = two_spans(initial={"a": "1", "b": "2"})
    set_attributes(ours, {"a": "3"})
    theirs.set_attributes({"a": "3"})
    same(ours, theirs)
    assert list(ours.attributes) == ["b", "a"]
