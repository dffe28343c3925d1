"""The reader's pipeline: planned pieces -> pool reads -> window shuffle -> batch cuts -> pool finish -> queue.

One producer (a background thread started at the first ``next``, or the caller itself for the serial
pool) walks the epoch plans in order. It keeps a bounded number of piece reads in flight on the pool (one
stream of reads across epochs, so an epoch boundary does not stall), makes each window's pieces one
contiguous record batch, gathers each planned batch's rows from it in the order of the window's
permutation (one Arrow ``take`` per batch, vectorised; a batch may span two windows), and converts each
batch to numpy, sending it to the pool when there is a transform to run. Finished batches wait in a
bounded ready queue. Results are consumed in submission order, so the output does not depend on which
worker ran what. Errors from workers or the producer travel through the queue as data and are raised in
the consumer.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .errors import WorkerError
from .plan import EpochPlan, window_permutation
from .pools import Pool
from .tasks import ROW_COLUMN, ROW_GROUP_COLUMN, finish_batch, read_piece


@dataclass
class ReaderStats:
    """Counters and timings of a reader (times in seconds, summed over workers where they run in parallel).

    Attributes:
        batches: Batches handed to the consumer.
        rows: Rows in them.
        pieces: Row-group pieces read.
        decoded_rows: Rows decoded to read them (more than the rows read when sampling or sharding
            inside row groups).
        windows: Windows shuffled.
        read_seconds: Workers opening, reading and decoding pieces (I/O + decode).
        convert_seconds: Workers converting batches to numpy.
        transform_seconds: Workers running the user transform.
        shuffle_seconds: Producer concatenating and permuting windows.
        producer_wait_seconds: Producer waiting for workers (I/O, decode or transform not ready).
        consumer_wait_seconds: Consumer waiting for the ready queue (the trainer starved).
        first_batch_seconds: From the first ``next`` to the first batch.
        mixed_min: Fewest distinct row groups in a batch.
        mixed_max: Most distinct row groups in a batch.
    """

    batches: int = 0
    rows: int = 0
    pieces: int = 0
    decoded_rows: int = 0
    windows: int = 0
    read_seconds: float = 0.0
    convert_seconds: float = 0.0
    transform_seconds: float = 0.0
    shuffle_seconds: float = 0.0
    producer_wait_seconds: float = 0.0
    consumer_wait_seconds: float = 0.0
    first_batch_seconds: float | None = None
    mixed_min: int | None = None
    mixed_max: int | None = None
    _mixed_sum: int = field(default=0, repr=False)

    def add_mixed(self, distinct: int) -> None:
        """Record the distinct row groups of one delivered batch."""
        self._mixed_sum += distinct
        self.mixed_min = distinct if self.mixed_min is None else min(self.mixed_min, distinct)
        self.mixed_max = distinct if self.mixed_max is None else max(self.mixed_max, distinct)

    @property
    def mixed_row_groups_per_batch(self) -> float:
        """Mean distinct row groups per delivered batch (the mixing figure)."""
        return self._mixed_sum / self.batches if self.batches else 0.0

    def as_dict(self) -> dict:
        """The stats as a plain dict (with the mixing mean)."""
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out["mixed_row_groups_per_batch"] = self.mixed_row_groups_per_batch
        return out

    def format(self) -> str:
        """A small aligned table of the stats."""
        rows = []
        for k, v in self.as_dict().items():
            rows.append((k, "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass(frozen=True)
class Setup:
    """Everything the producer needs, fixed at construction.

    Attributes:
        key: Registry key of the reader's :class:`~loader.tasks.ReadContext`.
        plan: ``plan(epoch) -> EpochPlan`` for this rank.
        seed: The user's seed.
        shuffle: Permute windows.
        num_epochs: Epochs to run (None: forever).
        pieces_ahead: Piece reads kept in flight.
        batches_ahead: Batch finishes kept in flight.
        prefetch: Size of the ready queue, in batches.
        finish_in_pool: Send batches to the pool for conversion and the transform; without a transform the
            producer converts them itself (cheaper than a round trip through the pool).
        with_row_ids: Add ``_row_group`` / ``_row`` columns to batches.
        on_epoch: Called with each epoch's plan before its first read (e.g. to prefetch remote files).
    """

    key: str
    plan: Callable[[int], EpochPlan]
    seed: int
    shuffle: bool
    num_epochs: int | None
    pieces_ahead: int
    batches_ahead: int
    prefetch: int
    finish_in_pool: bool
    with_row_ids: bool = False
    on_epoch: Callable[[EpochPlan], None] | None = None


def _ahead(pool: Pool, tasks: Iterator[tuple], ahead: int, stats: ReaderStats) -> Iterator[tuple]:
    """Submit ``(meta, fn, *args)`` tasks keeping ``ahead`` in flight; yield ``(meta, result)`` in order."""
    pending: deque = deque()
    try:
        for meta, fn, *args in tasks:
            pending.append((meta, pool.submit(fn, *args)))
            while len(pending) >= ahead:
                meta0, handle = pending.popleft()
                t0 = time.perf_counter()
                result = handle.result()
                stats.producer_wait_seconds += time.perf_counter() - t0
                yield meta0, result
        while pending:
            meta0, handle = pending.popleft()
            t0 = time.perf_counter()
            result = handle.result()
            stats.producer_wait_seconds += time.perf_counter() - t0
            yield meta0, result
    finally:
        for _, handle in pending:
            handle.cancel()


def _piece_tasks(setup: Setup, epoch: int, batch: int, plans: deque) -> Iterator[tuple]:
    """Read tasks of every planned piece from position ``(epoch, batch)`` on, across epochs.

    Each epoch's plan is appended to ``plans`` before its first task, so the reads of the next epoch
    start while the last window of the current one is still being cut (no stall between epochs).
    """
    while setup.num_epochs is None or epoch < setup.num_epochs:
        plan = setup.plan(epoch)
        if setup.on_epoch is not None:
            setup.on_epoch(plan)
        if batch < plan.num_batches:
            first = plan.window_of_row(plan.batch_bounds[batch])
            last = plan.window_of_row(plan.batch_bounds[-1] - 1)
            plans.append((plan, batch, first))
            for w in plan.windows[first : last + 1]:
                for i, p in enumerate(w.pieces):
                    kept = plan.kept[p.group] if plan.kept is not None else None
                    yield ((epoch, w.index, i == len(w.pieces) - 1, p.group), read_piece, setup.key, epoch,
                           p.group, p.start, p.stop, kept)
        epoch, batch = epoch + 1, 0


class _Window(NamedTuple):
    """A buffered window: its rows as read, their stream order, stream offset, and the rows' sources.

    ``groups`` and ``ids`` are in stream order (already permuted), ``rows`` in read order.
    """

    rows: pa.RecordBatch | pa.Table
    perm: np.ndarray | None  # stream position -> row of ``rows`` (None: unshuffled, same order)
    first: int
    groups: np.ndarray  # global row group of each row
    ids: np.ndarray | None  # row of each row in its row group (only when the reader keeps row ids)

    @property
    def stop(self) -> int:
        return self.first + self.rows.num_rows


def _window(parts: list, setup: Setup, plan: EpochPlan, w_index: int, first: int, with_ids: bool,
            slabs: _Slabs | None = None) -> _Window:
    """Assemble a window's pieces ``(table, group, ids)``.

    A shuffled window is made contiguous (one copy, column by column, each column's pieces released as
    soon as it is copied), so each batch is then one Arrow ``take`` of its rows; an unshuffled window is
    kept as read and cut in zero-copy slices.
    """
    table = pa.concat_tables([t for t, _, _ in parts])
    groups = np.repeat(np.array([g for _, g, _ in parts], dtype=np.int64), [t.num_rows for t, _, _ in parts])
    ids = np.concatenate([i for _, _, i in parts]) if with_ids else None
    parts.clear()  # the window's table holds the pieces now: let _combine release them column by column
    perm = window_permutation(
        table.num_rows, setup.seed, plan.epoch, plan.rank, plan.world_size, w_index, setup.shuffle
    )
    if perm is not None and table.num_rows:
        schema, columns = table.schema, table.columns
        del table
        table = pa.RecordBatch.from_arrays(_combine(columns, slabs), schema=schema)
        groups = groups[perm]
        ids = ids[perm] if with_ids else None
    return _Window(table, perm, first, groups, ids)


class _Slabs:
    """Reusable byte buffers for the values of a window's large string / binary columns.

    Memory freed by Arrow and allocated again for the next window comes back from the operating system
    as fresh pages, which the kernel must fault in and zero (slow, and much slower when other processes
    compete for memory): the biggest column of every window is copied into one of these instead. A slab
    is reused only once no Arrow buffer refers to it any more (batches are copies, so that is when its
    window has been cut and dropped).
    """

    KEEP = 4  # windows alive at once: the one being built, the one being cut, and one spare

    def __init__(self):
        self._slabs: list[np.ndarray] = []

    def get(self, size: int) -> np.ndarray:
        """A free slab of at least ``size`` bytes (grown with headroom if none is large enough)."""
        free = [i for i in range(len(self._slabs)) if sys.getrefcount(self._slabs[i]) <= 2]  # list + argument
        for i in free:
            if len(self._slabs[i]) >= size:
                return self._slabs[i]
        slab = np.empty(size + size // 4, dtype=np.uint8)
        if free:
            self._slabs[free[0]] = slab
        elif len(self._slabs) < self.KEEP:
            self._slabs.append(slab)
        return slab


_SLAB_MIN_BYTES = 1 << 20  # smaller columns are concatenated by Arrow


def _combine(columns: list[pa.ChunkedArray], slabs: _Slabs | None = None) -> list[pa.Array]:
    """Make every column contiguous, one at a time, releasing each column's pieces once copied (peak
    memory: the window plus its largest column, not two windows). Large string / binary columns without
    nulls are copied into a reusable slab."""
    out = []
    for i, column in enumerate(columns):
        columns[i] = None
        if column.num_chunks == 1:
            out.append(column.chunk(0))
        else:
            out.append((slabs is not None and _into_slab(column, slabs)) or pa.concat_arrays(column.chunks))
        del column
    return out


def _into_slab(column: pa.ChunkedArray, slabs: _Slabs) -> pa.Array | None:
    """Concatenate a ``string`` / ``binary`` column without nulls into a slab (None if it does not apply)."""
    t = column.type
    if not (pa.types.is_binary(t) or pa.types.is_string(t)) or column.null_count:
        return None
    spans = []
    for chunk in column.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        spans.append((chunk, offsets))
    total = sum(int(o[-1]) - int(o[0]) for _, o in spans)
    if total < _SLAB_MIN_BYTES or total >= 2**31:
        return None
    slab = slabs.get(total)
    new_offsets = np.empty(len(column) + 1, dtype=np.int32)
    new_offsets[0] = 0
    pos, row = 0, 0
    for chunk, offsets in spans:
        a, b = int(offsets[0]), int(offsets[-1])
        if b > a:
            slab[pos : pos + b - a] = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[a:b]
        new_offsets[row + 1 : row + len(chunk) + 1] = offsets[1:] - a + pos
        pos, row = pos + b - a, row + len(chunk)
    return pa.Array.from_buffers(t, len(column), [None, pa.py_buffer(new_offsets), pa.py_buffer(slab[:total])])


def _cut(segments: deque, lo: int, hi: int, with_ids: bool) -> tuple[pa.RecordBatch | pa.Table, int]:
    """Rows ``[lo, hi)`` of the rank's stream from the buffered windows, and their distinct row groups.

    Shuffled windows are gathered with one Arrow ``take`` per batch (a batch-sized copy: the batch owns
    its memory, and a window is freed as soon as its last batch is cut), unshuffled ones sliced without
    a copy. With row ids, ``_row_group`` and ``_row`` columns are appended.
    """
    parts, groups, ids = [], [], []
    for w in segments:
        a, b = max(lo, w.first) - w.first, min(hi, w.stop) - w.first
        if a < b:
            parts.append(w.rows.slice(a, b - a) if w.perm is None else w.rows.take(pa.array(w.perm[a:b])))
            groups.append(w.groups[a:b])
            if with_ids:
                ids.append(w.ids[a:b])
    while segments and segments[0].stop <= hi:
        segments.popleft()  # fully consumed: free the window
    if len(parts) == 1:
        rows, group = parts[0], groups[0]
    else:
        rows = pa.concat_tables([p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts])
        group = np.concatenate(groups)
    if with_ids:
        rows = rows.append_column(ROW_GROUP_COLUMN, pa.array(group))
        rows = rows.append_column(ROW_COLUMN, pa.array(np.concatenate(ids) if len(ids) > 1 else ids[0]))
    return rows, int(np.unique(group).size)


def _batch_tasks(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats) -> Iterator[tuple]:
    """Yield ``(meta, fn, *args)`` finishing tasks of every batch from position ``(epoch, batch)`` on."""
    plans: deque = deque()
    plan = None
    with_ids = setup.with_row_ids
    slabs = _Slabs()
    for (ep, w_index, last_piece, group), (table, seconds, decoded, ids) in _ahead(
        pool, _piece_tasks(setup, epoch, batch, plans), setup.pieces_ahead, stats
    ):
        if plan is None or plan.epoch != ep:  # the first piece of an epoch: start cutting it
            plan, batch, first = plans.popleft()
            bounds, segments, parts = plan.batch_bounds, deque(), []
            end = plan.windows[first].first_row  # stream offset one past the last buffered row
        stats.pieces += 1
        stats.read_seconds += seconds
        stats.decoded_rows += decoded
        parts.append((table, group, ids))
        if not last_piece:
            continue
        t0 = time.perf_counter()
        window = _window(parts, setup, plan, w_index, end, with_ids, slabs)
        parts = []
        segments.append(window)
        end = window.stop
        stats.windows += 1
        stats.shuffle_seconds += time.perf_counter() - t0
        while batch < plan.num_batches and end >= bounds[batch + 1]:
            t0 = time.perf_counter()
            rows, distinct = _cut(segments, bounds[batch], bounds[batch + 1], with_ids)
            stats.shuffle_seconds += time.perf_counter() - t0
            yield (plan.epoch, batch, rows.num_rows, distinct), finish_batch, setup.key, plan.epoch, batch, rows
            batch += 1


def produce(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats) -> Iterator[tuple]:
    """Yield ``(epoch, index, rows, distinct_groups, batch_dict)`` from position ``(epoch, batch)`` on."""
    tasks = _batch_tasks(setup, pool, epoch, batch, stats)
    if setup.finish_in_pool:
        finished = _ahead(pool, tasks, setup.batches_ahead, stats)
    else:
        finished = ((meta, fn(*args)) for meta, fn, *args in tasks)
    for (e, index, n, distinct), (out, convert_s, transform_s) in finished:
        stats.convert_seconds += convert_s
        stats.transform_seconds += transform_s
        yield e, index, n, distinct, out


class Pipeline:
    """Runs :func:`produce` on a background thread into a bounded queue (inline for the serial pool).

    Args:
        setup: The producer's settings.
        pool: The worker pool (owned: closed with the pipeline).
        epoch: Epoch of the first batch.
        batch: Index of the first batch in that epoch.
        stats: Stats to update.
        on_close: Called once when the pipeline closes.
    """

    def __init__(self, setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats,
                 on_close: Callable[[], None] | None = None):
        self._setup, self._pool, self._stats = setup, pool, stats
        self._gen = produce(setup, pool, epoch, batch, stats)
        self._inline = pool.kind == "serial"
        self._queue: queue.Queue = queue.Queue(maxsize=setup.prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closed_from_producer = False
        self._on_close = on_close
        self._lock = threading.Lock()

    def _run(self) -> None:
        gen = self._gen
        try:
            for item in gen:
                if not self._put(("batch", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # travels to the consumer as data
            self._put(("error", e))
        finally:
            gen.close()
            if self._closed and self._thread is threading.current_thread() and self._closed_from_producer:
                self._pool.close()  # closed from this very thread (garbage collection): finish the job here
                if self._on_close is not None:
                    self._on_close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple:
        """The next ``(epoch, index, rows, distinct, batch)``; raises StopIteration at the end.

        Raises:
            Exception: Whatever a worker or the producer raised, with its original traceback.
        """
        if self._inline:
            return next(self._gen)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="larder-reader", daemon=True)
            self._thread.start()
        t0 = time.perf_counter()
        while True:
            try:
                kind, value = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise WorkerError("the reader's producer thread ended without a result") from None
        self._stats.consumer_wait_seconds += time.perf_counter() - t0
        if kind == "batch":
            return value
        if kind == "end":
            raise StopIteration
        raise value

    def close(self) -> None:
        """Stop the producer, then every worker; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is threading.current_thread():
            self._closed_from_producer = True
            return  # the producer closes the pool as it leaves
        if thread is not None:
            while thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    while True:
                        self._queue.get_nowait()
                except queue.Empty:
                    pass
                thread.join(0.1)
        elif self._inline:
            self._gen.close()
        self._pool.close()
        if self._on_close is not None:
            self._on_close()
