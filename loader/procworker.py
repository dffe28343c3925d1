"""The worker side of the process pool (:class:`loader.process_pool.ProcessPool`): start-up, and running a task.

:func:`mp_context` is the multiprocessing context workers start in. :func:`process_init` sets a worker up
(SIGINT ignored: Ctrl-C is the consumer's; a thread that ends the worker when its consumer dies).
:func:`process_call` runs one task: it maps the task's argument segments copy-on-write (no copy; the task may
write them privately), calls the function, and encodes its result into shared memory, leaving out the
argument arrays the result returns unchanged (told by the page map: none of their pages written), which the
consumer still holds. A segment whose arrays the task kept is named in the reply, and the consumer never
rewrites it. Where the page map cannot be read, the arguments are copied out and compared instead.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import WorkerError
from .shm import WrittenPages, argument_arrays, decode, encode, unlink_quietly

_worker_prefix = ""  # segment-name prefix of this worker's pool (set by process_init)

_PARENT_POLL = 0.5  # seconds between a worker's checks that its consumer is still alive


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the pid: ours is gone
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): the signal check has to do
        return True


def _watch_consumer(pid: int) -> None:
    """End this worker when its consumer dies without closing the pool (SIGKILL, the OOM killer): a worker's
    parent is the fork server, which outlives the consumer, so nothing else would stop it, and the
    shared-memory segments in flight stay allocated until it exits (the resource tracker removes them then)."""
    while _alive(pid):
        time.sleep(_PARENT_POLL)
    os._exit(1)


_PRELOAD = "loader.tasks"  # imports pyarrow, numpy and the reader's tasks once, in the fork server


def mp_context() -> mp.context.BaseContext:
    """The forkserver context (preloading larder's worker modules, so workers fork in milliseconds; each then
    imports the main module, see :mod:`loader.process_pool`), or spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    if _PRELOAD not in current:  # add to, never replace, what the application asked to preload
        ctx.set_forkserver_preload([*current, _PRELOAD])
    return ctx


def process_init(prefix: str, consumer: int, initializer: Callable | None, initargs: tuple) -> None:
    global _worker_prefix
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle
    _worker_prefix = prefix
    threading.Thread(target=_watch_consumer, args=(consumer,), name="larder-watch-consumer", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


@dataclass(frozen=True)
class _Reply:
    """A worker's answer: the encoded result, and the argument segments the worker still maps (its task kept
    some of their arrays), which the consumer must not rewrite."""

    value: Any
    busy: tuple[str, ...] = ()


_pagemap: bool | None = None


def _pagemap_readable() -> bool:
    """Whether this process's page map tells the written pages of a copy-on-write mapping (cached).

    Checked on a two-page private mapping of a scratch file, one page read and one written: a platform
    whose page map is missing, unreadable or reports other flags (an emulated kernel) gets copies instead.
    """
    global _pagemap
    if _pagemap is None:
        _pagemap = _probe_pagemap()
    return _pagemap


def _probe_pagemap() -> bool:
    page = mmap.PAGESIZE
    try:
        with tempfile.TemporaryFile() as f:
            f.write(b"\1" * (2 * page))
            f.flush()
            m = mmap.mmap(f.fileno(), 2 * page, access=mmap.ACCESS_COPY)
    except OSError:
        return False
    try:
        view = np.frombuffer(m, dtype=np.uint8)
        address = view.ctypes.data
        read = int(view[0])  # page 0 read: still the file's page
        view[page] = 2  # page 1 written: now a private copy
        del view
        pages = WrittenPages.open([("probe", m)])
        if pages is None:
            return False
        try:
            return read == 1 and not pages.written(address, page) and pages.written(address + page, page)
        finally:
            pages.close()
    except (OSError, ValueError):
        return False
    finally:
        try:
            m.close()
        except BufferError:  # a view outlived an error above: unmapped when it goes
            pass


def process_call(fn: Callable, encoded_args: tuple) -> _Reply:
    """Run in a worker: decode the arguments, call ``fn``, encode its result.

    The arguments are private copy-on-write mappings of their segments (no copy; the task may write them)
    where this process can read its page map, else copies. Argument arrays that come back unchanged in the
    result (the very arrays, their pages never written, or equal to what was sent) are not sent back: the
    consumer still holds them. Segments whose mapping the task kept alive are named in the reply, so the
    consumer never rewrites them under the worker.
    """
    maps: list = []
    pages = None
    if _pagemap_readable():
        args = decode(encoded_args, unlink=False, maps=maps)
        pages = WrittenPages.open(maps)
    else:
        args = decode(encoded_args, unlink=False, copy=True)  # copied: the consumer reuses the segments
    known = argument_arrays(args, encoded_args, pages)  # before the task can replace them
    result = None
    try:
        try:
            result = fn(*args)
        except BaseException as e:
            try:
                pickle.loads(pickle.dumps(e))
            except Exception:
                text = "".join(traceback.format_exception(e))
                raise WorkerError(f"{type(e).__name__}: {e}\n\nworker traceback:\n{text}") from None
            raise
        segments: list[str] = []
        try:
            value = encode(result, _worker_prefix, segments, known=known)
        except BaseException:
            for name in segments:
                unlink_quietly(name)
            raise
    finally:
        del args, known, result
        if pages is not None:
            pages.close()
        busy = _unmap(maps)
    return _Reply(value, busy)


def _unmap(maps: list) -> tuple[str, ...]:
    """Unmap the argument mappings nothing refers to any more; return the names of the others."""
    busy = []
    for name, m in maps:
        try:
            m.close()
        except BufferError:  # the task kept some of its arguments: the mapping stays while they live
            busy.append(name)
    maps.clear()
    return tuple(busy)


__all__ = ["mp_context", "process_call", "process_init"]
