"""How the agent's local files are named and read: the active file and the files it was rotated to
(written by export/local_files.py, read by report/), opened without following a symlink, and the
mark of where a run began in them. A base module: the writer and the readers are sibling layers."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

ROTATED_FILES = 3  # older files kept next to the active one
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def rotated_name(path: str, index: int) -> str:
    """``traces.jsonl`` -> ``traces.<index>.jsonl`` (index 0: the active file)."""
    if index == 0:
        return path
    base, ext = os.path.splitext(path)
    return f"{base}.{index}{ext}"


def files_oldest_first(path: str) -> list[str]:
    """The rotated files and the active one that exist, oldest first."""
    names = [rotated_name(path, index) for index in range(ROTATED_FILES, -1, -1)]
    return [name for name in names if os.path.isfile(name)]


def open_read(path: str) -> int:
    """A descriptor to read one of the agent's files without following a symlink."""
    fd = os.open(path, _READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class FileMark:
    """Where a file ended when a run started: its inode, its size and the bytes before that
    point (inode 0: it did not exist). The bytes tell the file from a later one that was given
    the same inode number after rotation dropped the first."""

    inode: int = 0
    size: int = 0
    tail: bytes = b""

    @classmethod
    def of(cls, path: str) -> FileMark:
        try:
            fd = open_read(path)
        except OSError:
            return cls()
        try:
            info = os.fstat(fd)
            return cls(info.st_ino, info.st_size, os.pread(fd, 64, max(0, info.st_size - 64)))
        except OSError:
            return cls()
        finally:
            os.close(fd)

    def is_in(self, fd: int) -> bool:
        """Whether the open file `fd` is the file this mark was taken of."""
        try:
            info = os.fstat(fd)
            if info.st_ino != self.inode or info.st_size < self.size:
                return False
            return os.pread(fd, len(self.tail), self.size - len(self.tail)) == self.tail
        except OSError:
            return False
