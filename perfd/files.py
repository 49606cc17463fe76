"""Opening the files a config names without ever blocking perfd on them.

A FIFO opened for reading blocks until some writer comes, and for writing until some reader
does; a read from a character device may never end. Any local user who can write where the
config or a log file lives could swap one in and freeze perfd's main loop (and starve the
watchdog). So every such file is opened with ``O_NONBLOCK``, its kind checked with fstat on
the descriptor itself (no race with a rename), and anything but a regular file refused with
``NotRegularFile``. Log files are opened with ``O_NOFOLLOW`` too: a symlink planted at a log
path would make perfd append to whatever file it points at.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

READ_CHUNK: Final = 1 << 16
_APPEND_FLAGS: Final = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)


class NotRegularFile(OSError):
    """A path that names a FIFO, a symlink, a directory, a device or a socket, not a file.

    ``kind`` says which ("a FIFO"); the OSError's errno is EINVAL, its strerror
    "a FIFO, not a regular file".
    """

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
        self.path = os.fspath(path)
        self.kind = kind


def kind(mode: int) -> str:
    """What a stat mode names, as words: "a regular file", "a FIFO", "a symlink", ..."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a log file (its kind: "a FIFO", "a symlink"), or None when it is
    a regular file or does not exist yet (it will be created as one). Never opens it."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # missing, or unreadable: opening it says what is wrong, without blocking
        return None
    return None if stat.S_ISREG(mode) else kind(mode)


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file at ``path`` (a symlink to one is followed).

    NotRegularFile for anything else; the open never blocks (``O_NONBLOCK``), so a FIFO put in
    the file's place is refused at once. Other OSErrors (FileNotFoundError, PermissionError)
    propagate.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, kind(mode))
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_append(path: str | os.PathLike[str], mode: int = 0o640) -> int:
    """A descriptor appending to the regular file at ``path``, created if missing.

    Never follows a symlink in the last component and never blocks: NotRegularFile for a
    symlink, a FIFO (with or without a reader), a directory, a device or a socket. Other
    OSErrors (PermissionError, ENOSPC) propagate.
    """
    try:
        fd = os.open(path, _APPEND_FLAGS, mode)
    except OSError as exc:
        # ELOOP: a symlink (O_NOFOLLOW); ENXIO: a FIFO without a reader, or a socket;
        # EISDIR: a directory. lstat says which.
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP):
            found = problem(path)
            if found is not None:
                raise NotRegularFile(path, found) from None
        raise
    file_mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(file_mode):
        os.close(fd)
        raise NotRegularFile(path, kind(file_mode))
    return fd
