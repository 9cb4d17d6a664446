"""Run real processes from the current venv, hermetically.

Every child gets ``os.environ`` minus the test runner's own ``OTEL_*`` and ``HMS_OTEL_*`` variables,
plus ``PYTHONUNBUFFERED=1``, the venv's ``bin`` first on ``PATH``, then the ``env`` given -- so only
what a test sets explicitly configures the agent in the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

_STRIPPED_PREFIXES = ("OTEL_", "HMS_OTEL_")


def venv_bin() -> Path:
    """The ``bin`` dir of the running interpreter's venv (``sys.executable`` is not resolved, so
    a venv's symlinked python still points into the venv)."""
    return Path(sys.executable).parent


def venv_executable(name: str) -> str:
    """Absolute path of ``name`` (``hms-otel-run``, ``gunicorn``, ``uvicorn``...) in the current venv."""
    path = venv_bin() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {venv_bin()} (pip install -e '.[test]')")
    return str(path)


def hermetic_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without OTEL_*/HMS_OTEL_*, with PYTHONUNBUFFERED=1 and the venv bin first on
    PATH, then ``env`` on top (a value of '' is kept as the empty string)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_PREFIXES)}
    base.pop("GRPC_ENABLE_FORK_SUPPORT", None)  # the test process's own setting (conftest.py)
    base["PYTHONUNBUFFERED"] = "1"
    base["PATH"] = os.pathsep.join([str(venv_bin()), base.get("PATH", "")])
    base.update(env or {})
    return base


def _kill_group(pid: int, sig: int) -> bool:
    """Signal the process group led by ``pid``; False when nothing is left in it."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def run(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    cwd: str | Path | None = None,
    check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion with a hermetic env; text stdout/stderr captured.

    On timeout the whole process group is killed and AssertionError raised with what it printed.
    ``check=True`` raises AssertionError (with the output) on a non-zero exit.
    """
    proc = subprocess.Popen(
        list(cmd),
        env=hermetic_env(env),
        cwd=cwd,
        text=True,
        start_new_session=True,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout:g}s: {' '.join(cmd)}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ) from None
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
    result = subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}: {' '.join(cmd)}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )
    return result


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> HttpResponse:
    """One HTTP request with urllib; 4xx/5xx are returned, not raised."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method.upper(), headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpResponse(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


class AppProcess:
    """A long-running process (an app server under test) as a context manager.

    ::

        with AppProcess([venv_executable("hms-otel-run"), "--", "gunicorn", ...], env=env,
                        base_url=f"http://127.0.0.1:{port}") as app:
            app.wait_http("/health/")
            resp = app.request("GET", "/patients/")
        assert app.returncode == 0, app.stderr

    Started in its own session (process group); output goes to files (``stdout_path``,
    ``stderr_path``). :meth:`stop` sends ``stop_signal`` to the whole group, then SIGKILL after
    ``stop_timeout`` seconds, then SIGKILLs anything left in the group. ``__exit__`` always stops it.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        base_url: str | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10,
        log_dir: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.env = hermetic_env(env)
        self.cwd = cwd
        self.base_url = base_url.rstrip("/") if base_url else None
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.name = name or Path(self.cmd[0]).name
        self._own_log_dir = log_dir is None
        self.log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="hms-otel-app-"))
        )
        self.stdout_path = self.log_dir / f"{self.name}.stdout"
        self.stderr_path = self.log_dir / f"{self.name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # True if it had to be SIGKILLed

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> AppProcess:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return self

    def stop(self, sig: int | None = None, timeout: float | None = None) -> int:
        """Stop gracefully (``sig`` to the group), SIGKILL after ``timeout``; return the exit code
        (negative: killed by that signal). Idempotent."""
        proc = self._require()
        sig = self.stop_signal if sig is None else sig
        timeout = self.stop_timeout if timeout is None else timeout
        if proc.poll() is None:
            _kill_group(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
        _kill_group(proc.pid, signal.SIGKILL)  # workers/children that outlived the leader
        return proc.returncode

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.stop()

    def cleanup(self) -> None:
        """Stop if needed and delete the log dir if the harness created it."""
        if self.proc is not None:
            self.stop()
        if self._own_log_dir:
            for path in (self.stdout_path, self.stderr_path):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.log_dir.rmdir()

    def _require(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc

    # -- state ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        """None while running."""
        return self._require().poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; AssertionError with its output on timeout."""
        try:
            return self._require().wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:g}s\n{self.output_tail()}"
            ) from None

    def output_tail(self, lines: int = 40) -> str:
        def tail(text: str) -> str:
            return "\n".join(text.splitlines()[-lines:])

        code = self.proc.poll() if self.proc is not None else None
        return (
            f"--- {self.name} (pid {self.proc.pid if self.proc else '-'}, exit {code}): "
            f"{' '.join(self.cmd)}\n--- stdout (tail) ---\n{tail(self.stdout)}\n"
            f"--- stderr (tail) ---\n{tail(self.stderr)}"
        )

    # -- HTTP -----------------------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if "://" in path_or_url:
            return path_or_url
        if self.base_url is None:
            raise ValueError("relative path but no base_url given")
        return self.base_url + "/" + path_or_url.lstrip("/")

    def wait_http(self, url: str = "/", timeout: float = 30) -> HttpResponse:
        """Poll ``url`` (absolute, or a path under ``base_url``) until the server answers at all
        (any status). AssertionError with the process output if it exits or times out."""
        target = self._url(url)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._require().poll() is not None:
                raise AssertionError(f"{self.name} exited before answering {target}\n{self.output_tail()}")
            try:
                return http_request("GET", target, timeout=2)
            except (OSError, urllib.error.URLError) as exc:
                last_error = exc
                time.sleep(0.05)
        raise AssertionError(
            f"{self.name} did not answer {target} within {timeout:g}s (last error: {last_error})\n"
            f"{self.output_tail()}"
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> HttpResponse:
        """``method path`` against ``base_url`` (or an absolute URL); 4xx/5xx are returned, not raised."""
        return http_request(method, self._url(path), body=body, headers=headers, timeout=timeout)
