"""The terminal report fits the width it is laid out for, and loses nothing on the way.

At any width from 40 columns up, no line is wider than the width; the findings table keeps one
line per finding (columns dropped, cells shortened with "…") and each finding's block below it
gives in full what its row could not show. Checked on findings with hostile text (wide
characters, control characters, words longer than a line) at widths hypothesis picks, and on
the usual widths; the width itself comes from COLUMNS, the terminal, or a fixed width for pipes.
"""

from __future__ import annotations

import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from fcntl import ioctl
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from hms_otel_agent.printable import printable
from hms_otel_agent.report.model import FindingGroup, KeyPatternStats, Report, Summary
from hms_otel_agent.report.render import (
    NO_TERMINAL_WIDTH,
    _ms,
    _ratio,
    cell_len,
    kind_label,
    output_width,
    to_terminal,
)
from hms_otel_agent.signals.records import CodeLocation, Finding
from hms_otel_agent.signals.registry import FINDING_KINDS

from .otlp_builder import n_plus_one_request, write_lines

ANSI = re.compile(r"\x1b\[[0-9;]*m")

text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(list("abcdefgh_./:{}() 中文字Ω")),
    ),
    min_size=0,
    max_size=80,
)
words = st.lists(st.sampled_from(["patients", "<int:pk>", "summary", "api", "items", "(?P<pk>[^/.]+)"]))


@st.composite
def groups(draw: st.DrawFn) -> FindingGroup:
    routes = draw(st.lists(st.one_of(text, words.map("/".join)), min_size=0, max_size=6, unique=True))
    group = FindingGroup(
        Finding(
            fingerprint=draw(st.text(min_size=1, max_size=8)),
            kind=draw(st.sampled_from(FINDING_KINDS)),
            repetitions=0,
            duration_ms=0.0,
            relation=draw(text),
            location=draw(st.none() | st.builds(CodeLocation, text, st.integers(0, 10**6), text)),
            fix=draw(text),
        ),
        requests=draw(st.integers(0, 10**7)),
        repetitions=draw(st.integers(0, 10**9)),
        total_ms=draw(st.floats(0, 1e9, allow_nan=False)),
    )
    group.routes = {route: float(i) for i, route in enumerate(routes)}
    return group


def patterns() -> st.SearchStrategy[KeyPatternStats]:
    count = st.integers(0, 10**6)
    return st.builds(KeyPatternStats, text, count, count, count, count, count, count)


def render(report: Report, width: int) -> str:
    out = io.StringIO()
    to_terminal(report, out, width=width)
    return out.getvalue()


def squeezed(value: str) -> str:
    """Whitespace removed: wrapping and padding may break a text anywhere there is a space."""
    return re.sub(r"\s+", "", value)


def finding_text(lines: list[str], index: int) -> str:
    """The table row and the details block of finding `index` (1-based), joined."""
    row = next(line for line in lines if re.match(rf"^ *{index}(  |$)", line))
    start = next(n for n, line in enumerate(lines) if re.match(rf"^ *{index}\. ", line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("     "):
            break
        block.append(line)
    return row + "\n" + "\n".join(block)


def assert_fits_and_complete(report: Report, width: int) -> None:
    out = render(report, width)
    lines = out.splitlines()
    too_wide = [line for line in lines if cell_len(line) > width]
    assert not too_wide, f"width {width}:\n" + "\n".join(too_wide)
    for index, g in enumerate(report.findings, 1):
        shown = finding_text(lines, index)
        whole = squeezed(shown)
        for part in [
            kind_label(g.about.kind),
            *g.route_list,
            g.subject,
            g.about.fix,
            f"{g.about.location.file}:{g.about.location.line}" if g.about.location else "(no code location)",
        ]:
            assert squeezed(printable(part)) in whole, (index, part, shown)
        for number, unit in [
            (str(g.requests), "request"),
            (str(g.repetitions), "repetition"),
            (_ms(g.total_ms), "total"),
            (_ms(g.per_request_ms), "per request"),
        ]:
            # in its table column, or written out in the details
            assert re.search(rf"(^|\s){re.escape(number)}(\s|$)", shown.splitlines()[0]) or (
                f"{number} {unit}" in shown.replace("\n    ", " ") or squeezed(f"{number} {unit}") in whole
            ), (index, number, unit, shown)
    if report.key_patterns:
        assert_cache_complete(report.key_patterns, lines[lines.index("cache key patterns") + 1 :])


CACHE_ROW = re.compile(
    r"^ (.*?) +(\d+) +(\d+) +(\d+) +(\d+%|-) +(\d+) +(\d+) +(\d+)(?: +warming candidate)?$"
)


def assert_cache_complete(patterns: list[KeyPatternStats], lines: list[str]) -> None:
    """Every key pattern and number of the cache table: a table row (the key pattern may wrap
    onto the following lines, inside its column) or, when the table does not fit, a line of
    its own."""
    if lines[0].split()[:3] != ["key", "pattern", "reads"]:  # no room for a table
        text = squeezed("\n".join(lines))
        for k in patterns:
            expected = (
                f"{printable(k.key_pattern or '(none)')}: {k.reads} reads, {k.hits} hits, {k.misses} misses "
                f"(hit ratio {_ratio(k.hit_ratio)}), {k.writes} writes ({k.writes_without_ttl} without TTL), "
                f"{k.deletes} deletes"
            )
            assert squeezed(expected) in text, (expected, lines)
        return
    rows: list[tuple[str, tuple[str, ...]]] = []
    for line in lines[2:]:
        # (a row may start with many blanks: a key pattern of white space)
        if not line.strip() or line.startswith((" warming candidates", "note: ")):
            break
        match = CACHE_ROW.match(line)
        if match:
            rows.append((match.group(1), match.groups()[1:]))
        else:  # the key pattern, continued
            rows[-1] = (rows[-1][0] + line.strip(), rows[-1][1])
    assert len(rows) == len(patterns), lines
    for k, (key, numbers) in zip(patterns, rows, strict=True):
        assert squeezed(key) == squeezed(printable(k.key_pattern or "(none)")), (key, k.key_pattern)
        expected = (k.reads, k.hits, k.misses, _ratio(k.hit_ratio), k.writes, k.writes_without_ttl, k.deletes)
        assert numbers == tuple(str(n) for n in expected)


@settings(max_examples=150, deadline=None)
@example(  # a key pattern of white space: its row starts with as many blanks as a note's continuation
    findings=[FindingGroup(Finding(fingerprint="a", kind="n_plus_one", repetitions=0, duration_ms=0.0))],
    key_patterns=[KeyPatternStats(k, 0, 0, 0, 0, 0, 0) for k in ("", "", "", " ")],
    width=69,
)
@given(
    findings=st.lists(groups(), min_size=1, max_size=8),
    key_patterns=st.lists(patterns(), max_size=4),
    width=st.integers(40, 260),
)
def test_any_report_fits_any_width_and_keeps_every_value(
    findings: list[FindingGroup], key_patterns: list[KeyPatternStats], width: int
) -> None:
    report = Report("recorded", [], Summary(requests=3), findings, key_patterns, notes=["a note " * 30])
    assert_fits_and_complete(report, width)


def realistic_report() -> Report:
    def group(kind: str, route: str, relation: str, line: int, fix: str, requests: int) -> FindingGroup:
        about = Finding(
            kind=kind, fingerprint=f"{kind}{line}", repetitions=0, duration_ms=0.0, relation=relation,
            location=CodeLocation("hms_otel_agent/sample/hms/views.py", line, "patient_list_naive"), fix=fix,
        )  # fmt: skip
        g = FindingGroup(about, requests=requests, repetitions=20 * requests, total_ms=250.0 * requests)
        g.routes = {route: 1.0}
        return g

    findings = [
        group("n_plus_one", "patients/", "hms.Patient.emergency_contacts", 211,
              ".prefetch_related('emergency_contacts')", 14),
        group("cache_invalidation_storm", "patients/<int:pk>/touch/", "patient:{id}:*", 539,
              "cache.delete_many([...])", 4),
        group("cache_miss_without_fill", "patients/<int:pk>/flaky-summary/", "patient:{id}:profile", 516,
              "cache.set(key, value, timeout=...) after the query", 8),
    ]  # fmt: skip
    patterns = [KeyPatternStats("patient:{id}:summary", 414, 385, 29, 29, 0, 4),
                KeyPatternStats("patient:{id}:appointments", 40, 2, 38, 0, 0, 4)]  # fmt: skip
    return Report("recorded", [], Summary(requests=202), findings, patterns)


def test_usual_widths() -> None:
    report = realistic_report()
    for width in (40, 60, 80, 100, 120, 160, 200):
        assert_fits_and_complete(report, width)
    narrow, wide = render(report, 80).splitlines(), render(report, 200).splitlines()
    # One line per finding in the table at both widths; at 200 columns every column is there.
    assert sum(1 for line in narrow if re.match(r"^ +\d  ", line)) == 3
    header = next(line for line in wide if line.lstrip().startswith("#"))
    assert header.split() == ["#", "kind", "route", "relation", "/", "key", "pattern", "req", "reps", "total",
                              "per", "req"]  # fmt: skip
    assert "warming candidate" in "\n".join(wide)
    assert "warming candidates (at least 20 reads" in "\n".join(narrow)  # no room for the column


def test_width_from_columns_terminal_or_default(tmp_path: Path) -> None:
    assert output_width(io.StringIO(), {"COLUMNS": "93"}) == 93
    assert output_width(io.StringIO(), {"COLUMNS": "12"}) == 40  # the narrowest layout
    file = write_lines(tmp_path / "traces.jsonl", *(n_plus_one_request(n) for n in (6, 9, 12)))
    cli = [sys.executable, "-m", "hms_otel_agent.launch.cli", "analyze", str(file)]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERM")}

    # A pipe, with no terminal on any standard stream: the fixed width.
    piped = subprocess.run(cli, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True)
    assert max(cell_len(line) for line in piped.stdout.splitlines()) <= NO_TERMINAL_WIDTH
    # COLUMNS wins.
    narrow = subprocess.run(cli, env={**env, "COLUMNS": "50"}, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=True)  # fmt: skip
    assert (
        max(cell_len(line) for line in narrow.stdout.splitlines())
        <= 50
        < max(cell_len(line) for line in piped.stdout.splitlines())
    )

    # A terminal 64 columns wide (a pseudo-terminal): its width.
    leader, follower = pty.openpty()
    ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 64, 0, 0))
    try:
        proc = subprocess.Popen(cli, env={**env, "TERM": "xterm"}, stdout=follower, stderr=follower,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(60) == 0
    finally:
        os.close(leader)
    shown = ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    assert "hms-otel findings" in shown
    assert max(cell_len(line) for line in shown.splitlines()) <= 64
