"""Claims on staging directories: how concurrent runs and cleaners agree on which runs are alive.

A run claims ``<dataset>/_staging-<id>`` with an owner file ``_staging-<id>.owner`` (:func:`claim`);
:func:`clean_stale_staging` removes the debris of dead runs and never a live run's; :func:`publish_lock`
serialises the publish step of runs on one local disk. A version renamed into place carries its run's claim
in a marker until ``CURRENT`` has named it (:func:`mark_publishing`, :func:`publish_state`), so a pruner tells a
version still being published from one whose run died before it went live. :mod:`loader.publish` builds on these.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import time
from collections.abc import Iterator

import pyarrow.fs as pafs

from . import fs as lfs
from .errors import DatasetNotFoundError
from .locks import Flock, held_elsewhere, lock_fd
from .manifest import CURRENT_NAME, STAGING_PREFIX

OWNER_SUFFIX = ".owner"
PENDING_SUFFIX = ".owner.new"  # an owner file being written; renamed to OWNER_SUFFIX once locked
PENDING_STALE_AFTER_S = 600  # a pending owner file this old was left by a run that died while creating it
REMOTE_STALE_AFTER_S = 24 * 3600
PUBLISHING_NAME = "_publishing"  # in a version directory not yet seen live: the staging name of its run
PUBLISHED, PUBLISHING, ABANDONED = "published", "publishing", "abandoned"  # what publish_state() tells

# How runs and cleaners agree on who is alive (local disk; flock locks die with their process):
#
# * An owner file is visible under its final name ``<stage>.owner`` only while its run holds an
#   exclusive flock on it. The run creates ``<stage>.owner.new`` with O_CREAT|O_EXCL (so it never adopts
#   a file that is not its own), locks it, writes its JSON, and only then renames it to ``<stage>.owner``
#   (a rename keeps the inode, so the lock comes along). It creates ``<stage>/`` after that, and removes
#   ``<stage>.owner`` only after ``<stage>/`` is gone (renamed to a version or deleted) and before it
#   closes the lock.
# * A cleaner therefore reads "``<stage>.owner`` missing" or "unlocked" as "the run is dead or done",
#   and it never deletes an owner file it could not lock: a live run's owner file can neither vanish
#   nor be replaced under it (names are unique and never reused), so the cleaner never deletes a live
#   staging directory. A probe that finds the lock held (by the run, or by another cleaner's probe at
#   that instant) counts as alive: cleaning is conservative, the next run retries.
# * A ``.owner.new`` file is not yet a claim: the run holds it unlocked for only the instant between
#   creating and locking it, so cleaners leave it alone until it is PENDING_STALE_AFTER_S old and
#   unlocked (its run died in that instant). The run takes its lock with a blocking flock, so a probe
#   that holds it for an instant delays the run instead of failing it; and if the file was removed
#   anyway, the rename fails and the run claims a fresh name.
#
# Remote storage has no locks: liveness comes from the owner file's host, pid and start time (on this
# host, the pid must still be the run's process: same boot, same process start, see process_life). The file
# is visible (empty or partial) while it is being written, so an owner file that does not parse counts
# as a live run's until it is PENDING_STALE_AFTER_S old, never as a dead run's.


def owner_alive(fs: pafs.FileSystem, owner_path: str) -> bool:
    """Whether the run that owns a staging directory still lives (see the protocol above)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return held_elsewhere(owner_path)
    try:
        owner = json.loads(lfs.read_bytes(fs, owner_path))
    except DatasetNotFoundError:
        return False
    except ValueError:  # being written right now, or garbage left long ago
        return _younger_than(fs.get_file_info(owner_path), PENDING_STALE_AFTER_S)
    if not isinstance(owner, dict):
        return False
    if owner.get("host") == socket.gethostname():
        try:
            pid = int(owner["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        if not pid_alive(pid):
            return False
        # The pid is taken, but maybe by another process than the run's: a container restarted under the
        # same host name gives its first processes the same pids. The run wrote its process's life.
        life, now = owner.get("life"), process_life(pid)
        return life is None or now is None or life == now
    return time.time() - float(owner.get("started", 0)) < REMOTE_STALE_AFTER_S


def process_life(pid: int) -> str | None:
    """What tells one life of process ``pid`` from a later process given the same pid: the kernel's boot id
    and the process's start time in clock ticks since boot (Linux ``/proc``; None where unavailable)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host, whoever owns it.

    ``os.kill(pid, 0)`` sends no signal: it fails with ``ProcessLookupError`` for a process that does not
    exist, and with ``PermissionError`` for a live process of another user (a run started by a colleague on
    a shared machine), which therefore counts as alive. Pids 0 and below name process groups, not a run.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # EPERM: it exists, but belongs to another user
        return True
    except (OSError, OverflowError):  # ESRCH: no such process (or a pid the kernel cannot hold)
        return False
    return True


def _younger_than(info: pafs.FileInfo, seconds: float) -> bool:
    """Whether a file was modified less than ``seconds`` ago (True if its time is unknown)."""
    if info.type == pafs.FileType.NotFound:
        return False
    return info.mtime is None or time.time() - info.mtime.timestamp() < seconds


def _pending_stale(fs: pafs.FileSystem, entry: pafs.FileInfo) -> bool:
    """Whether a pending owner file was left by a run that died while creating it."""
    if _younger_than(entry, PENDING_STALE_AFTER_S):
        return False
    return not (isinstance(fs, pafs.LocalFileSystem) and held_elsewhere(entry.path))


def remove(fs: pafs.FileSystem, path: str, *, directory: bool) -> bool:
    """Delete a file or directory tree, best effort (a concurrent run may be removing it too)."""
    try:
        if directory:
            fs.delete_dir(path)
        else:
            fs.delete_file(path)
    except OSError:  # gone already, or not removable now: the next run retries
        return False
    return True


def clean_stale_staging(fs: pafs.FileSystem, dataset_dir: str) -> list[str]:
    """Remove staging directories (and owner files) of runs that are no longer alive, and temporary ``CURRENT``
    files older than :data:`PENDING_STALE_AFTER_S` (left by runs killed while swapping it).

    Safe to run while other runs claim, fill and commit staging directories (see the protocol above).

    Returns:
        The names of the dead runs' staging directories whose debris was removed.
    """
    stems = set()
    for entry in lfs.listdir(fs, dataset_dir):
        name = entry.base_name
        if lfs.is_temporary(name, CURRENT_NAME):  # a CURRENT its run never moved into place (killed meanwhile)
            if not _younger_than(entry, PENDING_STALE_AFTER_S):  # a live run renames its own within seconds
                remove(fs, entry.path, directory=False)
            continue
        if not name.startswith(STAGING_PREFIX):
            continue
        if name.endswith(PENDING_SUFFIX):
            if _pending_stale(fs, entry):
                remove(fs, entry.path, directory=False)
        elif name.endswith(OWNER_SUFFIX):
            stems.add(name[: -len(OWNER_SUFFIX)])
        elif entry.type == pafs.FileType.Directory:
            stems.add(name)
    removed = []
    for stem in sorted(stems):
        owner = lfs.join(dataset_dir, stem + OWNER_SUFFIX)
        if owner_alive(fs, owner):
            continue
        # The directory first: an owner file left alone is cleaned next time, never a live claim.
        gone = remove(fs, lfs.join(dataset_dir, stem), directory=True)
        if remove(fs, owner, directory=False) or gone:
            removed.append(stem)
    return removed


def mark_publishing(fs: pafs.FileSystem, staging_path: str) -> None:
    """Write the run's claim (its staging directory's name) into the staging directory as the marker
    :data:`PUBLISHING_NAME`, which moves with it when it is renamed to its version: until :func:`unmark`, that
    version is its run's to make live, and :func:`publish_state` tells a pruner so."""
    lfs.write_bytes(fs, lfs.join(staging_path, PUBLISHING_NAME), posixpath.basename(staging_path).encode())


def unmark(fs: pafs.FileSystem, version_dir: str) -> bool:
    """Remove the marker of a version that ``CURRENT`` has named (or that a newer live version superseded); best
    effort (gone already is fine)."""
    return remove(fs, lfs.join(version_dir, PUBLISHING_NAME), directory=False)


def publish_state(fs: pafs.FileSystem, dataset_dir: str, version: str) -> str:
    """Whether ``version`` is :data:`PUBLISHED` (no marker: ``CURRENT`` named it, or a larder without markers made
    it), :data:`PUBLISHING` (its run still lives and may yet make it live) or :data:`ABANDONED` (its run died, or
    failed to clean up, before ``CURRENT`` named it: it never was live).

    Raises:
        OSError: The marker cannot be read (other than missing).
    """
    try:
        run = lfs.read_bytes(fs, lfs.join(dataset_dir, version, PUBLISHING_NAME)).decode("utf-8", "replace").strip()
    except DatasetNotFoundError as e:
        if isinstance(e.__cause__, (FileNotFoundError, NotADirectoryError)):
            return PUBLISHED
        raise
    if run.startswith(STAGING_PREFIX) and "/" not in run and owner_alive(fs, lfs.join(dataset_dir, run + OWNER_SUFFIX)):
        return PUBLISHING
    return ABANDONED


@contextlib.contextmanager
def publish_lock(fs: pafs.FileSystem, dataset_dir: str) -> Iterator[None]:
    """Serialise the publish step (name, rename, ``CURRENT`` swap, prune) of runs on one local disk.

    The lock is a flock on the dataset directory itself (no extra file in the layout). Where flock
    is unavailable, and on remote storage, runs go unserialised: name collisions are still resolved
    by :meth:`Staging.commit`, and pruning spares versions newer than the live one.
    """
    with contextlib.ExitStack() as held:
        if isinstance(fs, pafs.LocalFileSystem):
            try:
                held.enter_context(Flock(dataset_dir, create=False))
            except OSError:  # no flock here, or the directory cannot be opened: unserialised, as remotely
                pass
        yield


def claim(fs: pafs.FileSystem, path: str) -> tuple[bool, int | None]:
    """Create the owner file of staging directory ``path``: ``(claimed, lock fd on local disk)``."""
    owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "life": process_life(os.getpid()),
                        "started": time.time()}).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        fd = _claim_local(path, owner)
        return fd is not None, fd
    lfs.write_bytes(fs, path + OWNER_SUFFIX, owner)  # half-written, it still counts as alive (see above)
    return True, None


def _claim_local(path: str, owner: bytes) -> int | None:
    """Create, lock, fill and then expose ``<path>.owner``; the locked fd, or None if a cleaner took it."""
    pending = path + PENDING_SUFFIX
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        lock_fd(fd)  # blocking: a cleaner's probe holds it for an instant at most
        os.write(fd, owner)
        os.rename(pending, path + OWNER_SUFFIX)  # the inode, and so the lock, moves with the name
    except FileNotFoundError:  # removed as stale before it could be renamed: claim another name
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(pending)
        raise
    return fd


__all__ = ["ABANDONED", "OWNER_SUFFIX", "PENDING_STALE_AFTER_S", "PENDING_SUFFIX", "PUBLISHED", "PUBLISHING",
           "PUBLISHING_NAME", "REMOTE_STALE_AFTER_S", "claim", "clean_stale_staging", "mark_publishing", "owner_alive",
           "pid_alive", "process_life", "publish_lock", "publish_state", "remove", "unmark"]
