"""Reading OTLP/JSON trace data into plain span records.

Accepted input, in any file:

* the agent's local file and the OpenTelemetry Collector's file exporter output: one
  ``ExportTraceServiceRequest`` JSON object per line (lines of metrics or logs are skipped);
* a single request as one JSON document, pretty-printed or not;
* ``.gz`` files of either.

Trace and span ids may be hex (the OTLP/JSON encoding) or base64 (protobuf's generic JSON
mapping); field names camelCase or snake_case; 64-bit integers as strings or numbers; span
kinds as numbers or enum names. Unknown fields are ignored. Anything else is an `InputError`
naming the file and line.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from hms_otel_agent.local_paths import FileMark, files_oldest_first, open_read

# OTLP span kinds (the protobuf enum; the Python API numbers them differently).
KIND_UNSPECIFIED, KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = range(6)
_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": KIND_UNSPECIFIED,
    "SPAN_KIND_INTERNAL": KIND_INTERNAL,
    "SPAN_KIND_SERVER": KIND_SERVER,
    "SPAN_KIND_CLIENT": KIND_CLIENT,
    "SPAN_KIND_PRODUCER": KIND_PRODUCER,
    "SPAN_KIND_CONSUMER": KIND_CONSUMER,
}
TRACES_FILE = "traces.jsonl"


class InputError(Exception):
    """Input that is not OTLP/JSON trace data; ``str()`` is one line naming the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass(slots=True)
class EventData:
    name: str
    attributes: dict[str, Any]
    time_ns: int = 0


@dataclass(slots=True)
class SpanData:
    """One span, as plain data."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    scope: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[EventData] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass
class ReadResult:
    spans: list[SpanData] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped_lines: list[str] = field(default_factory=list)  # "path:line: why", lenient mode only


# --- values -----------------------------------------------------------------------------------


class _ShapeError(ValueError):
    pass


def _get(obj: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    value = obj.get(camel)
    if value is None and snake is not None:
        value = obj.get(snake)
    return value


def _list(obj: dict[str, Any], camel: str, snake: str | None, what: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _ShapeError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ShapeError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise _ShapeError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ShapeError(f"{what} must be an integer, got {value!r}") from None


def _id(value: Any, size: int, what: str) -> str:
    """Hex (OTLP/JSON) or base64 (protobuf JSON) ids -> lowercase hex; '' for none."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise _ShapeError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) == size * 2:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise _ShapeError(f"{what} {value!r} is neither {size * 2} hex digits nor base64 of {size} bytes")
    return raw.hex()


def any_value(value: Any) -> Any:
    """An OTLP AnyValue object -> a Python value (unknown shapes -> None)."""
    if not isinstance(value, dict):
        return value  # tolerate plain values written by other tools
    for key, snake in (
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("intValue", "int_value"),
        ("doubleValue", "double_value"),
        ("arrayValue", "array_value"),
        ("kvlistValue", "kvlist_value"),
        ("bytesValue", "bytes_value"),
    ):
        if key in value or snake in value:
            raw = value[key] if key in value else value[snake]
            if key == "intValue":
                try:
                    return int(raw)
                except (TypeError, ValueError):
                    return None
            if key == "doubleValue":
                try:
                    return float(raw)
                except (TypeError, ValueError):
                    return None
            if key == "arrayValue":
                values = raw.get("values", []) if isinstance(raw, dict) else []
                return [any_value(v) for v in values] if isinstance(values, list) else []
            if key == "kvlistValue":
                values = raw.get("values", []) if isinstance(raw, dict) else []
                return attributes(values) if isinstance(values, list) else {}
            return raw
    return None


def attributes(kvs: Any) -> dict[str, Any]:
    if not isinstance(kvs, list):
        raise _ShapeError(f"attributes must be a list of key/value objects, got {type(kvs).__name__}")
    out: dict[str, Any] = {}
    for kv in kvs:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _ShapeError("attributes must be a list of {key, value} objects")
        out[kv["key"]] = any_value(kv.get("value"))
    return out


def _kind(value: Any) -> int:
    if value is None:
        return KIND_UNSPECIFIED
    if isinstance(value, str) and not value.isdigit():
        return _KIND_NAMES.get(value.upper(), KIND_UNSPECIFIED)
    return _int(value, "kind")


# --- requests ---------------------------------------------------------------------------------


def spans_of_request(request: Any) -> list[SpanData]:
    """The spans of one ExportTraceServiceRequest (already parsed JSON)."""
    if not isinstance(request, dict):
        raise _ShapeError(
            f"expected a JSON object (an OTLP ExportTraceServiceRequest), got {type(request).__name__}"
        )
    out: list[SpanData] = []
    for rs in _list(request, "resourceSpans", "resource_spans", "resourceSpans"):
        rs = _object(rs, "resourceSpans[]")
        resource_obj = _get(rs, "resource") or {}
        resource = attributes(_object(resource_obj, "resource").get("attributes") or [])
        scopes = _list(rs, "scopeSpans", "scope_spans", "scopeSpans") or _list(
            rs, "instrumentationLibrarySpans", "instrumentation_library_spans", "instrumentationLibrarySpans"
        )
        for ss in scopes:
            ss = _object(ss, "scopeSpans[]")
            scope_obj = _get(ss, "scope") or _get(ss, "instrumentationLibrary", "instrumentation_library")
            scope_obj = scope_obj or {}
            scope = str(_object(scope_obj, "scope").get("name") or "")
            for span in _list(ss, "spans", None, "spans"):
                out.append(_span(_object(span, "spans[]"), scope, resource))
    return out


def _span(span: dict[str, Any], scope: str, resource: dict[str, Any]) -> SpanData:
    span_id = _id(_get(span, "spanId", "span_id"), 8, "spanId")
    if not span_id:
        raise _ShapeError("a span has no spanId")
    events = []
    for event in _list(span, "events", None, "events"):
        event = _object(event, "events[]")
        events.append(
            EventData(
                str(event.get("name") or ""),
                attributes(event.get("attributes") or []),
                _int(_get(event, "timeUnixNano", "time_unix_nano"), "timeUnixNano"),
            )
        )
    return SpanData(
        trace_id=_id(_get(span, "traceId", "trace_id"), 16, "traceId"),
        span_id=span_id,
        parent_span_id=_id(_get(span, "parentSpanId", "parent_span_id"), 8, "parentSpanId"),
        name=str(span.get("name") or ""),
        kind=_kind(span.get("kind")),
        scope=scope,
        start_ns=_int(_get(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"),
        end_ns=_int(_get(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
        attributes=attributes(span.get("attributes") or []),
        events=events,
        resource=resource,
    )


def _is_trace_data(obj: Any) -> bool:
    """Lines of metrics or logs (the collector may write all signals to one file) are skipped."""
    return not (
        isinstance(obj, dict)
        and not ("resourceSpans" in obj or "resource_spans" in obj)
        and any(k in obj for k in ("resourceMetrics", "resource_metrics", "resourceLogs", "resource_logs"))
    )


# --- files ------------------------------------------------------------------------------------


def _open(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _json_error(exc: json.JSONDecodeError, text: str, last: bool) -> str:
    if last and not text.endswith("\n"):
        return "truncated line: the file ends in the middle of a JSON document (was the writer stopped?)"
    return f"not valid JSON ({exc.msg} at column {exc.colno})"


def read_file(
    path: str, strict: bool = True, skipped: list[str] | None = None, must_contain: str = ""
) -> Iterator[SpanData]:
    """Spans of one file. In lenient mode (strict=False) bad lines are skipped and noted.
    With `must_contain`, lines without that text are skipped unparsed (a run id: fast at exit)."""
    try:
        handle = _open(path)
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc.strerror or exc}") from None

    def bad(lineno: int, message: str) -> None:
        if strict:
            raise InputError(path, lineno, message)
        if skipped is not None:
            skipped.append(f"{path}:{lineno}: {message}")

    with handle:
        try:
            source: IO[str] = handle
            lineno = 0
            seen_content = False
            text = source.readline()
            while text:
                following = source.readline()
                lineno += 1
                if must_contain and must_contain not in text:
                    text = following
                    continue
                if text.strip():
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as exc:
                        if seen_content:
                            bad(lineno, _json_error(exc, text, not following))
                        else:
                            # Perhaps one request as a (pretty-printed) JSON document.
                            rest = following + source.read()
                            whole = text + rest
                            try:
                                doc = json.loads(whole)
                            except json.JSONDecodeError as doc_exc:
                                if doc_exc.lineno > 1:
                                    at_end = doc_exc.pos >= len(whole.rstrip()) - 1
                                    truncated = at_end or doc_exc.msg.startswith("Unterminated string")
                                    bad(
                                        lineno + doc_exc.lineno - 1,
                                        "truncated document: the file ends in the middle of a JSON value"
                                        if truncated
                                        else f"not valid JSON ({doc_exc.msg} at column {doc_exc.colno})",
                                    )
                                    return
                                bad(lineno, _json_error(exc, text, not rest))
                                source = io.StringIO(rest)  # lenient: go on with the next line
                                following = source.readline()
                            else:
                                yield from _spans_or_error(doc, path, lineno, bad)
                                return
                    else:
                        yield from _spans_or_error(obj, path, lineno, bad)
                    seen_content = True
                text = following
        except (OSError, EOFError) as exc:
            raise InputError(path, None, f"cannot read: {exc}") from None


def _spans_or_error(obj: Any, path: str, lineno: int, bad: Callable[[int, str], None]) -> Iterator[SpanData]:
    if not _is_trace_data(obj):
        return
    try:
        spans = spans_of_request(obj)
    except _ShapeError as exc:
        bad(lineno, f"not OTLP trace data: {exc}")
        return
    yield from spans


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files to read: a directory means its traces.jsonl and the files it was rotated to, oldest
    first (the agent's local dir), else its *.json / *.jsonl / *.gz files."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            agent_files = files_oldest_first(os.path.join(path, TRACES_FILE))
            if agent_files:
                files.extend(agent_files)
                continue
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")) and "metric" not in name
            )
            if not found:
                raise InputError(path, None, f"no {TRACES_FILE} or *.json / *.jsonl files in this directory")
            files.extend(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            raise InputError(path, None, "no such file or directory")
    return files


def read_paths(paths: Iterable[str], strict: bool = True, must_contain: str = "") -> ReadResult:
    result = ReadResult()
    for path in expand_paths(list(paths)):
        result.files.append(path)
        result.spans.extend(read_file(path, strict, result.skipped_lines, must_contain))
    return result


@dataclass
class RunRead(ReadResult):
    """What `read_run` read; `stopped_early` says why it stopped before the end ('' if it did not)."""

    stopped_early: str = ""
    read_bytes: int = 0
    start_rotated_away: bool = False  # the file the run began in was dropped by rotation


def read_run(
    path: str,
    run_id: str,
    start: FileMark | None = None,
    max_bytes: int = 16_000_000,
    max_seconds: float = 3.0,
) -> RunRead:
    """The spans of one run in the agent's local file `path` and the files it was rotated to,
    reading only from where the run began (`start`: taken of the file when the run began; None:
    from the beginning) and at most `max_bytes` and `max_seconds` -- the report at exit must not
    take the memory and time of reading a large file whole. Lines of other runs are skipped
    unparsed."""
    import time

    result = RunRead()
    deadline = time.monotonic() + max_seconds
    files = files_oldest_first(path)
    first, offset = 0, 0
    if start is not None and start.inode:
        for index, name in enumerate(files):
            try:
                fd = open_read(name)
            except OSError:
                continue
            try:
                if start.is_in(fd):
                    first, offset = index, start.size
                    break
            finally:
                os.close(fd)
        else:
            # The run began in a file rotated away since: what is left is all of this run or later.
            result.start_rotated_away = bool(files)
    needle = run_id.encode()
    name = path

    def bad(lineno: int, message: str) -> None:
        result.skipped_lines.append(f"{name}:{lineno}: {message}")

    for position, name in enumerate(files[first:]):
        result.files.append(name)
        try:
            fd = open_read(name)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            if position == 0 and offset:
                handle.seek(offset)
            lineno = 0
            for raw in handle:
                lineno += 1
                if result.read_bytes + len(raw) > max_bytes:
                    result.stopped_early = f"it read the first {max_bytes // 1_000_000} MB of this run"
                    return result
                result.read_bytes += len(raw)
                if lineno % 64 == 1 and time.monotonic() > deadline:
                    result.stopped_early = f"it read this run's telemetry for {max_seconds:g} s"
                    return result
                if needle and needle not in raw:
                    continue
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                try:
                    obj = json.loads(raw)
                except ValueError as exc:
                    bad(lineno, f"not valid JSON ({type(exc).__name__})")
                    continue
                result.spans.extend(_spans_or_error(obj, name, lineno, bad))
    return result
