"""The prefetch queue of :class:`loader.cache.FileCache`: downloads ahead of the reader, within a budget.

:meth:`FileCache.prefetch <loader.cache.FileCache.prefetch>` fills the queue; :class:`PrefetchQueue` starts its
downloads on ``io_threads`` threads while the budget allows (files in flight, and bytes fetched ahead of use
under ``max_cache_bytes``), and waits and retries when the cap is full of files in use. A part of
:class:`~loader.cache.FileCache`, whose state (``_queue``, ``_futures``, ``_ahead``...) it works on.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dataset import Dataset
    from .manifest import FileInfo

log = logging.getLogger("loader.cache")
_NO_ROOM_RETRY = 0.1  # seconds before a prefetch that found no room under the cap tries again


class _NoRoom(Exception):
    """A prefetch cannot start: the cache is full of files in use (it waits; a demand fetch would not)."""


class PrefetchQueue:
    """Starts :class:`~loader.cache.FileCache`'s queued prefetches and keeps their budget."""

    def _pump(self, *_ignored) -> None:
        """Start queued prefetches while the budget allows: at most ``2 × io_threads`` in flight (so exit never
        waits for a whole dataset) and, with ``max_cache_bytes``, at most half of it fetched ahead of use."""
        with self._lock:
            if self._pid != os.getpid():
                return
            limit = None if self.max_cache_bytes is None else self.max_cache_bytes // 2
            if limit is not None:
                self._release_used()
            while self._queue and self._inflight < (1 if self._no_room else 2 * self.io_threads):
                ds, info = self._queue[-1]
                if limit is not None and self._ahead and sum(self._ahead.values()) + info.size > limit:
                    return
                self._queue.pop()
                path = self.local_path(ds, info)
                self._requeued.discard(path)
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
                future.add_done_callback(lambda f, p=path: self._finished(p, f))

    def _finished(self, path: str, future: Future) -> None:
        with self._lock:
            self._inflight -= 1
            if not future.cancelled() and future.exception() is not None and self._futures.get(path) is future:
                # Forget a failed prefetch: get() fetches the file again instead of re-raising a stale error.
                del self._futures[path]
                self._ahead.pop(path, None)
                log.info("%s: prefetch failed (%s); it is fetched again when it is read", path,
                         type(future.exception()).__name__)
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
        try:
            _, fd = self._ensure(ds, info, path, blocking=False, strict=True)
            if fd is None:  # another process holds the download lock: wait for it
                _, fd = self._ensure(ds, info, path, strict=True)
        except _NoRoom:
            # The cap is full of files in use: put the file back in the queue and probe again a little later,
            # one prefetch at a time, until a file is used (or fetched on demand by get()).
            with self._lock:
                self._no_room = True
                self._ahead.pop(path, None)
                self._futures.pop(path, None)
                if self._executor is not None:  # not closed
                    self._queue.append((ds, info))
                    self._requeued.add(path)
            time.sleep(_NO_ROOM_RETRY)
            return
        with self._lock:
            self._no_room = False
            wanted = path in self._ahead
        if wanted and fd is not None:
            self._hold(path, fd)
            with self._lock:
                self._done_at[path] = time.time_ns()
        elif fd is not None:
            os.close(fd)
