"""The settings table: parsing, precedence, and the one-line message for bad values."""

from __future__ import annotations

import dataclasses
import os
from unittest import mock

import pytest

from hms_otel_agent import config


def test_every_settings_field_is_a_row_of_the_table() -> None:
    fields = [f.name for f in dataclasses.fields(config.Settings) if f.name != "sources"]
    assert [o.field for o in config.OPTIONS] == fields
    assert config.Settings() == config.load({}).settings


@pytest.mark.parametrize("option", config.OPTIONS, ids=[o.env for o in config.OPTIONS])
def test_every_default_is_a_value_its_own_parser_accepts(option: config.Option) -> None:
    """A default outside the parser's bounds (or of another kind) would be a value no user could set."""
    if option.default in (None, "", ()):
        return  # unset: the variable is simply not given
    assert option.parse(config._show(option.default)) == option.default


def test_defaults_with_empty_environment() -> None:
    loaded = config.load({})
    assert loaded.problems == []
    assert loaded.settings.n_plus_one_threshold == 5
    assert loaded.settings.exporters("traces") == ("hms_file",)
    assert loaded.settings.sources["n_plus_one_threshold"] == "default"


def test_cli_wins_over_environment() -> None:
    loaded = config.load({"HMS_OTEL_N_PLUS_ONE_THRESHOLD": "7"}, {"HMS_OTEL_N_PLUS_ONE_THRESHOLD": "3"})
    assert loaded.settings.n_plus_one_threshold == 3
    assert loaded.settings.sources["n_plus_one_threshold"] == "cli"


def test_empty_value_counts_as_unset() -> None:
    loaded = config.load({"OTEL_EXPORTER_OTLP_PROTOCOL": "", "OTEL_SERVICE_NAME": "  "})
    assert loaded.problems == []
    assert loaded.settings.otlp_protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("env", "value", "accepted_fragment", "default_shown"),
    [
        ("HMS_OTEL_N_PLUS_ONE_THRESHOLD", "abc", "an integer >= 2", "5"),
        ("HMS_OTEL_N_PLUS_ONE_THRESHOLD", "-3", "an integer >= 2", "5"),
        ("HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS", "-1", "a number >= 0", "0.0"),
        ("HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS", "nan", "a number >= 0", "0.0"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", "grpc or http/protobuf", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317", "an http:// or https:// URL", "(unset)"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://:99999", "an http:// or https:// URL", "(unset)"),
        ("OTEL_TRACES_EXPORTER", "zipkinish", "otlp, console, hms_file or none", "(unset)"),
        ("OTEL_TRACES_SAMPLER_ARG", "2", "a number from 0 to 1", "1.0"),
        ("HMS_OTEL_CAPTURE_CACHE_KEYS", "perhaps", "true or false", "false"),
        ("HMS_OTEL_SAFE_PATH_SEGMENTS", "patients,%2e", "a comma-separated list of path segments", "(empty)"),
    ],
)
def test_bad_value_gives_one_line_naming_variable_value_accepted_and_default(
    env: str, value: str, accepted_fragment: str, default_shown: str
) -> None:
    loaded = config.load({env: value})
    assert len(loaded.problems) == 1
    line = loaded.problems[0].line(strict=False)
    assert "\n" not in line
    assert env in line and repr(value) in line
    assert accepted_fragment in line
    assert line.endswith(f"using the default {default_shown}")
    option = config.OPTIONS_BY_ENV[env]
    assert getattr(loaded.settings, option.field) == option.default


def test_strict_line_does_not_claim_a_default() -> None:
    loaded = config.load({"HMS_OTEL_STRICT": "true", "HMS_OTEL_CACHE_N_PLUS_ONE_THRESHOLD": "x"})
    assert loaded.settings.strict
    assert "using the default" not in loaded.problems[0].line(strict=True)


@pytest.mark.parametrize(
    ("environ", "signal", "expected"),
    [
        ({}, "traces", "http://localhost:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
            "metrics",
            "http://collector:4318/v1/metrics",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x",
            },
            "traces",
            "http://t:1/x",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "traces", "http://localhost:4317"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
            "metrics",
            "http://c:4317",
        ),
    ],
)
def test_endpoint_follows_the_specification(environ: dict[str, str], signal: str, expected: str) -> None:
    assert config.load(environ).settings.endpoint(signal) == expected


def test_exporter_selection() -> None:
    assert config.load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).settings.exporters("traces") == (
        "otlp",
    )
    assert config.load({"OTEL_TRACES_EXPORTER": "otlp"}).settings.exporters("traces") == ("otlp",)
    assert config.load({"OTEL_TRACES_EXPORTER": "none"}).settings.exporters("traces") == ()
    assert config.load({"OTEL_TRACES_EXPORTER": "console,hms_file"}).settings.exporters("traces") == (
        "console",
        "hms_file",
    )
    loaded = config.load({"OTEL_TRACES_EXPORTER": "none,otlp"})
    assert loaded.problems and loaded.settings.traces_exporter is None


def test_timeout_is_milliseconds_as_the_spec_says() -> None:
    settings = config.load(
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "700"}
    ).settings
    assert settings.timeout_s("traces") == 2.5
    assert settings.timeout_s("metrics") == 0.7


def test_flags_are_derived_from_variable_names() -> None:
    option = config.OPTIONS_BY_ENV["HMS_OTEL_N_PLUS_ONE_THRESHOLD"]
    assert option.flag == "--n-plus-one-threshold"
    assert config.OPTIONS_BY_ENV["OTEL_SERVICE_NAME"].flag == "--otel-service-name"
    assert len({o.flag for o in config.OPTIONS}) == len(config.OPTIONS)


def test_clean_environ_keeps_bad_values_from_the_sdk_and_contrib() -> None:
    environ = {
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "abc",  # bad: removed, the SDK's default applies
        "OTEL_SPAN_EVENT_COUNT_LIMIT": " ",  # empty is unset (the SDK would read "no limit")
        "OTEL_SPAN_LINK_COUNT_LIMIT": "64",  # accepted: left as it is
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "[",  # bad: redact everything
        "OTEL_PYTHON_DJANGO_INSTRUMENT": "false",  # contrib only knows "False"
        "OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS": "no",  # contrib takes any value as on
        "OTEL_EXPORTER_OTLP_INSECURE": "1",  # the SDK only knows "true"
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "abc",  # a table row the gRPC exporter also reads
        "OTEL_RESOURCE_ATTRIBUTES": "a=b, ,c=d,",  # the SDK's Resource.create warns about empty items
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD": "x",  # only the agent reads it: left for hms-otel config
        "PATH": "/bin",
    }
    loaded = config.load(environ)
    config.clean_environ(loaded, environ)
    assert environ == {
        "OTEL_SPAN_LINK_COUNT_LIMIT": "64",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": ".*",
        "OTEL_PYTHON_DJANGO_INSTRUMENT": "False",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_RESOURCE_ATTRIBUTES": "a=b,c=d",
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD": "x",
        "PATH": "/bin",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "database,http",  # unset: the agent's default
    }


@pytest.mark.parametrize(
    ("given", "contrib_reads", "line"),
    [
        (None, "database,http", False),  # unset: the agent's default, the stable names
        ("", "database,http", False),  # empty is unset
        ("old", "old", False),  # neither signal named: contrib keeps the old names of both
        ("database/dup,http/dup", "database/dup,http/dup", False),
        ("http", "http", False),  # as the specification says: database left out, old DB names
        ("database,http/dupe", "database,http", True),  # a typo: one line, the default
    ],
)
def test_semconv_opt_in_defaults_to_the_stable_names(
    given: str | None, contrib_reads: str, line: bool
) -> None:
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability as Stability,
    )
    from opentelemetry.instrumentation._semconv import _OpenTelemetryStabilitySignalType as Signal

    from hms_otel_agent.signals.semconv import Mode, mode

    environ = {} if given is None else {"OTEL_SEMCONV_STABILITY_OPT_IN": given}
    loaded = config.load(environ)
    lines = loaded.lines(strict=False)
    assert len(lines) == int(line)
    if line:
        assert lines[0].startswith("hms-otel: OTEL_SEMCONV_STABILITY_OPT_IN='database,http/dupe'")
        assert "or old (comma-separated)" in lines[0] and lines[0].endswith("using the default database,http")
    config.clean_environ(loaded, environ)
    assert environ == {"OTEL_SEMCONV_STABILITY_OPT_IN": contrib_reads}
    # contrib and the agent's own reading (signals.semconv.mode) agree on what it means.
    with (
        mock.patch.dict(os.environ, environ),
        mock.patch.object(Stability, "_initialized", False),
        mock.patch.object(Stability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {}),
    ):  # the process's own reading is restored after
        Stability._initialize()
        for signal, name in ((Signal.DATABASE, "database"), (Signal.HTTP, "http")):
            contrib = Stability._get_opentelemetry_stability_opt_in_mode(signal).value
            ours = mode(contrib_reads, name)
            assert ours == {"default": Mode.OLD, name: Mode.STABLE, f"{name}/dup": Mode.DUP}[contrib]


def test_hms_otel_config_lists_the_standard_variables_that_are_set_and_hides_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hms_otel_agent.launch import cli

    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "x")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t-value")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/keys/s3cr3t-tenant.pem")
    assert cli.main(["config"]) == 0
    out, err = capsys.readouterr()
    assert "s3cr3t" not in out + err
    shown = {line.split()[0]: line for line in out.splitlines() if line.startswith("OTEL_")}
    assert shown["OTEL_PROPAGATORS"].split()[1:] == ["tracecontext", "[env]"]
    assert "not accepted: the default 128 applies" in shown["OTEL_SPAN_EVENT_COUNT_LIMIT"]
    assert (
        "<hidden>" in shown["OTEL_EXPORTER_OTLP_HEADERS"]
        and "<hidden>" in shown["OTEL_EXPORTER_OTLP_CLIENT_KEY"]
    )
    assert err.startswith("hms-otel: OTEL_SPAN_EVENT_COUNT_LIMIT='x' is not accepted")
