"""The process pool: worker processes for pure-Python transforms, data through shared memory.

:class:`ProcessPool` (``concurrent.futures.ProcessPoolExecutor`` on a ``forkserver`` context, ``spawn``
where there is none; never ``fork``, which is unsafe in a process with threads): for pure-Python
transforms. Arrow tables and record batches cross the process boundary as Arrow IPC streams written into
``multiprocessing.shared_memory`` segments, and the dicts of numpy arrays of one call or result as raw
buffers in one segment (only ``object`` arrays, e.g. ``strings="object"``, and ndarray subclasses such as
masked arrays are pickled), in both directions (:mod:`loader.shm`). Results are mapped copy-on-write into
the consumer (no copy, but for small arrays, copied out so that keeping them pins no segment:
``decode(copy_small=True)``; their segments unlinked at once). Arguments are written into segments the pool
reuses once their task is over (pages already in memory: no page faults on the consumer's side, which is
the process pool's bottleneck).
A worker maps its arguments copy-on-write too (no copy; writable, private); arrays its task returns
unchanged (the very objects, no page of theirs written: read from ``/proc/self/pagemap``) are not sent
back, the consumer still holds them. A segment whose arrays the task kept is never reused, so whatever a
worker keeps never changes. Where the page map cannot be read, workers copy their arguments out and
compare instead (also where a probe at start shows the page map does not tell written pages apart);
:meth:`ProcessPool.close` stops the workers (after their current task, then by signal), reads back or
unlinks every segment still outstanding, and removes any segment a killed worker left behind (names
carry a per-pool prefix made of ``lrd``, the consumer's pid and a random tag).
Workers ignore SIGINT: Ctrl-C reaches the consumer, whose ``close`` stops them (a close interrupted by a
second Ctrl-C is finished by the next, or when the pool is dropped). A worker exits by itself
when its consumer dies without closing the pool (SIGKILL, the OOM killer; checked twice a second).
Start cost: the fork server (started once per process, preloading larder's modules) forks each worker in
milliseconds, but every worker then imports the main module again (multiprocessing's preparation, which
lets transforms defined there unpickle; on Python 3.11 the fork server never preloads ``__main__``: it looks
for the key ``main_path``, the preparation data name it ``init_main_from_path``). A training script's own
imports are therefore paid by every worker of every pool: about 1 s with torch, 2.5-5 s with TensorFlow
on the 2-core VM (0.3 s for the first pool of a light script). The torch and tf adapters keep a process
pool's reader across passes so that this is paid once per run.

It has the interface of :mod:`loader.pools` (built by :func:`loader.pools.make_pool`); a task's exception is
re-raised by ``handle.result()`` as described there.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import secrets
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from multiprocessing.connection import wait
from typing import Any

from .errors import ConfigError, WorkerError
from .pools import Handle, Pool
from .procworker import mp_context, process_call, process_init
from .shm import decode, encode, new_segment, refs, sweep_orphans, unlink_quietly

log = logging.getLogger("loader.process_pool")

_MIN_SEGMENT = 64 << 10  # argument segments are at least this big, so small batches share sizes
_MAX_SPARE = 8  # argument segments kept for reuse per pool (a few more than the tasks in flight)...
_MAX_SPARE_BYTES = 128 << 20  # ...and bytes: shared memory is RAM


def _drop(segments: list) -> None:
    """Unlink and unmap segments this process created (emptying the list)."""
    while segments:
        seg = segments.pop()
        unlink_quietly(seg.name)
        try:
            seg.close()
        except BufferError:  # still viewed somewhere: unmapped when the view goes
            pass



def _broken(what: str, e: BaseException, pool: ProcessPool | None = None) -> WorkerError:
    """The error for a process pool whose worker died (or never started): names the dead workers (pid, exit
    code or signal) when known, and gives the hint about importing the main module only when the pool broke
    before any task completed (while its workers were starting)."""
    dead = pool._dead_workers() if pool is not None else ""
    text = f"{what}: {e}"
    if dead:
        text += f" ({dead})"
    if pool is None or not pool._any_done:
        text += (" (its own error, if any, is printed above; workers import the main module: a script that "
                 "starts a process-pool reader at import time needs an `if __name__ == '__main__':` guard, and a "
                 "script read from stdin or typed in an interactive session cannot be imported: use a file)")
    else:
        text += " (killed from outside, e.g. by the out-of-memory killer, or crashed: see above and the system log)"
    return WorkerError(text)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _ProcessHandle(Handle):
    def __init__(self, pool: ProcessPool, future: Future, lent: list[shared_memory.SharedMemory], args: tuple):
        # The pool weakly: the handles an interrupted close keeps must not keep it from being collected.
        self._pool, self._future, self._lent = weakref.ref(pool), future, lent
        self._args: tuple | None = args  # what the result may refer to (arrays returned unchanged)
        self._taken = False

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        try:
            try:
                reply = self._future.result()
            except BrokenProcessPool as e:
                self._release(reuse=False)
                raise _broken("a worker process of the process pool died", e, self._pool()) from e
            except BaseException:
                self._release(reuse=False)  # the failed task may still map them: never rewritten
                raise
            self._release(busy=reply.busy)
            return decode(reply.value, unlink=True, args=self._args, copy_small=True)
        finally:
            self._args = None
            pool = self._pool()
            if pool is not None:
                pool._forget(self)

    def _release(self, reuse: bool = True, busy: tuple[str, ...] = ()) -> None:
        """The task is over (done, or cancelled before it ran): give its argument segments back to the pool
        for reuse, except those a worker still maps (``busy``, or all unless ``reuse``), which are dropped:
        their memory lives on in the worker's mapping while it needs it."""
        if not self._taken:
            self._taken = True
            keep = [seg for seg in self._lent if reuse and seg.name not in busy]
            drop = [seg for seg in self._lent if not reuse or seg.name in busy]
            self._lent.clear()
            _drop(drop)
            pool = self._pool()
            if pool is not None:
                pool._give_back(keep)
            else:  # collected: nothing to give them back to
                _drop(keep)

    def discard(self) -> None:
        """Drop the result, unlinking its segments (used by ``close``)."""
        self._args = None
        self._future.cancel()
        if self._future.done() and not self._future.cancelled() and self._future.exception() is None:
            for ref in refs(self._future.result().value):
                unlink_quietly(ref.name)
        self._release(reuse=False)

    def cancel(self) -> bool:
        cancelled = self._future.cancel()
        if cancelled:  # never ran: its argument segments are free
            self._release()
        return cancelled


def _task_done(pool: weakref.ref, future: Future) -> None:
    """Note that a task completed; weakly, so that a task still running (after an interrupted close) does
    not keep its pool from being collected, which finishes the close."""
    owner = pool()
    if owner is not None and not future.cancelled() and future.exception() is None:
        owner._any_done = True


class ProcessPool(Pool):
    """A ``ProcessPoolExecutor`` (forkserver/spawn) with shared-memory transport, started at first ``submit``.

    Args:
        workers: Worker processes.
        initializer: Called once in every worker (must be importable by name).
        initargs: Its arguments (pickled once per worker).
        join_timeout: Seconds ``close`` waits for workers to finish their task before terminating them.
    """

    kind = "process"

    def __init__(
        self,
        workers: int,
        initializer: Callable | None = None,
        initargs: tuple = (),
        join_timeout: float = 5.0,
    ):
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._init = (initializer, initargs)
        self._join_timeout = join_timeout
        self._prefix = f"lrd{os.getpid():x}x{secrets.token_hex(2)}"  # short: macOS caps names at 31
        self._spare: list[shared_memory.SharedMemory] = []  # argument segments free for reuse, kept mapped
        self._executor: ProcessPoolExecutor | None = None
        self._handles: set[_ProcessHandle] = set()
        self._closed = False
        self._workers_seen: dict[int, Any] = {}  # pid -> multiprocessing Process, of every worker started
        self._any_done = False  # a task completed (so a broken pool is not a failure to start)
        self._stopping: list | None = None  # [executor, processes, handles, deadline] while a close is unfinished
        self._lock = threading.Lock()

    @property
    def segment_prefix(self) -> str:
        """Prefix of every shared-memory segment this pool creates."""
        return self._prefix

    def submit(self, fn: Callable, *args, urgent: bool = False) -> Handle:
        with self._lock:
            if self._closed:
                raise RuntimeError("submit on a closed pool")
            if self._executor is None:
                removed = sweep_orphans()  # what killed readers left (their resource tracker died with them)
                if removed:
                    log.info("removed %d shared-memory segments of killed readers", len(removed))
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=mp_context(),
                    initializer=process_init,
                    initargs=(self._prefix, os.getpid(), *self._init),
                )
            lent: list[shared_memory.SharedMemory] = []  # the argument segments (their names are not needed)
            try:
                encoded = encode(args, self._prefix, [], lambda size: self._lend(size, lent))
                future = self._executor.submit(process_call, fn, encoded)
            except BrokenProcessPool as e:  # a worker died before this task (e.g. it could not start)
                _drop(lent)
                raise _broken("the process pool is broken", e, self) from e
            except BaseException:
                _drop(lent)
                raise
            future.add_done_callback(functools.partial(_task_done, weakref.ref(self)))
            self._workers_seen.update(getattr(self._executor, "_processes", None) or {})
            handle = _ProcessHandle(self, future, lent, args)
            self._handles.add(handle)
            return handle

    def _lend(self, size: int, lent: list) -> shared_memory.SharedMemory:
        """An argument segment of at least ``size`` bytes: a spare one (its pages already in memory, so
        writing it costs no page faults) or a new one with some headroom. Called under ``self._lock``."""
        best = min((s for s in self._spare if s.size >= size), key=lambda s: s.size, default=None)
        if best is not None:
            self._spare.remove(best)
        else:
            best = new_segment(self._prefix, max(_MIN_SEGMENT, size + size // 4))
        lent.append(best)
        return best

    def _give_back(self, lent: list) -> None:
        """Keep a finished task's argument segments for reuse (up to ``_MAX_SPARE`` segments and
        ``_MAX_SPARE_BYTES``), release the rest."""
        drop = []
        with self._lock:
            held = sum(seg.size for seg in self._spare)
            for seg in lent:
                if not self._closed and len(self._spare) < _MAX_SPARE and held + seg.size <= _MAX_SPARE_BYTES:
                    self._spare.append(seg)
                    held += seg.size
                else:
                    drop.append(seg)
            lent.clear()
        _drop(drop)

    def _dead_workers(self) -> str:
        """Which workers died and how, e.g. ``worker pid 123 killed by signal 9 (SIGKILL)``: a worker the pool
        terminated itself after the breakage (SIGTERM) is named only when no other worker died."""
        executor = self._executor
        procs = dict(self._workers_seen)
        procs.update((getattr(executor, "_processes", None) or {}) if executor is not None else {})
        ended = {}
        for pid, p in procs.items():
            try:
                code = p.exitcode
                if code is None and wait([p.sentinel], 0):  # ended, but the executor's thread is reaping it
                    deadline = time.monotonic() + 0.5  # (its waitpid won; the code lands in p when it returns)
                    while code is None and time.monotonic() < deadline:
                        time.sleep(0.005)
                        code = p.exitcode
            except (AssertionError, ValueError, OSError):  # not ours to wait for, or closed
                continue
            if code is not None and code != 0:
                ended[pid] = code
        first = {pid: c for pid, c in ended.items() if c != -signal.SIGTERM} or ended
        return "; ".join(f"worker pid {pid} {_exit_text(c)}" for pid, c in sorted(first.items()))

    def _forget(self, handle: _ProcessHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    def processes(self) -> list:
        """The worker processes currently running (empty before the first ``submit``)."""
        executor = self._executor
        return list((getattr(executor, "_processes", None) or {}).values()) if executor else []

    def threads(self) -> list[threading.Thread]:
        """The executor's threads in this process (its manager, its call queue's feeder), empty before the first
        ``submit``: a pipeline closed on one of them (garbage collection) closes from another thread."""
        executor = self._executor
        if executor is None:
            return []
        found = (getattr(executor, "_executor_manager_thread", None),
                 getattr(getattr(executor, "_call_queue", None), "_thread", None))
        return [t for t in found if t is not None]

    def close(self) -> None:
        """Stop the workers (after their current task, for up to ``join_timeout`` seconds, then by signal), and
        remove every segment; idempotent. A close interrupted (a second Ctrl-C) lets the KeyboardInterrupt
        through and leaves its work to the next close, or to the pool's garbage collection: that one waits no
        more, it terminates the workers still running."""
        with self._lock:
            self._closed = True
            if self._executor is not None:
                executor, self._executor = self._executor, None
                procs = list((getattr(executor, "_processes", None) or {}).values())
                self._stopping = [executor, procs, list(self._handles), time.monotonic() + self._join_timeout]
                self._handles = set()
                self._workers_seen = {}  # their Process objects hold their sentinel fds
            elif self._stopping is not None:  # resuming an interrupted close
                self._stopping[3] = 0.0
            stopping = self._stopping
        _drop(self._spare)
        if stopping is None:
            return
        executor, procs, handles, deadline = stopping
        for h in handles:
            h.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        executor.shutdown(wait=True, cancel_futures=True)
        for h in handles:
            h.discard()
        for path in glob.glob(f"/dev/shm/{self._prefix}_*"):  # left by a killed worker (Linux)
            unlink_quietly(os.path.basename(path))
        self._stopping = None

    def __del__(self):
        if getattr(self, "_stopping", None) is not None:  # a close was interrupted: finish it
            self.close()


__all__ = ["ProcessPool"]
