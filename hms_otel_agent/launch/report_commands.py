"""`hms-otel report` and `hms-otel analyze`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from hms_otel_agent import config
from hms_otel_agent.printable import printable
from hms_otel_agent.report.build import build_report, filter_run, latest_run_id
from hms_otel_agent.report.otlp import InputError, read_paths
from hms_otel_agent.report.render import FORMATS, format_for, render

EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    from hms_otel_agent.launch.options import add_setting_flags

    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="terminal (default), json, or markdown (CI comments)"
    )
    parser.add_argument(
        "-o", "--output", metavar="PATH", help="write the report here (format from .json / .md if not given)"
    )
    parser.add_argument("--run", metavar="RUN_ID", help="only telemetry of this run (resource hms.run.id)")
    parser.add_argument(
        "--last-run", action="store_true", help="only telemetry of the most recent hms-otel-run run"
    )
    parser.add_argument("--top", type=int, metavar="N", help="show only the N worst findings")
    parser.add_argument(
        "--fail-on-findings", action="store_true", help="exit with status 1 when there is any finding"
    )
    from hms_otel_agent.config import OPTIONS

    add_setting_flags(parser, [o for o in OPTIONS if o.env != "HMS_OTEL_REPORT"])


def register(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="findings report of what the agent recorded (default: the local dir, ./.hms-otel/)",
        description="Print the findings the agent recorded (the hms.* finding events in the telemetry), "
        "grouped across requests and worst first, with cache hit ratios per key pattern. FILE is an "
        "OTLP-JSON file or a directory (its traces.jsonl); default: HMS_OTEL_LOCAL_DIR (./.hms-otel/).",
    )
    report.add_argument("files", nargs="*", metavar="FILE", help="OTLP-JSON files or directories")
    _add_common(report)
    report.set_defaults(func=lambda args: run(args, analyze=False))

    analyze = commands.add_parser(
        "analyze",
        help="run the detectors offline over OTLP-JSON traces from any service",
        description="Rebuild span trees from OTLP-JSON traces (the agent's file, the OpenTelemetry "
        "Collector's file exporter output, or one ExportTraceServiceRequest document), run the agent's "
        "detectors over them (SQL-level when no ORM attributes are present) and print the findings report, "
        "with a note naming the kinds of finding the input does not allow to detect and why (statement "
        "parameters and raw cache keys are exported only when opted in). "
        "Thresholds come from the same settings as the agent (flags below, or HMS_OTEL_* variables).",
    )
    analyze.add_argument("files", nargs="+", metavar="FILE", help="OTLP-JSON files or directories")
    _add_common(analyze)
    analyze.set_defaults(func=lambda args: run(args, analyze=True))


def run(args: argparse.Namespace, analyze: bool) -> int:
    from hms_otel_agent.launch.options import given_settings

    name = "analyze" if analyze else "report"
    loaded = config.load(os.environ, given_settings(args))
    loaded.print_problems()
    settings = loaded.settings
    paths = list(args.files) or [settings.local_dir]
    try:
        result = read_paths(paths)
    except InputError as exc:
        if not args.files and exc.message == "no such file or directory":
            print(
                f"hms-otel {name}: nothing recorded yet in {printable(os.path.abspath(settings.local_dir))}/ "
                "(run your application under hms-otel-run, or pass FILE)",
                file=sys.stderr,
            )
        else:
            print(f"hms-otel {name}: {printable(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    spans = result.spans
    run_id = args.run or (latest_run_id(spans) if args.last_run else None)
    spans = filter_run(spans, run_id)
    report = build_report(spans, settings, analyze=analyze, inputs=result.files)
    if run_id:
        report.notes.append(f"only run {run_id}")
    fmt = format_for(args.output, args.format)
    top = args.top if args.top and args.top > 0 else None
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            render(report, fmt, out, top)
    else:
        stream: IO[str] = sys.stdout
        render(report, fmt, stream, top)
    return EXIT_FINDINGS if args.fail_on_findings and report.findings else 0
