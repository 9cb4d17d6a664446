"""Every setting the agent reads, in one table, parsed once into a frozen `Settings`.

Agent settings are ``HMS_OTEL_*`` variables, each with a matching command-line flag.
The standard ``OTEL_*`` variables the agent acts on are in the same table so that a bad
value gets the same treatment everywhere: one line naming the variable, the value, what
is accepted and the default used instead (or exit status 2 in strict mode and in
``hms-otel config --check``). They keep the meaning the OpenTelemetry specification gives
them; where the Python SDK departs from the specification (OTEL_EXPORTER_OTLP_TIMEOUT is
milliseconds in the spec, seconds in the SDK) the agent follows the specification.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hms_otel_agent.printable import printable

PREFIX = "HMS_OTEL_"


class ConfigError(ValueError):
    """A value was not accepted; the message says what is accepted."""


# --- parsers: str -> value, raising ConfigError ------------------------------------------


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ConfigError
        return value

    return parse


def _float(minimum: float, maximum: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError from None
        if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
            raise ConfigError
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError
        return value

    return parse


def _choice_list(*choices: str) -> Callable[[str], tuple[str, ...]]:
    def parse(raw: str) -> tuple[str, ...]:
        values = tuple(v.strip().lower() for v in raw.split(",") if v.strip())
        if not values or any(v not in choices for v in values):
            raise ConfigError
        if "none" in values and len(values) > 1:
            raise ConfigError
        return values

    return parse


def _name_list(raw: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in raw.split(",") if v.strip())


def _nonempty_name_list(raw: str) -> tuple[str, ...]:
    # "," would silently turn redaction off: a list that names nothing is a typo, not a choice.
    names = _name_list(raw)
    if not names:
        raise ConfigError
    return names


def _query_name_list(raw: str) -> tuple[str, ...]:
    # Only lower-case identifiers are ever kept as names in exported query strings.
    names = tuple(name.lower() for name in _nonempty_name_list(raw))
    if any(not _QUERY_NAME.fullmatch(name) for name in names):
        raise ConfigError
    return names


def _header_name_list(raw: str) -> tuple[str, ...]:
    names = _nonempty_name_list(raw)
    if any(not _HEADER_NAME.fullmatch(name) for name in names):
        raise ConfigError
    return tuple(name.lower() for name in names)


def _text(raw: str) -> str:
    return raw.strip()


def _nonempty_text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError
    return value


def _url(raw: str) -> str:
    value = raw.strip()
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError from None
    if parts.scheme not in ("http", "https") or not parts.hostname or (port is not None and port <= 0):
        raise ConfigError
    return value


def _resource_attributes(raw: str) -> str:
    for item in raw.split(","):
        if item.strip() and ("=" not in item or not item.split("=", 1)[0].strip()):
            raise ConfigError
    return raw.strip()


# --- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    env: str
    field: str
    default: Any
    parse: Callable[[str], Any]
    accepted: str
    help: str
    group: str = "agent"

    @property
    def flag(self) -> str:
        """The command-line flag: HMS_OTEL_FOO_BAR -> --foo-bar, OTEL_FOO -> --otel-foo."""
        name = self.env[len(PREFIX) :] if self.env.startswith(PREFIX) else self.env
        return "--" + name.lower().replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return self.parse is _bool


_PROTOCOLS = ("grpc", "http/protobuf")
_EXPORTERS = ("otlp", "console", "none", "hms_file")
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_COMPRESSION = ("gzip", "none")

_QUERY_NAME = re.compile(r"[a-z_][a-z_.-]{0,39}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")  # an HTTP token

OPTIONS: tuple[Option, ...] = (
    # Agent behaviour
    Option(
        "HMS_OTEL_STRICT",
        "strict",
        False,
        _bool,
        "true or false",
        "Exit with status 2 on any bad setting instead of using the default.",
    ),
    Option(
        "HMS_OTEL_LOG_LEVEL",
        "log_level",
        "info",
        _choice("debug", "info", "warning", "error"),
        "debug, info, warning or error",
        "Level of the agent's own log (logger 'hms_otel', stderr).",
    ),
    Option(
        "HMS_OTEL_LOCAL_DIR",
        "local_dir",
        ".hms-otel",
        _nonempty_text,
        "a directory path",
        "Where the embedded default writes OTLP-JSON lines when no OTLP endpoint is configured.",
    ),
    Option(
        "HMS_OTEL_SERVICE_VERSION",
        "service_version",
        "",
        _text,
        "any text",
        "service.version resource attribute (OTEL_RESOURCE_ATTRIBUTES may set it too).",
    ),
    Option(
        "HMS_OTEL_SHUTDOWN_TIMEOUT_MS",
        "shutdown_timeout_ms",
        3000,
        _int(0, 600_000),
        "an integer from 0 to 600000",
        "How long the process may wait at exit to flush telemetry.",
    ),
    Option(
        "HMS_OTEL_REPORT",
        "report",
        "auto",
        _choice("auto", "true", "false"),
        "auto, true or false",
        "Print the findings report of the run to stderr when the program started by hms-otel-run exits "
        "(auto: only when telemetry goes to the local dir and no OTLP endpoint is configured).",
    ),
    Option(
        "HMS_OTEL_MAX_TRACKED_SPANS",
        "max_tracked_spans",
        20_000,
        _int(100, 10_000_000),
        "an integer >= 100",
        "Open spans the signal processor keeps state for; the oldest are evicted.",
    ),
    Option(
        "HMS_OTEL_COMPRESS_SPANS",
        "compress_spans",
        False,
        _bool,
        "true or false",
        "Export a run of repeated DB spans under one parent (same statement and ORM context, at least "
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD of them) as one summary span with hms.compressed.count and "
        "hms.compressed.duration_ms, like Elastic APM's span compression (OTLP exporters only; "
        "findings are unchanged).",
    ),
    Option(
        "HMS_OTEL_CACHE_COMMAND_SPANS",
        "cache_command_spans",
        True,
        _bool,
        "true or false",
        "Trace what a Django cache call sends to its backend (Redis commands, DatabaseCache SQL) as "
        "spans under the call's cache.<operation> span; false: the call's span alone, which keeps "
        "the key pattern, hit or miss and backend (fewer spans on cache-heavy pages; the cache "
        "signals are unchanged).",
    ),
    # Signals
    Option(
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD",
        "n_plus_one_threshold",
        5,
        _int(2),
        "an integer >= 2",
        "Repetitions of one query fingerprint under one owner span that make an N+1 finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS",
        "n_plus_one_min_duration_ms",
        0.0,
        _float(0.0),
        "a number >= 0",
        "Minimum total time of the repeated queries for an N+1 finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_DUPLICATE_QUERY_THRESHOLD",
        "duplicate_query_threshold",
        2,
        _int(2),
        "an integer >= 2",
        "Executions of the same statement with the same parameters that make a duplicate-query finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_CACHE_N_PLUS_ONE_THRESHOLD",
        "cache_n_plus_one_threshold",
        5,
        _int(2),
        "an integer >= 2",
        "Single-key cache reads of one key pattern under one owner that make a cache N+1 finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_CACHE_INVALIDATION_THRESHOLD",
        "cache_invalidation_threshold",
        10,
        _int(2),
        "an integer >= 2",
        "Cache deletes in one request that make an invalidation-storm finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_LARGE_RESULT_ROWS",
        "large_result_rows",
        1000,
        _int(1),
        "an integer >= 1",
        "Rows returned by one SELECT without LIMIT that make an unbounded-result finding "
        "(and, with many columns, a wide-result finding even with a LIMIT).",
        "signals",
    ),
    Option(
        "HMS_OTEL_WIDE_RESULT_COLUMNS",
        "wide_result_columns",
        10,
        _int(2),
        "an integer >= 2",
        "Columns in the SELECT list of a large result above which only()/values() is suggested.",
        "signals",
    ),
    Option(
        "HMS_OTEL_SLOW_QUERY_MS",
        "slow_query_ms",
        500.0,
        _float(0.0),
        "a number >= 0",
        "Duration of one SQL statement that makes a slow-query finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_EXPLAIN",
        "explain",
        False,
        _bool,
        "true or false",
        "EXPLAIN slow SELECTs (never ANALYZE, never writes) on a separate connection, in the "
        "background, and attach the plan's costly nodes and index hint to later occurrences.",
        "signals",
    ),
    Option(
        "HMS_OTEL_EXPLAIN_INTERVAL_S",
        "explain_interval_s",
        3600,
        _int(1),
        "an integer >= 1",
        "At most one EXPLAIN per statement fingerprint in this many seconds (per process).",
        "signals",
    ),
    Option(
        "HMS_OTEL_EXPLAIN_TIMEOUT_MS",
        "explain_timeout_ms",
        2000,
        _int(10, 600_000),
        "an integer from 10 to 600000",
        "statement_timeout (and connect timeout) of the EXPLAIN connection.",
        "signals",
    ),
    Option(
        "HMS_OTEL_EXPLAIN_SEQ_SCAN_ROWS",
        "explain_seq_scan_rows",
        10_000,
        _int(0),
        "an integer >= 0",
        "Estimated table rows above which a filtered sequential scan in a plan gets an index hint.",
        "signals",
    ),
    Option(
        "HMS_OTEL_CONNECTION_CHURN_THRESHOLD",
        "connection_churn_threshold",
        2,
        _int(1),
        "an integer >= 1",
        "New database connections of one alias under one request that make a connection-churn "
        "finding (with CONN_MAX_AGE=0 and no pool, one is enough).",
        "signals",
    ),
    Option(
        "HMS_OTEL_REPEATED_GROUP_THRESHOLD",
        "repeated_group_threshold",
        5,
        _int(2),
        "an integer >= 2",
        "Repetitions of one group of different queries / cache calls (per item in a loop) that "
        "make a repeated-group (MN+1) finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_UNUSED_EAGER_LOADS",
        "unused_eager_loads",
        False,
        _bool,
        "true or false",
        "Track which select_related / prefetch_related relations are never read (opt-in: about "
        "0.7 µs per loaded instance and 0.1 µs per relation read; benchmarks/micro_eager.py).",
        "signals",
    ),
    Option(
        "HMS_OTEL_UNUSED_EAGER_MIN_LOADS",
        "unused_eager_min_loads",
        20,
        _int(1),
        "an integer >= 1",
        "Querysets evaluated at one code location with an eager relation never accessed before "
        "an unused-eager-loading finding.",
        "signals",
    ),
    Option(
        "HMS_OTEL_LIVE_LOG",
        "live_log",
        True,
        _bool,
        "true or false",
        "Log one line (logger 'hms_otel') the first time each finding is seen.",
        "signals",
    ),
    # Privacy: everything that could carry patient data is off unless opted in
    Option(
        "HMS_OTEL_CAPTURE_SQL_LITERALS",
        "capture_sql_literals",
        False,
        _bool,
        "true or false",
        "Export db.statement as written; by default inline literals are replaced by '?'.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_SQL_PARAMETERS",
        "capture_sql_parameters",
        False,
        _bool,
        "true or false",
        "Export query parameters (db.statement.parameters).",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_CACHE_KEYS",
        "capture_cache_keys",
        False,
        _bool,
        "true or false",
        "Export raw cache keys (hms.cache.key); by default only the key pattern leaves the process.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_EXCEPTION_MESSAGES",
        "capture_exception_messages",
        False,
        _bool,
        "true or false",
        "Export exception messages and status descriptions as raised; by default only the exception "
        "type is kept (database errors echo the values that failed).",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_URL_PATHS",
        "capture_url_paths",
        False,
        _bool,
        "true or false",
        "Export request paths as sent (http.target, url.path, http.url, url.full, span names, the "
        "http.server.duration http.target dimension); by default the route with placeholders, or "
        "for unrouted paths each segment that is not a literal of the app's routes as {id}.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_QUERY_VALUES",
        "capture_query_values",
        False,
        _bool,
        "true or false",
        "Export query strings as sent, but for the values of the always-redacted parameters (q, "
        "name, mrn, dob, email, ... and HMS_OTEL_REDACT_QUERY_PARAMS); by default every value is "
        "REDACTED but those of safe parameters (page, limit, ordering, ...) that are short numbers "
        "or plain words.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_SAFE_QUERY_PARAMS",
        "safe_query_params",
        (),
        _query_name_list,
        "a comma-separated list of lower-case parameter names (letters, _, . and -)",
        "Query-string parameters whose values are exported when they are a number of up to 6 digits "
        "or a lower-case word, added to page, page_size, per_page, limit, offset, ordering, "
        "order_by, sort, sort_by, order, direction, format, lang, language.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_REDACT_QUERY_PARAMS",
        "redact_query_params",
        (),
        _nonempty_name_list,
        "a comma-separated list of parameter names",
        "Query-string parameters whose values are always replaced by REDACTED, even with "
        "HMS_OTEL_CAPTURE_QUERY_VALUES, added to the built-in list (q, query, search, name, mrn, "
        "patient, dob, email, phone, ssn, token, ...); a safe parameter named here is not safe.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_USER_AGENT",
        "capture_user_agent",
        False,
        _bool,
        "true or false",
        "Export the User-Agent header as sent (user_agent.original / http.user_agent); by default "
        "it is dropped and user_agent.name, user_agent.version (major) and user_agent.os.name are "
        "exported for known browsers, bots and tools.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_CAPTURE_HEADER_VALUES",
        "capture_header_values",
        False,
        _bool,
        "true or false",
        "With the contrib's header capture on (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_"
        "REQUEST / _RESPONSE), export captured values as captured; by default values of headers "
        "outside the safe list are REDACTED. Credentials and HMS_OTEL_REDACT_HEADERS stay REDACTED.",
        "privacy",
    ),
    Option(
        "HMS_OTEL_SAFE_HEADERS",
        "safe_headers",
        (),
        _header_name_list,
        "a comma-separated list of header names",
        "Captured headers whose values are exported (printable ASCII up to 256 characters), added "
        "to content-type, accept, accept-language, content-length, host, x-request-id, ... "
        "(referer, origin and location sanitized as URLs, user-agent reduced to its family).",
        "privacy",
    ),
    Option(
        "HMS_OTEL_REDACT_HEADERS",
        "redact_headers",
        (),
        _header_name_list,
        "a comma-separated list of header names",
        "Captured headers whose values are always REDACTED, added to authorization, "
        "proxy-authorization, cookie, set-cookie, x-api-key, x-auth-token, x-csrftoken.",
        "privacy",
    ),
    # Standard OpenTelemetry variables the agent validates and acts on
    Option(
        "OTEL_SDK_DISABLED",
        "sdk_disabled",
        False,
        _bool,
        "true or false",
        "Disable the agent and the SDK entirely.",
        "otel",
    ),
    Option(
        "OTEL_SERVICE_NAME",
        "service_name",
        "",
        _text,
        "any text",
        "service.name; default: the Django project name, else the command.",
        "otel",
    ),
    Option(
        "OTEL_RESOURCE_ATTRIBUTES",
        "resource_attributes",
        "",
        _resource_attributes,
        "key=value pairs separated by commas",
        "Extra resource attributes.",
        "otel",
    ),
    Option(
        "OTEL_TRACES_EXPORTER",
        "traces_exporter",
        None,
        _choice_list(*_EXPORTERS),
        "otlp, console, hms_file or none (comma-separated)",
        "Trace exporters; unset with no endpoint configured: the local file (hms_file).",
        "otel",
    ),
    Option(
        "OTEL_METRICS_EXPORTER",
        "metrics_exporter",
        None,
        _choice_list(*_EXPORTERS),
        "otlp, console, hms_file or none (comma-separated)",
        "Metric exporters; default as for traces.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "otlp_protocol",
        "http/protobuf",
        _choice(*_PROTOCOLS),
        "grpc or http/protobuf",
        "OTLP transport for all signals.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "otlp_traces_protocol",
        None,
        _choice(*_PROTOCOLS),
        "grpc or http/protobuf",
        "OTLP transport for traces.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "otlp_metrics_protocol",
        None,
        _choice(*_PROTOCOLS),
        "grpc or http/protobuf",
        "OTLP transport for metrics.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "otlp_endpoint",
        None,
        _url,
        "an http:// or https:// URL",
        "Base OTLP endpoint (http: /v1/traces and /v1/metrics are appended).",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "otlp_traces_endpoint",
        None,
        _url,
        "an http:// or https:// URL",
        "OTLP endpoint for traces, used as given.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "otlp_metrics_endpoint",
        None,
        _url,
        "an http:// or https:// URL",
        "OTLP endpoint for metrics, used as given.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "otlp_timeout_ms",
        10_000,
        _int(1, 3_600_000),
        "an integer number of milliseconds >= 1",
        "OTLP export timeout (milliseconds, as the spec says).",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "otlp_traces_timeout_ms",
        None,
        _int(1, 3_600_000),
        "an integer number of milliseconds >= 1",
        "OTLP trace export timeout.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "otlp_metrics_timeout_ms",
        None,
        _int(1, 3_600_000),
        "an integer number of milliseconds >= 1",
        "OTLP metric export timeout.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "otlp_compression",
        "none",
        _choice(*_COMPRESSION),
        "gzip or none",
        "OTLP compression.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "otlp_traces_compression",
        None,
        _choice(*_COMPRESSION),
        "gzip or none",
        "OTLP compression for traces.",
        "otel",
    ),
    Option(
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        "otlp_metrics_compression",
        None,
        _choice(*_COMPRESSION),
        "gzip or none",
        "OTLP compression for metrics.",
        "otel",
    ),
    Option(
        "OTEL_TRACES_SAMPLER",
        "traces_sampler",
        "parentbased_always_on",
        _choice(*_SAMPLERS),
        ", ".join(_SAMPLERS),
        "Sampler.",
        "otel",
    ),
    Option(
        "OTEL_TRACES_SAMPLER_ARG",
        "traces_sampler_arg",
        1.0,
        _float(0.0, 1.0),
        "a number from 0 to 1",
        "Sampling ratio for the traceidratio samplers.",
        "otel",
    ),
    Option(
        "OTEL_BSP_SCHEDULE_DELAY",
        "bsp_schedule_delay_ms",
        5000,
        _int(0),
        "an integer >= 0",
        "Delay between two consecutive span exports (ms).",
        "otel",
    ),
    Option(
        "OTEL_BSP_EXPORT_TIMEOUT",
        "bsp_export_timeout_ms",
        30_000,
        _int(0),
        "an integer >= 0",
        "Maximum time an export may take (ms).",
        "otel",
    ),
    Option(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "bsp_max_queue_size",
        2048,
        _int(1),
        "an integer >= 1",
        "Spans kept for export; beyond it spans are dropped and counted.",
        "otel",
    ),
    Option(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "bsp_max_export_batch_size",
        512,
        _int(1),
        "an integer >= 1",
        "Maximum spans per export.",
        "otel",
    ),
    Option(
        "OTEL_METRIC_EXPORT_INTERVAL",
        "metric_export_interval_ms",
        60_000,
        _int(1),
        "an integer >= 1",
        "Interval between metric exports (ms).",
        "otel",
    ),
    Option(
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        "disabled_instrumentations",
        (),
        _name_list,
        "a comma-separated list (django, psycopg2, psycopg, redis)",
        "Instrumentations not to apply.",
        "otel",
    ),
)

OPTIONS_BY_ENV: dict[str, Option] = {o.env: o for o in OPTIONS}


@dataclass(frozen=True)
class Problem:
    """A value that was not accepted."""

    option: Option
    value: str
    source: str

    def line(self, strict: bool) -> str:
        shown = self.value if len(self.value) <= 80 else self.value[:77] + "..."
        if strict:
            return f"hms-otel: {self.option.env}={shown!r} is not accepted (expected {self.option.accepted})"
        return (
            f"hms-otel: {self.option.env}={shown!r} is not accepted (expected {self.option.accepted}); "
            f"using the default {_show(self.option.default)}"
        )


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "(empty)"
    return str(value) if value != "" else "(empty)"


@dataclass(frozen=True)
class Settings:
    strict: bool = False
    log_level: str = "info"
    local_dir: str = ".hms-otel"
    service_version: str = ""
    shutdown_timeout_ms: int = 3000
    report: str = "auto"
    max_tracked_spans: int = 20_000
    compress_spans: bool = False
    cache_command_spans: bool = True
    n_plus_one_threshold: int = 5
    n_plus_one_min_duration_ms: float = 0.0
    duplicate_query_threshold: int = 2
    cache_n_plus_one_threshold: int = 5
    cache_invalidation_threshold: int = 10
    large_result_rows: int = 1000
    wide_result_columns: int = 10
    slow_query_ms: float = 500.0
    explain: bool = False
    explain_interval_s: int = 3600
    explain_timeout_ms: int = 2000
    explain_seq_scan_rows: int = 10_000
    connection_churn_threshold: int = 2
    repeated_group_threshold: int = 5
    unused_eager_loads: bool = False
    unused_eager_min_loads: int = 20
    live_log: bool = True
    capture_sql_literals: bool = False
    capture_sql_parameters: bool = False
    capture_cache_keys: bool = False
    capture_exception_messages: bool = False
    capture_url_paths: bool = False
    capture_query_values: bool = False
    safe_query_params: tuple[str, ...] = ()
    redact_query_params: tuple[str, ...] = ()
    capture_user_agent: bool = False
    capture_header_values: bool = False
    safe_headers: tuple[str, ...] = ()
    redact_headers: tuple[str, ...] = ()
    sdk_disabled: bool = False
    service_name: str = ""
    resource_attributes: str = ""
    traces_exporter: tuple[str, ...] | None = None
    metrics_exporter: tuple[str, ...] | None = None
    otlp_protocol: str = "http/protobuf"
    otlp_traces_protocol: str | None = None
    otlp_metrics_protocol: str | None = None
    otlp_endpoint: str | None = None
    otlp_traces_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    otlp_timeout_ms: int = 10_000
    otlp_traces_timeout_ms: int | None = None
    otlp_metrics_timeout_ms: int | None = None
    otlp_compression: str = "none"
    otlp_traces_compression: str | None = None
    otlp_metrics_compression: str | None = None
    traces_sampler: str = "parentbased_always_on"
    traces_sampler_arg: float = 1.0
    bsp_schedule_delay_ms: int = 5000
    bsp_export_timeout_ms: int = 30_000
    bsp_max_queue_size: int = 2048
    bsp_max_export_batch_size: int = 512
    metric_export_interval_ms: int = 60_000
    disabled_instrumentations: tuple[str, ...] = ()
    # Where each value came from: "default", "env" or "cli" (for `hms-otel config`).
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def exporters(self, signal: str) -> tuple[str, ...]:
        """Exporters for "traces" or "metrics"; the embedded default is the local file."""
        chosen = self.traces_exporter if signal == "traces" else self.metrics_exporter
        if chosen is not None:
            return () if chosen == ("none",) else chosen
        return ("otlp",) if self.otlp_configured(signal) else ("hms_file",)

    def otlp_configured(self, signal: str) -> bool:
        specific = self.otlp_traces_endpoint if signal == "traces" else self.otlp_metrics_endpoint
        return bool(self.otlp_endpoint or specific)

    def protocol(self, signal: str) -> str:
        specific = self.otlp_traces_protocol if signal == "traces" else self.otlp_metrics_protocol
        return specific or self.otlp_protocol

    def endpoint(self, signal: str) -> str:
        """The OTLP endpoint for a signal, following the specification's rules."""
        specific = self.otlp_traces_endpoint if signal == "traces" else self.otlp_metrics_endpoint
        if specific:
            return specific
        protocol = self.protocol(signal)
        if protocol == "grpc":
            return self.otlp_endpoint or "http://localhost:4317"
        base = (self.otlp_endpoint or "http://localhost:4318").rstrip("/")
        return f"{base}/v1/{signal}"

    def timeout_s(self, signal: str) -> float:
        specific = self.otlp_traces_timeout_ms if signal == "traces" else self.otlp_metrics_timeout_ms
        return (specific or self.otlp_timeout_ms) / 1000.0

    def compression(self, signal: str) -> str:
        specific = self.otlp_traces_compression if signal == "traces" else self.otlp_metrics_compression
        return specific or self.otlp_compression


@dataclass
class LoadedSettings:
    settings: Settings
    problems: list[Problem]

    def print_problems(self, strict: bool | None = None) -> None:
        """One line per bad value on stderr; `strict` (default: the settings' own) words them."""
        strict = self.settings.strict if strict is None else strict
        for problem in self.problems:
            print(printable(problem.line(strict)), file=sys.stderr, flush=True)


def load(
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Parse the environment and command-line values (CLI wins) into `Settings`.

    Never raises for a bad value: the default is used and the problem is returned.
    """
    environ = os.environ if environ is None else environ
    cli = cli or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    for option in OPTIONS:
        if option.env in cli:
            raw, source = cli[option.env], "cli"
        elif environ.get(option.env, "").strip():  # the spec treats an empty value as unset
            raw, source = environ[option.env], "env"
        else:
            sources[option.field] = "default"
            continue
        try:
            values[option.field] = option.parse(raw)
            sources[option.field] = source
        except ConfigError:
            problems.append(Problem(option, raw, source))
            sources[option.field] = f"default ({source} value {raw!r} not accepted)"
    settings = Settings(**values, sources=sources)
    return LoadedSettings(settings, problems)


def describe(settings: Settings) -> Iterable[tuple[Option, str, str]]:
    """(option, shown value, source) for every option, for `hms-otel config`."""
    for option in OPTIONS:
        value = getattr(settings, option.field)
        yield option, _show(value), settings.sources.get(option.field, "default")


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
