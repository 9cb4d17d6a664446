"""The live signal: one log line the first time a finding is seen in a run.

Repeats of a known finding are summarized at most once a minute per finding, so a hot
endpoint with an N+1 does not flood the log.

A run of ``hms-otel-run`` has many processes (gunicorn and uvicorn workers, the runserver
autoreloader's child) that each see the same findings. So that the run logs each finding once,
not once per worker, the process about to log claims the line first: it creates a marker file
named after the finding's fingerprint in a directory of the run (``RunClaims``; creating a file
that must not exist is atomic on every file system), and only the process that created it logs.
Summaries of repeats are claimed the same way, per finding and per minute (the marker of the
minute before last is removed by whoever claims, so a finding has at most three files). Without a
run id (the agent started in code), or when the directory cannot be used, each process logs on its
own, as before: a duplicate line is better than a lost one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time

from hms_otel_agent.printable import printable
from hms_otel_agent.signals.records import Finding, OwnerActivity

logger = logging.getLogger("hms_otel")
REPEAT_INTERVAL_S = 60.0
MAX_TRACKED = 10_000
STALE_RUN_S = 24 * 3600.0  # run directories left by a killed run are removed after a day


def claims_root() -> str:
    """``<tmp>/hms-otel-<uid>``: the per-user parent of every run's claims directory ('' when no
    temporary directory is usable: gettempdir() writes a probe file, which fails on a full disk)."""
    try:
        return os.path.join(tempfile.gettempdir(), f"hms-otel-{os.getuid()}")
    except OSError:
        return ""


class RunClaims:
    """Marker files of one run: ``claim(name)`` is True in exactly one process of the run."""

    def __init__(self, run_id: str, root: str | None = None) -> None:
        self.root = root or claims_root()
        safe = "".join(c for c in run_id if c.isalnum())[:64]
        self.directory = os.path.join(self.root, f"live-{safe}") if safe and self.root else ""
        self._ready: bool | None = None  # None: not tried yet
        self._claimed = 0

    def _prepare(self) -> bool:
        if not self.directory or not hasattr(os, "getuid"):
            return False
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            info = os.lstat(self.root)
            # Another user's directory, or a symlink planted in /tmp: do not write there.
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                return False
            _remove_stale(self.root)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            return True
        except OSError:
            return False

    def claim(self, name: str) -> bool:
        """True when this process is the first of the run to claim `name` (or when claims do
        not work here: then every process logs for itself)."""
        if self._ready is None:
            self._ready = self._prepare()
        if not self._ready or self._claimed >= 3 * MAX_TRACKED:
            return True
        path = os.path.join(self.directory, _file_name(name))
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        except OSError:
            self._ready = False  # the directory went away or filled up: log from here on
            return True
        self._claimed += 1
        return True

    def file(self, name: str) -> str | None:
        """A path in the run's directory for state the run's processes share (None when the
        directory cannot be used)."""
        if self._ready is None:
            self._ready = self._prepare()
        return os.path.join(self.directory, name) if self._ready else None

    def release(self, name: str) -> None:
        if self._ready:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, _file_name(name)))

    def remove(self) -> None:
        """The run is over (called by its root process at exit)."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _file_name(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:32]


def _remove_stale(root: str) -> None:
    cutoff = time.time() - STALE_RUN_S
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.name.startswith("live-") and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)


MAX_ROUTES_SHOWN = 5  # routes named in a "seen again" line


class LiveLog:
    def __init__(self, repeat_interval_s: float = REPEAT_INTERVAL_S, claims: RunClaims | None = None) -> None:
        self.repeat_interval_s = repeat_interval_s
        self.claims = claims
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # fingerprint -> (last logged, repeats since)
        self._routes: dict[str, list[str]] = {}  # fingerprint -> the routes it was seen on (a few)

    def __call__(self, activity: OwnerActivity, findings: list[Finding]) -> None:
        now = time.monotonic()
        for finding in findings:
            with self._lock:
                last = self._seen.get(finding.fingerprint)
                routes = self._routes.setdefault(finding.fingerprint, [])
                route = finding.route or activity.route
                if route and route not in routes and len(routes) < MAX_ROUTES_SHOWN:
                    routes.append(route)
                if last is None:
                    if len(self._seen) >= MAX_TRACKED:
                        self._routes.pop(next(iter(self._seen)), None)
                        self._seen.pop(next(iter(self._seen)))
                    self._seen[finding.fingerprint] = (now, 0)
                    first, repeats = True, 0
                else:
                    tried_at, repeats = last
                    repeats += 1
                    # Counted until a line about them is logged, here or (claims) in this process.
                    self._seen[finding.fingerprint] = (
                        (tried_at, repeats) if now - tried_at < self.repeat_interval_s else (now, repeats)
                    )
                    if now - tried_at < self.repeat_interval_s:
                        continue
                    first = False
            if self.claims is not None and not self._claim(finding.fingerprint, first):
                continue  # another process of the run logged it
            if not first:
                with self._lock:
                    self._seen[finding.fingerprint] = (now, 0)
            # Escaped here too: an application's own handler may print this logger's records.
            kind, hint = printable(finding.kind.replace("_", " ")), printable(finding.hint)
            if first:
                logger.warning("hms-otel: %s: %s", kind, hint)
            else:
                with self._lock:
                    seen_on = list(self._routes.get(finding.fingerprint, ()))
                # One cause, one line: the routes it occurs on (the hint names the first).
                where = (
                    f" on {len(seen_on)} routes: {printable(', '.join(seen_on))}" if len(seen_on) > 1 else ""
                )
                logger.info(
                    "hms-otel: %s seen again (%d more times in this process since its last line%s): %s",
                    kind,
                    repeats,
                    where,
                    hint,
                )

    def _claim(self, fingerprint: str, first: bool) -> bool:
        assert self.claims is not None
        if first:
            return self.claims.claim(fingerprint)
        # One summary per finding per interval for the whole run (wall clock: shared by processes).
        bucket = int(time.time() // max(self.repeat_interval_s, 1e-3))
        if not self.claims.claim(f"{fingerprint}@{bucket}"):
            return False
        self.claims.release(f"{fingerprint}@{bucket - 2}")
        return True
