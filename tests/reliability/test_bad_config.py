"""Bad configuration never crashes anything (property-based, hypothesis).

For every setting in config.OPTIONS (every HMS_OTEL_* variable and the OTEL_* ones the agent
reads) and every command-line flag, arbitrary text (unicode, whitespace, control characters,
huge and negative numbers, NaN, infinities, near-misses of valid values) is either accepted or
answered with the one-line message naming the variable, the value, what is accepted and the
default used; in strict mode, and with `hms-otel config --check`, with exit status 2. The
agent's `start()` never raises with a bad environment, except StrictConfigError in strict mode.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from e2e.conftest import server_span_for
from harness.otlp_receiver import OtlpReceiver
from harness.processes import run, venv_executable
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hms_otel_agent import agent, config
from hms_otel_agent.launch import run as launcher

from .conftest import (
    COMPARABLE_REQUESTS,
    FAST_EXPORT,
    Answer,
    Req,
    assert_same_answers,
    drive,
    gunicorn,
    send,
    start_sample,
)

OPTIONS = config.OPTIONS
HMS_OPTIONS = tuple(o for o in OPTIONS if o.env.startswith("HMS_OTEL_"))
# Values that look like what each setting accepts, and values just beside it.
NEAR_MISSES = [
    "0",
    "1",
    "-1",
    "2",
    "100",
    "1e3",
    "1.5",
    "-0.0",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e309",
    "9" * 30,
    "9" * 5000,  # beyond Python's int() digit limit
    "0x10",
    "1_000",
    "١٢٣",  # Arabic-Indic digits
    "true",
    "TRUE",
    "yes",
    "off",
    "maybe",
    "grpc",
    "http/protobuf",
    "http/json",
    "otlp",
    "otlp,console",
    "none,otlp",
    ",",
    " , ",
    "gzip",
    "http://localhost:4318",
    "https://[::1]:4317",
    "http://:99999",
    "localhost:4317",
    "http://collector.invalid:4318/v1/traces",
    "key=value",
    "=value",
    "a=b,c",
    "debug",
    "WARNING",
    "parentbased_always_on",
    "traceidratio",
    "django,redis",
    "*",
    "q,mrn",
    "auto",
    "\t\n ",
    "\x00",
    "\u2028",
    "\ufeff1",
    "\uff11\uff12",  # full-width digits
]


def values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NEAR_MISSES),
        st.text(max_size=40),
        st.integers(min_value=-(10**40), max_value=10**40).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(NEAR_MISSES).flatmap(
            lambda v: st.sampled_from([f" {v} ", v.upper(), v + "x", "-" + v])
        ),
    )


def environments(options: tuple[config.Option, ...]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from([o.env for o in options]), values(), max_size=len(options))


def assert_one_line(line: str, option: config.Option, strict: bool) -> None:
    assert len(line.splitlines()) == 1 and line == line.strip(), repr(line)
    assert line.startswith(f"hms-otel: {option.env}=") and f"(expected {option.accepted})" in line
    assert ("using the default" in line) is (not strict)


@given(environments(OPTIONS))
@example({"HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS": "inf", "OTEL_TRACES_SAMPLER_ARG": "-inf"})
@example({"HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS": "1e309", "OTEL_RESOURCE_ATTRIBUTES": "0"})
@example({"HMS_OTEL_REDACT_QUERY_PARAMS": " , ", "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": "9" * 5000})
@settings(max_examples=400, deadline=None)
def test_load_accepts_or_answers_in_one_line(environ: dict[str, str]) -> None:
    loaded = config.load(environ)
    problems = {p.option.env: p for p in loaded.problems}
    defaults = config.Settings()
    for option in OPTIONS:
        raw = environ.get(option.env)
        value = getattr(loaded.settings, option.field)
        if raw is None or not raw.strip():
            assert option.env not in problems and value == getattr(defaults, option.field)
            continue
        if option.env in problems:
            assert value == option.default  # the default is used
            assert problems[option.env].value == raw
            for strict in (False, True):
                assert_one_line(problems[option.env].line(strict), option, strict)
        else:
            assert value == option.parse(raw)
            assert loaded.settings.sources[option.field] == "env"
            if isinstance(value, float):
                assert math.isfinite(value), (option.env, raw)


# --- what each message says is accepted is what the parser accepts ----------------------------------

_LOWER_ONLY = re.compile(r">= (-?[0-9.]+)$")
_RANGE = re.compile(r"from (-?[0-9.]+) to (-?[0-9.]+)$")


def accepts(parse: config.Parser[Any], value: str) -> bool:
    try:
        parse(value)
    except config.ConfigError:
        return False
    return True


def check_bounds_stated(parse: config.Parser[Any]) -> None:
    """The bounds in the accepted text are where the parser starts and stops accepting: the lowest
    and highest stated values pass, one step beyond fails, and a text without an upper bound means
    the parser takes any large number. Found by calling the parser, not by reading its fields."""
    text = parse.accepted
    lower_only, both = _LOWER_ONLY.search(text), _RANGE.search(text)
    assert lower_only or both, f"no bounds stated in {text!r}"
    integer = isinstance(parse, config.Int)
    number = int if integer else float
    low = number((both or lower_only).group(1))  # type: ignore[union-attr]
    high = number(both.group(2)) if both else None
    step = 1 if integer else 1e-9 * max(1.0, abs(low))
    assert accepts(parse, str(low)), text
    assert not accepts(parse, str(low - step)), text
    if high is None:
        huge = 10**30 if integer else 1e300
        assert accepts(parse, str(huge)), f"{text!r} states no upper bound, but {huge} is refused"
    else:
        assert accepts(parse, str(high)), text
        assert not accepts(parse, str(high + (1 if integer else 1e-9 * max(1.0, abs(high))))), text


NUMERIC = [o for o in OPTIONS if isinstance(o.parse, (config.Int, config.Float))]


@pytest.mark.parametrize("option", NUMERIC, ids=[o.env for o in NUMERIC])
def test_the_accepted_text_of_a_number_states_the_parsers_real_bounds(option: config.Option) -> None:
    check_bounds_stated(option.parse)


def test_the_bounds_check_fails_on_a_text_that_omits_a_bound() -> None:
    """The check above can fail: a text that leaves out the upper bound (as four texts once did)."""

    class OmitsUpperBound(config.Int):
        @property
        def accepted(self) -> str:
            return f"an integer >= {self.minimum}"

    with pytest.raises(AssertionError, match="states no upper bound"):
        check_bounds_stated(OmitsUpperBound(100, 10_000_000))


CHOICES = [o for o in OPTIONS if isinstance(o.parse, (config.Choice, config.ChoiceList))]


@given(st.sampled_from(CHOICES), values())
@settings(max_examples=300, deadline=None)
def test_a_choice_is_accepted_exactly_when_the_message_lists_it(option: config.Option, value: str) -> None:
    listed = re.findall(r"[a-z_/]+", option.accepted.replace(" or ", ", ").replace("(comma-separated)", ""))
    for word in listed:
        assert accepts(option.parse, word), (option.env, word)
    if accepts(option.parse, value):
        items = value.split(",") if isinstance(option.parse, config.ChoiceList) else [value]
        assert all(item.strip().lower() in listed for item in items if item.strip()), (option.env, value)


def flag_parser() -> argparse.ArgumentParser:
    return launcher.build_parser()


@given(st.sampled_from(OPTIONS), values())
@settings(max_examples=400, deadline=None)
def test_every_flag_accepts_or_answers_in_one_line(option: config.Option, value: str) -> None:
    """`hms-otel-run --flag=VALUE -- cmd`: accepted (the same value as the variable would be), or a
    usage error (exit 2) whose message names the flag, the value and what is accepted."""
    if option.is_bool:
        args = [option.flag] if value.strip().lower() in ("true", "1") else ["--no-" + option.flag[2:]]
    else:
        args = [f"{option.flag}={value}"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parsed = flag_parser().parse_args([*args, "python", "-c", "pass"])
        except SystemExit as exc:
            assert exc.code == 2
            message = stderr.getvalue().strip().splitlines()
            assert message[-1].startswith("hms-otel-run: error: argument "), message
            assert option.flag in message[-1] and "is not accepted (expected" in message[-1]
            assert option.accepted in message[-1]
            with pytest.raises(config.ConfigError):
                option.parse(value)
            return
    given_values = launcher.given_settings(parsed)
    loaded = config.load({}, given_values)
    assert not loaded.problems
    assert loaded.settings.sources[option.field] == "cli"


# --- in-process start() ------------------------------------------------------------------------------


@contextlib.contextmanager
def agent_environment(environ: dict[str, str]) -> Iterator[None]:
    """os.environ with only `environ` for the agent (exporters off: nothing leaves the test), and
    the agent's global state put back afterwards. The process-wide parts of start() -- the global
    providers and the instrumentation of psycopg, redis and Django -- are left out: they would
    outlive the example and capture the spans of the other tests in this process."""
    from unittest import mock

    from opentelemetry import metrics, trace

    from hms_otel_agent import instrument

    saved = dict(os.environ)
    level = logging.getLogger("hms_otel").level
    for name in list(os.environ):
        if name.startswith(("HMS_OTEL_", "OTEL_")):
            del os.environ[name]
    os.environ.update(environ)
    os.environ.update({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"})
    agent._pipeline = None
    try:
        with (
            mock.patch.object(trace, "set_tracer_provider"),
            mock.patch.object(metrics, "set_meter_provider"),
            mock.patch.object(instrument, "install") as install,
        ):
            yield
            if agent.current_pipeline() is not None:
                install.assert_called_once()
    finally:
        built = agent.current_pipeline()
        if built is not None:
            built.shutdown(1000)
        agent._pipeline = None
        atexit.unregister(agent._at_exit)
        os.environ.clear()
        os.environ.update(saved)
        logging.getLogger("hms_otel").setLevel(level)


@given(environments(HMS_OPTIONS + config.SDK_OPTIONS))
@example({"HMS_OTEL_STRICT": "true", "HMS_OTEL_LOG_LEVEL": "loud"})
@example({"HMS_OTEL_STRICT": "yes", "HMS_OTEL_MAX_TRACKED_SPANS": "100"})
@example({"HMS_OTEL_STRICT": "sometimes", "HMS_OTEL_LOCAL_DIR": "\u2028"})
@example({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "abc", "OTEL_SPAN_EVENT_COUNT_LIMIT": "-1"})
@example({"OTEL_METRICS_EXEMPLAR_FILTER": "ALWAYS_ON", "OTEL_PROPAGATORS": "bogus"})
@example({"OTEL_METRICS_EXEMPLAR_FILTER": " ", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": "\t"})
@example({"HMS_OTEL_STRICT": "true", "OTEL_SPAN_LINK_COUNT_LIMIT": "x"})
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_start_never_raises_except_in_strict_mode(environ: dict[str, str]) -> None:
    """With any values of the agent's settings and of the variables the SDK reads when the agent
    builds its providers (span limits, exemplar filter...): start() succeeds with one line per bad
    value, and no bad value is left in the environment for the SDK, contrib or a child process."""
    assume(all("\x00" not in k + v for k, v in environ.items()))
    with agent_environment(environ):
        loaded = config.load(os.environ)
        strict_failure = loaded.settings.strict and loaded.failed
        with contextlib.redirect_stderr(io.StringIO()) as printed:
            try:
                started = agent.start(detectors=[])
            except agent.StrictConfigError as exc:
                assert strict_failure and exc.code == 2
                return
        assert not strict_failure
        assert started is True
        lines = [
            line for line in printed.getvalue().splitlines() if line.startswith("hms-otel: ") and "=" in line
        ]
        assert sorted(lines) == sorted(loaded.lines())
        for problem in loaded.problems:
            if problem.option.env.startswith("OTEL_"):
                assert os.environ.get(problem.option.env) == problem.option.replacement, problem.option.env
        # What a child process would see: no bad OTEL_* value (HMS_OTEL_* ones only the agent reads,
        # and HMS_OTEL_ANNOUNCED keeps it from repeating their lines).
        assert not [p for p in config.load(os.environ).problems if p.option.env.startswith("OTEL_")]
        assert os.environ.get(agent.ANNOUNCED_ENV) == "1"


# --- the launcher and `hms-otel config --check`, as processes ------------------------------------------

APP = "import hms_otel_agent.agent as a; print('ok', a.current_pipeline() is not None)"


def safe_for_a_process(environ: dict[str, str]) -> dict[str, str]:
    """What an environment variable can hold, and a local dir that stays inside the test's dir."""
    cleaned = {}
    for name, value in environ.items():
        value = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
        if name == "HMS_OTEL_LOCAL_DIR" and value.strip():
            value = "out-" + "".join(c if c.isalnum() else "_" for c in value)[:40]
        cleaned[name] = value
    return cleaned


@pytest.fixture(scope="module")
def process_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-config")


@given(environments(HMS_OPTIONS))
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_launcher_and_config_check_as_processes(process_dir: Path, environ: dict[str, str]) -> None:
    environ = safe_for_a_process(environ)
    environ.pop("HMS_OTEL_STRICT", None)
    base = {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": "0",
    }
    env = {**base, **environ}
    expected = config.load(env)
    problem_lines = sorted(p.line(strict=False) for p in expected.problems)
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "app": ([venv_executable("hms-otel-run"), "--", sys.executable, "-c", APP], env),
        "check": ([venv_executable("hms-otel"), "config", "--check"], env),
        "strict": (
            [venv_executable("hms-otel-run"), "--", sys.executable, "-c", APP],
            {**env, "HMS_OTEL_STRICT": "true"},
        ),
    }

    def execute(
        item: tuple[str, tuple[list[str], dict[str, str]]],
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        name, (command, command_env) = item
        return name, run(command, env=command_env, cwd=process_dir, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        results: dict[str, Any] = dict(pool.map(execute, commands.items()))
    app, check, strict = results["app"], results["check"], results["strict"]
    # The application starts, with the agent, whatever the settings; one line per bad value.
    assert app.returncode == 0 and app.stdout.strip() == "ok True", app.stderr
    assert (
        sorted(line for line in app.stderr.splitlines() if line.startswith("hms-otel: ") and "=" in line)
        == problem_lines
    )
    assert "Traceback" not in app.stderr
    # Deploy-time check and strict mode: exit 2 exactly when something is not accepted.
    assert check.returncode == (2 if expected.problems else 0), check.stderr
    assert strict.returncode == (2 if expected.problems else 0), strict.stderr
    for result in (check, strict):
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == len(expected.problems)
        assert all("is not accepted" in line and "using the default" not in line for line in lines)


@pytest.mark.parametrize("value", [",", " , ", " ,, "])
def test_a_redaction_list_that_names_nothing_is_a_typo_and_redaction_stays(value: str) -> None:
    from hms_otel_agent.signals.http_privacy import REDACTED_QUERY_PARAMS, HttpPrivacy

    loaded = config.load({"HMS_OTEL_REDACT_QUERY_PARAMS": value})
    assert loaded.settings.redact_query_params == ()
    [problem] = loaded.problems
    assert "using the default (empty)" in problem.line(strict=False)
    # The list adds to the built-in one: whatever it holds, the built-in names stay redacted.
    privacy = HttpPrivacy.from_settings(loaded.settings)
    assert privacy.redacted_query >= set(REDACTED_QUERY_PARAMS)
    assert privacy.query("mrn=MRN-1&q=Smith") == "mrn=REDACTED&q=REDACTED"


def test_query_and_header_lists_accept_only_names_that_can_match() -> None:
    loaded = config.load(
        {
            "HMS_OTEL_SAFE_QUERY_PARAMS": "Ward, bed_no",
            "HMS_OTEL_SAFE_HEADERS": "X-Ward",
            "HMS_OTEL_REDACT_HEADERS": "X-Patient-Id",
        }
    )
    assert not loaded.problems
    assert loaded.settings.safe_query_params == ("ward", "bed_no")
    assert loaded.settings.safe_headers == ("x-ward",) and loaded.settings.redact_headers == ("x-patient-id",)
    for env, value in (
        ("HMS_OTEL_SAFE_QUERY_PARAMS", "page size"),
        ("HMS_OTEL_SAFE_QUERY_PARAMS", "bed2"),
        ("HMS_OTEL_SAFE_QUERY_PARAMS", "patient[name]"),
        ("HMS_OTEL_SAFE_HEADERS", "X Ward"),
        ("HMS_OTEL_REDACT_HEADERS", ","),
    ):
        [problem] = config.load({env: value}).problems
        assert problem.option.env == env


@pytest.mark.parametrize("value", ["inf", "-inf", "1e309", "nan"])
def test_non_finite_numbers_are_not_accepted(value: str) -> None:
    loaded = config.load({"HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS": value})
    assert loaded.settings.n_plus_one_min_duration_ms == 0.0 and len(loaded.problems) == 1


# --- the OTEL_* variables the SDK and contrib read themselves ----------------------------------------

SDK_OPTIONS = config.SDK_OPTIONS
SDK_BY_ENV = config.SDK_OPTIONS_BY_ENV
TOKEN = "sekrit-Bearer-7f3a9c"  # a credential: must never be printed
_REGEX_ALPHABET = "()[]{}*+?|\\^$.,:-_/ aZ09#"
_HEADER_ALPHABET = "abcXYZ09=,;:/ \t\"\\%!#$&'*+.^_`|~\u00e9\u2028\n\x7f"


@st.composite
def _header_values(draw: st.DrawFn) -> str:
    entries = draw(
        st.lists(
            st.tuples(
                st.text(_HEADER_ALPHABET, max_size=8),
                st.sampled_from(["=", "", ":", " = "]),
                st.text(_HEADER_ALPHABET, max_size=12),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return ",".join(f"{name}{sep}{value}" for name, sep, value in entries)


def sdk_values(option: config.Option, files: dict[str, str]) -> st.SearchStrategy[str]:
    """Arbitrary text plus values near what the variable takes."""
    parse = option.parse
    near: list[str] = []
    if isinstance(parse, config.Regexes):
        near = [
            "*",
            "health,",
            ",",
            "a(",
            "[",
            "(?P<x>",
            "x{2,1}",
            "a|b",
            "health/.*",
            "(a",
            "b)",
            r"\\",
            "^/$",
            "[[a]",
            "[a&&b]",
            "[a--b]",
        ]
        extra: st.SearchStrategy[str] = st.text(_REGEX_ALPHABET, max_size=12)
    elif isinstance(parse, config.Headers):
        near = [
            f"Authorization: Bearer {TOKEN}",
            f"Authorization=Bearer {TOKEN}",
            f"a=b,{TOKEN}",
            "api-key=x,,",
            "k=v;w",
            f"x={TOKEN}\n",
            "a=b,\n,c=d",
            "a=b, \u2028 ,c=d",
            "Author ization=x",
            "a:b=c",
            "(x)=y",
            "x\u00e9=y",
            "x=\u00e9",
            "x = y , z=w",
            "=x",
            "x=a=b",
        ]
        extra = _header_values()
    elif isinstance(parse, config.ReadableFile):
        near = list(files.values())
        extra = st.sampled_from(list(files.values())).map(lambda p: p + "x")
    elif isinstance(parse, config.EntryPoints):
        near = [
            "tracecontext",
            "baggage",
            "tracecontext,baggage",
            "tracecontext, baggage",
            "tracecontext,",
            "b3",
            "none",
            "NONE",
            "none,bogus",
            "contextvars_context",
            " contextvars_context",
            "*",
            "otel",
        ]
        extra = st.sampled_from(near).map(lambda v: v.upper())
    elif isinstance(parse, (config.Choice, config.ChoiceList)):
        near = [
            *getattr(parse, "choices", ()),
            "DELTA",
            "Delta",
            " delta",
            "ALWAYS_ON",
            " always_on",
            "http/dup,database",
            "HTTP",
            "UNAVAILABLE,unknown",
            "unavailable",
            "bogus",
        ]
        extra = st.sampled_from(near).map(lambda v: v + ",")
    else:
        extra = st.sampled_from(["True", "False", "false", "0", "-1", "unset"])
    return st.one_of(values(), st.sampled_from(near or ["x"]), extra)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("files")
    readable = base / "ca.pem"
    readable.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    unreadable = base / "key.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    return {
        "readable": str(readable),
        "directory": str(base),
        "missing": str(base / "nope.pem"),
        "unreadable": str(unreadable),
    }


class _Complaints(logging.Handler):
    """What the SDK and contrib log at WARNING and above (their way of saying a value was bad)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def complaints() -> Iterator[list[logging.LogRecord]]:
    handler = _Complaints()
    log = logging.getLogger("opentelemetry")
    log.addHandler(handler)
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)


def _read_limits() -> None:
    from opentelemetry.sdk.trace import SpanLimits

    SpanLimits()


def _read_propagators() -> None:
    from opentelemetry import propagate

    propagate._load_propagators()


def _read_context() -> None:
    from opentelemetry import context

    context._load_runtime_context()


def _read_exemplar_filter() -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    MeterProvider(shutdown_on_exit=False).shutdown()


def _read_resource_detectors() -> None:
    from opentelemetry.sdk import resources

    resources._build_resource_detectors()


def _read_bool(name: str) -> Callable[[], None]:
    def read() -> None:
        from opentelemetry.sdk.environment_variables._internal import parse_boolean_environment_variable

        parse_boolean_environment_variable(name)

    return read


def _read_headers(name: str) -> Callable[[], None]:
    def read() -> None:
        from opentelemetry.util.re import parse_env_headers

        parse_env_headers(os.environ[name], liberal=True)

    return read


def _read_file(name: str) -> Callable[[], None]:
    def read() -> None:
        from opentelemetry.exporter.otlp.proto.grpc.exporter import _read_file

        assert _read_file(os.environ[name]) is not None

    return read


def _read_metric_exporter() -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    OTLPMetricExporter(endpoint="http://127.0.0.1:9/v1/metrics").shutdown()


def _read_retryable_codes() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    OTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True).shutdown()


def _read_http_credentials(name: str) -> Callable[[], None]:
    def read() -> None:
        from opentelemetry.exporter.otlp.proto.http._common import _load_session_from_envvar

        _load_session_from_envvar(name)  # type: ignore[arg-type]

    return read


def _read_grpc_credentials(name: str) -> Callable[[], None]:
    def read() -> None:
        from opentelemetry.exporter.otlp.proto.grpc.exporter import _get_credentials

        _get_credentials(None, name, "NO_CERTIFICATE", "NO_KEY", "NO_CLIENT_CERTIFICATE")

    return read


def _read_excluded_urls(library: str = "DJANGO") -> Callable[[], None]:
    def read() -> None:
        from opentelemetry.util.http import get_excluded_urls

        get_excluded_urls(library).url_disabled("http://testserver/patients/?q=1")

    return read


def _read_captured_headers() -> None:
    from opentelemetry.util.http import (
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
        SanitizeValue,
        get_custom_headers,
        normalise_request_header_name,
    )

    sanitize = SanitizeValue(get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS))
    headers = {"Content-Type": "text/html", "X-Patient-Id": "MRN-1", "Authorization": "Bearer x"}
    for variable in (
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE,
    ):
        sanitize.sanitize_header_values(headers, get_custom_headers(variable), normalise_request_header_name)


def _read_middleware_position() -> None:
    from opentelemetry.instrumentation.django import _get_django_otel_middleware_position

    position = _get_django_otel_middleware_position(3)
    assert position == int(os.environ["OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION"]) or position == 0


def _read_semconv() -> None:
    from opentelemetry.instrumentation._semconv import _StabilityMode

    # contrib skips words it does not know; the agent's "old" (no signal named) is one of them
    known = {mode.value for mode in _StabilityMode} | {config.SEMCONV_OLD}
    assert all(
        item.strip() in known
        for item in os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"].split(",")
        if item.strip()
    )


def _accepts_anything() -> None:
    """Read as a flag or as names that may not exist (contrib skips them): nothing can fail."""


READERS: dict[str, Callable[[], None]] = {
    **{o.env: _read_limits for o in SDK_OPTIONS if o.env.endswith("_LIMIT")},
    "OTEL_PROPAGATORS": _read_propagators,
    "OTEL_PYTHON_CONTEXT": _read_context,
    "OTEL_METRICS_EXEMPLAR_FILTER": _read_exemplar_filter,
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": _read_resource_detectors,
    "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": _read_bool("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"),
    **{o.env: _read_headers(o.env) for o in SDK_OPTIONS if o.env.endswith("HEADERS")},
    **{o.env: _read_file(o.env) for o in SDK_OPTIONS if isinstance(o.parse, config.ReadableFile)},
    **{o.env: _accepts_anything for o in SDK_OPTIONS if o.env.endswith("INSECURE")},
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": _read_metric_exporter,
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": _read_metric_exporter,
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": _read_retryable_codes,
    **{
        o.env: _read_http_credentials(o.env)
        for o in SDK_OPTIONS
        if "_HTTP_" in o.env and "CREDENTIAL" in o.env
    },
    **{
        o.env: _read_grpc_credentials(o.env)
        for o in SDK_OPTIONS
        if "_GRPC_" in o.env and "CREDENTIAL" in o.env
    },
    "OTEL_PYTHON_DJANGO_EXCLUDED_URLS": _read_excluded_urls(),
    "OTEL_PYTHON_EXCLUDED_URLS": _read_excluded_urls(),
    **{
        f"OTEL_PYTHON_{lib}_EXCLUDED_URLS": _read_excluded_urls(lib)
        for lib in ("REQUESTS", "HTTPX", "URLLIB3")
    },
    "OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS": _accepts_anything,
    "OTEL_PYTHON_DJANGO_INSTRUMENT": _accepts_anything,
    "OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION": _read_middleware_position,
    **{
        o.env: _read_captured_headers
        for o in SDK_OPTIONS
        if o.env.startswith("OTEL_INSTRUMENTATION_HTTP_CAPTURE")
    },
    "OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS": _accepts_anything,
    "OTEL_SEMCONV_STABILITY_OPT_IN": _read_semconv,
}


def test_every_sdk_variable_has_a_reader_here() -> None:
    assert sorted(READERS) == sorted(SDK_BY_ENV)


@pytest.mark.parametrize("option", SDK_OPTIONS, ids=[o.env for o in SDK_OPTIONS])
@given(data=st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_what_the_agent_accepts_the_sdk_and_contrib_read_without_complaint(
    option: config.Option, files: dict[str, str], data: st.DataObject
) -> None:
    """For each variable the SDK or contrib read: a value the agent accepts, as they then see it
    (config.clean_environ), goes through their own code (the installed packages: span limits,
    propagators, context, the exporters' header, certificate and credential handling, contrib's
    URL and header regexes...) without an exception or a warning. A value the agent refuses never
    reaches them, so this is the direction that must hold."""
    raw = data.draw(sdk_values(option, files))
    assume("\x00" not in raw)
    loaded = config.load({option.env: raw})
    environ = {option.env: raw}
    config.clean_environ(loaded, environ)
    if option.env not in environ:
        return  # removed: the reader's default applies
    with mock.patch.dict(os.environ, environ), complaints() as logged, warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning the reader causes (a FutureWarning of re) fails too
        READERS[option.env]()
    assert not logged, (option.env, raw, [r.getMessage() for r in logged])


_HEADER_REASONS = {
    "entry N of N has no '='",
    "entry N of N has no name before '='",
    "the name of entry N of N has a character not allowed in a header name",
    "the value of entry N of N has a character that must be URL-encoded "
    '(anything but printable ASCII, and " , ; \\)',
}


@given(st.data())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sdk_variables_are_accepted_or_answered_in_one_line(
    files: dict[str, str], data: st.DataObject
) -> None:
    option = data.draw(st.sampled_from(SDK_OPTIONS))
    raw = data.draw(sdk_values(option, files))
    loaded = config.load({option.env: raw})
    if not raw.strip() or accepts(option.parse, raw):
        assert not loaded.problems
        return
    [problem] = loaded.problems
    assert problem.value == raw and problem.source == "env"
    for strict in (False, True):
        line = problem.line(strict)
        assert_one_line(line, option, strict)
        assert line.endswith(f"using the default {option.default_text}") is (not strict)
        if option.secret:
            # The value never shows: the line is the same for any other value with the same
            # reason, and a reason is one of a few fixed sentences about the value's shape.
            assert TOKEN not in line and f"{option.env}=<hidden> " in line
            assert line == config.Problem(option, "another value", "env", problem.reason).line(strict)
            if isinstance(option.parse, config.Headers):
                assert re.sub(r"\d+", "N", problem.reason) in _HEADER_REASONS, problem.reason


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("OTEL_PROPAGATORS", "bogus", "installed: baggage, tracecontext"),
        ("OTEL_PROPAGATORS", "tracecontext,", "installed: baggage, tracecontext"),
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "abc", "an integer >= 0"),
        ("OTEL_SPAN_EVENT_COUNT_LIMIT", "-1", "an integer >= 0"),
        ("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "health/(", "missing ), unterminated subpattern"),
        ("OTEL_PYTHON_EXCLUDED_URLS", "healthz,", "an empty entry would match everything"),
        ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "*", "nothing to repeat"),
        ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-(type", "missing )"),
        ("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization: Bearer {TOKEN}", "entry 1 of 1 has no '='"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", f"a=b,Authorization={TOKEN};x", "entry 2 of 2"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem", "no such file"),
        ("OTEL_METRICS_EXEMPLAR_FILTER", "ALWAYS_ON", "trace_based, always_on or always_off"),
        ("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dupe", "http, http/dup, database, database/dup"),
        ("OTEL_PYTHON_CONTEXT", "contextvars", "installed: contextvars_context"),
    ],
)
def test_the_values_that_broke_the_agent_or_the_app_get_one_line(
    variable: str, value: str, says: str
) -> None:
    """The values of the review: each named with its variable, what is accepted and the default."""
    [line] = config.load({variable: value}).lines(strict=False)
    assert line.startswith(f"hms-otel: {variable}=") and says in line and "using the default" in line
    assert TOKEN not in line


# --- the standard variables, as processes -------------------------------------------------------------

CONFIG_APP = str(Path(__file__).parent / "scripts" / "config_app.py")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def app_answers(process_dir: Path) -> str:
    """What the Django script answers without the agent (WSGI and ASGI, with headers to capture)."""
    result = run([sys.executable, CONFIG_APP], cwd=process_dir, timeout=60, check=True)
    assert result.stdout.count(" 200 ") == 4 and result.stdout.count(" 404 ") == 2, result.stdout
    return result.stdout


def exporting_to(receiver: OtlpReceiver, protocol: str) -> dict[str, str]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": "2000",
    }


def run_three_ways(env: dict[str, str], cwd: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """The script under hms-otel-run, `hms-otel config --check`, and the script in strict mode."""
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "app": ([venv_executable("hms-otel-run"), "--", sys.executable, CONFIG_APP], env),
        "check": ([venv_executable("hms-otel"), "config", "--check"], env),
        "strict": (
            [venv_executable("hms-otel-run"), "--", sys.executable, CONFIG_APP],
            {**env, "HMS_OTEL_STRICT": "true"},
        ),
    }

    def execute(
        item: tuple[str, tuple[list[str], dict[str, str]]],
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        name, (command, command_env) = item
        return name, run(command, env=command_env, cwd=cwd, timeout=90)

    with ThreadPoolExecutor(3) as pool:
        return dict(pool.map(execute, commands.items()))


@given(st.sampled_from(["grpc", "http/protobuf"]), st.data())
@example(  # valid limits that truncate every value: the SDK's warning per value stays off stderr
    "grpc", {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "0", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "3"}
)
@example(
    "http/protobuf",
    {
        "OTEL_PROPAGATORS": "bogus",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "abc",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "*",
        "OTEL_PYTHON_DJANGO_EXCLUDED_URLS": "health/(",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization: Bearer {TOKEN}",
        "OTEL_METRICS_EXEMPLAR_FILTER": "ALWAYS_ON",
        "OTEL_PYTHON_CONTEXT": "nope",
    },
)
@example(
    "grpc",
    {
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-api-key={TOKEN};",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/no/such/ca.pem",
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": "UNAVAILABLE,SOMETIMES",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "[",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "x-patient-.*",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes",
        "OTEL_SPAN_EVENT_COUNT_LIMIT": "",
    },
)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_bad_standard_variables_reach_neither_sdk_nor_contrib_as_processes(
    process_dir: Path,
    receiver: OtlpReceiver,
    app_answers: str,
    files: dict[str, str],
    protocol: str,
    data: st.DataObject | dict[str, str],
) -> None:
    """A Django application under hms-otel-run, exporting OTLP, with arbitrary values of the
    variables the SDK and contrib read: it answers exactly as without the agent (WSGI and ASGI,
    requests carrying headers to capture), stderr holds the one line per bad value and nothing
    else -- no SDK or contrib warning, no traceback, no agent error -- and `--check` and strict
    mode exit 2 exactly when something is not accepted."""
    if isinstance(data, dict):
        environ = data
    else:
        names = data.draw(st.lists(st.sampled_from(SDK_OPTIONS), max_size=6, unique_by=lambda o: o.env))
        environ = {o.env: data.draw(sdk_values(o, files)) for o in names}
    env = {**exporting_to(receiver, protocol), **safe_for_a_process(environ)}
    expected = config.load(env)
    results = run_three_ways(env, process_dir)
    app, check, strict = results["app"], results["check"], results["strict"]
    assert app.returncode == 0 and app.stdout == app_answers, app.stderr
    assert sorted(app.stderr.splitlines()) == sorted(expected.lines(strict=False)), app.stderr
    assert check.returncode == strict.returncode == (2 if expected.failed else 0), (
        check.stderr,
        strict.stderr,
    )
    for result in (check, strict):
        assert sorted(line for line in result.stderr.splitlines() if line.strip()) == sorted(
            expected.lines(True)
        )
    for result in results.values():
        assert TOKEN not in result.stdout + result.stderr


_MALFORMED_HEADERS = [
    ("Authorization: Bearer {token}", "OTEL_EXPORTER_OTLP_HEADERS", "http/protobuf"),
    ("Authorization=Bearer {token};scope=all", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "grpc"),
    ("x-api-key={token},Authorization", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "http/protobuf"),
    ("x-tenant=hospital-7,Authorization:Bearer {token}", "OTEL_EXPORTER_OTLP_HEADERS", "grpc"),
    ('api-key="{token}"', "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "http/protobuf"),
    ("Authorization=Bearer\\{token}", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "grpc"),
]


@pytest.mark.parametrize(("shape", "variable", "protocol"), _MALFORMED_HEADERS)
def test_a_malformed_otlp_headers_value_never_shows_its_credential(
    process_dir: Path, shape: str, variable: str, protocol: str
) -> None:
    """Nowhere: not in the application's output under hms-otel-run (which the SDK's exporters
    wrote it to before), nor in `hms-otel config`, `--check`, strict mode, `hms-otel report`; and
    it is not sent to the backend either (the whole value is set aside, as the line says)."""
    value = shape.format(token=TOKEN)
    assert not accepts(SDK_BY_ENV[variable].parse, value)
    with OtlpReceiver() as backend:
        env = {**exporting_to(backend, protocol), variable: value, "OTEL_METRIC_EXPORT_INTERVAL": "200"}
        results = run_three_ways(env, process_dir)
        results["config"] = run([venv_executable("hms-otel"), "config"], env=env, cwd=process_dir, timeout=60)
        assert results["app"].returncode == 0, results["app"].stderr
        assert results["check"].returncode == results["strict"].returncode == 2
        backend.wait_for_spans(lambda span: span.kind == "SPAN_KIND_SERVER", count=1, timeout=30)
        for name, result in results.items():
            assert TOKEN not in result.stdout + result.stderr, name
            assert f"{variable}=<hidden>" in result.stderr or name == "config", (name, result.stderr)
        sent = [str(r.headers) for r in backend.requests()] + [
            r.body.decode("latin-1") for r in backend.requests()
        ]
        assert backend.requests() and not any(TOKEN in text for text in sent)


def test_valid_otlp_headers_are_sent_and_never_printed(process_dir: Path, receiver: OtlpReceiver) -> None:
    """The other side: an accepted value reaches the exporter (the backend gets the header) and
    `hms-otel config` still shows it as <hidden>."""
    env = {**exporting_to(receiver, "http/protobuf"), "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={TOKEN}"}
    receiver.clear()
    app = run([venv_executable("hms-otel-run"), "--", sys.executable, CONFIG_APP], env=env, cwd=process_dir)
    shown = run([venv_executable("hms-otel"), "config"], env=env, cwd=process_dir)
    assert app.returncode == 0 and TOKEN not in app.stdout + app.stderr + shown.stdout + shown.stderr
    assert "OTEL_EXPORTER_OTLP_HEADERS" in shown.stdout and "<hidden>" in shown.stdout
    assert any(r.headers.get("x-api-key") == TOKEN for r in receiver.requests(signal="traces"))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_every_variable_read_under_the_agent_is_in_the_table(process_dir: Path, protocol: str) -> None:
    """Records which OTEL_* and HMS_OTEL_* names are read from the environment by code other than
    the agent's own (the SDK, exporters, contrib's instrumentations; Django over WSGI and ASGI) in
    a process under the agent, and finds each in the table or SDK_OPTIONS -- so an SDK or contrib
    upgrade that reads a new variable fails here until it is validated too."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "200",
        "HMS_OTEL_SHUTDOWN_TIMEOUT_MS": "0",
    }
    result = run([sys.executable, CONFIG_APP, "--record-reads"], env=env, cwd=process_dir, timeout=90)
    assert result.returncode == 0, result.stderr
    read = set(json.loads(result.stdout.splitlines()[-1]))
    assert "OTEL_PROPAGATORS" in read and "OTEL_SPAN_EVENT_COUNT_LIMIT" in read  # the recorder works
    known = {o.env for o in config.ALL_OPTIONS} | config.INTERNAL_VARIABLES
    assert sorted(read - known) == []


def test_importing_the_agent_imports_no_opentelemetry() -> None:
    """agent.start() cleans the environment before the SDK and contrib are imported, as some read
    it when imported (OTEL_PROPAGATORS, OTEL_PYTHON_CONTEXT); the bootstrap imports this module."""
    code = (
        "import sys, hms_otel_agent.agent; print([m for m in sys.modules if m.startswith('opentelemetry')])"
    )
    assert run([sys.executable, "-c", code], check=True).stdout.strip() == "[]"


# --- unknown HMS_OTEL_* names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("HMS_OTEL_N_PLUS_ONE_TRESHOLD", "HMS_OTEL_N_PLUS_ONE_THRESHOLD"),
        ("HMS_OTEL_CAPTURE_SQL_LITERAL", "HMS_OTEL_CAPTURE_SQL_LITERALS"),
        ("hms_otel_explain", "HMS_OTEL_EXPLAIN"),
        ("HMS_OTEL_SLOW_QUERY", "HMS_OTEL_SLOW_QUERY_MS"),
        ("HMS_OTEL_COLOUR", None),
    ],
)
def test_an_unknown_name_is_one_line_with_a_suggestion(name: str, suggestion: str | None) -> None:
    loaded = config.load({name: "3"})
    assert not loaded.problems and loaded.failed
    line = loaded.lines(strict=False)[0]
    assert line.startswith(f"hms-otel: unknown setting {name} (ignored)") and "'3'" not in line
    assert line.endswith(f"; did you mean {suggestion}?") if suggestion else line.endswith("(ignored)")


def test_names_the_agent_sets_for_its_children_are_not_unknown() -> None:
    environ = {name: "1" for name in config.INTERNAL_VARIABLES} | {"HMS_OTEL_TEST_DATABASE_URL": "x"}
    assert not config.load(environ).failed


def test_a_name_with_control_characters_is_escaped() -> None:
    [line] = config.load({"HMS_OTEL_\x1b[2J\nX": "1"}).lines()
    assert "\x1b" not in line and "\n" not in line and "\\x1b[2J\\nX" in line


def test_every_hms_otel_name_in_the_package_is_a_setting_or_listed_as_internal() -> None:
    """The HMS_OTEL_* names the agent and hms-otel-run set for their children are listed in one
    place (config.INTERNAL_VARIABLES); any other name in the code must be a setting."""
    package = Path(config.__file__).parent
    known = {o.env for o in config.ALL_OPTIONS} | config.INTERNAL_VARIABLES
    found: set[str] = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.update(re.findall(r"\bHMS_OTEL_[A-Z0-9_]*[A-Z0-9]\b", node.value))
    assert found and sorted(found - known) == []


def test_unknown_names_exit_2_under_check_and_strict_and_one_line_otherwise(process_dir: Path) -> None:
    env = {
        "HMS_OTEL_N_PLUS_ONE_TRESHOLD": "3",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    results = run_three_ways(env, process_dir)
    line = (
        "hms-otel: unknown setting HMS_OTEL_N_PLUS_ONE_TRESHOLD; did you mean HMS_OTEL_N_PLUS_ONE_THRESHOLD?"
    )
    assert results["check"].returncode == results["strict"].returncode == 2
    assert results["check"].stderr.strip() == results["strict"].stderr.strip() == line
    assert results["app"].returncode == 0
    assert results["app"].stderr.splitlines() == [line.replace("; did", " (ignored); did")]


# --- the two 500s of the review, end to end ---------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    "variables",
    [
        {
            # contrib's Django middleware compiled it on every request: re.error, every request a 500
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "*",
            # contrib's Django instrumentation could not be imported: Django silently not traced
            "OTEL_PYTHON_DJANGO_EXCLUDED_URLS": "health/(",
        },
        {
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "x-request-id",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "[authorization",
            # valid, but a trailing comma matches every URL: Django silently not traced
            "OTEL_PYTHON_EXCLUDED_URLS": "healthz,",
        },
    ],
    ids=["capture-star-excluded-paren", "sanitize-bracket-excluded-comma"],
)
def test_a_bad_contrib_regex_changes_no_answer_and_leaves_django_traced(
    app_process: Callable[..., Any],
    sample_app_db: dict[str, str],
    baseline: list[Answer],
    otlp_receiver: OtlpReceiver,
    variables: dict[str, str],
) -> None:
    """The sample application under gunicorn and hms-otel-run: every request gets the answer it
    gets without the agent (status and body), Django requests are traced, and each bad value is
    one line on stderr, nothing else of it (no internal error of the agent)."""
    env = {
        **sample_app_db,
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint,
        **variables,
    }
    app = start_sample(app_process, gunicorn, env)
    assert_same_answers(drive(app, COMPARABLE_REQUESTS), baseline)
    server_span_for(otlp_receiver, "/stats/")
    if "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS" in variables:
        # A bad sanitize list redacts every captured value rather than none.
        send(app, Req("GET", "/health/?sanitized=1", headers=(("X-Request-Id", "MRN-QZ7731X"),)))
        [span] = otlp_receiver.wait_for_spans(
            lambda s: s.kind == "SPAN_KIND_SERVER" and "sanitized" in str(s.attributes), timeout=20
        )
        assert span.attributes.get("http.request.header.x_request_id") == ["[REDACTED]"], span.attributes
    app.stop()
    lines = [line for line in app.stderr.splitlines() if line.startswith("hms-otel: ")]
    assert sorted(line for line in lines if "is not accepted" in line) == sorted(
        config.load(variables).lines()
    )
    assert not [line for line in lines if "internal error" in line], lines
