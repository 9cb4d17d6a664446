"""`hms-otel`: configuration check and the developer tools around the agent."""

from __future__ import annotations

import argparse
import os
import sys

from hms_otel_agent import __version__, config
from hms_otel_agent.launch.options import add_setting_flags, given_settings
from hms_otel_agent.printable import printable


def _config(args: argparse.Namespace) -> int:
    loaded = config.load(os.environ, given_settings(args))
    if args.check:
        loaded.print_problems(strict=True)
        if loaded.failed:
            return 2
        checked = len(config.ALL_OPTIONS)
        print(f"hms-otel: configuration OK ({checked} settings and standard variables checked)")
        return 0
    loaded.print_problems()
    rows = list(config.describe(loaded.settings))
    sdk_rows = list(config.describe_sdk(os.environ))
    width = max(len(option.env) for option, _, _ in rows + sdk_rows)
    for option, value, source in rows:
        print(f"{option.env:<{width}}  {printable(value)}  [{printable(source)}]")
    if sdk_rows:
        print()
        print("read by the OpenTelemetry SDK and contrib (validated by the agent):")
        for option, value, source in sdk_rows:
            print(f"{option.env:<{width}}  {printable(value)}  [{printable(source)}]")
    settings = loaded.settings
    print()
    for signal in ("traces", "metrics"):
        destinations = []
        for exporter in settings.exporters(signal):
            if exporter == "otlp":
                destinations.append(f"OTLP {settings.protocol(signal)} {settings.endpoint(signal)}")
            elif exporter == "hms_file":
                destinations.append(f"file {os.path.abspath(settings.local_dir)}/")
            else:
                destinations.append(exporter)
        print(f"{signal} go to: {printable(', '.join(destinations)) or 'nowhere'}")
    return 2 if settings.strict and loaded.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hms-otel",
        description="Tools around the hms-otel agent. Run an application under the agent with hms-otel-run.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_parser = commands.add_parser(
        "config",
        help="print the effective configuration and where each value came from",
        description="Print the effective configuration (environment and the flags given here) and where "
        "each value came from, then the standard OTEL_* variables that the OpenTelemetry SDK and "
        "contrib read themselves, if set (validated too; credentials shown as <hidden>). With --check, "
        "validate only: exit 2 on any bad value or unknown HMS_OTEL_* name (for deploy pipelines; "
        "certificate paths are checked on the machine it runs on).",
    )
    config_parser.add_argument(
        "--check",
        action="store_true",
        help="validate; exit 2 if any value is bad or any HMS_OTEL_* name unknown",
    )
    add_setting_flags(config_parser)
    config_parser.set_defaults(func=_config)
    from hms_otel_agent.launch import demo_command, report_commands

    demo_command.register(commands)
    report_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
