"""Appending lines to the local telemetry files safely, within a size cap.

The embedded default writes into a directory of the working directory, which may be shared with
other users (a checkout on a build host, /srv/app). So the writer:

* creates the directory 0700 whatever the umask, and tightens a directory of its own that an
  older version left group-writable; a directory of another user, or one others may write to,
  is refused (they could swap the files under it);
* opens with ``O_NOFOLLOW`` (a planted symlink would make it append to the file it points at,
  as root to any file), ``O_NONBLOCK`` (a planted FIFO would block the export thread) and
  ``O_CLOEXEC``; a file that is not a regular file with one link, is owned by another user, or
  is writable by group or others is refused (another user may have pre-created it to read or
  forge telemetry);
* says so in one line naming the path and why; refused, the agent keeps running without that
  file; a write that fails (an unwritable directory, a full disk) is one warning, not a
  traceback and not one line per export, and one line when writing works again;
* rotates: when the active file reaches its share of ``HMS_OTEL_LOCAL_MAX_MB`` it becomes
  ``<name>.1.jsonl`` (``.1`` -> ``.2`` ..., the oldest dropped), one line each time.

Several processes (gunicorn workers) append to the same file: each line is one ``write`` on an
``O_APPEND`` descriptor, and rotation happens under an ``flock`` with the size checked again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading

from hms_otel_agent.local_paths import ROTATED_FILES, rotated_name

logger = logging.getLogger("hms_otel")

LOCK_FILE = ".rotate.lock"
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Refused(Exception):
    """A path the agent will not write to; ``str()`` says why in a few words."""


def _why_unsafe(info: os.stat_result, what: str) -> str:
    uid = os.geteuid()
    if info.st_uid != uid:
        return f"the {what} is owned by uid {info.st_uid}, not by this user (uid {uid})"
    if info.st_mode & 0o022:
        return f"the {what} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    return ""


def prepare_directory(directory: str) -> None:
    """Create `directory` (and missing parents) 0700; raise `Refused` for one that is unsafe."""
    missing = []
    current = os.path.abspath(directory)
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # another worker was first
        else:
            os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        # A symlink the user configured is theirs to choose; one planted by another user is not.
        if info.st_uid != os.geteuid():
            raise Refused(f"the directory is a symlink owned by uid {info.st_uid}, not by this user")
        info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise Refused("it is not a directory")
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(directory, 0o700)  # ours, from an older version or another umask: tighten it
        return
    why = _why_unsafe(info, "directory")
    if why:
        raise Refused(why)


def open_append(path: str) -> int:
    """A descriptor to append to `path`, created 0600; `Refused` when the file is unsafe."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("it is a symbolic link") from None
        if exc.errno == errno.ENXIO:
            raise Refused("it is a FIFO or socket, not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        why = ""
        if not stat.S_ISREG(info.st_mode):
            why = "it is not a regular file"
        elif info.st_nlink > 1:
            why = f"it has {info.st_nlink} hard links"
        else:
            why = _why_unsafe(info, "file")
        if why:
            raise Refused(why)
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


class LineWriter:
    """Appends whole lines to one file of the local directory, within `max_bytes` in all."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # The active file and ROTATED_FILES older ones share the cap.
        self.file_bytes = max(1, max_bytes // (ROTATED_FILES + 1))
        self._lock = threading.Lock()
        self._refused = ""
        self._failing = False
        self._rotate_failed = False
        self._directory_ready = False

    @property
    def refused(self) -> str:
        """Why this file is refused ('' when it is not)."""
        return self._refused

    def write(self, line: str) -> bool:
        """Append `line`; False when it was not written (refused, or the write failed)."""
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._refused:
                return False
            try:
                if not self._directory_ready:
                    prepare_directory(os.path.dirname(self.path) or ".")
                    self._directory_ready = True
                size = self._append(data)
            except Refused as exc:
                self._refused = str(exc) or "refused"
                where = self.path if self._directory_ready else os.path.dirname(self.path)
                logger.warning(
                    "hms-otel: not writing telemetry to %s: %s; the agent goes on without it",
                    where,
                    self._refused,
                )
                return False
            except OSError as exc:
                self._directory_ready = False  # the directory may have gone: look again next time
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "hms-otel: cannot write telemetry to %s (%s); the application is unaffected, "
                        "this data is dropped until writing works again",
                        self.path,
                        exc.strerror or type(exc).__name__,
                    )
                return False
            if self._failing:
                self._failing = False
                logger.warning("hms-otel: writing telemetry to %s works again", self.path)
        if size >= self.file_bytes:
            self._rotate()
        return True

    def _append(self, data: bytes) -> int:
        # O_APPEND and one write per line keep lines whole when several processes append.
        fd = open_append(self.path)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            lock_fd = open_append(os.path.join(directory, LOCK_FILE))
        except (OSError, Refused):
            return
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another process is rotating this directory's files
            try:
                info = os.lstat(self.path)
            except OSError:
                return
            if not stat.S_ISREG(info.st_mode) or info.st_size < self.file_bytes:
                return  # rotated by another process since this one wrote
            oldest = rotated_name(self.path, ROTATED_FILES)
            dropped = os.path.lexists(oldest)
            for index in range(ROTATED_FILES - 1, -1, -1):
                source = rotated_name(self.path, index)
                if os.path.lexists(source):
                    os.replace(source, rotated_name(self.path, index + 1))
            logger.info(
                "hms-otel: %s reached %d MB: rotated to %s%s (HMS_OTEL_LOCAL_MAX_MB keeps %d files)",
                self.path,
                info.st_size // 1_000_000,
                os.path.basename(rotated_name(self.path, 1)),
                f"; the oldest, {os.path.basename(oldest)}, was dropped" if dropped else "",
                ROTATED_FILES + 1,
            )
        except OSError as exc:
            if self._rotate_failed:
                return
            self._rotate_failed = True
            logger.warning(
                "hms-otel: cannot rotate %s (%s); it grows past its share of HMS_OTEL_LOCAL_MAX_MB",
                self.path,
                exc.strerror or type(exc).__name__,
            )
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
