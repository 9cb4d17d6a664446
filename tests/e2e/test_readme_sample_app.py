"""The README's "sample app as your own app" commands, run as written against a fresh database.

The block after ``<!-- sample-app-commands -->`` is read from README.md: its ``export`` lines name
the variables the user sets (the test gives them its own servers), and every other line is run as
it is (``python`` is this interpreter; the server gets a free port). Also: every gunicorn / uvicorn
application the README and ``hms-otel-run --help`` name is importable or a named placeholder, and a
missing database is one line, not a traceback.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.processes import AppProcess, hermetic_env, run, venv_executable
from harness.services import create_database, database_of, drop_database, free_port, new_database_name

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_block(marker: str) -> list[str]:
    text = README.read_text()
    after = text[text.index(marker) :]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block, f"no bash block after {marker}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def command(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    executables = {"python": sys.executable, "hms-otel-run": venv_executable("hms-otel-run")}
    return [executables.get(words[0], words[0]), *words[1:]]


@pytest.fixture
def fresh_db(pg_server_url: str) -> Iterator[str]:
    name = new_database_name() + "_readme"
    url = create_database(pg_server_url, name)
    try:
        yield url
    finally:
        drop_database(pg_server_url, database_of(url))


def test_readme_sample_app_commands_work_as_written(
    tmp_path: Path, fresh_db: str, redis_url: str, app_process: Callable[..., AppProcess]
) -> None:
    lines = readme_block("<!-- sample-app-commands -->")
    exports = [line for line in lines if line.startswith("export ")]
    names = [line.split()[1].split("=")[0] for line in exports]
    assert names == ["DATABASE_URL", "REDIS_URL"]
    env = {"DATABASE_URL": fresh_db, "REDIS_URL": redis_url}  # what the user points them at
    commands = [command(line) for line in lines if not line.startswith("export ")]
    *setup, server = commands
    for cmd in setup:
        result = run(cmd, env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, (cmd, result.stdout, result.stderr)
    assert server[-1] == "runserver", server
    port = free_port()
    app = app_process(
        [*server, f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        stop_signal=signal.SIGINT,
    )
    app.wait_http("/health/", timeout=60)
    for path in ("/", "/encounters/"):
        assert app.request("GET", path).status == 200, path
    deadline = time.monotonic() + 10
    while "hms-otel: n plus one: GET encounters/" not in app.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.stop() == 0
    err = app.stderr
    live = [line for line in err.splitlines() if line.startswith("hms-otel: n plus one: GET encounters/")]
    assert live and all(" at hms_otel_agent/sample/hms/views.py:" in line for line in live), err
    assert "hms-otel findings" in err and ".select_related('patient" in err  # the report at Ctrl-C
    assert (tmp_path / ".hms-otel" / "traces.jsonl").exists()
    # In a clone, the sample's manage.py by its path (from the clone's root) is the same program.
    shown = run(
        [sys.executable, "hms_otel_agent/sample/manage.py", "showmigrations", "hms"],
        env={**env, "PYTHONPATH": ""},
        cwd=ROOT,
        check=True,
    )
    assert "[X] 0001_initial" in shown.stdout


def server_applications() -> set[str]:
    """Every gunicorn / uvicorn application the README and hms-otel-run --help name."""
    help_text = subprocess.run(
        [venv_executable("hms-otel-run"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    found = set()
    for text in (README.read_text(), help_text):
        # an application is a dotted module path (with :attribute), as the servers take it
        found.update(re.findall(r"\b(?:gunicorn|uvicorn) ([A-Za-z_]\w*(?:\.\w+)+(?::\w+)?)", text))
    return found


def test_every_server_application_named_is_real_or_a_placeholder(sample_app_db: dict[str, str]) -> None:
    names = server_applications()
    assert names, "no gunicorn / uvicorn example found"
    real = sorted(n for n in names if not n.startswith("myproject."))
    assert real, names
    # The placeholders are explained where they are used.
    assert "`myproject`: your project's package" in README.read_text()
    for name in real:
        module, _, attribute = name.partition(":")
        probe = (
            f"import importlib; getattr(importlib.import_module({module!r}), {attribute or 'application'!r})"
        )
        result = run([sys.executable, "-c", probe], env=sample_app_db, timeout=60)
        assert result.returncode == 0, (name, result.stderr)


def test_sample_without_a_database_is_one_line(tmp_path: Path) -> None:
    closed = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/hms"
    for cmd in (
        [sys.executable, "-m", "hms_otel_agent.sample", "migrate"],
        [venv_executable("hms-otel-run"), sys.executable, "-m", "hms_otel_agent.sample", "runserver",
         f"127.0.0.1:{free_port()}"],
    ):  # fmt: skip
        result = run(cmd, env=hermetic_env({"DATABASE_URL": closed}), cwd=tmp_path, timeout=60)
        assert result.returncode == 1, (cmd, result.stderr)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("hms-otel: ")]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(
            "hms sample: cannot use PostgreSQL at DATABASE_URL=postgresql://postgres:***@"
        )
        assert "secret" not in result.stderr and "Start PostgreSQL or set DATABASE_URL=" in lines[0]
