"""``flock`` locks on local files: the one helper every lock in larder takes.

An ``flock`` belongs to an open file description and dies with it (and so with its process): a crashed
process never leaves a lock behind. Two descriptors of one file conflict even inside one process. The
file cache (:mod:`loader.cache`) locks its copies and downloads with it, and the publish protocol
(:mod:`loader.claims`) its owner files and dataset directories.

Where ``fcntl`` does not exist (not POSIX), every attempt to lock raises ``OSError(ENOLCK)``: callers decide
what that means (run unserialised, or count a lock as held).
"""

from __future__ import annotations

import errno
import os

try:
    import fcntl
except ImportError:  # not POSIX: no flock
    fcntl = None  # type: ignore[assignment]


def lock_fd(fd: int, *, exclusive: bool = True, blocking: bool = True) -> bool:
    """Take an ``flock`` on the open file ``fd`` (released when ``fd`` is closed).

    Args:
        fd: An open descriptor (read-only is enough, for an exclusive lock too).
        exclusive: An exclusive lock (``LOCK_EX``), else a shared one (``LOCK_SH``).
        blocking: Wait until the lock is free.

    Returns:
        True once the lock is held; False only without ``blocking``, when another open file holds a
        conflicting lock.

    Raises:
        OSError: ``flock`` failed, or does not exist on this platform (``ENOLCK``).
    """
    if fcntl is None:
        raise OSError(errno.ENOLCK, "flock is not available on this platform")
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Flock:
    """An ``flock`` on a file or directory, held while the context is open.

    ``with Flock(path) as held:`` gives the lock, or None when it could not be had: ``path`` does not
    exist (and ``create`` is False), or another open file holds it (without ``blocking``).

    Args:
        path: The file (or, with ``create`` False, directory) to lock.
        exclusive: An exclusive lock, else a shared one.
        blocking: Wait until the lock is free.
        create: Create a missing file; otherwise open ``path`` read-only (a directory can be locked so).

    Attributes:
        fd: The descriptor holding the lock, while it is held.

    Raises:
        OSError: On entering, ``path`` cannot be opened (other than missing) or ``flock`` failed; nothing is
            left open.
    """

    def __init__(self, path: str, exclusive: bool = True, blocking: bool = True, create: bool = True):
        self.path, self.exclusive, self.blocking, self.create = path, exclusive, blocking, create
        self.fd: int | None = None

    def __enter__(self) -> Flock | None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT if self.create else os.O_RDONLY, 0o666)
        except FileNotFoundError:
            return None
        try:
            held = lock_fd(fd, exclusive=self.exclusive, blocking=self.blocking)
        except BaseException:
            os.close(fd)
            raise
        if not held:
            os.close(fd)
            return None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def held_elsewhere(path: str) -> bool:
    """Whether another open file holds an ``flock`` on ``path``.

    Returns:
        False if ``path`` does not exist; True if the lock is held, or if it cannot be probed (no
        ``flock`` here, or it failed): a lock that cannot be tested counts as held.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not lock_fd(fd, blocking=False)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own lock


__all__ = ["Flock", "held_elsewhere", "lock_fd"]
