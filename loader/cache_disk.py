"""The on-disk side of :mod:`loader.cache`: names, markers, and eviction.

Eviction (:class:`Evictor`, owned by :class:`loader.cache.FileCache`) is least-recently-used by access
time, under one node-wide lock (``<cache_dir>/.larder/evict.lock``). It never takes a file this process pins,
nor a file another process holds with a shared ``flock`` (it only removes what it can lock exclusively). It
takes, in this order: the ``.part`` files of abandoned downloads (their download lock is free: the process
died), then complete files whose version still has a remote copy, and only then, with a warning naming the
version, files whose version has none (pruned remotely, or not confirmed): they may be the only copy left,
but the cap the user set wins.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from . import fs as lfs
from .locks import Flock
from .manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from .dataset import Dataset

log = logging.getLogger("loader.cache")
META_DIR = ".larder"
SOURCE_NAME = ".larder-source.json"
ANSWER_TTL = 60.0  # seconds a "does this version still exist remotely?" answer is trusted
# errno values that mean the local cache directory cannot take the file (not a remote failure).
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:  # already gone, or the directory is read-only: nothing more to do
        pass


def _marker_matches(path: str, key: tuple[int, int, int], checksum: str) -> bool:
    """Whether the ``.ok`` marker of ``path`` vouches for a copy with ``key`` (inode, size, mtime)."""
    try:
        with open(_hidden(path, "ok"), encoding="utf-8") as f:
            doc = json.load(f)
        return tuple(doc["key"]) == key and doc["checksum"] == checksum
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _nothing_pinned(path: str) -> bool:
    return False


def _hidden(path: str, suffix: str) -> str:
    head, base = os.path.split(path)
    return os.path.join(head, f".{base}.{suffix}")


class Evictor:
    """Least-recently-used eviction of the data files under ``cache_dir``, down to ``max_cache_bytes``.

    The whole interface of eviction: :class:`loader.cache.FileCache` makes one and calls :meth:`make_room`
    before each download (and :meth:`trim` on demand), telling it which files it holds in use and which
    datasets it serves. Eviction runs under one node-wide lock (``<cache_dir>/.larder/evict.lock``) and only
    removes what it can lock exclusively, so a file another process holds with a shared ``flock`` stays.

    Args:
        cache_dir: The cache directory (``<cache_dir>/<dataset>/<version>/<relpath>``).
        max_cache_bytes: Cap on the bytes of cached data files (None: evict nothing).
        answer_ttl: Seconds a "does this version still exist remotely?" answer is trusted.
    """

    def __init__(self, cache_dir: str, max_cache_bytes: int | None, *, answer_ttl: float = ANSWER_TTL):
        self.cache_dir = cache_dir
        self.max_cache_bytes = max_cache_bytes
        self.answer_ttl = answer_ttl
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, bool]] = {}  # version dir -> (when, has a remote copy)
        self._warned = False  # the cache was forced over its cap (warned once, then logged at info level)
        self._warned_versions: set[str] = set()  # versions without a remote copy whose files were evicted

    def trim(self, *, pinned: Callable[[str], bool] = _nothing_pinned, datasets: Iterable[Dataset] = ()) -> None:
        """Evict files not in use until the cache is within ``max_cache_bytes`` (in :meth:`make_room`'s order).

        Args:
            pinned: True for a path its caller holds in use (never evicted).
            datasets: The datasets the caller serves (see :meth:`has_remote_copy`).
        """
        self.make_room(0, pinned=pinned, datasets=datasets)

    def has_remote_copy(self, version_dir: str, datasets: Iterable[Dataset] = ()) -> bool:
        """Whether the version of a cached file still exists remotely (its manifest is there).

        Asked with the filesystem of one of ``datasets`` that addresses the version (so the reader's options
        — token, name-node map, Kerberos — apply), else with the URL stored in the version's
        ``.larder-source.json`` alone. Answers, including "cannot tell" (False), are remembered for
        ``answer_ttl`` seconds, so a slow or failing check is not repeated for every download.
        """
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get(version_dir)
        if hit is not None and now - hit[0] < self.answer_ttl:
            return hit[1]
        answer = False
        try:
            with open(os.path.join(version_dir, SOURCE_NAME), encoding="utf-8") as f:
                source = json.load(f)
            fs, remote = _remote_of(source, list(datasets))
            answer = lfs.is_file(fs, lfs.join(remote, MANIFEST_NAME))
        except Exception as e:  # unknown or unreachable: it may be the only copy, so it goes last
            log.info("%s: cannot confirm a remote copy (%s); evicting its files last", version_dir, type(e).__name__)
        with self._lock:
            self._answers[version_dir] = (now, answer)
        return answer

    def make_room(self, incoming: int, *, pinned: Callable[[str], bool] = _nothing_pinned,
                  datasets: Iterable[Dataset] = (), reserve: str | None = None, strict: bool = False) -> bool:
        """Evict until ``incoming`` more bytes fit under ``max_cache_bytes`` (as far as files not in use allow).

        Downloads in flight (their download lock is held) count as if complete: at the expected size their
        download reserved (``reserve``: a ``.<name>.want`` sidecar, kept while the download lock is held), or
        at the size of their ``.part`` file. A ``.part`` whose download lock is free was abandoned (a killed
        process): it counts as cached bytes and goes first, being the cheapest loss (a head start for the next
        downloader of its file). Then complete files go, least recently used first, those whose version has no
        remote copy (:meth:`has_remote_copy`) after all the others.

        Args:
            incoming: Bytes about to be written into the cache.
            pinned: True for a path its caller holds in use (never evicted; asked just before each removal).
            datasets: The datasets the caller serves (see :meth:`has_remote_copy`).
            reserve: The final path of the download ``incoming`` is for (its caller holds its download lock):
                its room is reserved (while the evict lock is held) so that other downloads count it.
            strict: Reserve nothing when the room cannot be made (a prefetch, which can wait).

        Returns:
            Whether the cache fits ``incoming`` more bytes within the cap (always True without a cap).
        """
        if self.max_cache_bytes is None:
            return True
        datasets = list(datasets)
        meta = os.path.join(self.cache_dir, META_DIR)
        os.makedirs(meta, exist_ok=True)
        with Flock(os.path.join(meta, "evict.lock")):
            files, stale, in_flight = self._scan(reserve)
            total = sum(size for _, size, _ in files) + sum(size for _, size, _ in stale)
            room = self.max_cache_bytes - incoming
            kept = {"in use": 0, "stuck": 0}  # bytes that stay: in use, or cannot be removed
            for _, size, path in sorted(stale):
                if total + in_flight <= room:
                    break
                gone = _drop_abandoned(path)
                if gone is None:
                    kept["stuck"] += size
                    continue
                total -= size
                if not gone:  # a downloader took it up meanwhile
                    in_flight += size
            without_copy = []  # perhaps the only copy left: evicted after every other file
            for _, size, path in sorted(files):
                if total + in_flight <= room:
                    break
                version = self._version_dir(path)
                if version is not None and not pinned(path) and not self.has_remote_copy(version, datasets):
                    without_copy.append((size, path, version))
                    continue
                total -= self._evict(path, size, version, pinned, kept)
            for size, path, version in without_copy:
                if total + in_flight <= room:
                    break
                total -= self._evict(path, size, version, pinned, kept, no_copy=True)
            fits = total + in_flight <= room
            if fits or not strict:
                if reserve is not None:
                    _write_want(reserve, incoming)
            if not fits and not strict:
                self._over_cap(kept["in use"], kept["stuck"], in_flight, incoming)
            return fits

    def _scan(self, reserve: str | None) -> tuple[list, list, int]:
        """The cached data files and the abandoned ``.part`` files, each as ``(time, size, path)`` (the final
        path, for a ``.part``), and the bytes of the downloads in flight other than ``reserve``'s."""
        files: list[tuple[int, int, str]] = []
        stale: list[tuple[int, int, str]] = []
        in_flight = 0
        for dirpath, dirnames, names in os.walk(self.cache_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            in_flight += _in_flight(dirpath, names, reserve, stale)
            for name in names:
                if not name.startswith("."):
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:  # removed meanwhile (a bad copy dropped by a reader)
                        continue
                    files.append((st.st_atime_ns, st.st_size, path))
        return files, stale, in_flight

    def _version_dir(self, path: str) -> str | None:
        """The ``<cache_dir>/<dataset>/<version>`` directory holding ``path`` (None: not a cached data file)."""
        rel = os.path.relpath(os.path.dirname(path), self.cache_dir).split(os.sep)
        return None if len(rel) < 2 else os.path.join(self.cache_dir, *rel[:2])

    def _evict(self, path: str, size: int, version: str | None, pinned: Callable[[str], bool], kept: dict,
               no_copy: bool = False) -> int:
        """Remove a cached file (and its marker) unless it is in use; returns the bytes freed, and adds the
        bytes of a file that stays to ``kept`` (``"in use"``, or ``"stuck"``: it cannot be removed).
        ``no_copy``: its version has no remote copy (said in a warning, once per version)."""
        if version is None:  # not under <dataset>/<version>/: not ours to remove
            kept["stuck"] += size
            return 0
        if pinned(path):
            kept["in use"] += size
            return 0
        with Flock(path, exclusive=True, blocking=False, create=False) as held:
            if held is None:
                if not os.path.exists(path):
                    return size  # already gone (another evictor, a reader dropping a bad copy)
                kept["in use"] += size  # in use by another process
                return 0
            if not _remove(path):
                kept["stuck"] += size
                return 0
            _remove_quietly(_hidden(path, "ok"))
        if no_copy and version not in self._warned_versions:
            self._warned_versions.add(version)
            log.warning("cache %s: evicting cached files of %s, whose version has no remote copy (pruned, or it "
                        "cannot be confirmed), to stay within max_cache_bytes=%d", self.cache_dir,
                        os.path.relpath(version, self.cache_dir), self.max_cache_bytes)
        log.info("evicted %s (%d bytes%s)", path, size, "; no remote copy" if no_copy else "")
        return size

    def release(self, path: str) -> None:
        """Drop the room reservation of the download of ``path`` (done, or failed), under the evict lock: an
        evictor that listed the directory before the download got its final name must still find it."""
        want = _hidden(path, "want")
        if self.max_cache_bytes is None and not os.path.exists(want):
            return
        with Flock(os.path.join(self.cache_dir, META_DIR, "evict.lock")):
            _remove_quietly(want)

    def _over_cap(self, in_use: int, stuck: int, in_flight: int, incoming: int) -> None:
        """Report a cache forced over its cap by what cannot be evicted: a warning the first time, then at info
        level."""
        level = logging.INFO if self._warned else logging.WARNING
        self._warned = True
        other = f" + {stuck} bytes of files it cannot remove" if stuck else ""
        log.log(level, "cache %s: %d bytes of files in use%s + %d bytes of downloads in flight + %d incoming = %d "
                "bytes > max_cache_bytes=%d; exceeding the cap until files are released%s", self.cache_dir,
                in_use, other, in_flight, incoming, in_use + stuck + in_flight + incoming, self.max_cache_bytes,
                "" if level == logging.INFO else " (reported once per reader)")


def _write_want(path: str, size: int) -> None:
    """Record the expected size of the download of ``path`` (its ``.want`` sidecar)."""
    try:
        with open(_hidden(path, "want"), "w", encoding="utf-8") as f:
            f.write(str(size))
    except OSError as e:  # only accounting: the .part file still counts at its size
        log.info("%s: cannot record its download size (%s)", path, e)


def _in_flight(dirpath: str, names: list[str], exclude: str | None,
               stale: list[tuple[int, int, str]] | None = None) -> int:
    """Bytes of the downloads in flight in one directory: each ``.<name>.part`` whose download lock is held
    counts at the expected size its ``.<name>.want`` records, or at its size if larger (a reservation whose
    ``.part`` is not written yet counts too). A ``.part`` whose download lock is free was abandoned (its process
    died): it is not in flight, and goes to ``stale`` as ``(mtime, size, final path)``. ``exclude``: the
    caller's own download."""
    bases = {n[1:-5] for n in names if n.startswith(".") and n.endswith(".part")}
    bases |= {n[1:-5] for n in names if n.startswith(".") and n.endswith(".want")}
    total = 0
    for base in bases:
        path = os.path.join(dirpath, base)
        if path == exclude:
            continue
        try:
            part = os.stat(_hidden(path, "part"))
        except OSError:
            part = None
        if not _downloading(path):
            if part is not None and stale is not None:
                stale.append((part.st_mtime_ns, part.st_size, path))
            continue
        want = 0
        try:
            with open(_hidden(path, "want"), encoding="utf-8") as f:
                want = int(f.read() or 0)
        except (OSError, ValueError):
            pass
        total += max(want, 0 if part is None else part.st_size)
    return total


def _drop_abandoned(path: str) -> bool | None:
    """Remove the ``.part`` (and ``.want``) an abandoned download of ``path`` left, holding its download lock
    meanwhile (a downloader that comes now starts afresh).

    Returns:
        True once removed, False if a downloader holds the lock now, None if it cannot be removed.
    """
    try:
        with Flock(_hidden(path, "lock"), exclusive=True, blocking=False) as held:
            if held is None:
                return False
            if not _remove(_hidden(path, "part")):
                return None
            _remove_quietly(_hidden(path, "want"))
    except OSError as e:  # its lock cannot be created (a read-only directory)
        log.info("%s: cannot lock its download (%s)", path, e)
        return None
    log.info("removed %s, left by a download whose process died", _hidden(path, "part"))
    return True


def _remove(path: str) -> bool:
    """Remove a file; False (logged) if it is there but cannot be removed."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.info("cannot remove %s (%s)", path, e)
        return False
    return True


def _downloading(path: str) -> bool:
    """Whether someone holds the download lock of ``path`` (a download in progress)."""
    try:
        with Flock(_hidden(path, "lock"), exclusive=True, blocking=False, create=False) as held:
            return held is None and os.path.exists(_hidden(path, "lock"))
    except OSError:
        return True


def _remote_of(source: dict, datasets: list[Dataset]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a cached version's remote copy, from its ``.larder-source.json``."""
    for ds in datasets:
        if (ds.name, ds.version) == (source["dataset"], source["version"]):
            return ds.fs, ds.version_path
    url = source["url"]
    path = source.get("path") or (urlsplit(url).path if lfs.is_remote(url) else url)
    for other in datasets:  # the same filesystem (and options) as a dataset this cache serves
        if lfs.display(other.fs, path) == url:
            return other.fs, path
    scheme = urlsplit(url).scheme.lower()
    quick = {"retries": 2, "timeout": 10} if scheme in ("webhdfs", "swebhdfs", "hdfs") else {}
    return lfs.resolve(url, **quick)
