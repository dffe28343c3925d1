"""The on-disk side of :mod:`loader.cache`: names, ``flock`` locks, and eviction.

Eviction (:class:`Evictor`, mixed into :class:`loader.cache.FileCache`) is least-recently-used by access
time, under one node-wide lock (``<cache_dir>/.larder/evict.lock``). It never takes a file this process pins,
a file another process holds with a shared ``flock`` (it only removes what it can lock exclusively), nor a
file whose version has no remote copy any more (it may be the only copy left).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from . import fs as lfs
from .manifest import MANIFEST_NAME

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


def _hidden(path: str, suffix: str) -> str:
    head, base = os.path.split(path)
    return os.path.join(head, f".{base}.{suffix}")


class _Flock:
    """An ``flock`` on a file, held while the context is open."""

    def __init__(self, path: str, exclusive: bool = True, blocking: bool = True, create: bool = True):
        self.path, self.mode = path, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        self.blocking, self.create = blocking, create
        self.fd: int | None = None

    def __enter__(self) -> _Flock | None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT if self.create else os.O_RDONLY, 0o666)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(self.fd, self.mode | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


class Evictor:
    """Eviction for :class:`loader.cache.FileCache` (which provides the attributes used here)."""

    cache_dir: str
    max_cache_bytes: int | None

    def trim(self) -> None:
        """Evict least recently used files not in use until the cache is within ``max_cache_bytes``."""
        self._make_room(0)

    def _has_remote_copy(self, version_dir: str) -> bool:
        """Whether the version of a cached file still exists remotely (its manifest is there).

        Asked with the filesystem of a dataset this cache serves when it can address the version (so the
        reader's options — token, name-node map, Kerberos — apply), else with the stored URL alone. Answers,
        including "cannot tell", are remembered for ``ANSWER_TTL`` seconds, so a slow or failing check is not
        repeated for every download.
        """
        now = time.monotonic()
        with self._lock:
            hit = self._remote_answers.get(version_dir)
        if hit is not None and now - hit[0] < ANSWER_TTL:
            return hit[1]
        answer = False
        try:
            with open(os.path.join(version_dir, SOURCE_NAME), encoding="utf-8") as f:
                source = json.load(f)
            fs, remote = self._remote_of(source)
            answer = lfs.is_file(fs, lfs.join(remote, MANIFEST_NAME))
        except Exception as e:  # unknown or unreachable: it may be the only copy, so keep it
            log.info("%s: cannot confirm a remote copy (%s); not evicting it", version_dir, type(e).__name__)
        with self._lock:
            self._remote_answers[version_dir] = (now, answer)
        return answer

    def _remote_of(self, source: dict) -> tuple[pafs.FileSystem, str]:
        """The filesystem and path of a cached version's remote copy, from its ``.larder-source.json``."""
        with self._lock:
            known = dict(self._known)
        ds = known.get((source["dataset"], source["version"]))
        if ds is not None:
            return ds.fs, ds.version_path
        url = source["url"]
        path = source.get("path") or (urlsplit(url).path if lfs.is_remote(url) else url)
        for other in known.values():  # the same filesystem (and options) as a dataset this cache serves
            if lfs.display(other.fs, path) == url:
                return other.fs, path
        scheme = urlsplit(url).scheme.lower()
        quick = {"retries": 2, "timeout": 10} if scheme in ("webhdfs", "swebhdfs", "hdfs") else {}
        return lfs.resolve(url, **quick)

    def _make_room(self, incoming: int) -> None:
        if self.max_cache_bytes is None:
            return
        meta = os.path.join(self.cache_dir, META_DIR)
        os.makedirs(meta, exist_ok=True)
        with _Flock(os.path.join(meta, "evict.lock")):
            files = []
            for dirpath, dirnames, names in os.walk(self.cache_dir):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in names:
                    if not name.startswith("."):
                        try:
                            st = os.stat(os.path.join(dirpath, name))
                        except FileNotFoundError:  # removed meanwhile (a bad copy dropped by a reader)
                            continue
                        files.append((st.st_atime_ns, st.st_size, os.path.join(dirpath, name), dirpath))
            total = sum(size for _, size, _, _ in files)
            for _, size, path, dirpath in sorted(files):
                if total + incoming <= self.max_cache_bytes:
                    return
                with self._lock:
                    if path in self._pins:
                        continue
                rel = os.path.relpath(dirpath, self.cache_dir).split(os.sep)
                if len(rel) < 2 or not self._has_remote_copy(os.path.join(self.cache_dir, *rel[:2])):
                    continue
                with _Flock(path, exclusive=True, blocking=False, create=False) as held:
                    if held is None:
                        continue  # in use by another process (or already gone)
                    _remove_quietly(path)
                    _remove_quietly(_hidden(path, "ok"))
                total -= size
                log.info("evicted %s (%d bytes)", path, size)
            if total + incoming > self.max_cache_bytes:
                log.warning("cache %s holds %d bytes in use; exceeding max_cache_bytes=%d",
                            self.cache_dir, total, self.max_cache_bytes)
