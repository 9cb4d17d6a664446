"""The report as terminal tables (rich), JSON (schema in docs/report.md) or Markdown (CI comments)."""

from __future__ import annotations

import json
from typing import IO, Any

from hms_otel_agent.printable import json_printable, printable
from hms_otel_agent.report.model import ANALYZED, FindingGroup, KeyPatternStats, Report

FORMATS = ("terminal", "json", "markdown")
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
}


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " "))


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 10_000 else f"{value / 1000:,.2f} s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _where(group: FindingGroup) -> str:
    loc = group.location
    if loc is None:
        return ""
    return f"{loc.file}:{loc.line}" + (f" in {loc.function}" if loc.function else "")


def _routes(group: FindingGroup, limit: int = 3) -> str:
    routes = group.route_list
    shown = ", ".join(routes[:limit])
    return shown + (f" (+{len(routes) - limit})" if len(routes) > limit else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def headline(report: Report) -> str:
    s = report.summary
    what = "detected offline" if report.source == ANALYZED else "recorded by the agent"
    where = _plural(s.requests, "request")
    if s.owners != s.requests:
        where += f" ({_plural(s.owners, 'owner span')})"
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
            "| # | kind | route | relation / key pattern | requests | repetitions | total | per request "
            "| location | fix |",
            "|---:|---|---|---|---:|---:|---:|---:|---|---|",
        ]
        for index, g in enumerate(findings, 1):
            cells = [
                str(index),
                _md(kind_label(g.kind)),
                _md(_routes(g)),
                _md(_code(g.subject)),
                str(g.requests),
                str(g.repetitions),
                _md(_ms(g.total_ms)),
                _md(_ms(g.per_request_ms)),
                _md(_code(_where(g))),
                _md(_code(g.fix)),
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
    for note in report.notes:
        lines += [f"> {_md(note)}", ""]
    return "\n".join(lines)


# --- terminal ---------------------------------------------------------------------------------


def to_terminal(report: Report, file: IO[str] | None = None, top: int | None = None, width: int = 0) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, highlight=False, soft_wrap=False)
    if width:
        console.width = width
    elif not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(Text("hms-otel findings", style="bold"))
    console.print(Text(printable(headline(report)), style="dim"), overflow="fold")
    findings = report.findings if top is None else report.findings[:top]
    if findings:
        table = Table(box=box.SIMPLE_HEAD, show_lines=False, pad_edge=False, expand=False)
        table.add_column("#", justify="right", style="dim", no_wrap=True)
        table.add_column("kind", style="bold", no_wrap=True)
        table.add_column("route", overflow="fold", ratio=1)
        table.add_column("relation / key pattern", overflow="fold", ratio=1)
        table.add_column("req", justify="right", no_wrap=True)
        table.add_column("reps", justify="right", no_wrap=True)
        table.add_column("total", justify="right", no_wrap=True)
        table.add_column("per req", justify="right", no_wrap=True)
        for index, g in enumerate(findings, 1):
            table.add_row(
                str(index),
                _text(kind_label(g.kind)),
                _text(_routes(g)),
                _text(g.subject),
                str(g.requests),
                str(g.repetitions),
                _ms(g.total_ms),
                _ms(g.per_request_ms),
            )
        console.print(table)
        for index, g in enumerate(findings, 1):
            where = _where(g)
            line = Text(f"{index:>3}. ", style="dim")
            line.append(printable(where) or "(no code location)", style="cyan")
            console.print(line, overflow="fold")
            if g.fix:
                fix = Text("     fix: ", style="dim")
                fix.append(printable(g.fix), style="green")
                console.print(fix, overflow="fold")
        if top is not None and len(report.findings) > top:
            console.print(f"{len(report.findings) - top} more findings not shown (--top).", style="dim")
    else:
        console.print("No findings.", style="green")
    if report.key_patterns:
        _cache_table(console, report.key_patterns)
    for note in report.notes:
        console.print(Text("note: " + printable(note), style="dim"))


def _text(value: str) -> Any:
    """A table cell: escaped, and a Text, so that rich reads no markup in it (``[red]``)."""
    from rich.text import Text

    return Text(printable(value))


def _cache_table(console: Any, patterns: list[KeyPatternStats]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title="cache key patterns", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("key pattern", overflow="fold")
    for name in ("reads", "hits", "misses", "hit ratio", "writes", "no TTL", "deletes"):
        table.add_column(name, justify="right")
    table.add_column("")
    for k in patterns:
        table.add_row(
            _text(k.key_pattern or "(none)"),
            str(k.reads),
            str(k.hits),
            str(k.misses),
            _ratio(k.hit_ratio),
            str(k.writes),
            str(k.writes_without_ttl),
            str(k.deletes),
            "[yellow]warming candidate[/yellow]" if k.warming_candidate else "",
        )
    console.print(table)


def render(report: Report, fmt: str, file: IO[str], top: int | None = None) -> None:
    if fmt == "json":
        file.write(to_json(report))
    elif fmt == "markdown":
        file.write(to_markdown(report, top))
    else:
        to_terminal(report, file, top)
