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
  process never leaves a lock that blocks; its partial ``.part`` file is resumed by the next downloader (unless
  evicted first, see below).
* **No partial reads.** Bytes go to ``.part``; size and the manifest's ``crc32`` are checked while streaming;
  only then is the file renamed into place. Readers only open final names.
* **Corruption is re-fetched.** On first use in a process, a copy is accepted if its ``.ok`` marker matches
  the file's inode, size and mtime (any rewrite changes mtime); otherwise its checksum is recomputed and a
  mismatching copy is deleted and fetched again. A copy that rots without changing size or mtime (bit rot, a
  restore that keeps timestamps) passes the marker but fails the reader's footer, chunk checksum or page CRC:
  the reader then calls :meth:`FileCache.discard` and reads a fresh copy, once, on every read path (whole row
  groups, pages, streamed slices: :meth:`loader.dataset.Dataset.with_fresh_copy`). ``python -m loader sync``
  ignores markers and re-checksums every cached copy (``verify=True``).
* **Eviction (``max_cache_bytes``) is LRU by access time** (set on every use) and never removes a file in
  use — every file handed to a reader, every prefetched file not yet consumed, and a fresh download from the
  moment it gets its final name, is held with a shared ``flock`` (the ``pin_files`` most recent per process
  stay pinned) and eviction only takes files it can lock exclusively. A ``.part`` whose download lock is free
  (its process died) counts as cached, not in flight, and goes first; files whose version has no remote copy
  (``_manifest.json`` gone remotely, e.g. pruned by ``keep_versions``, or unconfirmed) go last, with a warning
  naming the version: they may be the only copy left, but the cap wins. A file that vanishes anyway (evicted
  by another process between two steps) is fetched again, never an error. The cap is enforced when a file is
  downloaded; files a closed reader leaves behind are evicted by the next download into the cache (or call
  :meth:`FileCache.trim`).
* **Local disk trouble is typed.** A full, read-only or unwritable ``cache_dir`` raises :class:`CacheError`
  (a :class:`~loader.errors.LarderError` and an ``OSError`` with the original ``errno``) naming the cache
  directory and the file; the partial download is removed.
* **Ahead of the reader.** :meth:`FileCache.prefetch` downloads files in the reader's order with
  ``io_threads`` parallel threads (started on first use, never in the constructor); the first
  :meth:`FileCache.get` without a prefetch order prefetches the rest of the version in manifest order.
  Copies of the cache in pool workers (pickled or forked) only fetch on demand: the process that owns the
  reader's plan prefetches for all of them, and the file locks make sure nothing is fetched twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from . import fs as lfs
from .cache_disk import _LOCAL_ERRNOS, META_DIR, SOURCE_NAME, Evictor, _hidden, _marker_matches, _remove_quietly
from .cache_prefetch import PrefetchQueue, _NoRoom
from .errors import CacheError, ConfigError, LarderError
from .locks import Flock, lock_fd
from .manifest import FileInfo
from .remote import RetryPolicy, download, fd_checksum

if TYPE_CHECKING:
    from .dataset import Dataset

log = logging.getLogger("loader.cache")


class FileCache(PrefetchQueue):
    """Copies a remote version's data files to local disk as they are used, and ahead of use.

    Args:
        cache_dir: The local cache directory (shared by all processes of a node).
        max_cache_bytes: Cap on the bytes of cached data files (None: no cap). A soft cap: files in use are
            never evicted, so the cache may exceed it while they are held. Enforced by an
            :class:`~loader.cache_disk.Evictor`, told which files this cache pins and which datasets it serves.
        io_threads: Parallel downloads for prefetching.
        pin_files: Files per process kept pinned (safe from eviction) after they were last handed out.
        auto_prefetch: Prefetch the rest of a version in manifest order when no order was given.
        retry: Retries of a whole download whose stream failed (default 3 attempts: the filesystem's own
            calls already retry each request, see :class:`loader.remote.RetryPolicy`).
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
        self.retry = retry or RetryPolicy(attempts=3)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._ahead: dict[str, int] = {}  # with a cap: prefetched (or in flight), not yet used: path -> size
        self._done_at: dict[str, int] = {}
        self._inflight = 0
        self._no_room = False  # a prefetch found no room under the cap: probe one at a time
        self._requeued: set[str] = set()  # put back in the queue for want of room (dropped once got)
        self._queue: list[tuple[Dataset, FileInfo]] = []
        self._pins: OrderedDict[str, int] = OrderedDict()  # path -> fd holding LOCK_SH
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._known: dict[tuple[str, str], Dataset] = {}
        self._prefetched_versions: set[tuple[str, str]] = set()
        self._evictor = Evictor(self.cache_dir, self.max_cache_bytes)
        self._quiet = threading.local()  # .on: this thread's gets start no prefetch (without_prefetch)
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

    def _open_verified(self, path: str, info: FileInfo, recheck: bool = False) -> int | None:
        """A descriptor holding a shared ``flock`` on a complete, verified copy at ``path``, or None.

        The lock is taken before anything is checked, so the copy cannot be evicted meanwhile; a copy that
        vanished or was replaced between the open and the lock counts as absent (it is fetched again).
        ``recheck`` recomputes the checksum even when the ``.ok`` marker vouches for the copy.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            lock_fd(fd, exclusive=False)
            st = os.fstat(fd)
            try:
                same = os.stat(path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if not same or st.st_size != info.size:
                os.close(fd)
                return None
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if not recheck and (self._verified.get(path) == key or _marker_matches(path, key, info.checksum)):
                self._verified[path] = key
                return fd
            if fd_checksum(fd) != info.checksum:
                log.warning("%s: cached copy fails its checksum; fetching it again", path)
                os.close(fd)
                return None
            self._mark_verified(path, info, key)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _mark_verified(self, path: str, info: FileInfo, key: tuple[int, int, int]) -> None:
        self._verified[path] = key
        tmp = _hidden(path, f"ok.{os.getpid()}.{threading.get_ident()}")
        try:  # only an optimisation (the next process skips the checksum): a full disk must not fail a read
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"key": list(key), "checksum": info.checksum}, f)
            os.replace(tmp, _hidden(path, "ok"))
        except OSError as e:
            log.info("%s: cannot write its verification marker (%s)", path, e)
            _remove_quietly(tmp)

    # ----------------------------------------------------------------- public
    def get(self, ds: Dataset, info: FileInfo) -> tuple[pafs.FileSystem, str]:
        """A verified local copy of ``info`` (fetched now if needed), pinned against eviction.

        A background prefetch of the file that failed (an outage since over) is forgotten: the file is
        fetched again here, with fresh retries.

        Raises:
            RemoteError: The remote file cannot be read (after retries).
            CorruptFileError: The remote file does not match the manifest.
            CacheError: The cache directory cannot hold the file (full, read-only).
        """
        self._check_fork()
        path = self.local_path(ds, info)
        with self._lock:
            self._known[(ds.name, ds.version)] = ds
            future = self._futures.get(path)
            start_auto = (self.auto_prefetch and not getattr(self._quiet, "on", False)
                          and (ds.name, ds.version) not in self._prefetched_versions)
        if start_auto:
            rest = [f for f in ds.files if f.path != info.path]
            self.prefetch(ds, rest)
        if future is not None:
            try:
                future.result()
            except Exception as e:  # fetched again below; a permanent failure is raised there, fresh
                log.info("%s: prefetch failed (%s); fetching it again", path, type(e).__name__)
        if not self._still_held(path):
            while True:
                _, fd = self._ensure(ds, info, path)
                if fd is not None:
                    self._hold(path, fd)
                    break
        self._touch(path)
        with self._lock:
            no_room, self._no_room = self._no_room, False
            if path in self._requeued:  # fetched on demand before its prefetch could start
                self._requeued.discard(path)
                self._queue = [(d, f) for d, f in self._queue if self.local_path(d, f) != path]
            if self._ahead.pop(path, None) is not None or no_room:
                self._pump()
        return pafs.LocalFileSystem(), path

    @contextlib.contextmanager
    def without_prefetch(self) -> Iterator[None]:
        """Within the block, this thread's :meth:`get` fetches only the file asked for and starts no prefetch
        (a reader's constructor reads a sample of one file without starting threads)."""
        self._quiet.on = True
        try:
            yield
        finally:
            self._quiet.on = False

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

    def fetch(self, ds: Dataset, info: FileInfo, progress=None, verify: bool = False) -> int:
        """Make sure ``info`` is cached (without pinning it); returns the bytes downloaded.

        ``verify`` recomputes the checksum of a cached copy even when its ``.ok`` marker vouches for it.
        """
        self._check_fork()
        with self._lock:
            self._known[(ds.name, ds.version)] = ds
        got, fd = self._ensure(ds, info, self.local_path(ds, info), progress=progress, recheck=verify)
        if fd is not None:
            os.close(fd)
        return got

    def discard(self, ds: Dataset, info: FileInfo) -> None:
        """Drop the cached copy of ``info`` and its marker: it failed a check while being read (rot that kept
        its size and mtime). The next :meth:`get` fetches it again from the remote storage, the master copy.

        A copy another process already replaced with a fresh download is left alone.
        """
        self._check_fork()
        path = self.local_path(ds, info)
        with self._lock:
            fd = self._pins.pop(path, None)
            self._ahead.pop(path, None)
            verified = self._verified.pop(path, None)
        if fd is not None:
            os.close(fd)
        with Flock(_hidden(path, "lock")) as held:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            if held is not None and verified is not None and (st.st_ino, st.st_size, st.st_mtime_ns) != verified:
                return  # not the copy that failed: someone fetched a fresh one meanwhile
            log.warning("%s: cached copy fails a check while being read; dropping it to fetch it again", path)
            _remove_quietly(path)
            _remove_quietly(_hidden(path, "ok"))

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

    def __del__(self):
        try:  # an abandoned cache (its reader gone) must not keep its pins: they block eviction
            if self._pid == os.getpid():
                for fd in self._pins.values():
                    os.close(fd)
                self._pins.clear()
        except Exception:  # interpreter shutdown, or a half-built object
            pass

    def __enter__(self) -> FileCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- downloading
    def _ensure(self, ds: Dataset, info: FileInfo, path: str, progress=None, blocking: bool = True,
                recheck: bool = False, strict: bool = False) -> tuple[int, int | None]:
        """Make sure a verified copy is at ``path``; returns ``(bytes downloaded, fd)``, where ``fd`` holds a
        shared ``flock`` on the copy (None only when ``blocking`` is False and another fetcher holds the file).

        The download reserves its room first (:meth:`Evictor.make_room`, counting the downloads in flight of
        every process); with ``strict`` (a prefetch) it is not started when the room cannot be made.

        Raises:
            _NoRoom: With ``strict``, the cache cannot make room for the file now.
            CacheError: The cache directory cannot hold the file; its partial download is removed.
        """
        fd = self._open_verified(path, info, recheck)
        if fd is not None:
            return 0, fd
        part = _hidden(path, "part")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with Flock(_hidden(path, "lock"), blocking=blocking) as held:
                if held is None:  # someone else fetches it
                    return 0, None
                fd = self._open_verified(path, info, recheck)
                if fd is not None:  # someone else fetched it (or it was good after all)
                    return 0, fd
                _remove_quietly(path)  # a bad copy (wrong size or checksum)
                self._write_source(ds)
                if not self._make_room(info.size, path, strict) and strict:
                    raise _NoRoom(path)
                try:
                    got = download(ds.fs, ds.file_path(info), part, size=info.size, checksum=info.checksum,
                                   where=ds.display(info), progress=progress, policy=self.retry)
                    # Locked before it gets its final name: no evictor can take it before it is handed out.
                    fd = os.open(part, os.O_RDONLY)
                    try:
                        lock_fd(fd, exclusive=False)
                        os.replace(part, path)
                        st = os.fstat(fd)
                        self._mark_verified(path, info, (st.st_ino, st.st_size, st.st_mtime_ns))
                    except BaseException:
                        os.close(fd)
                        raise
                finally:  # after the rename: an evictor meanwhile counts the file twice, never not at all
                    self._evictor.release(path)
        except OSError as e:
            if isinstance(e, LarderError) or e.errno not in _LOCAL_ERRNOS:
                raise
            _remove_quietly(part)
            raise CacheError(
                f"cache_dir {self.cache_dir} cannot hold {path} ({os.strerror(e.errno)}: {e.filename or path}); "
                "free space, or use a writable cache_dir", path, e.errno) from e
        with self._lock:
            self.fetched_bytes += got
            self.fetched_files += 1
        return got, fd

    def _write_source(self, ds: Dataset) -> None:
        target = os.path.join(self.cache_dir, ds.name, ds.version, SOURCE_NAME)
        if os.path.exists(target):
            return
        tmp = f"{target}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"url": lfs.display(ds.fs, ds.version_path), "path": ds.version_path, "dataset": ds.name,
                       "version": ds.version}, f)
        os.replace(tmp, target)

    # ----------------------------------------------------------------- pins, recency, eviction
    def _still_held(self, path: str) -> bool:
        """Whether this process pins a verified copy that is still the file at ``path`` (then nothing to do)."""
        with self._lock:
            fd, key = self._pins.get(path), self._verified.get(path)
            if fd is None or key is None:
                return False
            try:
                st = os.fstat(fd)
                if (st.st_ino, st.st_size, st.st_mtime_ns) != key or os.stat(path).st_ino != st.st_ino:
                    return False
            except FileNotFoundError:
                return False
            self._pins.move_to_end(path)
            return True

    def _hold(self, path: str, fd: int) -> None:
        """Keep ``fd`` (a shared ``flock`` on ``path``) as this process's pin of ``path``."""
        with self._lock:
            old = self._pins.pop(path, None)
            if old is not None:
                os.close(old)
            self._pins[path] = fd
            pinned = [p for p in self._pins if p not in self._ahead]
            for victim in pinned[: max(0, len(pinned) - self.pin_files)]:
                os.close(self._pins.pop(victim))

    def _touch(self, path: str) -> None:
        try:
            st = os.stat(path)
            os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))  # atime = recency; mtime unchanged
        except OSError:
            pass

    def trim(self, incoming: int = 0) -> None:
        """Evict files not in use until the cache is within ``max_cache_bytes`` (with room for ``incoming`` more
        bytes): abandoned partial downloads first, then least recently used files, those of versions without a
        remote copy last."""
        self._make_room(incoming)

    def _make_room(self, incoming: int, reserve: str | None = None, strict: bool = False) -> bool:
        with self._lock:
            datasets = list(self._known.values())
        self._evictor.max_cache_bytes = self.max_cache_bytes
        return self._evictor.make_room(incoming, pinned=lambda path: path in self._pins,  # atomic `in`
                                       datasets=datasets, reserve=reserve, strict=strict)


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


__all__ = ["META_DIR", "CacheError", "FileCache", "attach_cache"]
