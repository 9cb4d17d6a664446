"""`hms-otel demo`: its command-line options (the work is in `hms_otel_agent.demo.run`)."""

from __future__ import annotations

import argparse

from hms_otel_agent.report.render import FORMATS


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="see the agent work in one command: the bundled hospital app, real traffic, the findings report",
        description="Start a throwaway PostgreSQL and Redis (or use DATABASE_URL / REDIS_URL when set), "
        "migrate and seed the bundled sample hospital app with synthetic patients, run it under the agent "
        "on a loopback port, send it a realistic mix of requests and print the findings report. With "
        "OTEL_EXPORTER_OTLP_ENDPOINT set, the telemetry also goes there (e.g. the compose stack). "
        "Everything it started is stopped and its temporary data removed on exit, error and Ctrl-C.",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, metavar="N", help="send N requests (default 200)")
    amount.add_argument("--duration", type=float, metavar="S", help="send requests for S seconds")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the app running after the traffic so you can click around; Ctrl-C stops it and prints "
        "the report",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--patients", type=int, default=200, help="synthetic patients to seed (default 200)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel clients (default 4)")
    parser.add_argument("--format", choices=FORMATS, default="terminal", help="report format")
    parser.add_argument("-o", "--output", metavar="PATH", help="also write the report here (.json / .md)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for data and traffic (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress output, only the report")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hms_otel_agent.demo.run import main

    return main(args)
