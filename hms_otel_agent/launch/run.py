"""`hms-otel-run [options] [--] COMMAND [ARGS...]`: run a program with the agent loaded.

Like `opentelemetry-instrument`, it only prepares the environment and execs: the flags
become HMS_OTEL_* / OTEL_* variables, and the bootstrap directory goes first on
PYTHONPATH so that every Python process of the program (runserver's autoreloader child,
gunicorn and uvicorn workers, subprocesses) starts the agent before importing the app.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys

from hms_otel_agent import __version__, config
from hms_otel_agent.config import ROOT_PID_ENV, RUN_ID_ENV
from hms_otel_agent.launch.options import add_setting_flags, given_settings

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hms-otel-run",
        usage="%(prog)s [options] [--] COMMAND [ARGS...]",
        description=(
            "Run COMMAND (python manage.py runserver, gunicorn, uvicorn, python -m pytest, a script) "
            "with Django, psycopg2/psycopg and redis-py traced, N+1 queries and cache anti-patterns "
            "detected, and telemetry exported over OTLP (or, with no endpoint configured, written to "
            "./.hms-otel/). Every option has an environment variable; the option wins."
        ),
        epilog="A bad value gets one line naming the variable, the value, what is accepted and the\n"
        "default used instead -- for these options and for the standard OTEL_* variables that the\n"
        "OpenTelemetry SDK and contrib read themselves (propagators, limits, OTLP headers and\n"
        "certificates, excluded URLs, captured headers...: README, Configuration), whose bad values\n"
        "are kept from them. An unknown HMS_OTEL_* name gets one line too. With --strict, either\n"
        "exits 2; `hms-otel config --check` checks without running anything.\n\n"
        "Examples (myproject: your Django project's package):\n"
        "  hms-otel-run python manage.py runserver\n"
        "  hms-otel-run --n-plus-one-threshold 3 -- gunicorn myproject.wsgi -w 4\n"
        "  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \\\n"
        "    hms-otel-run uvicorn myproject.asgi:application\n"
        "  hms-otel-run gunicorn hms_otel_agent.sample.wsgi:application -w 2   (the bundled sample app)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_setting_flags(parser)
    parser.add_argument("command", metavar="COMMAND", help="the program to run")
    parser.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER, help="its arguments")
    return parser


def prepare_environment(environ: dict[str, str], flags: dict[str, str]) -> None:
    environ.update(flags)
    path = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    environ["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *path])
    environ[ROOT_PID_ENV] = str(os.getpid())  # exec keeps the pid: the child knows it is the root
    environ[RUN_ID_ENV] = secrets.token_hex(8)  # one id per run: the report at exit shows only this run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = given_settings(args)
    environ = dict(os.environ)
    prepare_environment(environ, flags)
    loaded = config.load(environ)
    if loaded.settings.strict and loaded.failed:
        loaded.print_problems(strict=True)
        return 2
    executable = shutil.which(args.command, path=environ.get("PATH"))
    if executable is None:
        print(f"hms-otel-run: command not found: {args.command}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, [args.command, *args.args], environ)
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
