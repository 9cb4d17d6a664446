#!/usr/bin/env python
"""Django's manage.py for the sample project; also run by ``python -m hms_otel_agent.sample``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _fix_sys_path() -> None:
    # Run as a script, Python puts this directory first on sys.path, which would make `hms`,
    # `settings` and `urls` importable a second time as top-level modules. Replace it with the
    # directory that holds the `hms_otel_agent` package (a no-op when the package is installed).
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        sys.path[0] = str(here.parents[1])


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv if argv is None else argv)


if __name__ == "__main__":
    _fix_sys_path()
    main()
