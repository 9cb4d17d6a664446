"""Nothing the agent prints can forge a line or drive the terminal, whatever the data held.

Keys, routes, span names, file names, settings: each print path gets text with a newline that
starts a forged line, a carriage return, ANSI escapes (7-bit CSI and the 8-bit C1 CSI), other
C0 and C1 controls, DEL, a bidi override (U+202E), a line separator (U+2028), a zero-width
space, and rich markup. The output must hold none of those characters raw, and no line may
start with the forged text.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import unicodedata
from io import StringIO
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hms_otel_agent import guard
from hms_otel_agent.launch.cli import main
from hms_otel_agent.printable import PrintableFormatter, json_printable, printable
from hms_otel_agent.report.live import LiveLog
from hms_otel_agent.signals.records import CodeLocation, Finding, OwnerActivity

from .otlp_builder import CLIENT, DJANGO, SERVER, new_span_id, new_trace, request, span, write_lines

FORGED = "FORGED hms-otel: all clear"
HOSTILE = (
    f"x\n{FORGED}\r{FORGED}\x1b[2J\x1b[31mred\x1b]8;;http://e.test\x07link\x9b31m\x85\x00\x08\x7f"
    "\u202eevil\u2028\u200b[bold red]markup[/bold red]"
)
HOSTILE_OS = HOSTILE.replace("\x00", "")  # file names, arguments and the environment cannot hold NUL
RAW = ("\n", "\r", "\x1b", "\x9b", "\x85", "\x00", "\x08", "\x7f", "\x07", "\u202e", "\u2028", "\u200b")


def assert_safe(output: str) -> None:
    for char in RAW[1:]:
        assert char not in output, (repr(char), output)
    for line in output.splitlines():
        assert not line.lstrip(" |#>").startswith("FORGED"), output


def test_printable_escapes_every_dangerous_character() -> None:
    shown = printable(HOSTILE)
    assert shown.isprintable()
    assert "\\n" + FORGED in shown and "\\x1b[31m" in shown and "\\u202e" in shown and "\\x9b" in shown
    assert printable("patient:{id}:summary — ok é") == "patient:{id}:summary — ok é"


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_property_printable_is_one_printable_line(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(st.text() | st.integers(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))
)
def test_property_json_printable_is_the_same_document(value: object) -> None:
    document = json_printable(json.dumps(value, indent=2, ensure_ascii=False))
    assert json.loads(document) == value
    assert all(c.isprintable() or c == "\n" for c in document)


# --- the live log and the agent's other warnings ---------------------------------------------------


def _finding(text: str) -> Finding:
    return Finding(
        kind="cache_n_plus_one",
        fingerprint="f" + str(len(text)),
        repetitions=6,
        duration_ms=1.0,
        key_pattern=text,
        location=CodeLocation(f"views{text}.py", 3, f"f{text}"),
        fix=text,
        hint=f"GET {text}: 6 cache reads of {text} at views.py:3 — read them at once",
    )


def test_live_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Escaped by the live log itself (an application's handler may print the records) and
    by the agent's formatter."""
    caplog.set_level(logging.INFO, logger="hms_otel")
    LiveLog(repeat_interval_s=0)(OwnerActivity(name="x"), [_finding(HOSTILE)])
    LiveLog(repeat_interval_s=0)(OwnerActivity(name="x"), [_finding(HOSTILE), _finding(HOSTILE)])
    messages = [r.getMessage() for r in caplog.records if r.name == "hms_otel"]
    assert len(messages) == 3
    for message in messages:
        assert message.isprintable() and FORGED in message
        assert_safe(message)


def test_agent_formatter_keeps_every_warning_on_one_line() -> None:
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter("%(message)s"))
    log = logging.getLogger("hms_otel.test_control_characters")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("hms-otel: cannot export traces to %s (%s)", HOSTILE, HOSTILE)
        guard_logger = logging.getLogger("hms_otel")
        guard_logger.addHandler(handler)
        try:
            guard.reset_for_tests()
            bad = type(f"Bad{HOSTILE}Error".replace("\x00", ""), (Exception,), {})
            guard.report(f"component {HOSTILE}", bad())
        finally:
            guard_logger.removeHandler(handler)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert_safe(stream.getvalue())


# --- the report in every format, and analyze ---------------------------------------------------


def hostile_file(tmp_path: Path) -> Path:
    """One request whose route, span name, code location and cache key pattern are hostile,
    with a cache N+1 (6 reads of that pattern) and a recorded finding event."""
    trace, server = new_trace(), new_span_id()
    location = {"code.file.path": f"hms/{HOSTILE}.py", "code.line.number": 7, "code.function.name": HOSTILE}
    reads = [
        span(
            trace,
            new_span_id(),
            server,
            "GET",
            CLIENT,
            1_000_000_000 + i * 2_000_000,
            1.0,
            {
                "hms.cache.operation": "GET",
                "hms.cache.key_pattern": HOSTILE,
                "hms.cache.hit": False,
                **location,
            },
        )
        for i in range(6)
    ]
    event = {
        "hms.finding.kind": "cache_n_plus_one",
        "hms.finding.fingerprint": "0123456789abcdef",
        "hms.finding.repetitions": 6,
        "hms.finding.duration_ms": 6.0,
        "hms.cache.key_pattern": HOSTILE,
        "hms.hint": HOSTILE,
        "hms.hint.fix": HOSTILE,
        **location,
    }
    owner = span(
        trace,
        server,
        "",
        f"GET {HOSTILE}",
        SERVER,
        1_000_000_000,
        50.0,
        {"http.route": HOSTILE},
        events=[("hms.cache", event)],
    )
    document = request({"opentelemetry.instrumentation.redis": reads, DJANGO: [owner]})
    return write_lines(tmp_path / "traces.jsonl", document)


@pytest.mark.parametrize("command", ["report", "analyze"])
@pytest.mark.parametrize("fmt", ["terminal", "json", "markdown"])
def test_report_and_analyze_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, fmt: str
) -> None:
    path = hostile_file(tmp_path)
    main([command, "--format", fmt, str(path)])
    out, err = capsys.readouterr()
    assert "FORGED" in out  # the finding and its hostile text are shown, escaped
    assert_safe(out + err)
    if fmt == "json":
        document = json.loads(out)
        assert HOSTILE in json.dumps(document, ensure_ascii=False) or any(
            HOSTILE in str(f.get("key_pattern", "")) for f in document["findings"]
        )


def test_report_at_exit_and_errors(tmp_path: Path) -> None:
    from hms_otel_agent.config import load
    from hms_otel_agent.report.at_exit import print_report

    path = hostile_file(tmp_path)
    stream = StringIO()
    print_report(str(tmp_path), "", load({}).settings, stream)
    assert "FORGED" in stream.getvalue()
    assert_safe(stream.getvalue())
    missing = tmp_path / f"no{HOSTILE_OS}such"
    result = subprocess.run(
        [sys.executable, "-m", "hms_otel_agent.launch.cli", "analyze", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "FORGED" in result.stderr
    assert_safe(result.stderr)
    assert path.exists()


# --- configuration -------------------------------------------------------------------------


def test_config_problem_lines_and_values(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HMS_OTEL_N_PLUS_ONE_THRESHOLD": f"5{HOSTILE_OS}",
        "HMS_OTEL_LOCAL_DIR": str(tmp_path / f"d{HOSTILE_OS}"),
        "HMS_OTEL_SERVICE_VERSION": HOSTILE_OS,
    }
    for args in (["config", "--check"], ["config"]):
        result = subprocess.run(
            [sys.executable, "-m", "hms_otel_agent.launch.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        output = result.stdout + result.stderr
        assert "HMS_OTEL_N_PLUS_ONE_THRESHOLD" in result.stderr
        assert_safe(output)
        problems = [line for line in result.stderr.splitlines() if line.startswith("hms-otel: HMS_OTEL_")]
        assert len(problems) == 1, result.stderr  # one line for the one bad value
    assert result.returncode == 0 and "FORGED" in result.stdout  # the values, shown escaped


def test_no_category_of_dangerous_character_is_missed() -> None:
    """Every code point of the categories that move a terminal or a reader is escaped."""
    for code in range(0x110000):
        char = chr(code)
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            assert char not in printable(f"a{char}b")
