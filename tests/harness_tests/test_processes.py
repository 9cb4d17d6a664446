"""AppProcess and run() start, talk to and always clean up real processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.processes import AppProcess, hermetic_env, run, venv_bin, venv_executable
from harness.services import free_port


def wait_for_output(app: AppProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in app.stdout:
        assert time.monotonic() < deadline, app.output_tail()
        assert app.running, app.output_tail()
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Running (a zombie left to an init that does not reap counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return not stat.parent.parent.exists()  # no /proc: trust kill(0)


def http_server_cmd(port: int, directory: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(directory),
    ]


def test_app_process_serves_http_and_stops_gracefully(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello")
    port = free_port()
    with AppProcess(
        http_server_cmd(port, tmp_path),
        base_url=f"http://127.0.0.1:{port}",
        stop_signal=signal.SIGINT,
        log_dir=tmp_path / "logs",
    ) as app:
        app.wait_http("/", timeout=15)
        response = app.request("GET", "/hello.txt")
        assert (response.status, response.text) == (200, "hello")
        assert app.request("GET", "/missing").status == 404
        assert app.running and app.returncode is None
    assert app.returncode == 0  # http.server exits 0 on KeyboardInterrupt
    assert not app.killed
    assert "GET /hello.txt" in app.stderr  # http.server logs requests to stderr


def test_app_process_is_killed_when_it_ignores_the_stop_signal(tmp_path: Path) -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    app = AppProcess([sys.executable, "-c", code], stop_timeout=0.3, log_dir=tmp_path)
    with app:
        wait_for_output(app, "child ")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5
    assert app.killed and app.returncode == -signal.SIGKILL
    child_pid = int(app.stdout.split()[1])
    deadline = time.monotonic() + 5
    while alive(child_pid):  # the whole process group went down
        assert time.monotonic() < deadline, f"grandchild {child_pid} survived"
        time.sleep(0.02)


def test_app_process_cleans_up_when_the_test_fails(tmp_path: Path) -> None:
    app = AppProcess([sys.executable, "-c", "import time; time.sleep(60)"], log_dir=tmp_path)
    with pytest.raises(RuntimeError), app:
        raise RuntimeError("test failure")
    assert app.returncode == -signal.SIGTERM


def test_wait_http_reports_an_early_exit() -> None:
    app = AppProcess(
        [sys.executable, "-c", "import sys; print('bad config', file=sys.stderr); sys.exit(3)"],
        base_url=f"http://127.0.0.1:{free_port()}",
    )
    with app, pytest.raises(AssertionError, match=r"(?s)exited before answering.*exit 3.*bad config"):
        app.wait_http("/", timeout=10)
    app.cleanup()
    assert not app.log_dir.exists()


def test_app_process_fixture(app_process: Callable[..., AppProcess], tmp_path: Path) -> None:
    port = free_port()
    app = app_process(http_server_cmd(port, tmp_path), base_url=f"http://127.0.0.1:{port}")
    assert app.wait_http("/").status == 200


def test_environment_is_hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-runner")
    monkeypatch.setenv("HMS_OTEL_SAMPLE", "from-runner")
    monkeypatch.setenv("HMS_OTEL_TEST_KEEP", "x")
    env = hermetic_env({"HMS_OTEL_MODE": "explicit"})
    assert "OTEL_SERVICE_NAME" not in env and "HMS_OTEL_SAMPLE" not in env and "HMS_OTEL_TEST_KEEP" not in env
    assert env["HMS_OTEL_MODE"] == "explicit" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(venv_bin())
    code = "import os, json; print(json.dumps(sorted(k for k in os.environ if 'OTEL' in k)))"
    result = run([sys.executable, "-c", code], env={"OTEL_TRACES_EXPORTER": "none"}, check=True)
    assert result.stdout.strip() == '["OTEL_TRACES_EXPORTER"]'


def test_run_times_out_and_kills() -> None:
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)timed out after 0.3s.*started"):
        run([sys.executable, "-c", "print('started', flush=True); import time; time.sleep(30)"], timeout=0.3)
    assert time.monotonic() - t0 < 5
    with pytest.raises(AssertionError, match="exit 2"):
        run([sys.executable, "-c", "raise SystemExit(2)"], check=True)


def test_venv_executables() -> None:
    for name in ("hms-otel-run", "gunicorn", "uvicorn", "python"):
        assert Path(venv_executable(name)).parent == venv_bin()
    with pytest.raises(FileNotFoundError):
        venv_executable("no-such-tool")
