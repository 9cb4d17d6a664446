"""Command-line flags generated from the settings table (one flag per variable)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from hms_otel_agent.config import OPTIONS, ConfigError, Option

_GROUP_TITLES = {
    "agent": "agent",
    "signals": "signals (thresholds)",
    "privacy": "privacy (all off by default: no patient data leaves the process)",
    "otel": "standard OpenTelemetry variables",
}


def _checked(option: Option) -> Callable[[str], str]:
    def check(raw: str) -> str:
        try:
            option.parse(raw)
        except ConfigError:
            raise argparse.ArgumentTypeError(
                f"{raw!r} is not accepted (expected {option.accepted})"
            ) from None
        return raw

    return check


def add_setting_flags(parser: argparse.ArgumentParser, options: Iterable[Option] = OPTIONS) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(_GROUP_TITLES[option.group])
        dest = "setting:" + option.env
        help_text = f"{option.help} [{option.env}]"
        if option.is_bool:
            group.add_argument(option.flag, dest=dest, action="store_const", const="true", help=help_text)
            group.add_argument(
                "--no-" + option.flag[2:],
                dest=dest,
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(option.flag, dest=dest, metavar="VALUE", type=_checked(option), help=help_text)


def given_settings(args: argparse.Namespace) -> dict[str, str]:
    """{ENV_NAME: raw value} for every flag given on the command line."""
    values: dict[str, str] = {}
    for key, value in vars(args).items():
        if key.startswith("setting:") and value is not None:
            values[key[len("setting:") :]] = value
    return values
