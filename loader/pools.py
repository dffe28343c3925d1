"""Worker pools behind one small interface: ``submit(fn, *args) -> handle``, ``handle.result()``, ``close()``.

Three kinds, all starting nothing in their constructor (threads and processes start at the first
``submit``):

* :class:`SerialPool` runs each task in the caller's thread when its result is asked for (debugging:
  breakpoints and tracebacks are plain).
* :class:`ThreadPool` (worker threads with two queues: ``submit(..., urgent=True)`` tasks run first): pyarrow
  releases the GIL while reading, decoding and gathering, so threads scale for I/O and decode.
* :class:`~loader.process_pool.ProcessPool` (its own module, :mod:`loader.process_pool`): for pure-Python
  transforms, in worker processes that exchange Arrow data and numpy arrays through shared memory.

Exceptions: a task's exception is re-raised by ``handle.result()`` in the consumer. Threads and the
serial pool raise the original exception object with its original traceback; processes raise the original
type with the worker's formatted traceback attached as ``__cause__`` (``concurrent.futures``'s remote
traceback), or a :class:`~loader.errors.WorkerError` carrying that text when the exception cannot be
pickled or the worker process died.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .errors import ConfigError

POOL_KINDS = ("serial", "thread", "process")


class Handle:
    """The pending result of one task."""

    def result(self) -> Any:
        """Wait for the task and return its result, or raise its exception."""
        raise NotImplementedError

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if cancelled."""
        return False

    def done(self) -> bool:
        """True if the result is ready (``result()`` would not wait); lazy handles say False."""
        return False


class Pool:
    """Base of the pools: a context manager with ``submit`` and ``close``."""

    kind = "base"
    workers = 1

    def submit(self, fn: Callable, *args, urgent: bool = False) -> Handle:
        """Schedule ``fn(*args)`` (``urgent``: ahead of queued tasks, where the pool can); results are read
        back with ``handle.result()``."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop every worker and free every resource; idempotent."""

    def threads(self) -> list[threading.Thread]:
        """The pool's own threads in this process (none for the serial pool)."""
        return []

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DoneHandle(Handle):
    def __init__(self, fn: Callable, args: tuple):
        self._fn, self._args = fn, args
        self._done = False
        self._value: Any = None

    def result(self) -> Any:
        if not self._done:
            fn, args = self._fn, self._args
            self._fn = self._args = None
            self._value, self._done = fn(*args), True
        return self._value

    def cancel(self) -> bool:
        self._fn = self._args = None
        self._done = True
        return True


class SerialPool(Pool):
    """Runs tasks lazily in the caller's thread."""

    kind = "serial"

    def __init__(self, workers: int = 1, initializer: Callable | None = None, initargs: tuple = ()):
        self._init = (initializer, initargs)
        self._started = False

    def submit(self, fn: Callable, *args, urgent: bool = False) -> Handle:
        if not self._started:
            self._started = True
            if self._init[0] is not None:
                self._init[0](*self._init[1])
        return _DoneHandle(fn, args)


class _FutureHandle(Handle):
    def __init__(self, future: Future):
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        return self._future.result()

    def cancel(self) -> bool:
        return self._future.cancel()


class ThreadPool(Pool):
    """Worker threads started at the first ``submit``, serving urgent tasks before the others.

    Urgent tasks (the reader's batch finishing: gather, convert, transform) go ahead of queued ones (row
    group reads), so a finished window's batches reach the ready queue while the next window's reads wait
    their turn instead of the other way round. Within each class tasks run in submission order. A task's
    exception travels in its future and is re-raised, with its traceback, by ``handle.result()``.
    """

    kind = "thread"

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = ()):
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._init = (initializer, initargs)
        self._threads: list[threading.Thread] = []
        self._urgent: deque = deque()
        self._queued: deque = deque()
        self._cond = threading.Condition()
        self._closed = False

    def threads(self) -> list[threading.Thread]:
        """The worker threads started so far."""
        return list(self._threads)

    def submit(self, fn: Callable, *args, urgent: bool = False) -> Handle:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("submit on a closed pool")
            if not self._threads:
                if self._init[0] is not None:
                    self._init[0](*self._init[1])
                for i in range(self.workers):
                    t = threading.Thread(target=self._work, name=f"larder-worker_{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
            (self._urgent if urgent else self._queued).append((future, fn, args))
            self._cond.notify()
        return _FutureHandle(future)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._urgent or self._queued or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                future, fn, args = (self._urgent or self._queued).popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as e:  # travels to the consumer as data, traceback included
                future.set_exception(e)
                del e
            else:
                future.set_result(result)
            del future, fn, args

    def close(self) -> None:
        """Cancel queued tasks, let running ones finish, and join every worker thread; idempotent."""
        with self._cond:
            self._closed = True
            pending = [*self._urgent, *self._queued]
            self._urgent.clear()
            self._queued.clear()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for future, _, _ in pending:
            future.cancel()
        for t in threads:
            if t is not threading.current_thread():
                t.join()


def make_pool(kind: str, workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Pool:
    """Build a pool of ``kind`` (``"serial"``, ``"thread"`` or ``"process"``); nothing starts yet.

    Raises:
        ConfigError: Unknown kind or fewer than one worker.
    """
    if kind == "serial":
        return SerialPool(1, initializer, initargs)
    if kind == "thread":
        return ThreadPool(workers, initializer, initargs)
    if kind == "process":
        from .process_pool import ProcessPool  # the process machinery loads only when a process pool is asked for

        return ProcessPool(workers, initializer, initargs)
    raise ConfigError(f"pool must be one of {POOL_KINDS}, got {kind!r}")


__all__ = ["POOL_KINDS", "Handle", "Pool", "SerialPool", "ThreadPool", "make_pool"]
