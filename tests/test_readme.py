"""README.md stays true to the code: the settings table and the commands it names."""

from __future__ import annotations

import re
from pathlib import Path

from hms_otel_agent import config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def settings_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\| `(HMS_OTEL_[A-Z_]+)` \| `(--[a-z-]+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).strip())
    return rows


def test_every_agent_setting_is_in_the_readme_table_with_its_flag_and_default() -> None:
    rows = settings_rows()
    agent_options = [o for o in config.OPTIONS if o.env.startswith("HMS_OTEL_")]
    assert sorted(rows) == sorted(o.env for o in agent_options)
    for option in agent_options:
        flag, default = rows[option.env]
        assert flag == option.flag, option.env
        shown = config._show(option.default)
        if default.endswith("..."):
            assert shown.startswith(default[:-3]), (option.env, default, shown)
        elif default == "(empty)":
            assert option.default in ("", ()), option.env
        else:
            assert default.strip("`") == shown or float(default) == float(shown), (option.env, default, shown)


def test_the_test_command_block_exists() -> None:
    block = README.split("<!-- test-command -->", 1)[1].split("```", 2)[1]
    assert block.strip().splitlines()[-1] == "python -m pytest -n 2"


READERS = {"sdk": "SDK", "otlp": "OTLP exporters", "contrib": "contrib"}


def sdk_variable_rows() -> list[str]:
    """The README rows of the standard variables the SDK and contrib read, from config.SDK_OPTIONS."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("`", "\\`")

    return [
        f"| `{o.env}` | {READERS[o.group]} | {cell(o.parse.summary)} | {cell(o.default_text)} |"
        for o in config.SDK_OPTIONS
    ]


def test_the_readme_lists_every_standard_variable_the_agent_validates_for_the_sdk_and_contrib() -> None:
    block = README.split("<!-- sdk-variables -->", 1)[1].split("<!-- /sdk-variables -->", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert rows == sdk_variable_rows()
