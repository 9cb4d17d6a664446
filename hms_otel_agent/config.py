"""Every setting the agent reads, in one table, parsed once into a frozen `Settings`.

The table is the `Settings` class: each field is declared with `setting()` -- variable, parser,
default, help -- and `OPTIONS` lists them as rows (the flags of `hms-otel-run`, the lines of
`hms-otel config`, the README table). A parser states what it accepts from its own bounds and
choices. Agent settings are ``HMS_OTEL_*`` variables, each with a matching command-line flag.
The standard ``OTEL_*`` variables the agent acts on are in the same table so that a bad
value gets the same treatment everywhere: one line naming the variable, the value, what
is accepted and the default used instead (or exit status 2 in strict mode and in
``hms-otel config --check``). They keep the meaning the OpenTelemetry specification gives
them; where the Python SDK departs from the specification (OTEL_EXPORTER_OTLP_TIMEOUT is
milliseconds in the spec, seconds in the SDK) the agent follows the specification.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from hms_otel_agent.printable import printable

PREFIX = "HMS_OTEL_"


class ConfigError(ValueError):
    """A value was not accepted; the message, if any, says what is wrong with it -- its shape,
    never its content (it may be a credential)."""


# --- parsers: str -> value, raising ConfigError; each says what it accepts ---------------------

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Parser(Generic[T_co]):
    """Turns the text of a variable into its value or raises ConfigError. `accepted` is derived
    from the parser's own bounds and choices, so the message for a bad value cannot drift from
    what the parser does."""

    @property
    def accepted(self) -> str:
        raise NotImplementedError

    @property
    def summary(self) -> str:
        """What is accepted, independent of this machine (the README table)."""
        return self.accepted

    def __call__(self, raw: str) -> T_co:
        raise NotImplementedError


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _alternatives(words: Sequence[str]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass(frozen=True)
class Bool(Parser[bool]):
    @property
    def accepted(self) -> str:
        return "true or false"

    def __call__(self, raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("true", "1", "yes", "on"):
            return True
        if value in ("false", "0", "no", "off"):
            return False
        raise ConfigError


@dataclass(frozen=True)
class Int(Parser[int]):
    minimum: int
    maximum: int | None = None
    unit: str = ""

    @property
    def accepted(self) -> str:
        kind = f"an integer number of {self.unit}" if self.unit else "an integer"
        if self.maximum is None:
            return f"{kind} >= {self.minimum}"
        return f"{kind} from {self.minimum} to {self.maximum}"

    def __call__(self, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError from None
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise ConfigError
        return value


@dataclass(frozen=True)
class Float(Parser[float]):
    minimum: float
    maximum: float | None = None

    @property
    def accepted(self) -> str:
        if self.maximum is None:
            return f"a number >= {_number(self.minimum)}"
        return f"a number from {_number(self.minimum)} to {_number(self.maximum)}"

    def __call__(self, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError from None
        if (
            not math.isfinite(value)
            or value < self.minimum
            or (self.maximum is not None and value > self.maximum)
        ):
            raise ConfigError
        return value


def _normalized(value: str, case: str) -> str:
    """ "lower": any case and surrounding space; "upper": likewise, upper-case choices; "exact":
    as written (for variables whose reader compares the raw text)."""
    if case == "exact":
        return value
    return value.strip().upper() if case == "upper" else value.strip().lower()


@dataclass(frozen=True)
class Choice(Parser[str]):
    choices: tuple[str, ...]
    case: str = "lower"

    @property
    def accepted(self) -> str:
        return _alternatives(self.choices)

    def __call__(self, raw: str) -> str:
        value = _normalized(raw, self.case)
        if value not in self.choices:
            raise ConfigError
        return value


@dataclass(frozen=True)
class ChoiceList(Parser[tuple[str, ...]]):
    """A comma-separated list of choices; `alone` (none) may not be combined with others."""

    choices: tuple[str, ...]
    alone: str = "none"
    case: str = "lower"  # of each item, surrounding space aside (see _normalized)

    @property
    def accepted(self) -> str:
        return f"{_alternatives(self.choices)} (comma-separated)"

    def __call__(self, raw: str) -> tuple[str, ...]:
        values = tuple(_normalized(v.strip(), self.case) for v in raw.split(",") if v.strip())
        if not values or any(v not in self.choices for v in values):
            raise ConfigError
        if self.alone in values and len(values) > 1:
            raise ConfigError
        return values


@dataclass(frozen=True)
class Text(Parser[str]):
    """Free text (stripped); `what` describes it, as nothing else bounds it."""

    what: str = "any text"
    nonempty: bool = False

    @property
    def accepted(self) -> str:
        return self.what

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        if self.nonempty and not value:
            raise ConfigError
        return value


@dataclass(frozen=True)
class NameList(Parser[tuple[str, ...]]):
    what: str
    # "," would silently turn a deny-list off: a list that names nothing is a typo, not a choice.
    nonempty: bool = False
    pattern: re.Pattern[str] | None = None  # every name must match it
    lower: bool = False

    @property
    def accepted(self) -> str:
        return self.what

    def __call__(self, raw: str) -> tuple[str, ...]:
        names = tuple(v.strip() for v in raw.split(",") if v.strip())
        if self.nonempty and not names:
            raise ConfigError
        if self.lower:
            names = tuple(name.lower() for name in names)
        if self.pattern is not None and any(not self.pattern.fullmatch(name) for name in names):
            raise ConfigError
        return names


@dataclass(frozen=True)
class Url(Parser[str]):
    """A URL with one of `schemes` (and a host when `host_required`). Its content is never
    echoed in messages: a database URL may hold a password."""

    schemes: tuple[str, ...] = ("http", "https")
    host_required: bool = True

    @property
    def accepted(self) -> str:
        article = "an" if self.schemes[0][0] in "aeiouh" else "a"  # an http://: said aitch
        return f"{article} {_alternatives([f'{s}://' for s in self.schemes])} URL"

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        try:
            parts = urlsplit(value)
            port = parts.port  # raises ValueError on a bad port
        except ValueError:
            raise ConfigError from None
        if (
            parts.scheme not in self.schemes
            or (self.host_required and not parts.hostname)
            or (port is not None and port <= 0)
        ):
            raise ConfigError
        return value


@dataclass(frozen=True)
class ResourceAttributes(Parser[str]):
    @property
    def accepted(self) -> str:
        return "key=value pairs separated by commas"

    def __call__(self, raw: str) -> str:
        for item in raw.split(","):
            if item.strip() and ("=" not in item or not item.split("=", 1)[0].strip()):
                raise ConfigError
        return raw.strip()


@dataclass(frozen=True)
class Regexes(Parser[str]):
    """Comma-separated regular expressions that contrib joins with "|" and compiles (excluded
    URLs, captured and sanitized headers): compiled here the same way, so that an invalid one
    never reaches contrib, which would raise on every request or not instrument at all."""

    ignorecase: bool = False
    # An empty entry matches everything: for excluded URLs, a trailing comma would turn tracing off.
    empty_entries: bool = True

    @property
    def accepted(self) -> str:
        extra = "" if self.empty_entries else ", none of them empty"
        return f"comma-separated regular expressions (Python re syntax{extra})"

    def __call__(self, raw: str) -> str:
        entries = [entry.strip() for entry in raw.split(",")]
        if not self.empty_entries and not all(entries):
            raise ConfigError("an empty entry would match everything")
        try:
            with warnings.catch_warnings():
                # "Possible nested set" and the like: Python warns that a later version may read
                # the pattern differently, and contrib's compile would print that warning.
                warnings.simplefilter("error", FutureWarning)
                re.compile("|".join(entries), re.IGNORECASE if self.ignorecase else 0)
        except re.error as exc:
            raise ConfigError(exc.msg) from None
        except FutureWarning as exc:
            raise ConfigError(f"ambiguous: {str(exc).lower()}") from None
        except (RecursionError, OverflowError, ValueError):
            raise ConfigError("too complex to compile") from None
        return raw


# The OTLP exporter specification's syntax for headers in the environment: name=value pairs,
# names are HTTP tokens, values URL-encoded. Like the SDK's exporters, spaces are allowed in a
# value (other SDKs send "Authorization=Bearer x" unencoded); the SDK skips an entry it cannot
# parse after logging it -- with the credential in it.
_HEADER_DELIMITER = re.compile(r"[ \t]*,[ \t]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_HEADER_VALUE_EXCLUDED = frozenset('",;\\')


@dataclass(frozen=True)
class Headers(Parser[str]):
    """OTLP headers. Credentials live here: a reason names the entry by position and says what
    is wrong with its shape, never what it holds."""

    @property
    def accepted(self) -> str:
        return (
            "comma-separated name=value pairs (names: letters, digits and !#$%&'*+-.^_`|~; "
            "values URL-encoded)"
        )

    def __call__(self, raw: str) -> str:
        entries = _HEADER_DELIMITER.split(raw)
        count = len(entries)
        for position, entry in enumerate(entries, start=1):
            if not entry:  # as the SDK: only nothing at all between two commas is skipped
                continue
            entry = entry.strip()
            where = f"entry {position} of {count}"
            name, sep, value = entry.partition("=")
            if not sep:
                raise ConfigError(f"{where} has no '='")
            name, value = name.strip(" \t"), value.strip(" \t")
            if not name:
                raise ConfigError(f"{where} has no name before '='")
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(f"the name of {where} has a character not allowed in a header name")
            if not _HEADER_VALUE.fullmatch(value) or _HEADER_VALUE_EXCLUDED.intersection(value):
                raise ConfigError(
                    f"the value of {where} has a character that must be URL-encoded "
                    '(anything but printable ASCII, and " , ; \\)'
                )
        return raw


@dataclass(frozen=True)
class ReadableFile(Parser[str]):
    """A path the exporters open as given (certificates and keys)."""

    @property
    def accepted(self) -> str:
        return "the path of a readable file"

    def __call__(self, raw: str) -> str:
        if not os.path.exists(raw):
            raise ConfigError("no such file")
        if not os.path.isfile(raw):
            raise ConfigError("not a regular file")
        if not os.access(raw, os.R_OK):
            raise ConfigError("not readable by this user")
        return raw


@functools.cache
def _entry_point_names(group: str) -> tuple[str, ...]:
    from importlib.metadata import entry_points

    return tuple(sorted({entry.name for entry in entry_points(group=group)}))


@dataclass(frozen=True)
class EntryPoints(Parser[str]):
    """Names of installed entry points of a group (propagators, context, credential providers),
    as the SDK looks them up: exact names, each item stripped when `multiple`; `also` lists the
    words the reader takes besides the names ("none", "*")."""

    group: str
    what: str
    multiple: bool = False
    also: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return _entry_point_names(self.group)

    @property
    def summary(self) -> str:
        extra = f", or {_alternatives(self.also)}" if self.also else ""
        listed = " (comma-separated)" if self.multiple else ""
        return f"{self.what}{listed}{extra}"

    @property
    def accepted(self) -> str:
        installed = ", ".join(self.names()) or "none"
        return f"{self.summary}; installed: {installed}"

    def __call__(self, raw: str) -> str:
        items = [item.strip() for item in raw.split(",")] if self.multiple else [raw]
        known = set(self.names()) | set(self.also)
        for item in items:
            if item not in known:
                raise ConfigError
        return raw


# --- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One row of the settings table: a variable, its parser, its default and what it does."""

    env: str
    parse: Parser[Any]
    default: Any
    help: str
    group: str = "agent"
    field: str = ""  # the `Settings` field (filled in from the class below); "" for SDK_OPTIONS
    secret: bool = False  # the value may hold a credential: never printed
    # For SDK_OPTIONS: the default as their reader applies it, in words.
    shown_default: str | None = None
    # For SDK_OPTIONS: what the reader gets instead of a bad value (None: the variable is removed,
    # so the reader's own default applies).
    replacement: str | None = None
    # For OTEL_* variables: the text the SDK or contrib should see for an accepted value (None:
    # removed), where they understand less than the parser (contrib's "False", "any value is true").
    to_environ: Callable[[Any], str | None] | None = None
    # For OTEL_* variables whose default the agent changes: the text their readers get when the
    # variable is unset or empty (None: their own default applies).
    unset_environ: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag: HMS_OTEL_FOO_BAR -> --foo-bar, OTEL_FOO -> --otel-foo."""
        name = self.env[len(PREFIX) :] if self.env.startswith(PREFIX) else self.env
        return "--" + name.lower().replace("_", "-")

    @property
    def accepted(self) -> str:
        return self.parse.accepted

    @property
    def is_bool(self) -> bool:
        return isinstance(self.parse, Bool)

    @property
    def default_text(self) -> str:
        return self.shown_default if self.shown_default is not None else _show(self.default)


def setting(
    env: str,
    parse: Parser[T],
    default: T,
    help: str,
    group: str = "agent",
    *,
    secret: bool = False,
    to_environ: Callable[[Any], str | None] | None = None,
) -> T:
    """A field of `Settings` that is also a row of the table (`OPTIONS`). `to_environ`: for an
    OTEL_* variable the SDK reads too, the text it should see (see `Option.to_environ`)."""
    option = Option(env, parse, default, help, group, secret=secret, to_environ=to_environ)
    return field(default=default, metadata={"option": option})


_PROTOCOLS = ("grpc", "http/protobuf")
_EXPORTERS = ("otlp", "console", "hms_file", "none")
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
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]{1,64}")  # unreserved characters: no encoding


@dataclass(frozen=True)
class Settings:
    """Every setting the agent acts on: one field per variable, declared with `setting()`, which
    makes it a row of the table (`OPTIONS`) -- the variable, its parser, its default, its help --
    in the order of `hms-otel-run --help` and `hms-otel config`."""

    # Agent behaviour
    strict: bool = setting(
        "HMS_OTEL_STRICT",
        Bool(),
        False,
        "Exit with status 2 on any bad setting instead of using the default.",
    )
    log_level: str = setting(
        "HMS_OTEL_LOG_LEVEL",
        Choice(("debug", "info", "warning", "error")),
        "info",
        "Level of the agent's own log (logger 'hms_otel', stderr).",
    )
    local_dir: str = setting(
        "HMS_OTEL_LOCAL_DIR",
        Text("a directory path", nonempty=True),
        ".hms-otel",
        "Where the embedded default writes OTLP-JSON lines when no OTLP endpoint is configured.",
    )
    local_max_mb: int = setting(
        "HMS_OTEL_LOCAL_MAX_MB",
        Int(1, 1_000_000),
        100,
        "Size cap of the local files in MB: each file rotates (traces.1.jsonl, ...) and the oldest of "
        "4 is dropped, so the directory stays under the cap (traces 4/5, metrics 1/5).",
    )
    service_version: str = setting(
        "HMS_OTEL_SERVICE_VERSION",
        Text(),
        "",
        "service.version resource attribute (OTEL_RESOURCE_ATTRIBUTES may set it too).",
    )
    shutdown_timeout_ms: int = setting(
        "HMS_OTEL_SHUTDOWN_TIMEOUT_MS",
        Int(0, 600_000),
        3000,
        "How long the process may wait at exit to flush telemetry.",
    )
    report: str = setting(
        "HMS_OTEL_REPORT",
        Choice(("auto", "true", "false")),
        "auto",
        "Print the findings report of the run to stderr when the program started by hms-otel-run exits "
        "(auto: only when telemetry goes to the local dir and no OTLP endpoint is configured).",
    )
    max_tracked_spans: int = setting(
        "HMS_OTEL_MAX_TRACKED_SPANS",
        Int(100, 10_000_000),
        20_000,
        "Open spans the signal processor keeps state for; the oldest are evicted.",
    )
    compress_spans: bool = setting(
        "HMS_OTEL_COMPRESS_SPANS",
        Bool(),
        False,
        "Export a run of repeated DB spans under one parent (same statement and ORM context, at least "
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD of them) as one summary span with hms.compressed.count and "
        "hms.compressed.duration_ms, like Elastic APM's span compression (OTLP exporters only; "
        "findings are unchanged).",
    )
    cache_command_spans: bool = setting(
        "HMS_OTEL_CACHE_COMMAND_SPANS",
        Bool(),
        False,
        "Trace what a Django cache call sends to its backend (Redis commands, DatabaseCache SQL) as "
        "spans under the call's cache.<operation> span. Default false: one span per call, with the "
        "key pattern, hit or miss, backend and the names of the Redis commands it sent "
        "(hms.cache.commands); the cache signals are the same either way.",
    )
    implicit_units: bool = setting(
        "HMS_OTEL_IMPLICIT_UNITS",
        Bool(),
        True,
        "Group the queries and cache calls a thread makes outside any span (a script, a thread of "
        "the app) under an implicit unit of work per thread, a span 'implicit <program or thread>' "
        "that ends when the thread is idle, so their N+1s are found; false: such calls are spans "
        "of their own and nothing is detected over them.",
    )
    implicit_unit_idle_ms: int = setting(
        "HMS_OTEL_IMPLICIT_UNIT_IDLE_MS",
        Int(10, 3_600_000),
        1000,
        "An implicit unit of work ends when its thread made no query or cache call for this long "
        "(or after HMS_OTEL_IMPLICIT_UNIT_MAX_CALLS calls, after 60 s, when the thread ends, at exit).",
    )
    implicit_unit_max_calls: int = setting(
        "HMS_OTEL_IMPLICIT_UNIT_MAX_CALLS",
        Int(10, 5000),
        1000,
        "Queries and cache calls after which an implicit unit of work ends and the next one starts.",
    )
    commands_without_span: tuple[str, ...] = setting(
        "HMS_OTEL_COMMANDS_WITHOUT_SPAN",
        NameList(
            "a comma-separated list of management command names",
            nonempty=True,
            pattern=re.compile(r"[A-Za-z0-9_][\w-]{0,99}"),
        ),
        (),
        "Management commands that get no owner span, added to those that serve or wait (runserver, "
        "shell, test, rqworker, celery, runworker, qcluster, ...): a long-running command of your "
        "own, whose work the implicit units of its threads or unit_of_work blocks then group.",
    )
    fast_paths: bool = setting(
        "HMS_OTEL_FAST_PATHS",
        Bool(),
        True,
        "Use the agent's faster replacements of OpenTelemetry SDK and contrib internals (DB and Redis "
        "span wrappers, one-write span attributes, the OTLP/HTTP span encoder; "
        "instrument/sdk_internals.py); false, or installed SDK / contrib versions the agent was not "
        "tested with: the stock code paths (same spans, more CPU per span).",
    )
    # Signals
    n_plus_one_threshold: int = setting(
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD",
        Int(2),
        5,
        "Repetitions of one query fingerprint under one owner span that make an N+1 finding.",
        "signals",
    )
    n_plus_one_min_duration_ms: float = setting(
        "HMS_OTEL_N_PLUS_ONE_MIN_DURATION_MS",
        Float(0.0),
        0.0,
        "Minimum total time of the repeated queries for an N+1 finding.",
        "signals",
    )
    duplicate_query_threshold: int = setting(
        "HMS_OTEL_DUPLICATE_QUERY_THRESHOLD",
        Int(2),
        2,
        "Executions of the same statement with the same parameters that make a duplicate-query finding.",
        "signals",
    )
    trivial_duplicates: bool = setting(
        "HMS_OTEL_TRIVIAL_DUPLICATES",
        Bool(),
        False,
        "Report each duplicate query of two executions under 1 ms in all as a finding of its own; "
        "by default they are folded into one summary finding per request.",
        "signals",
    )
    cache_n_plus_one_threshold: int = setting(
        "HMS_OTEL_CACHE_N_PLUS_ONE_THRESHOLD",
        Int(2),
        5,
        "Single-key cache reads of one key pattern under one owner that make a cache N+1 finding.",
        "signals",
    )
    cache_miss_min_requests: int = setting(
        "HMS_OTEL_CACHE_MISS_MIN_REQUESTS",
        Int(1),
        3,
        "Requests (or other owners) whose cache misses at one code site were followed by SQL and "
        "never written before a miss-without-fill finding; a write of the key pattern anywhere in "
        "the process (a background job, a command, another path) means it is filled by design.",
        "signals",
    )
    cache_ignore_key_prefixes: tuple[str, ...] = setting(
        "HMS_OTEL_CACHE_IGNORE_KEY_PREFIXES",
        NameList("a comma-separated list of key prefixes", nonempty=True),
        (),
        "Cache key prefixes that are not application cache reads (left out of cache findings), "
        "added to the built-in rq:, celery-task-meta-, celery-taskset-meta-, chord-unlock-, "
        "_kombu., unacked, django.contrib.sessions.",
        "signals",
    )
    cache_invalidation_threshold: int = setting(
        "HMS_OTEL_CACHE_INVALIDATION_THRESHOLD",
        Int(2),
        10,
        "Cache deletes in one request that make an invalidation-storm finding.",
        "signals",
    )
    large_result_rows: int = setting(
        "HMS_OTEL_LARGE_RESULT_ROWS",
        Int(1),
        1000,
        "Rows returned by one SELECT without LIMIT that make an unbounded-result finding "
        "(and, with many columns, a wide-result finding even with a LIMIT).",
        "signals",
    )
    wide_result_columns: int = setting(
        "HMS_OTEL_WIDE_RESULT_COLUMNS",
        Int(2),
        10,
        "Columns in the SELECT list of a large result above which only()/values() is suggested.",
        "signals",
    )
    slow_query_ms: float = setting(
        "HMS_OTEL_SLOW_QUERY_MS",
        Float(0.0),
        500.0,
        "Duration of one SQL statement that makes a slow-query finding.",
        "signals",
    )
    http_n_plus_one_threshold: int = setting(
        "HMS_OTEL_HTTP_N_PLUS_ONE_THRESHOLD",
        Int(2),
        5,
        "Outbound HTTP calls to one endpoint template with different URLs (ids) under one owner "
        "span that make an HTTP N+1 finding.",
        "signals",
    )
    http_slow_ms: float = setting(
        "HMS_OTEL_HTTP_SLOW_MS",
        Float(0.0),
        1000.0,
        "Duration of one outbound HTTP call that makes a slow-HTTP-call finding.",
        "signals",
    )
    http_sequential_min_calls: int = setting(
        "HMS_OTEL_HTTP_SEQUENTIAL_MIN_CALLS",
        Int(2),
        3,
        "Outbound HTTP calls one after the other (none overlapping, at least two endpoints) "
        "that make a could-run-concurrently finding.",
        "signals",
    )
    http_sequential_min_saved_ms: float = setting(
        "HMS_OTEL_HTTP_SEQUENTIAL_MIN_SAVED_MS",
        Float(0.0),
        100.0,
        "Time running such a run of calls concurrently would save (their sum minus the longest) "
        "below which it is not reported.",
        "signals",
    )
    http_sequential_max_gap_ms: float = setting(
        "HMS_OTEL_HTTP_SEQUENTIAL_MAX_GAP_MS",
        Float(0.0),
        100.0,
        "Longest pause between two calls of such a run (a longer one is work that may need the "
        "previous answer).",
        "signals",
    )
    explain: bool = setting(
        "HMS_OTEL_EXPLAIN",
        Bool(),
        False,
        "EXPLAIN slow SELECTs (never ANALYZE, never writes) on a separate connection, in the "
        "background, and attach the plan's costly nodes and index hint to later occurrences.",
        "signals",
    )
    explain_interval_s: int = setting(
        "HMS_OTEL_EXPLAIN_INTERVAL_S",
        Int(1),
        3600,
        "At most one EXPLAIN per statement fingerprint in this many seconds (per process).",
        "signals",
    )
    explain_timeout_ms: int = setting(
        "HMS_OTEL_EXPLAIN_TIMEOUT_MS",
        Int(10, 600_000),
        2000,
        "statement_timeout, lock_timeout, idle_in_transaction_session_timeout (and connect "
        "timeout) of the EXPLAIN connection.",
        "signals",
    )
    explain_database_url: str | None = setting(
        "HMS_OTEL_EXPLAIN_DATABASE_URL",
        Url(schemes=("postgresql", "postgres"), host_required=False),
        None,
        "Where EXPLAIN connects, for a role without write privileges (recommended; see "
        "docs/reliability.md); unset: the application's own connection parameters.",
        "signals",
        secret=True,
    )
    explain_seq_scan_rows: int = setting(
        "HMS_OTEL_EXPLAIN_SEQ_SCAN_ROWS",
        Int(0),
        10_000,
        "Estimated table rows above which a filtered sequential scan in a plan gets an index hint.",
        "signals",
    )
    connection_churn_threshold: int = setting(
        "HMS_OTEL_CONNECTION_CHURN_THRESHOLD",
        Int(1),
        2,
        "New database connections of one alias under one request that make a connection-churn "
        "finding (with CONN_MAX_AGE=0 and no pool, one is enough).",
        "signals",
    )
    repeated_group_threshold: int = setting(
        "HMS_OTEL_REPEATED_GROUP_THRESHOLD",
        Int(2),
        5,
        "Repetitions of one group of different queries / cache calls (per item in a loop) that "
        "make a repeated-group (MN+1) finding.",
        "signals",
    )
    unused_eager_loads: bool = setting(
        "HMS_OTEL_UNUSED_EAGER_LOADS",
        Bool(),
        False,
        "Track which select_related / prefetch_related relations are never read (opt-in: about "
        "0.7 µs per loaded instance and 0.1 µs per relation read; benchmarks/micro_eager.py).",
        "signals",
    )
    unused_eager_min_loads: int = setting(
        "HMS_OTEL_UNUSED_EAGER_MIN_LOADS",
        Int(1),
        20,
        "Querysets evaluated at one code location with an eager relation never accessed before "
        "an unused-eager-loading finding.",
        "signals",
    )
    detect_sampled_out: bool = setting(
        "HMS_OTEL_DETECT_SAMPLED_OUT",
        Bool(),
        True,
        "With head sampling (OTEL_TRACES_SAMPLER), run detection on the requests it does not "
        "trace too: their spans are recorded but not exported, and one with findings exports its "
        "owner span alone (hms.sampled_out); false: detection sees sampled requests only.",
        "signals",
    )
    live_log: bool = setting(
        "HMS_OTEL_LIVE_LOG",
        Bool(),
        True,
        "Log one line (logger 'hms_otel') the first time each finding is seen.",
        "signals",
    )
    # Privacy: everything that could carry patient data is off unless opted in
    capture_sql_literals: bool = setting(
        "HMS_OTEL_CAPTURE_SQL_LITERALS",
        Bool(),
        False,
        "Export db.statement as written; by default inline literals are replaced by '?'.",
        "privacy",
    )
    capture_sql_parameters: bool = setting(
        "HMS_OTEL_CAPTURE_SQL_PARAMETERS",
        Bool(),
        False,
        "Export query parameters (db.statement.parameters).",
        "privacy",
    )
    capture_cache_keys: bool = setting(
        "HMS_OTEL_CAPTURE_CACHE_KEYS",
        Bool(),
        False,
        "Export raw cache keys (hms.cache.key); by default only the key pattern leaves the process.",
        "privacy",
    )
    capture_exception_messages: bool = setting(
        "HMS_OTEL_CAPTURE_EXCEPTION_MESSAGES",
        Bool(),
        False,
        "Export exception messages and status descriptions as raised; by default only the exception "
        "type is kept (database errors echo the values that failed).",
        "privacy",
    )
    capture_url_paths: bool = setting(
        "HMS_OTEL_CAPTURE_URL_PATHS",
        Bool(),
        False,
        "Export request paths as sent (http.target, url.path, http.url, url.full, span names, the "
        "http.server.duration http.target dimension); by default the route with placeholders, or "
        "for unrouted paths each segment that is not a literal of the app's routes as {id}.",
        "privacy",
    )
    capture_query_values: bool = setting(
        "HMS_OTEL_CAPTURE_QUERY_VALUES",
        Bool(),
        False,
        "Export query strings as sent, but for the values of the always-redacted parameters (q, "
        "name, mrn, dob, email, ... and HMS_OTEL_REDACT_QUERY_PARAMS); by default every value is "
        "REDACTED but those of safe parameters (page, limit, ordering, ...) that are short numbers "
        "or plain words.",
        "privacy",
    )
    safe_query_params: tuple[str, ...] = setting(
        "HMS_OTEL_SAFE_QUERY_PARAMS",
        NameList(
            "a comma-separated list of lower-case parameter names (letters, _, . and -)",
            nonempty=True,
            pattern=_QUERY_NAME,
            lower=True,
        ),
        (),
        "Query-string parameters whose values are exported when they are a number of up to 6 digits "
        "or a lower-case word, added to page, page_size, per_page, limit, offset, ordering, "
        "order_by, sort, sort_by, order, direction, format, lang, language.",
        "privacy",
    )
    safe_path_segments: tuple[str, ...] = setting(
        "HMS_OTEL_SAFE_PATH_SEGMENTS",
        NameList(
            "a comma-separated list of path segments (letters, digits, _, ., ~ and -)",
            nonempty=True,
            pattern=_PATH_SEGMENT,
        ),
        (),
        "Path segments kept as written in URLs the agent has no route for (outbound calls, "
        "spans of other instrumentations), added to api, apis, rest, fhir, graphql, rpc, search, "
        "batch, bulk, query, auth, oauth, oauth2, token, health, healthz, status, ping, version, "
        "v1..v99 and FHIR's resource types; any other segment becomes {id}. Case-sensitive.",
        "privacy",
    )
    redact_query_params: tuple[str, ...] = setting(
        "HMS_OTEL_REDACT_QUERY_PARAMS",
        NameList("a comma-separated list of parameter names", nonempty=True),
        (),
        "Query-string parameters whose values are always replaced by REDACTED, even with "
        "HMS_OTEL_CAPTURE_QUERY_VALUES, added to the built-in list (q, query, search, name, mrn, "
        "patient, dob, email, phone, ssn, token, ...); a safe parameter named here is not safe.",
        "privacy",
    )
    capture_client_address: bool = setting(
        "HMS_OTEL_CAPTURE_CLIENT_ADDRESS",
        Bool(),
        False,
        "Export the client's IP address on server spans (client.address / net.peer.ip); by "
        "default it is dropped: an IP address identifies a patient.",
        "privacy",
    )
    capture_user_agent: bool = setting(
        "HMS_OTEL_CAPTURE_USER_AGENT",
        Bool(),
        False,
        "Export the User-Agent header as sent (user_agent.original / http.user_agent); by default "
        "it is dropped and user_agent.name, user_agent.version (major) and user_agent.os.name are "
        "exported for known browsers, bots and tools.",
        "privacy",
    )
    capture_header_values: bool = setting(
        "HMS_OTEL_CAPTURE_HEADER_VALUES",
        Bool(),
        False,
        "With the contrib's header capture on (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_"
        "REQUEST / _RESPONSE), export captured values as captured; by default values of headers "
        "outside the safe list are REDACTED. Credentials and HMS_OTEL_REDACT_HEADERS stay REDACTED.",
        "privacy",
    )
    safe_headers: tuple[str, ...] = setting(
        "HMS_OTEL_SAFE_HEADERS",
        NameList("a comma-separated list of header names", nonempty=True, pattern=_HEADER_NAME, lower=True),
        (),
        "Captured headers whose values are exported (printable ASCII up to 256 characters), added "
        "to content-type, accept, accept-language, content-length, host, x-request-id, ... "
        "(referer, origin and location sanitized as URLs, user-agent reduced to its family).",
        "privacy",
    )
    redact_headers: tuple[str, ...] = setting(
        "HMS_OTEL_REDACT_HEADERS",
        NameList("a comma-separated list of header names", nonempty=True, pattern=_HEADER_NAME, lower=True),
        (),
        "Captured headers whose values are always REDACTED, added to authorization, "
        "proxy-authorization, cookie, set-cookie, x-api-key, x-auth-token, x-csrftoken.",
        "privacy",
    )
    # Standard OpenTelemetry variables the agent validates and acts on
    sdk_disabled: bool = setting(
        "OTEL_SDK_DISABLED",
        Bool(),
        False,
        "Disable the agent and the SDK entirely.",
        "otel",
    )
    service_name: str = setting(
        "OTEL_SERVICE_NAME",
        Text(),
        "",
        "service.name; default: the Django project name, else the command.",
        "otel",
    )
    resource_attributes: str = setting(
        "OTEL_RESOURCE_ATTRIBUTES",
        ResourceAttributes(),
        "",
        "Extra resource attributes.",
        "otel",
        # The SDK's Resource.create (run when its logs module is imported) warns about an empty
        # item, as in a trailing comma, which the agent skips.
        to_environ=lambda value: ",".join(item for item in value.split(",") if item.strip()) or None,
    )
    traces_exporter: tuple[str, ...] | None = setting(
        "OTEL_TRACES_EXPORTER",
        ChoiceList(_EXPORTERS),
        None,
        "Trace exporters; unset with no endpoint configured: the local file (hms_file).",
        "otel",
    )
    metrics_exporter: tuple[str, ...] | None = setting(
        "OTEL_METRICS_EXPORTER",
        ChoiceList(_EXPORTERS),
        None,
        "Metric exporters; default as for traces.",
        "otel",
    )
    otlp_protocol: str = setting(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        Choice(_PROTOCOLS),
        "http/protobuf",
        "OTLP transport for all signals.",
        "otel",
    )
    otlp_traces_protocol: str | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        Choice(_PROTOCOLS),
        None,
        "OTLP transport for traces.",
        "otel",
    )
    otlp_metrics_protocol: str | None = setting(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        Choice(_PROTOCOLS),
        None,
        "OTLP transport for metrics.",
        "otel",
    )
    otlp_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        Url(),
        None,
        "Base OTLP endpoint (http: /v1/traces and /v1/metrics are appended).",
        "otel",
    )
    otlp_traces_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        Url(),
        None,
        "OTLP endpoint for traces, used as given.",
        "otel",
    )
    otlp_metrics_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        Url(),
        None,
        "OTLP endpoint for metrics, used as given.",
        "otel",
    )
    otlp_timeout_ms: int = setting(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        Int(1, 3_600_000, "milliseconds"),
        10_000,
        "OTLP export timeout (milliseconds, as the spec says).",
        "otel",
    )
    otlp_traces_timeout_ms: int | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        Int(1, 3_600_000, "milliseconds"),
        None,
        "OTLP trace export timeout.",
        "otel",
    )
    otlp_metrics_timeout_ms: int | None = setting(
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        Int(1, 3_600_000, "milliseconds"),
        None,
        "OTLP metric export timeout.",
        "otel",
    )
    otlp_compression: str = setting(
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        Choice(_COMPRESSION),
        "none",
        "OTLP compression.",
        "otel",
    )
    otlp_traces_compression: str | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        Choice(_COMPRESSION),
        None,
        "OTLP compression for traces.",
        "otel",
    )
    otlp_metrics_compression: str | None = setting(
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        Choice(_COMPRESSION),
        None,
        "OTLP compression for metrics.",
        "otel",
    )
    traces_sampler: str = setting(
        "OTEL_TRACES_SAMPLER",
        Choice(_SAMPLERS),
        "parentbased_always_on",
        "Sampler.",
        "otel",
    )
    traces_sampler_arg: float = setting(
        "OTEL_TRACES_SAMPLER_ARG",
        Float(0.0, 1.0),
        1.0,
        "Sampling ratio for the traceidratio samplers.",
        "otel",
    )
    bsp_schedule_delay_ms: int = setting(
        "OTEL_BSP_SCHEDULE_DELAY",
        Int(0),
        5000,
        "Delay between two consecutive span exports (ms).",
        "otel",
    )
    bsp_export_timeout_ms: int = setting(
        "OTEL_BSP_EXPORT_TIMEOUT",
        Int(0, unit="milliseconds"),
        30_000,
        "Maximum time one span export may take (0: no bound beyond the OTLP timeout).",
        "otel",
    )
    bsp_max_queue_size: int = setting(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        Int(1),
        2048,
        "Spans kept for export; beyond it spans are dropped and counted.",
        "otel",
    )
    bsp_max_export_batch_size: int = setting(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        Int(1),
        512,
        "Maximum spans per export.",
        "otel",
    )
    metric_export_interval_ms: int = setting(
        "OTEL_METRIC_EXPORT_INTERVAL",
        Int(1),
        60_000,
        "Interval between metric exports (ms).",
        "otel",
    )
    metric_export_timeout_ms: int = setting(
        "OTEL_METRIC_EXPORT_TIMEOUT",
        Int(1, unit="milliseconds"),
        30_000,
        "Maximum time one metric export may take.",
        "otel",
    )
    disabled_instrumentations: tuple[str, ...] = setting(
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        NameList(
            "a comma-separated list of instrumentation names (django, django_templates, psycopg2, "
            "psycopg, redis, requests, httpx, urllib3)"
        ),
        (),
        "Instrumentations not to apply.",
        "otel",
    )
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
        """How long one OTLP export may take: the exporter's timeout (retries included), within
        the processor's bound on one export (OTEL_BSP_EXPORT_TIMEOUT for traces,
        OTEL_METRIC_EXPORT_TIMEOUT for metrics; a BSP timeout of 0 is no bound) -- the
        SDK's exporters take no per-call timeout, so that bound is enforced through theirs."""
        if signal == "traces":
            specific, bound = self.otlp_traces_timeout_ms, self.bsp_export_timeout_ms
        else:
            specific, bound = self.otlp_metrics_timeout_ms, self.metric_export_timeout_ms
        timeout = specific or self.otlp_timeout_ms
        return (min(timeout, bound) if bound else timeout) / 1000.0

    def answer_wait_s(self, signal: str) -> float:
        """How long the exporter waits for a backend's answer: twice `timeout_s`, within the
        processor's bound. A slow backend that answers after the timeout has stored the data;
        giving up at the timeout counted its data as failed (and HTTP re-sent the batch). Only
        the export thread waits: the queue stays bounded and the application never waits."""
        bound = self.bsp_export_timeout_ms if signal == "traces" else self.metric_export_timeout_ms
        wait_ms = 2 * self.timeout_s(signal) * 1000.0
        return (min(wait_ms, bound) if bound else wait_ms) / 1000.0

    def compression(self, signal: str) -> str:
        specific = self.otlp_traces_compression if signal == "traces" else self.otlp_metrics_compression
        return specific or self.otlp_compression


OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(f.metadata["option"], field=f.name)
    for f in dataclasses.fields(Settings)
    if "option" in f.metadata
)
OPTIONS_BY_ENV: dict[str, Option] = {o.env: o for o in OPTIONS}


# --- standard variables the SDK and contrib read themselves --------------------------------
#
# Every OTEL_* variable read in the agent's process besides the table above (found in the
# installed SDK, exporters and instrumentations, and by recording what a process under the
# agent reads: tests/reliability/test_bad_config.py). The agent passes its own values for
# the table's variables; these the SDK and contrib take from the environment, some when they
# are imported. A bad value gets the same one line, and is removed from the environment
# before anything reads it (or replaced, see `replacement`), so their default applies and
# child processes never see it. They have no flags.

_GRPC_STATUS_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# OTEL_SEMCONV_STABILITY_OPT_IN: contrib's values, and "old", the agent's name for naming neither
# "database" nor "http" (contrib then keeps the old names of both; contrib ignores the word).
# Unset, the agent's default applies: the stable database and HTTP names.
SEMCONV_OLD = "old"
SEMCONV_DEFAULT = "database,http"
_SEMCONV_OPT_INS = ("http", "http/dup", "database", "database/dup", "gen_ai_latest_experimental", SEMCONV_OLD)
_HTTP_CAPTURE_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"


def _read_by(group: str, env: str, parse: Parser[Any], default: str, help: str, **extra: Any) -> Option:
    return Option(env, parse, None, help, group, shown_default=default, **extra)


_COUNT_DEFAULT = "(OTEL_ATTRIBUTE_COUNT_LIMIT, else 128)"


def _limit(env: str, default: str, help: str) -> Option:
    return _read_by("sdk", env, Int(0), default, help)


def _per_signal(make: Callable[[str, str], Option]) -> tuple[Option, ...]:
    """The variable for all signals, then its _TRACES_ and _METRICS_ forms (which fall back on it)."""
    return (make("OTEL_EXPORTER_OTLP_", ""), make("OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_"),
            make("OTEL_EXPORTER_OTLP_METRICS_", "OTEL_EXPORTER_OTLP_"))  # fmt: skip


def _fallback(general: str, name: str, otherwise: str) -> str:
    return f"(unset: {general}{name} applies)" if general else otherwise


def _credential_provider(transport: str, signal: str) -> Option:
    env = f"OTEL_PYTHON_EXPORTER_OTLP_{transport}_{signal}CREDENTIAL_PROVIDER"
    parse = EntryPoints("opentelemetry_otlp_credential_provider", "an installed OTLP credential provider")
    return _read_by("otlp", env, parse, "(none)", f"Credentials for the OTLP/{transport.lower()} exporter.")


SDK_OPTIONS: tuple[Option, ...] = (
    # The SDK: span limits (read when the tracer provider is built), context, propagation, metrics
    _limit(
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "(no limit)", "Longest attribute value on spans, events, links."
    ),
    _limit("OTEL_ATTRIBUTE_COUNT_LIMIT", "128", "Most attributes on a span, event or link."),
    _limit(
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "(OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT)",
        "Longest span attribute value.",
    ),
    _limit("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", _COUNT_DEFAULT, "Most span attributes."),
    _limit("OTEL_SPAN_EVENT_COUNT_LIMIT", "128", "Most events on a span."),
    _limit("OTEL_SPAN_LINK_COUNT_LIMIT", "128", "Most links on a span."),
    _limit("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", _COUNT_DEFAULT, "Most event attributes."),
    _limit("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", _COUNT_DEFAULT, "Most link attributes."),
    _read_by(
        "sdk",
        "OTEL_PROPAGATORS",
        EntryPoints("opentelemetry_propagator", "installed propagators", multiple=True, also=("none",)),
        "tracecontext,baggage",
        "Context propagation formats (read when opentelemetry.propagate is imported).",
    ),
    _read_by(
        "sdk",
        "OTEL_PYTHON_CONTEXT",
        EntryPoints("opentelemetry_context", "an installed context implementation"),
        "contextvars_context",
        "Runtime context implementation (read when opentelemetry.context is imported).",
    ),
    _read_by(
        "sdk",
        "OTEL_METRICS_EXEMPLAR_FILTER",
        Choice(("trace_based", "always_on", "always_off"), case="exact"),
        "trace_based",
        "Which measurements may become exemplars.",
    ),
    _read_by(
        "sdk",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
        EntryPoints(
            "opentelemetry_resource_detector", "installed resource detectors", multiple=True, also=("*",)
        ),
        "(none)",
        "Resource detectors of Resource.create (the agent builds its resource itself).",
    ),
    _read_by(
        "sdk",
        "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED",
        Bool(),
        "false",
        "The SDK's metrics about itself.",
        to_environ=lambda on: "true" if on else "false",
    ),
    # The OTLP exporters
    *_per_signal(
        lambda prefix, general: _read_by(
            "otlp",
            f"{prefix}HEADERS",
            Headers(),
            _fallback(general, "HEADERS", "(none)"),
            "Headers sent with each OTLP export (credentials: the value is never printed).",
            secret=True,
        )
    ),
    *_per_signal(
        lambda prefix, general: _read_by(
            "otlp",
            f"{prefix}CERTIFICATE",
            ReadableFile(),
            _fallback(general, "CERTIFICATE", "(the system's CA certificates)"),
            "CA certificate(s) to verify the OTLP endpoint with (https).",
        )
    ),
    *_per_signal(
        lambda prefix, general: _read_by(
            "otlp",
            f"{prefix}CLIENT_CERTIFICATE",
            ReadableFile(),
            _fallback(general, "CLIENT_CERTIFICATE", "(none)"),
            "Client certificate for mTLS.",
        )
    ),
    *_per_signal(
        lambda prefix, general: _read_by(
            "otlp",
            f"{prefix}CLIENT_KEY",
            ReadableFile(),
            _fallback(general, "CLIENT_KEY", "(none)"),
            "Client private key for mTLS (the path is not printed).",
            secret=True,
        )
    ),
    *_per_signal(
        lambda prefix, general: _read_by(
            "otlp",
            f"{prefix}INSECURE",
            Bool(),
            _fallback(general, "INSECURE", "(from the endpoint's scheme)"),
            "gRPC without TLS; only for endpoints without a scheme, which the agent does not accept.",
            to_environ=lambda on: "true" if on else "false",
        )
    ),
    _read_by(
        "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        Choice(("cumulative", "delta", "lowmemory")),
        "cumulative",
        "Aggregation temporality of exported metrics.",
    ),
    _read_by(
        "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        Choice(("explicit_bucket_histogram", "base2_exponential_bucket_histogram"), case="exact"),
        "explicit_bucket_histogram",
        "Default aggregation of histograms.",
    ),
    _read_by(
        "otlp",
        "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES",
        ChoiceList(_GRPC_STATUS_CODES, alone="", case="upper"),
        "(the SDK's list)",
        "gRPC status codes after which an OTLP/gRPC export is retried.",
    ),
    _credential_provider("HTTP", ""),
    _credential_provider("HTTP", "TRACES_"),
    _credential_provider("HTTP", "METRICS_"),
    _credential_provider("GRPC", ""),
    _credential_provider("GRPC", "TRACES_"),
    _credential_provider("GRPC", "METRICS_"),
    # Contrib's Django, WSGI and ASGI instrumentations, and its semantic conventions switch
    _read_by(
        "contrib",
        "OTEL_PYTHON_DJANGO_EXCLUDED_URLS",
        Regexes(empty_entries=False),
        "(unset: OTEL_PYTHON_EXCLUDED_URLS applies)",
        "URLs (searched with each regex) Django requests are not traced for.",
    ),
    *(
        _read_by(
            "contrib",
            f"OTEL_PYTHON_{library}_EXCLUDED_URLS",
            Regexes(empty_entries=False),
            "(unset: OTEL_PYTHON_EXCLUDED_URLS applies)",
            f"URLs (searched with each regex) outbound {library.lower()} calls are not traced for.",
        )
        for library in ("REQUESTS", "HTTPX", "URLLIB3")
    ),
    _read_by(
        "contrib",
        "OTEL_PYTHON_EXCLUDED_URLS",
        Regexes(empty_entries=False),
        "(none excluded)",
        "URLs not traced, for every instrumentation.",
    ),
    _read_by(
        "contrib",
        "OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS",
        NameList("a comma-separated list of request attribute names"),
        "(none)",
        "Attributes of Django's request recorded on the server span.",
    ),
    _read_by(
        "contrib",
        "OTEL_PYTHON_DJANGO_INSTRUMENT",
        Bool(),
        "true",
        "false: Django requests are not traced (contrib itself only knows the exact text False).",
        to_environ=lambda on: "True" if on else "False",
    ),
    _read_by(
        "contrib",
        "OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION",
        Int(0),
        "0 (first)",
        "Where in MIDDLEWARE contrib's middleware goes.",
    ),
    _read_by(
        "contrib",
        f"{_HTTP_CAPTURE_HEADERS}SERVER_REQUEST",
        Regexes(ignorecase=True),
        "(none captured)",
        "Request headers recorded on server spans.",
    ),
    _read_by(
        "contrib",
        f"{_HTTP_CAPTURE_HEADERS}SERVER_RESPONSE",
        Regexes(ignorecase=True),
        "(none captured)",
        "Response headers recorded on server spans.",
    ),
    _read_by(
        "contrib",
        f"{_HTTP_CAPTURE_HEADERS}CLIENT_REQUEST",
        Regexes(ignorecase=True),
        "(none captured)",
        "Request headers recorded on outbound HTTP client spans (requests, httpx, urllib3).",
    ),
    _read_by(
        "contrib",
        f"{_HTTP_CAPTURE_HEADERS}CLIENT_RESPONSE",
        Regexes(ignorecase=True),
        "(none captured)",
        "Response headers recorded on outbound HTTP client spans.",
    ),
    _read_by(
        "contrib",
        f"{_HTTP_CAPTURE_HEADERS}SANITIZE_FIELDS",
        Regexes(ignorecase=True),
        ".* (every captured header value redacted)",
        "Captured headers whose values are redacted. A bad value redacts them all rather than none.",
        replacement=".*",
    ),
    _read_by(
        "contrib",
        "OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS",
        Bool(),
        "false",
        "Keep unknown HTTP methods as sent instead of _OTHER (contrib takes any value as true).",
        to_environ=lambda on: "true" if on else None,
    ),
    _read_by(
        "contrib",
        "OTEL_SEMCONV_STABILITY_OPT_IN",
        ChoiceList(_SEMCONV_OPT_INS, alone="", case="exact"),
        SEMCONV_DEFAULT,
        "Which generation of semantic-convention names the spans and metrics carry, as the "
        "specification defines the variable: database / http the stable names, database/dup / "
        "http/dup the old and the stable ones, a signal left out the old ones (old: both left "
        "out). The agent's default is the stable names (contrib's is the old ones).",
        replacement=SEMCONV_DEFAULT,
        unset_environ=SEMCONV_DEFAULT,
    ),
)
SDK_OPTIONS_BY_ENV: dict[str, Option] = {o.env: o for o in SDK_OPTIONS}
ALL_OPTIONS: tuple[Option, ...] = OPTIONS + SDK_OPTIONS

# HMS_OTEL_* variables that are not settings: hms-otel-run and the agent set them for the
# processes they start; never reported as unknown. HMS_OTEL_TEST_* belong to the test suite.
ANNOUNCED_ENV = "HMS_OTEL_ANNOUNCED"  # problems and destination shown once per process tree
RUN_ID_ENV = "HMS_OTEL_RUN_ID"  # one id per hms-otel-run run (resource hms.run.id)
ROOT_PID_ENV = "HMS_OTEL_ROOT_PID"  # the process hms-otel-run exec'd (prints the report)
INTERNAL_VARIABLES = frozenset((ANNOUNCED_ENV, RUN_ID_ENV, ROOT_PID_ENV))
_RESERVED_PREFIXES = ("HMS_OTEL_TEST_",)


def _shown_value(option: Option, raw: str) -> str:
    if option.secret:
        return "<hidden>"
    shown = raw if len(raw) <= 80 else raw[:77] + "..."
    return repr(shown)


@dataclass(frozen=True)
class Problem:
    """A value that was not accepted."""

    option: Option
    value: str
    source: str
    reason: str = ""  # what is wrong with it, when the parser says (never the value itself)

    def line(self, strict: bool) -> str:
        reason = f": {self.reason}" if self.reason else ""
        text = (
            f"hms-otel: {self.option.env}={_shown_value(self.option, self.value)} is not accepted{reason} "
            f"(expected {self.option.accepted})"
        )
        return text if strict else f"{text}; using the default {self.option.default_text}"


@dataclass(frozen=True)
class UnknownName:
    """An HMS_OTEL_* variable that is no setting (a typo, most often); its value is not shown."""

    name: str
    suggestion: str | None

    def line(self, strict: bool) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        ignored = "" if strict else " (ignored)"
        return f"hms-otel: unknown setting {printable(self.name)}{ignored}{hint}"


def _unknown_names(environ: Mapping[str, str]) -> list[UnknownName]:
    import difflib

    known = [o.env for o in ALL_OPTIONS if o.env.startswith(PREFIX)]
    unknown = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or name in known or name in INTERNAL_VARIABLES:
            continue
        if upper.startswith(_RESERVED_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        unknown.append(UnknownName(name, close[0] if close else None))
    return unknown


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "(empty)"
    return str(value) if value != "" else "(empty)"


@dataclass
class LoadedSettings:
    settings: Settings
    problems: list[Problem]
    unknown: list[UnknownName] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Something was not accepted: exit 2 under strict mode and `hms-otel config --check`."""
        return bool(self.problems or self.unknown)

    def lines(self, strict: bool | None = None) -> list[str]:
        """One line per bad value and unknown name; `strict` (default: the settings' own) words them."""
        strict = self.settings.strict if strict is None else strict
        return [p.line(strict) for p in self.problems] + [u.line(strict) for u in self.unknown]

    def print_problems(self, strict: bool | None = None) -> None:
        for line in self.lines(strict):
            print(printable(line), file=sys.stderr, flush=True)


def _given(environ: Mapping[str, str], name: str) -> str | None:
    """The value of a variable, None when unset or empty (the spec treats an empty value as unset)."""
    raw = environ.get(name)
    return raw if raw is not None and raw.strip() else None


def load(
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Parse the environment and command-line values (CLI wins) into `Settings`, validate the
    variables the SDK and contrib read (`SDK_OPTIONS`) and find unknown HMS_OTEL_* names.

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
        elif (given := _given(environ, option.env)) is not None:
            raw, source = given, "env"
        else:
            sources[option.field] = "default"
            continue
        try:
            values[option.field] = option.parse(raw)
            sources[option.field] = source
        except ConfigError as exc:
            problems.append(Problem(option, raw, source, str(exc)))
            sources[option.field] = f"default ({source} value {_shown_value(option, raw)} not accepted)"
    for option in SDK_OPTIONS:
        if (given := _given(environ, option.env)) is not None:
            try:
                option.parse(given)
            except ConfigError as exc:
                problems.append(Problem(option, given, "env", str(exc)))
    settings = Settings(**values, sources=sources)
    return LoadedSettings(settings, problems, _unknown_names(environ))


def clean_environ(loaded: LoadedSettings, environ: MutableMapping[str, str] | None = None) -> None:
    """Keep what the SDK and contrib must not read out of the environment, before they read it
    (some do when imported): a bad value of an OTEL_* variable is removed, so their default
    applies as the line said (or replaced, `Option.replacement`); an empty one too, which the
    spec treats as unset and some of them do not (a limit of '' is no limit, an exemplar filter
    of '' raises); an accepted one is rewritten where they understand less
    (`Option.to_environ`); an unset one whose default the agent changes is set to the agent's
    (`Option.unset_environ`). Child processes inherit the result, so they never repeat the line."""
    environ = os.environ if environ is None else environ
    bad = {p.option.env for p in loaded.problems if p.source == "env"}
    for option in ALL_OPTIONS:
        raw = environ.get(option.env)
        if not option.env.startswith("OTEL_"):
            continue
        if raw is None:
            if option.unset_environ is not None:
                environ[option.env] = option.unset_environ
            continue
        new: str | None
        if option.env in bad:
            new = option.replacement
        elif not raw.strip():
            new = option.unset_environ
        elif option.to_environ is not None:
            new = option.to_environ(option.parse(raw))
        else:
            continue
        if new is None:
            del environ[option.env]
        elif new != raw:
            environ[option.env] = new


def describe(settings: Settings) -> Iterable[tuple[Option, str, str]]:
    """(option, shown value, source) for every option, for `hms-otel config`."""
    for option in OPTIONS:
        value = getattr(settings, option.field)
        shown = "<hidden>" if option.secret and value else printable(_show(value))
        yield option, shown, settings.sources.get(option.field, "default")


def describe_sdk(environ: Mapping[str, str]) -> Iterator[tuple[Option, str, str]]:
    """(option, shown value, what applies) for the SDK_OPTIONS that are set."""
    for option in SDK_OPTIONS:
        if (given := _given(environ, option.env)) is None:
            continue
        shown = "<hidden>" if option.secret else printable(given)
        try:
            option.parse(given)
        except ConfigError:
            yield option, shown, f"not accepted: the default {option.default_text} applies"
            continue
        yield option, shown, "env"


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
