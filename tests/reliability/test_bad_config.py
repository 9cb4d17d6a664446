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
import atexit
import contextlib
import io
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness.processes import run, venv_executable
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hms_otel_agent import agent, config
from hms_otel_agent.launch import run as launcher

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


@given(environments(HMS_OPTIONS))
@example({"HMS_OTEL_STRICT": "true", "HMS_OTEL_LOG_LEVEL": "loud"})
@example({"HMS_OTEL_STRICT": "yes", "HMS_OTEL_MAX_TRACKED_SPANS": "100"})
@example({"HMS_OTEL_STRICT": "sometimes", "HMS_OTEL_LOCAL_DIR": "\u2028"})
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_start_never_raises_except_in_strict_mode(environ: dict[str, str]) -> None:
    assume(all("\x00" not in k + v for k, v in environ.items()))
    with agent_environment(environ):
        loaded = config.load(os.environ)
        strict_failure = loaded.settings.strict and bool(loaded.problems)
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
        assert len(lines) == len(loaded.problems)


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
        assert all("is not accepted (expected" in line and "using the default" not in line for line in lines)


@pytest.mark.parametrize("value", [",", " , ", " ,, "])
def test_a_redaction_list_that_names_nothing_keeps_the_default(value: str) -> None:
    loaded = config.load({"HMS_OTEL_REDACT_QUERY_PARAMS": value})
    assert loaded.settings.redact_query_params == config.DEFAULT_REDACTED_QUERY_PARAMS
    [problem] = loaded.problems
    assert "using the default q,query,search,name," in problem.line(strict=False)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e309", "nan"])
def test_non_finite_numbers_are_not_accepted(value: str) -> None:
    loaded = config.load({"HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS": value})
    assert loaded.settings.n_plus_one_min_duration_ms == 0.0 and len(loaded.problems) == 1
