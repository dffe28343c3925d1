"""The on-disk side of :mod:`loader.cache`: names, markers, and eviction.

Eviction (:class:`Evictor`, owned by :class:`loader.cache.FileCache`) is least-recently-used by access
time, under one node-wide lock (``<cache_dir>/.larder/evict.lock``). It never takes a file this process pins,
a file another process holds with a shared ``flock`` (it only removes what it can lock exclusively), nor a
file whose version has no remote copy any more (it may be the only copy left).
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

    def trim(self, *, pinned: Callable[[str], bool] = _nothing_pinned, datasets: Iterable[Dataset] = ()) -> None:
        """Evict least recently used files not in use until the cache is within ``max_cache_bytes``.

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
        except Exception as e:  # unknown or unreachable: it may be the only copy, so keep it
            log.info("%s: cannot confirm a remote copy (%s); not evicting it", version_dir, type(e).__name__)
        with self._lock:
            self._answers[version_dir] = (now, answer)
        return answer

    def make_room(self, incoming: int, *, pinned: Callable[[str], bool] = _nothing_pinned,
                  datasets: Iterable[Dataset] = ()) -> None:
        """Evict until ``incoming`` more bytes fit under ``max_cache_bytes`` (as far as files not in use allow).

        Args:
            incoming: Bytes about to be written into the cache.
            pinned: True for a path its caller holds in use (never evicted; asked just before each removal).
            datasets: The datasets the caller serves (see :meth:`has_remote_copy`).
        """
        if self.max_cache_bytes is None:
            return
        datasets = list(datasets)
        meta = os.path.join(self.cache_dir, META_DIR)
        os.makedirs(meta, exist_ok=True)
        with Flock(os.path.join(meta, "evict.lock")):
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
                if pinned(path):
                    continue
                rel = os.path.relpath(dirpath, self.cache_dir).split(os.sep)
                if len(rel) < 2 or not self.has_remote_copy(os.path.join(self.cache_dir, *rel[:2]), datasets):
                    continue
                with Flock(path, exclusive=True, blocking=False, create=False) as held:
                    if held is None:
                        continue  # in use by another process (or already gone)
                    _remove_quietly(path)
                    _remove_quietly(_hidden(path, "ok"))
                total -= size
                log.info("evicted %s (%d bytes)", path, size)
            if total + incoming > self.max_cache_bytes:
                log.warning("cache %s holds %d bytes in use; exceeding max_cache_bytes=%d",
                            self.cache_dir, total, self.max_cache_bytes)


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
