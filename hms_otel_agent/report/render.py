"""The report as terminal tables (rich), JSON (schema in docs/report.md) or Markdown (CI comments)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import IO, Any

from hms_otel_agent.printable import json_printable, printable
from hms_otel_agent.report.model import (
    ANALYZED,
    WARMING_MAX_HIT_RATIO,
    WARMING_MIN_READS,
    FindingGroup,
    KeyPatternStats,
    Report,
    RouteTime,
    Summary,
)

FORMATS = ("terminal", "json", "markdown")


def format_for(path: str | None, given: str | None) -> str:
    """The format asked for, else the one the output file's name says, else terminal."""
    if given:
        return given
    if path and path.endswith(".json"):
        return "json"
    if path and path.endswith((".md", ".markdown")):
        return "markdown"
    return "terminal"


KIND_LABELS = {
    "n_plus_one": "N+1",
    "duplicate_query": "duplicate query",
    "cache_n_plus_one": "cache N+1",
    "cache_repeated_miss": "cache repeated miss",
    "cache_miss_without_fill": "cache miss without fill",
    "cache_write_without_ttl": "cache write without TTL",
    "cache_invalidation_storm": "cache invalidation storm",
    "repeated_group": "repeated group (MN+1)",
    "slow_query": "slow query",
    "unbounded_result": "unbounded result",
    "wide_result": "wide result",
    "connection_churn": "connection churn",
    "unused_eager_load": "unused eager load",
    "http_n_plus_one": "HTTP N+1",
    "http_sequential": "sequential HTTP calls",
    "http_slow_call": "slow HTTP call",
    "http_no_timeout": "HTTP call without timeout",
}


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " "))


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 10_000 else f"{value / 1000:,.2f} s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _where(group: FindingGroup) -> str:
    loc = group.about.location
    if loc is None:
        return ""
    return f"{loc.file}:{loc.line}" + (f" in {loc.function}" if loc.function else "")


def _routes(group: FindingGroup, limit: int = 3) -> str:
    routes = group.route_list
    shown = ", ".join(routes[:limit])
    return shown + (f" (+{len(routes) - limit})" if len(routes) > limit else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _owners(s: Summary) -> str:
    """What the findings were looked for in: "202 requests", "9 tests and 3 requests"."""
    others = s.owners - s.requests - s.tests
    parts = [_plural(s.tests, "test")] if s.tests else []
    if s.requests or (not parts and others <= 0):
        parts.append(_plural(s.requests, "request"))
    if others > 0:  # tasks, jobs, code outside any request
        other = _plural(others, "other span") if parts else f"{_plural(others, 'span')} outside requests"
        parts.append(other)
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def count_header(report: Report, short: bool) -> str:
    """The header of the column counting the owners a finding occurred in: requests, or in a
    pytest run, tests and the requests they made."""
    if report.summary.tests:
        return "seen in"
    return "req" if short else "requests"


def headline(report: Report) -> str:
    s = report.summary
    what = "detected offline" if report.source == ANALYZED else "recorded by the agent"
    where = _owners(s)
    return (
        f"{_plural(len(report.findings), 'finding')} ({what}) in {where}; "
        f"{_plural(s.db_queries, 'SQL query').replace('querys', 'queries')}, "
        f"{_ms(s.db_time_ms)} in the database"
    )


# --- JSON -------------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    return json_printable(json.dumps(report.to_dict(), indent=2, ensure_ascii=False)) + "\n"


# --- Markdown ---------------------------------------------------------------------------------


def _md(text: Any) -> str:
    return printable(text).replace("\\", "\\\\").replace("|", "\\|")


def _code(text: str) -> str:
    if not text:
        return ""
    text = printable(text)
    return f"`{text}`" if "`" not in text else f"``{text}``"


def to_markdown(report: Report, top: int | None = None) -> str:
    lines = ["## hms-otel findings", "", _md(headline(report)) + ".", ""]
    findings = report.findings if top is None else report.findings[:top]
    if findings:
        lines += [
            f"| # | kind | route | relation / key pattern | {count_header(report, False)} | repetitions "
            "| total | per request | location | fix |",
            "|---:|---|---|---|---:|---:|---:|---:|---|---|",
        ]
        for index, g in enumerate(findings, 1):
            cells = [
                str(index),
                _md(kind_label(g.about.kind)),
                _md(_routes(g)),
                _md(_code(g.subject)),
                str(g.requests),
                str(g.repetitions),
                _md(_ms(g.total_ms)),
                _md(_ms(g.per_request_ms)),
                _md(_code(_where(g))),
                _md(_code(g.about.fix)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if top is not None and len(report.findings) > top:
            lines.append(f"\n{len(report.findings) - top} more findings not shown.")
        lines.append("")
    else:
        lines += ["No findings.", ""]
    if report.key_patterns:
        lines += [
            "### Cache key patterns",
            "",
            "| key pattern | reads | hits | misses | hit ratio | writes | without TTL | deletes | warm? |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for k in report.key_patterns:
            lines.append(
                f"| {_md(_code(k.key_pattern or '(none)'))} | {k.reads} | {k.hits} | {k.misses} | "
                f"{_ratio(k.hit_ratio)} | {k.writes} | {k.writes_without_ttl} | {k.deletes} | "
                f"{'**warming candidate**' if k.warming_candidate else ''} |"
            )
        lines.append("")
    if report.time:
        lines += [
            "### Where the time goes",
            "",
            "| route | requests | mean | db | cache | http | template | app |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in report.time[:TIME_ROUTES]:
            mean = t.total_ms / t.owners if t.owners else 0.0
            shares = " | ".join(_share(t, key) for key, _ in _TIME_HEADERS)
            lines.append(f"| {_md(_code(t.route))} | {t.owners} | {_md(_ms(mean))} | {shares} |")
        lines.append("")
    for note in report.notes:
        lines += [f"> {_md(note)}", ""]
    return "\n".join(lines)


# --- terminal ---------------------------------------------------------------------------------
#
# Laid out here rather than by rich's Table, so that every line fits the width exactly and the
# renderer knows which cells it shortened: the findings table is one line per finding at any
# width (columns dropped, then cells shortened with "…"), and the block below each row gives in
# full whatever the row could not show, then the code location and the fix (as `pytest -rA`
# gives a short summary line and the details). rich only styles and wraps.

MIN_WIDTH = 40  # narrower than this, lines may exceed the width
NO_TERMINAL_WIDTH = 120  # output to a pipe or file with no terminal anywhere and no COLUMNS
_GAP = "  "
_MARGIN = " "
_INDENT = 5  # "  1. " before each finding's details
COMFORTABLE = 32  # text columns up to this wide are not shortened while a column can be dropped
_BREAKS = re.compile(r"(?<=[:/ ])")


def cell_len(text: str) -> int:
    """Terminal cells `text` takes (wide characters take two)."""
    from rich.cells import cell_len as cells

    return cells(text)


def output_width(file: IO[str] | None, environ: Any = None) -> int:
    """The width to lay the report out for: COLUMNS when set (the user, or a CI job, says so),
    else the terminal the output goes to, else the terminal of any standard stream (``hms-otel
    report | less`` fits the screen), else NO_TERMINAL_WIDTH."""
    environ = os.environ if environ is None else environ
    columns = str(environ.get("COLUMNS", "")).strip()
    if columns.isdigit() and int(columns) > 0:
        return max(MIN_WIDTH, int(columns))
    descriptors = []
    with contextlib.suppress(AttributeError, OSError, ValueError):
        descriptors.append((file if file is not None else sys.stdout).fileno())
    for fd in [*descriptors, 1, 2, 0]:
        try:
            if os.isatty(fd):
                size = os.get_terminal_size(fd).columns
                if size > 0:
                    return max(MIN_WIDTH, size)
        except (OSError, ValueError):
            continue
    return NO_TERMINAL_WIDTH


@dataclass
class _Column:
    header: str
    cells: list[str]  # already printable
    numeric: bool = False  # right-justified; never shortened (dropped instead)
    drop: int = 0  # 0: always shown; otherwise dropped when short of width, highest first
    fold: bool = False  # text that does not fit wraps inside the cell instead of being shortened
    first_claim: bool = False  # gets its natural width before other text columns share the rest
    minimum: int = 12  # text columns: narrowest width before the table gives up a column
    style: str = ""

    @property
    def natural(self) -> int:
        return max([cell_len(self.header), *(cell_len(c) for c in self.cells)])

    def narrowest(self) -> int:
        return self.natural if self.numeric else min(self.natural, self.minimum)


def _fit(columns: list[_Column], width: int) -> tuple[list[_Column], list[int]]:
    """The columns shown and their widths. Droppable columns go, highest `drop` first, while
    the text columns would not fit whole (up to COMFORTABLE cells each); text columns then
    share what is left, max-min fairly, after those with a first claim got their natural width,
    and are shortened (or folded) only when even that is not enough."""
    shown = list(columns)

    def needed(cols: list[_Column]) -> int:
        text = sum(min(c.natural, COMFORTABLE) for c in cols if not c.numeric)
        return len(_MARGIN) + len(_GAP) * (len(cols) - 1) + sum(c.natural for c in cols if c.numeric) + text

    while needed(shown) > width and any(c.drop for c in shown):
        shown.remove(max((c for c in shown if c.drop), key=lambda c: c.drop))
    fixed = sum(c.natural for c in shown if c.numeric)
    room = width - len(_MARGIN) - len(_GAP) * (len(shown) - 1) - fixed
    text = [c for c in shown if not c.numeric]
    widths = {id(c): min(c.natural, c.minimum) for c in text}
    room -= sum(widths.values())
    for column in [c for c in text if c.first_claim]:
        extra = min(max(room, 0), column.natural - widths[id(column)])
        widths[id(column)] += extra
        room -= extra
    while room > 0:  # one cell at a time to the narrowest column that still wants more
        wanting = [c for c in text if widths[id(c)] < c.natural]
        if not wanting:
            break
        narrowest = min(wanting, key=lambda c: widths[id(c)])
        widths[id(narrowest)] += 1
        room -= 1
    if room < 0:  # narrower than the minimums (below MIN_WIDTH): shrink text columns to fit
        for column in sorted(text, key=lambda c: -widths[id(c)]):
            take = min(-room, widths[id(column)] - 1)
            widths[id(column)] -= take
            room += take
    return shown, [c.natural if c.numeric else widths[id(c)] for c in shown]


def _fold(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` cells, broken after ':', '/' or ' ' where possible
    (key patterns and routes), else anywhere."""
    lines, line = [], ""
    for token in _BREAKS.split(text):
        while cell_len(token) > width:  # a token longer than a line: cut it
            if line:
                lines.append(line)
                line = ""
            cut = _cut(token, width)
            lines.append(token[:cut])
            token = token[cut:]
        if cell_len(line + token) > width:
            lines.append(line)
            line = ""
        line += token
    return [*lines, line] if line or not lines else lines


def _cut(text: str, width: int) -> int:
    """How many characters of `text` fit in `width` cells (at least one)."""
    used = 0
    for index, char in enumerate(text):
        used += cell_len(char)
        if used > width:
            return max(index, 1)
    return len(text)


def _cell(text: str, width: int, column: _Column, console: Any) -> tuple[list[Any], bool]:
    """The lines of one cell (exactly `width` wide) and whether its text was shortened."""
    from rich.text import Text

    cell = Text(text, style=column.style)
    if cell.cell_len <= width:
        lines = [cell]
    elif column.fold:
        lines = [Text(line, style=column.style) for line in _fold(text, width)]
    else:
        cell.truncate(width, overflow="ellipsis")
        return [cell], True
    for line in lines:
        if column.numeric:
            line.pad_left(width - line.cell_len)
        else:
            line.append(" " * (width - line.cell_len))
    return lines, False


def _table(console: Any, columns: list[_Column], width: int) -> tuple[list[_Column], set[tuple[int, int]]]:
    """Print the table; returns the columns shown and the (row, column index) cells shortened."""
    from rich.text import Text

    shown, widths = _fit(columns, width)
    header = Text(_MARGIN)
    for index, (column, w) in enumerate(zip(shown, widths, strict=True)):
        label = column.header if cell_len(column.header) <= w else column.header[: max(w - 1, 0)] + "…"
        header.append((_GAP if index else "") + (label.rjust(w) if column.numeric else label.ljust(w)))
    header.rstrip()
    header.stylize("bold")
    console.print(header)
    console.print(Text(_MARGIN + "─" * (sum(widths) + len(_GAP) * (len(widths) - 1)), style="dim"))
    shortened: set[tuple[int, int]] = set()
    rows = len(columns[0].cells) if columns else 0
    for row in range(rows):
        cells = []
        for column, w in zip(shown, widths, strict=True):
            lines, cut = _cell(column.cells[row], w, column, console)
            if cut:
                shortened.add((row, columns.index(column)))
            cells.append(lines)
        for line_no in range(max(len(c) for c in cells)):
            line = Text(_MARGIN)
            for index, (lines, w) in enumerate(zip(cells, widths, strict=True)):
                line.append(_GAP if index else "")
                line.append_text(lines[line_no] if line_no < len(lines) else Text(" " * w))
            line.rstrip()
            console.print(line)
    return shown, shortened


def _wrapped(console: Any, text: Any, width: int, first: str = "", indent: int = 0) -> None:
    """Print `text` word-wrapped to `width`: `first` before its first line (e.g. "  1. "),
    `indent` spaces before the others; words longer than a line are folded."""
    from rich.text import Text

    lead = max(indent, cell_len(first))
    for number, line in enumerate(text.wrap(console, max(width - lead, 1), overflow="fold")):
        out = Text(first.ljust(lead) if number == 0 else " " * lead, style="dim")
        line.rstrip()
        out.append_text(line)
        console.print(out)


def to_terminal(report: Report, file: IO[str] | None = None, top: int | None = None, width: int = 0) -> None:
    from rich.console import Console
    from rich.text import Text

    width = width or output_width(file)
    # soft_wrap: rich never re-wraps a line; every line printed here already fits the width.
    console = Console(file=file, highlight=False, soft_wrap=True, width=width)
    console.print(Text("hms-otel findings", style="bold"))
    _wrapped(console, Text(printable(headline(report)), style="dim"), width)
    findings = report.findings if top is None else report.findings[:top]
    if findings:
        console.print()
        _findings(console, findings, width, count_header(report, True))
        if top is not None and len(report.findings) > top:
            more = Text(f"{len(report.findings) - top} more findings not shown (--top).", "dim")
            _wrapped(console, more, width)
    else:
        console.print("No findings.", style="green")
    if report.time:
        console.print()
        _time_table(console, report.time[:TIME_ROUTES], width)
    if report.key_patterns:
        console.print()
        _cache_table(console, report.key_patterns, width)
    for note in report.notes:
        _wrapped(console, Text(printable(note), style="dim"), width, first="note: ", indent=6)


def _findings(console: Any, findings: list[FindingGroup], width: int, counted_in: str = "req") -> None:
    from rich.text import Text

    kinds = [printable(kind_label(g.about.kind)) for g in findings]
    routes = [printable(_routes(g)) for g in findings]
    subjects = [printable(g.subject) for g in findings]
    columns = [
        _Column("#", [str(i) for i in range(1, len(findings) + 1)], numeric=True, style="dim"),
        _Column("kind", kinds, drop=1, first_claim=True, minimum=9, style="bold"),
        _Column("route", routes, drop=4, minimum=10),
        _Column("relation / key pattern", subjects, minimum=12),
        _Column(counted_in, [str(g.requests) for g in findings], numeric=True, drop=2),
        _Column("reps", [str(g.repetitions) for g in findings], numeric=True, drop=5),
        _Column("total", [_ms(g.total_ms) for g in findings], numeric=True, drop=3),
        _Column("per req", [_ms(g.per_request_ms) for g in findings], numeric=True, drop=6),
    ]
    shown, shortened = _table(console, columns, width)
    console.print()
    kind, route, _, requests, reps, total, per_request = columns[1:]
    for row, g in enumerate(findings):
        first = f"{row + 1:>3}. "
        # What the row could not show, in full.
        missing = []
        if kind not in shown or (row, 1) in shortened:
            missing.append(kinds[row])
        all_routes = ", ".join(printable(r) for r in g.route_list)
        if all_routes and (route not in shown or (row, 2) in shortened or all_routes != routes[row]):
            missing.append(("routes: " if len(g.route_list) > 1 else "route: ") + all_routes)
        if (row, 3) in shortened:
            missing.append(subjects[row])
        numbers = [
            (requests, _plural(g.requests, "request") if counted_in == "req" else f"seen in {g.requests}"),
            (reps, _plural(g.repetitions, "repetition")),
            (total, f"{_ms(g.total_ms)} total"),
            (per_request, f"{_ms(g.per_request_ms)} per request"),
        ]
        counted = ", ".join(text for column, text in numbers if column not in shown)
        if counted:
            missing.append(counted)
        if missing:
            _wrapped(console, Text(" · ".join(missing)), width, first=first, indent=_INDENT)
            first = ""
        where = Text(printable(_where(g)) or "(no code location)", style="cyan")
        _wrapped(console, where, width, first=first, indent=_INDENT)
        if g.about.fix:
            fix = Text("fix: ", style="dim")
            fix.append(printable(g.about.fix), style="green")
            _wrapped(console, fix, width, indent=_INDENT)
            origin = g.about.origin
            if origin is not None and origin != g.about.location:
                place = Text("on the queryset at: ", style="dim")
                place.append(printable(str(origin)), style="cyan")
                _wrapped(console, place, width, indent=_INDENT)


TIME_ROUTES = 10  # routes in the "where the time goes" table, busiest first
_TIME_HEADERS = (
    ("db_ms", "db"),
    ("cache_ms", "cache"),
    ("http_ms", "http"),
    ("template_ms", "tmpl"),
    ("app_ms", "app"),
)


def _share(times: RouteTime, key: str) -> str:
    return f"{times.share(key):.0%}"


def _time_table(console: Any, times: list[RouteTime], width: int) -> None:
    """Per route: requests, mean duration, and the share of database, cache, outbound HTTP,
    template and the rest (signals/time_split.py), so the database's part is seen first."""
    from rich.text import Text

    console.print(Text("where the time goes", style="bold"))
    columns = [
        _Column("route", [printable(t.route) for t in times], fold=True),
        _Column("req", [str(t.owners) for t in times], numeric=True),
        _Column("mean", [_ms(t.total_ms / t.owners if t.owners else 0.0) for t in times], numeric=True),
        *(_Column(header, [_share(t, key) for t in times], numeric=True) for key, header in _TIME_HEADERS),
    ]
    needed = len(_MARGIN) + sum(c.narrowest() + len(_GAP) for c in columns) - len(_GAP)
    if needed > width:  # too narrow for a table: one wrapped line per route
        for t in times:
            line = Text(printable(t.route), style="bold")
            shares = ", ".join(f"{header} {_share(t, key)}" for key, header in _TIME_HEADERS)
            line.append(f": {t.owners} req, {_ms(t.total_ms / t.owners if t.owners else 0.0)} mean; {shares}")
            _wrapped(console, line, width, first=" ", indent=3)
        return
    _table(console, columns, width)


def _cache_table(console: Any, patterns: list[KeyPatternStats], width: int) -> None:
    from rich.text import Text

    console.print(Text("cache key patterns", style="bold"))
    columns = [
        _Column("key pattern", [printable(k.key_pattern or "(none)") for k in patterns], fold=True),
        _Column("reads", [str(k.reads) for k in patterns], numeric=True),
        _Column("hits", [str(k.hits) for k in patterns], numeric=True),
        _Column("misses", [str(k.misses) for k in patterns], numeric=True),
        _Column("hit ratio", [_ratio(k.hit_ratio) for k in patterns], numeric=True),
        _Column("writes", [str(k.writes) for k in patterns], numeric=True),
        _Column("no TTL", [str(k.writes_without_ttl) for k in patterns], numeric=True),
        _Column("deletes", [str(k.deletes) for k in patterns], numeric=True),
    ]
    warming = [printable(k.key_pattern or "(none)") for k in patterns if k.warming_candidate]
    if warming:
        marks = ["warming candidate" if k.warming_candidate else "" for k in patterns]
        columns.append(_Column("", marks, drop=1, style="yellow", minimum=17))
    needed = len(_MARGIN) + sum(c.narrowest() + len(_GAP) for c in columns[:8]) - len(_GAP)
    if needed > width:  # too narrow for a table: one wrapped line per pattern
        for k in patterns:
            line = Text(printable(k.key_pattern or "(none)"), style="bold")
            line.append(
                f": {k.reads} reads, {k.hits} hits, {k.misses} misses (hit ratio {_ratio(k.hit_ratio)}), "
                f"{k.writes} writes ({k.writes_without_ttl} without TTL), {k.deletes} deletes"
                + (", warming candidate" if k.warming_candidate else "")
            )
            _wrapped(console, line, width, first=" ", indent=3)
        return
    shown, _ = _table(console, columns, width)
    if warming and columns[-1] not in shown:
        line = Text(
            f"warming candidates (at least {WARMING_MIN_READS} reads, hit ratio below "
            f"{WARMING_MAX_HIT_RATIO:.0%}): " + ", ".join(warming),
            style="yellow",
        )
        _wrapped(console, line, width, first=" ", indent=1)


def render(report: Report, fmt: str, file: IO[str], top: int | None = None) -> None:
    if fmt == "json":
        file.write(to_json(report))
    elif fmt == "markdown":
        file.write(to_markdown(report, top))
    else:
        to_terminal(report, file, top)
