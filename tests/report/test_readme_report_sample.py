"""The README's sample report is what the renderer prints: it cannot drift.

The block after ``<!-- report-sample: COLUMNS=W ... -->`` is parsed back into findings (kind
labels, routes, relations, counts, times, code locations, fixes) and rendered again at W columns:
the headline, the table's header, rule and rows, and the details shown must come out exactly as
the README has them. A renamed kind, column header or number format, or a changed layout, fails
here until the README sample is regenerated from a real run.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

from hms_otel_agent.demo.run import DEFAULT_REQUESTS
from hms_otel_agent.report.model import FindingGroup, Report, Summary
from hms_otel_agent.report.render import KIND_LABELS, _ms, to_terminal
from hms_otel_agent.signals.records import CodeLocation, Finding

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(
    r"^ +(?P<index>\d+)  (?P<kind>\S+(?: \S+)*) {2,}(?P<route>\S+(?: \S+)*) {2,}(?P<subject>\S+)"
    r" +(?P<req>\d+) +(?P<reps>\d+) +(?P<total>[\d,.]+ (?:ms|s))$"
)
HEADLINE = re.compile(
    r"^(?P<findings>\d+) findings \(recorded by the agent\) in (?P<requests>\d+) requests"
    r"(?: and (?P<others>\d+) other spans?)?; "
    r"(?P<queries>\d+) SQL queries, (?P<time>[\d,.]+ (?:ms|s)) in the database$"
)


def sample() -> tuple[int, list[str]]:
    text = README.read_text()
    marker = re.search(r"<!-- report-sample: COLUMNS=(\d+) [^>]*-->\n```\n(.*?)```", text, re.S)
    assert marker, "README: no report sample"
    return int(marker.group(1)), marker.group(2).splitlines()


def milliseconds(shown: str) -> float:
    value, unit = shown.split()
    return float(value.replace(",", "")) * (1000.0 if unit == "s" else 1.0)


def test_readme_report_sample_is_what_the_renderer_prints() -> None:
    width, lines = sample()
    assert lines[0] == "hms-otel findings"
    head = HEADLINE.match(lines[1])
    assert head, lines[1]
    assert int(head["requests"]) == DEFAULT_REQUESTS  # the demo says 200 requests and reports 200
    table = lines.index("", 2) + 1
    rows_end = lines.index("", table)
    labels = {label: kind for kind, label in KIND_LABELS.items()}
    groups: list[FindingGroup] = []
    for row in lines[table + 2 : rows_end]:
        match = ROW.match(row)
        assert match, row
        assert match["kind"] in labels, f"README kind {match['kind']!r} is not a kind the renderer prints"
        about = Finding(
            kind=labels[match["kind"]], fingerprint=match["index"], repetitions=0, duration_ms=0.0,
            relation=match["subject"],
        )  # fmt: skip
        group = FindingGroup(
            about,
            requests=int(match["req"]),
            repetitions=int(match["reps"]),
            total_ms=milliseconds(match["total"]),
        )
        group.routes = {match["route"]: group.total_ms}
        groups.append(group)
    assert len(groups) == int(head["findings"])
    # The details shown: "  N. <what the row left out>", the location, the fix.
    details = lines[rows_end + 1 : lines.index("…")]
    shown_blocks = [n for n, line in enumerate(details) if re.match(r"^ +\d+\. ", line)]
    for start in shown_blocks:
        index = int(details[start].split(".")[0])
        where = re.match(r"^ +(.+):(\d+) in (\S+)$", details[start + 1])
        fix = details[start + 2].strip()
        assert where and fix.startswith("fix: "), details[start : start + 3]
        group = groups[index - 1]
        group.about = dataclasses.replace(
            group.about,
            location=CodeLocation(where[1], int(where[2]), where[3]),
            fix=fix.removeprefix("fix: "),
        )
        after = details[start + 3] if start + 3 < len(details) else ""
        origin = re.match(r"^ +on the queryset at: (.+):(\d+) in (\S+)$", after)
        if origin:  # where the fix goes, when that is not where the load ran
            group.about = dataclasses.replace(
                group.about, origin=CodeLocation(origin[1], int(origin[2]), origin[3])
            )
        per_request = re.match(r"^ +\d+\. ([\d,.]+ (?:ms|s)) per request$", details[start])
        if per_request and _ms(group.per_request_ms) != per_request[1]:  # the table's total is rounded
            group.total_ms = milliseconds(per_request[1]) * group.requests
    owners = int(head["requests"]) + int(head["others"] or 0)  # others: the demo's background job
    summary = Summary(requests=int(head["requests"]), owners=owners)
    summary.db_queries, summary.db_time_ms = int(head["queries"]), milliseconds(head["time"])
    out = io.StringIO()
    to_terminal(Report("recorded", [], summary, groups, []), out, width=width)
    rendered = out.getvalue().splitlines()

    assert rendered[: rows_end + 1] == lines[: rows_end + 1]  # headline, header, rule, every row
    for start in shown_blocks:
        after = details[start + 3] if start + 3 < len(details) else ""
        size = 4 if after.lstrip().startswith("on the queryset at: ") else 3
        block = details[start : start + size]
        assert block[0] in rendered, (block[0], rendered)
        at = rendered.index(block[0])
        assert rendered[at : at + size] == block
