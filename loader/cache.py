"""A local disk cache of remote data files, shared safely by every process on a node.

Layout (keyed by dataset version, so a new version never mixes with an old one)::

    <cache_dir>/<dataset>/<version>/<relpath>          a verified copy of a data file
    <cache_dir>/<dataset>/<version>/.<name>.lock       flock: one downloader at a time per file
    <cache_dir>/<dataset>/<version>/.<name>.part       a download in progress (resumed, never read)
    <cache_dir>/<dataset>/<version>/.<name>.ok         marker: inode, size, mtime and checksum verified
    <cache_dir>/<dataset>/<version>/.larder-source.json   where the version lives (URL without secrets)
    <cache_dir>/.larder/evict.lock                     flock: one evictor at a time

How it stays safe:

* **Downloaded once.** A file is fetched under an exclusive ``flock`` on its lock file; whoever gets the lock
  second finds the verified copy and fetches nothing. ``flock`` locks die with their process, so a crashed
  process never leaves a lock that blocks; its partial ``.part`` file is resumed by the next downloader.
* **No partial reads.** Bytes go to ``.part``; size and the manifest's ``crc32`` are checked while streaming;
  only then is the file renamed into place. Readers only open final names.
* **Corruption is re-fetched.** On first use in a process, a copy is accepted if its ``.ok`` marker matches
  the file's inode, size and mtime (any rewrite changes mtime); otherwise its checksum is recomputed and a
  mismatching copy is deleted and fetched again.
* **Eviction (``max_cache_bytes``) is LRU by access time** (set on every use) and never removes a file in
  use — every file handed to a reader, and every prefetched file not yet consumed, is held with a shared
  ``flock`` (the ``pin_files`` most recent per process stay pinned) and eviction only takes files it can lock
  exclusively — nor a file without a remote copy (its version's ``_manifest.json`` must still exist remotely).
* **Ahead of the reader.** :meth:`FileCache.prefetch` downloads files in the reader's order with
  ``io_threads`` parallel threads (started on first use, never in the constructor); the first
  :meth:`FileCache.get` without a prefetch order prefetches the rest of the version in manifest order.
  Copies of the cache in pool workers (pickled or forked) only fetch on demand: the process that owns the
  reader's plan prefetches for all of them, and the file locks make sure nothing is fetched twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from . import fs as lfs
from .errors import ConfigError
from .manifest import MANIFEST_NAME, FileInfo
from .remote import RetryPolicy, download, file_checksum

if TYPE_CHECKING:
    from .dataset import Dataset

log = logging.getLogger("loader.cache")
META_DIR = ".larder"
SOURCE_NAME = ".larder-source.json"


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


class FileCache:
    """Copies a remote version's data files to local disk as they are used, and ahead of use.

    Args:
        cache_dir: The local cache directory (shared by all processes of a node).
        max_cache_bytes: Cap on the bytes of cached data files (None: no cap). A soft cap: files in use are
            never evicted, so the cache may exceed it while they are held.
        io_threads: Parallel downloads for prefetching.
        pin_files: Files per process kept pinned (safe from eviction) after they were last handed out.
        auto_prefetch: Prefetch the rest of a version in manifest order when no order was given.
        retry: Retries of a whole download whose stream failed.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, max_cache_bytes: int | None = None, io_threads: int = 8,
                 pin_files: int = 4, auto_prefetch: bool = True, retry: RetryPolicy | None = None):
        if max_cache_bytes is not None and max_cache_bytes <= 0:
            raise ConfigError(f"max_cache_bytes must be positive, got {max_cache_bytes}")
        if io_threads < 1 or pin_files < 1:
            raise ConfigError("io_threads and pin_files must be at least 1")
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.max_cache_bytes = max_cache_bytes
        self.io_threads = io_threads
        self.pin_files = pin_files
        self.auto_prefetch = auto_prefetch
        self.retry = retry or RetryPolicy()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._ahead: dict[str, int] = {}  # with a cap: prefetched (or in flight), not yet used: path -> size
        self._done_at: dict[str, int] = {}
        self._inflight = 0
        self._queue: list[tuple[Dataset, FileInfo]] = []
        self._pins: OrderedDict[str, int] = OrderedDict()  # path -> fd holding LOCK_SH
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._known: dict[tuple[str, str], Dataset] = {}
        self._prefetched_versions: set[tuple[str, str]] = set()
        self.fetched_bytes = 0
        self.fetched_files = 0

    def __getstate__(self) -> dict:
        keep = ("cache_dir", "max_cache_bytes", "io_threads", "pin_files", "auto_prefetch", "retry")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        # A copy in a pool worker fetches on demand: the process that owns the plan prefetches for everyone.
        self.__dict__.update(state, auto_prefetch=False)
        self._reset()

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's threads and pins are not ours
            pins = list(self._pins.values())
            self.auto_prefetch = False
            self._reset()
            for fd in pins:
                os.close(fd)

    # ----------------------------------------------------------------- paths and checks
    def local_path(self, ds: Dataset, info: FileInfo) -> str:
        """Where ``info`` of ``ds`` is cached."""
        return os.path.join(self.cache_dir, ds.name, ds.version, *info.path.split("/"))

    def _usable(self, path: str, info: FileInfo) -> bool:
        """Whether a complete, verified copy is at ``path``."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if st.st_size != info.size:
            return False
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._verified.get(path) == key:
            return True
        marker = _hidden(path, "ok")
        try:
            with open(marker, encoding="utf-8") as f:
                doc = json.load(f)
            if tuple(doc["key"]) == key and doc["checksum"] == info.checksum:
                self._verified[path] = key
                return True
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if file_checksum(path) != info.checksum:
            log.warning("%s: cached copy fails its checksum; fetching it again", path)
            return False
        self._mark_verified(path, info)
        return True

    def _mark_verified(self, path: str, info: FileInfo) -> None:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        tmp = _hidden(path, f"ok.{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": list(key), "checksum": info.checksum}, f)
        os.replace(tmp, _hidden(path, "ok"))
        self._verified[path] = key

    # ----------------------------------------------------------------- public
    def get(self, ds: Dataset, info: FileInfo) -> tuple[pafs.FileSystem, str]:
        """A verified local copy of ``info`` (fetched now if needed), pinned against eviction.

        Raises:
            RemoteError: The remote file cannot be read (after retries).
            CorruptFileError: The remote file does not match the manifest.
        """
        self._check_fork()
        path = self.local_path(ds, info)
        with self._lock:
            self._known[(ds.name, ds.version)] = ds
            future = self._futures.get(path)
            start_auto = self.auto_prefetch and (ds.name, ds.version) not in self._prefetched_versions
        if start_auto:
            rest = [f for f in ds.files if f.path != info.path]
            self.prefetch(ds, rest)
        if future is not None:
            future.result()  # re-raises a download error here, with its traceback
        while True:
            self._ensure(ds, info, path)
            if self._pin(path):
                break
        self._touch(path)
        with self._lock:
            if self._ahead.pop(path, None) is not None:
                self._pump()
        return pafs.LocalFileSystem(), path

    def prefetch(self, ds: Dataset, infos) -> None:
        """Download ``infos`` ahead of use, in this order, with ``io_threads`` threads.

        A new call replaces the order of files not yet started. With ``max_cache_bytes`` set, at most half of
        it is fetched ahead of what :meth:`get` has handed out.
        """
        self._check_fork()
        with self._lock:
            self._known[(ds.name, ds.version)] = ds
            self._prefetched_versions.add((ds.name, ds.version))
            self._queue = [(ds, f) for f in infos if self.local_path(ds, f) not in self._futures]
            self._queue.reverse()  # pop() from the end keeps the order
        self._pump()

    def fetch(self, ds: Dataset, info: FileInfo, progress=None) -> int:
        """Make sure ``info`` is cached (without pinning it); returns the bytes downloaded."""
        self._check_fork()
        with self._lock:
            self._known[(ds.name, ds.version)] = ds
        return self._ensure(ds, info, self.local_path(ds, info), progress=progress)

    def wait(self) -> None:
        """Block until the prefetches in flight have finished (files held back by the budget are not waited for).

        Raises:
            Exception: The first failed prefetch's error, with its original traceback.
        """
        while True:
            with self._lock:
                pending = [f for f in self._futures.values() if not f.done()]
            if not pending:
                return
            for future in pending:
                future.result()

    def close(self) -> None:
        """Stop prefetching and release every pin."""
        with self._lock:
            self._queue.clear()
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for fd in self._pins.values():
                os.close(fd)
            self._pins.clear()
            self._futures.clear()
            self._ahead.clear()

    def __enter__(self) -> FileCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- downloading
    def _ensure(self, ds: Dataset, info: FileInfo, path: str, progress=None, blocking: bool = True) -> int:
        if self._usable(path, info):
            return 0
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _Flock(_hidden(path, "lock"), blocking=blocking) as held:
            if held is None or self._usable(path, info):  # someone else fetches it, or did
                return 0
            if os.path.exists(path):
                os.remove(path)  # a bad copy (wrong size or checksum)
            self._write_source(ds)
            self._make_room(info.size)
            part = _hidden(path, "part")
            got = download(ds.fs, ds.file_path(info), part, size=info.size, checksum=info.checksum,
                           where=ds.display(info), progress=progress, policy=self.retry)
            os.replace(part, path)
            self._mark_verified(path, info)
        with self._lock:
            self.fetched_bytes += got
            self.fetched_files += 1
        return got

    def _write_source(self, ds: Dataset) -> None:
        target = os.path.join(self.cache_dir, ds.name, ds.version, SOURCE_NAME)
        if os.path.exists(target):
            return
        tmp = f"{target}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"url": lfs.display(ds.fs, ds.version_path), "dataset": ds.name, "version": ds.version}, f)
        os.replace(tmp, target)

    def _pump(self, *_ignored) -> None:
        """Start queued prefetches while the budget allows: at most ``2 × io_threads`` in flight (so exit never
        waits for a whole dataset) and, with ``max_cache_bytes``, at most half of it fetched ahead of use."""
        with self._lock:
            if self._pid != os.getpid():
                return
            limit = None if self.max_cache_bytes is None else self.max_cache_bytes // 2
            if limit is not None:
                self._release_used()
            while self._queue and self._inflight < 2 * self.io_threads:
                ds, info = self._queue[-1]
                if limit is not None and self._ahead and sum(self._ahead.values()) + info.size > limit:
                    return
                self._queue.pop()
                path = self.local_path(ds, info)
                if path in self._futures:
                    continue
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.io_threads, thread_name_prefix="larder-io")
                try:
                    future = self._executor.submit(self._prefetch_one, ds, info, path)
                except RuntimeError:  # the interpreter is shutting down
                    self._queue.clear()
                    return
                if limit is not None:
                    self._ahead[path] = info.size
                self._inflight += 1
                self._futures[path] = future
                future.add_done_callback(self._finished)

    def _finished(self, _future: Future) -> None:
        with self._lock:
            self._inflight -= 1
        self._pump()

    def _release_used(self) -> None:
        """Forget prefetched files another process has used since (its access time moved past the download):
        with a process pool the workers, not this process, consume what this process prefetched."""
        for path in list(self._ahead):
            done = self._done_at.get(path)
            try:
                used = done is not None and os.stat(path).st_atime_ns > done
            except FileNotFoundError:
                used = True
            if used:
                del self._ahead[path]
                fd = self._pins.pop(path, None)
                if fd is not None:
                    os.close(fd)

    def _prefetch_one(self, ds: Dataset, info: FileInfo, path: str) -> None:
        self._ensure(ds, info, path, blocking=False)
        if not self._usable(path, info):  # another process holds the download lock: wait for it
            self._ensure(ds, info, path)
        with self._lock:
            wanted = path in self._ahead
        if wanted:
            self._pin(path)
            with self._lock:
                self._done_at[path] = time.time_ns()

    # ----------------------------------------------------------------- pins, recency, eviction
    def _pin(self, path: str) -> bool:
        """Hold a shared lock on ``path``; False if it vanished (evicted) meanwhile."""
        with self._lock:
            if path in self._pins:
                self._pins.move_to_end(path)
                return True
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            alive = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            alive = False
        if not alive:
            os.close(fd)
            return False
        with self._lock:
            old = self._pins.pop(path, None)
            if old is not None:
                os.close(old)
            self._pins[path] = fd
            pinned = [p for p in self._pins if p not in self._ahead]
            for victim in pinned[: max(0, len(pinned) - self.pin_files)]:
                os.close(self._pins.pop(victim))
        return True

    def _touch(self, path: str) -> None:
        try:
            st = os.stat(path)
            os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))  # atime = recency; mtime unchanged
        except OSError:
            pass

    def _has_remote_copy(self, version_dir: str, answers: dict[str, bool]) -> bool:
        """Whether the version of a cached file still exists remotely (its manifest is there)."""
        if version_dir in answers:
            return answers[version_dir]
        answer = False
        try:
            with open(os.path.join(version_dir, SOURCE_NAME), encoding="utf-8") as f:
                source = json.load(f)
            ds = self._known.get((source["dataset"], source["version"]))
            if ds is not None:
                fs, remote = ds.fs, ds.version_path
            else:
                fs, remote = lfs.resolve(source["url"])
            answer = lfs.is_file(fs, lfs.join(remote, MANIFEST_NAME))
        except Exception as e:  # unknown or unreachable: it may be the only copy, so keep it
            log.info("%s: cannot confirm a remote copy (%s); not evicting it", version_dir, type(e).__name__)
        answers[version_dir] = answer
        return answer

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
                        st = os.stat(os.path.join(dirpath, name))
                        files.append((st.st_atime_ns, st.st_size, os.path.join(dirpath, name), dirpath))
            total = sum(size for _, size, _, _ in files)
            answers: dict[str, bool] = {}
            for _, size, path, dirpath in sorted(files):
                if total + incoming <= self.max_cache_bytes:
                    return
                with self._lock:
                    if path in self._pins:
                        continue
                rel = os.path.relpath(dirpath, self.cache_dir).split(os.sep)
                if len(rel) < 2 or not self._has_remote_copy(os.path.join(self.cache_dir, *rel[:2]), answers):
                    continue
                with _Flock(path, exclusive=True, blocking=False, create=False) as held:
                    if held is None:
                        continue  # in use by another process (or already gone)
                    os.remove(path)
                    for suffix in ("ok",):
                        try:
                            os.remove(_hidden(path, suffix))
                        except FileNotFoundError:
                            pass
                total -= size
                log.info("evicted %s (%d bytes)", path, size)
            if total + incoming > self.max_cache_bytes:
                log.warning("cache %s holds %d bytes in use; exceeding max_cache_bytes=%d",
                            self.cache_dir, total, self.max_cache_bytes)


def attach_cache(ds: Dataset, cache_dir: str | os.PathLike, *, max_cache_bytes: int | None = None,
                 force: bool = False, **options) -> FileCache | None:
    """Give a remote dataset a local disk cache (``open_dataset(url, cache_dir=...)`` calls this).

    Local datasets are read in place (a copy would only cost time), unless ``force``.
    """
    if isinstance(ds.fs, pafs.LocalFileSystem) and not force:
        return None
    cache = FileCache(cache_dir, max_cache_bytes=max_cache_bytes, **options)
    ds.file_cache = cache
    return cache


__all__ = ["FileCache", "attach_cache"]
