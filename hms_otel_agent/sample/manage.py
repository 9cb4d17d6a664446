#!/usr/bin/env python
"""Django's manage.py for the sample project; also run by ``python -m hms_otel_agent.sample``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def _fix_sys_path() -> None:
    # Run as a script, Python puts this directory first on sys.path, which would make `hms`,
    # `settings` and `urls` importable a second time as top-level modules. Replace it with the
    # directory that holds the `hms_otel_agent` package (a no-op when the package is installed).
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        sys.path[0] = str(here.parents[1])


# Commands that need the database: checked first, so that a server that is not there is one line
# saying what to do, not Django's traceback from deep inside the first query (runserver would print
# it from its reloader thread and keep waiting for file changes).
DATABASE_COMMANDS = frozenset(
    ("runserver", "migrate", "seed_hms", "showmigrations", "flush", "loaddata", "dumpdata", "createsuperuser")
)
EXIT_NO_DATABASE = 1


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def database_problem() -> str:
    """One line saying why the sample's database cannot be used ("" when it can)."""
    from django.conf import settings
    from django.db import connections

    from hms_otel_agent.sample.settings import DEFAULT_DATABASE_URL

    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    shown = f"DATABASE_URL={_safe_url(url)}" + ("" if os.environ.get("DATABASE_URL") else " (the default)")
    try:
        connection = connections["default"]
        params = connection.get_connection_params()
        params["connect_timeout"] = 5
        # The driver itself, not Django's connect(): a check, not part of the app's work.
        connection.Database.connect(**params).close()
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        name = settings.DATABASES["default"].get("NAME", "")
        return (
            f"hms sample: cannot use PostgreSQL at {shown} ({reason}). Start PostgreSQL or set "
            f"DATABASE_URL=postgresql://USER[:PASSWORD]@HOST:PORT/DB to an existing database you can create "
            f"tables in (createdb {name or 'hms'}), or run `hms-otel demo --serve` (embedded servers)."
        )
    return ""


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")
    from django.core.management import execute_from_command_line

    argv = sys.argv if argv is None else argv
    command = argv[1] if len(argv) > 1 else ""
    if (
        command in DATABASE_COMMANDS
        and os.environ["DJANGO_SETTINGS_MODULE"] == "hms_otel_agent.sample.settings"
    ):
        problem = database_problem()
        if problem:
            print(problem, file=sys.stderr)
            sys.exit(EXIT_NO_DATABASE)
    execute_from_command_line(argv)


if __name__ == "__main__":
    _fix_sys_path()
    main()
