"""The reader's pipeline: planned pieces -> pool reads -> window shuffle -> batch cuts -> pool finish -> queue.

One producer (a background thread started at the first ``next``, or the caller itself for the serial
pool) walks the epoch plans in order. It keeps a bounded number of piece reads in flight on the pool (one
stream of reads across epochs, so an epoch boundary does not stall) and assembles each window from its
pieces: small columns made contiguous, large string / binary columns kept as views over the pieces'
buffers. Each planned batch is then the window's rows in the order of the window's permutation (a batch
may span two windows), gathered with one Arrow ``take`` (plus one copy of the viewed bytes) and converted
to numpy. On a thread pool the gathers and conversions run in the workers, several consecutive batches
per task (gathered and converted together, then split), ahead of queued reads; otherwise the producer
gathers, and converts unless there is a transform to run in the pool. Finished batches wait in a bounded
ready queue. Results are consumed in submission order, so the output does not depend on which worker ran
what. Errors from workers or the producer travel through the queue as data and are raised in the consumer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .convert import to_numpy
from .errors import WorkerError
from .plan import EpochPlan, window_permutation
from .pools import Pool
from .tasks import ROW_COLUMN, ROW_GROUP_COLUMN, finish_batch, read_piece, splittable, transform_batch
from .tasks import context as tasks_context


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
        shuffle_seconds: Producer assembling windows and cutting batches (the gathers themselves when the
            producer cuts).
        gather_seconds: Workers gathering batches' rows from their windows (thread pools).
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
    gather_seconds: float = 0.0
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
        cut_in_pool: Send the cutting (the gather of a batch's rows from its windows) to the pool too, with
            the conversion and transform: thread pools, whose workers share the windows' memory.
        batches_per_task: Batches cut and finished by one task when ``cut_in_pool``.
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
    cut_in_pool: bool = False
    batches_per_task: int = 1
    with_row_ids: bool = False
    on_epoch: Callable[[EpochPlan], None] | None = None


def _ahead(pool: Pool, tasks: Iterator[tuple], ahead: int, stats: ReaderStats,
           urgent: bool = False) -> Iterator[tuple]:
    """Submit ``(meta, fn, *args)`` tasks keeping ``ahead`` in flight; yield ``(meta, result)`` in order."""
    pending: deque = deque()
    try:
        for meta, fn, *args in tasks:
            pending.append((meta, pool.submit(fn, *args, urgent=urgent)))
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

    ``groups`` and ``ids`` are in stream order (already permuted), ``rows`` in read order. In a shuffled
    window, large string / binary columns are kept as one ``binary_view`` array over the pieces' own value
    buffers (``views`` holds their positions, ``schema`` the columns' real types): a batch gathers their
    bytes once, straight from the pieces, instead of a contiguous copy of the window being made first.
    """

    rows: pa.RecordBatch | pa.Table
    perm: np.ndarray | None  # stream position -> row of ``rows`` (None: unshuffled, same order)
    first: int
    groups: np.ndarray  # global row group of each row
    ids: np.ndarray | None  # row of each row in its row group (only when the reader keeps row ids)
    schema: pa.Schema | None = None  # the batch schema when ``rows`` holds view columns
    views: frozenset = frozenset()  # columns of ``rows`` held as binary views
    local: np.ndarray | None = None  # piece of each row, stream order (None: two pieces share a row group)

    @property
    def stop(self) -> int:
        return self.first + self.rows.num_rows

    def gather(self, a: int, b: int) -> pa.RecordBatch | pa.Table:
        """Rows ``a..b`` of the window's stream order: a zero-copy slice when unshuffled, else one gather
        per column (the batch owns its memory)."""
        if self.perm is None:
            return self.rows.slice(a, b - a)
        idx = self.perm[a:b]
        if not self.views:
            return self.rows.take(pa.array(idx))
        plain = [i for i in range(self.rows.num_columns) if i not in self.views]
        taken = iter(self.rows.select(plain).take(pa.array(idx)).columns if plain else ())
        columns = [
            _take_views(self.rows.column(i), idx, field.type) if i in self.views else next(taken)
            for i, field in enumerate(self.schema)
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


def _window(parts: list, setup: Setup, plan: EpochPlan, w_index: int, first: int, with_ids: bool) -> _Window:
    """Assemble a window's pieces ``(table, group, ids)``.

    A shuffled window is made contiguous column by column (each column's pieces released once copied),
    except for large string / binary columns, which become views of the pieces' buffers (no copy); each
    batch is then one gather of its rows. An unshuffled window is kept as read and cut in zero-copy slices.
    """
    table = pa.concat_tables([t for t, _, _ in parts])
    piece_groups = [g for _, g, _ in parts]
    sizes = [t.num_rows for t, _, _ in parts]
    groups = np.repeat(np.array(piece_groups, dtype=np.int64), sizes)
    # Pieces of distinct row groups (the usual case): a batch's distinct row groups are its distinct pieces,
    # counted with a bincount of small piece numbers instead of a sort.
    local = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes) if len(set(piece_groups)) == len(sizes) else None
    ids = np.concatenate([i for _, _, i in parts]) if with_ids else None
    parts.clear()  # the window's table holds the pieces now: let _combine release them column by column
    perm = window_permutation(
        table.num_rows, setup.seed, plan.epoch, plan.rank, plan.world_size, w_index, setup.shuffle
    )
    if perm is not None and table.num_rows:
        schema, columns = table.schema, table.columns
        del table
        combined, views = _combine(columns)
        groups = groups[perm]
        local = local[perm] if local is not None else None
        ids = ids[perm] if with_ids else None
        if views:
            rows = pa.RecordBatch.from_arrays(combined, names=schema.names)
            return _Window(rows, perm, first, groups, ids, schema, frozenset(views), local)
        return _Window(pa.RecordBatch.from_arrays(combined, schema=schema), perm, first, groups, ids, local=local)
    return _Window(table, perm, first, groups, ids, local=local)


_VIEW_MIN_BYTES = 1 << 20  # smaller columns are concatenated by Arrow (cheap), larger ones viewed
_BINARY_KINDS = {  # type id -> (zero-copy binary reinterpretation, its view type)
    pa.binary().id: (pa.binary(), pa.binary_view()),
    pa.string().id: (pa.binary(), pa.binary_view()),
    pa.large_binary().id: (pa.large_binary(), pa.binary_view()),
    pa.large_string().id: (pa.large_binary(), pa.binary_view()),
}


def _combine(columns: list[pa.ChunkedArray]) -> tuple[list[pa.Array], list[int]]:
    """One array per column, one column at a time, releasing each column's pieces once done (peak memory:
    the window plus its largest copied column, not two windows). Large string / binary columns without
    nulls become ``binary_view`` arrays over the pieces' value buffers; returns their positions too."""
    out, views = [], []
    for i, column in enumerate(columns):
        columns[i] = None
        viewed = _as_views(column)
        if viewed is not None:
            out.append(viewed)
            views.append(i)
        elif column.num_chunks == 1:
            out.append(column.chunk(0))
        else:
            out.append(pa.concat_arrays(column.chunks))
        del column
    return out, views


def _as_views(column: pa.ChunkedArray) -> pa.Array | None:
    """A multi-chunk string / binary column without nulls as one ``binary_view`` array that refers to the
    chunks' value buffers (only 16-byte views are written), or None where this does not apply. Strings
    are reinterpreted as binary first: a cast to ``string_view`` would re-validate their UTF-8."""
    kinds = _BINARY_KINDS.get(column.type.id)
    if kinds is None or column.num_chunks < 2 or column.null_count or column.nbytes < _VIEW_MIN_BYTES:
        return None
    plain, view = kinds
    return pa.concat_arrays([chunk.view(plain).cast(view) for chunk in column.chunks])


def _take_views(column: pa.Array, idx: np.ndarray, out_type: pa.DataType) -> pa.Array:
    """Rows ``idx`` of a ``binary_view`` array as a plain array of ``out_type`` (one copy of their bytes).

    The views (16 bytes per row, no nulls) are gathered with numpy, then Arrow's cast copies each row's
    bytes from whichever piece's buffer holds them into one new contiguous buffer.
    """
    buffers = column.buffers()
    views = np.frombuffer(buffers[1], dtype=np.uint64).reshape(-1, 2)[column.offset : column.offset + len(column)]
    taken = pa.Array.from_buffers(pa.binary_view(), len(idx), [None, pa.py_buffer(views[idx]), *buffers[2:]])
    plain = _BINARY_KINDS[out_type.id][0]
    out = taken.cast(plain)
    return out if plain == out_type else out.view(out_type)


def _cut(spans, lo: int, hi: int, with_ids: bool) -> tuple[pa.RecordBatch | pa.Table, np.ndarray]:
    """Rows ``[lo, hi)`` of the rank's stream from the buffered windows ``spans``, and their row groups.

    Shuffled windows are gathered (a batch-sized copy: the batch owns its memory, and a window is freed
    as soon as its last batch is cut), unshuffled ones sliced without a copy. With row ids, ``_row_group``
    and ``_row`` columns are appended.
    """
    parts, groups, ids = [], [], []
    for w in spans:
        a, b = max(lo, w.first) - w.first, min(hi, w.stop) - w.first
        if a < b:
            parts.append(w.gather(a, b))
            groups.append(w.groups[a:b])
            if with_ids:
                ids.append(w.ids[a:b])
    if len(parts) == 1:
        rows, group = parts[0], groups[0]
    else:
        rows = pa.concat_tables([p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts])
        group = np.concatenate(groups)
    if with_ids:
        rows = rows.append_column(ROW_GROUP_COLUMN, pa.array(group))
        rows = rows.append_column(ROW_COLUMN, pa.array(np.concatenate(ids) if len(ids) > 1 else ids[0]))
    return rows, group


def _spans(segments: deque, lo: int, hi: int) -> tuple[_Window, ...]:
    """The buffered windows holding rows of ``[lo, hi)``; windows wholly before ``hi`` leave ``segments``
    (freed once the batches that refer to them are cut)."""
    spans = tuple(w for w in segments if w.first < hi and w.stop > lo)
    while segments and segments[0].stop <= hi:
        segments.popleft()
    return spans


def _distinct(spans, lo: int, hi: int) -> int:
    """Distinct row groups among the rows ``[lo, hi)``."""
    if len(spans) == 1 and spans[0].local is not None:
        w = spans[0]
        return int(np.count_nonzero(np.bincount(w.local[lo - w.first : hi - w.first])))
    groups = [w.groups[max(lo, w.first) - w.first : min(hi, w.stop) - w.first] for w in spans]
    return int(np.unique(groups[0] if len(groups) == 1 else np.concatenate(groups)).size)


def cut_and_finish(key: str, epoch: int, group: tuple, with_ids: bool) -> list[tuple[dict, float, float, float]]:
    """Cut batches ``(index, windows, lo, hi)`` from their windows and finish each, in a thread worker (the
    windows are shared memory). The group's consecutive rows are gathered and converted once and split
    into the batches (exactly the per-batch forms, each batch its own disjoint part of the memory): one set
    of Arrow and numpy calls per task instead of per batch, which keeps the GIL free for the other workers.

    Returns one ``(batch, convert_s, transform_s, gather_s)`` per batch, in order; a batch that fails ends
    the list with its exception (raised by the consumer after the batches before it).
    """
    out: list = []
    if len(group) > 1 and splittable(key):
        try:
            t0 = time.perf_counter()
            spans = tuple({id(w): w for _, ws, _, _ in group for w in ws}.values())
            first, last = group[0][2], group[-1][3]
            rows, _ = _cut(spans, first, last, with_ids)
            t1 = time.perf_counter()
            ctx = tasks_context(key)
            whole = to_numpy(rows, ragged=ctx.ragged, strings=ctx.strings, masks=ctx.masks)
            parts = split_batch(whole, [lo - first for _, _, lo, _ in group] + [last - first])
            t2 = time.perf_counter()
        except Exception:  # noqa: BLE001 - redo batch by batch, so the failing batch is the one reported
            pass
        else:
            share = 1.0 / len(group)
            for (index, _, _, _), part in zip(group, parts, strict=True):
                try:
                    batch, transform_s = transform_batch(key, epoch, index, part)
                except Exception as e:  # the batches before it are delivered first, then this is raised
                    out.append(e)
                    break
                out.append((batch, (t2 - t1) * share, transform_s, (t1 - t0) * share))
            return out
    for index, spans, lo, hi in group:
        try:
            t0 = time.perf_counter()
            rows, _ = _cut(spans, lo, hi, with_ids)
            gathered = time.perf_counter() - t0
            out.append((*finish_batch(key, epoch, index, rows), gathered))
        except Exception as e:  # the batches before it are delivered first, then this is raised
            out.append(e)
            break
    return out


def split_batch(batch: dict[str, np.ndarray], bounds: list[int]) -> list[dict[str, np.ndarray]]:
    """Split a converted batch (offsets forms) at row ``bounds`` into the batches a per-batch conversion gives.

    Row-first arrays are sliced; ``col.offsets`` (rows -> values or items) and ``col.value_offsets`` (items ->
    values) are sliced and rebased to 0, and the flat values cut where the offsets say.
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in bounds[:-1]]
    for key, values in batch.items():
        if key.endswith(".value_offsets") or (key.endswith(".offsets") and key[:-8] in batch):
            continue  # handled with their column
        offsets = batch.get(key + ".offsets")
        if offsets is None:  # row-first: fixed-width, masks, object arrays, fixed-size lists
            for part, a, b in zip(out, bounds[:-1], bounds[1:], strict=True):
                part[key] = values[a:b]
            continue
        inner = batch.get(key + ".value_offsets")
        for part, a, b in zip(out, bounds[:-1], bounds[1:], strict=True):
            rows = offsets[a : b + 1]
            part[key + ".offsets"] = rows - rows[0]
            if inner is None:
                part[key] = values[rows[0] : rows[-1]]
            else:
                items = inner[rows[0] : rows[-1] + 1]
                part[key + ".value_offsets"] = items - items[0]
                part[key] = values[items[0] : items[-1]]
    return out


def _batch_tasks(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats) -> Iterator[tuple]:
    """Yield ``(meta, fn, *args)`` finishing tasks of every batch from position ``(epoch, batch)`` on.

    With ``setup.cut_in_pool`` (thread pools) a task cuts its batch from the windows itself, so gathers run
    in parallel; otherwise the producer cuts and the task only converts (and transforms).
    """
    plans: deque = deque()
    plan = None
    with_ids = setup.with_row_ids
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
        window = _window(parts, setup, plan, w_index, end, with_ids)
        parts = []
        segments.append(window)
        end = window.stop
        stats.windows += 1
        stats.shuffle_seconds += time.perf_counter() - t0
        while batch < plan.num_batches and end >= bounds[batch + 1]:
            t0 = time.perf_counter()
            if setup.cut_in_pool:  # up to batches_per_task batches whose rows are buffered: one task
                group, metas = [], []
                while len(group) < setup.batches_per_task and batch < plan.num_batches and end >= bounds[batch + 1]:
                    lo, hi = bounds[batch], bounds[batch + 1]
                    spans = _spans(segments, lo, hi)
                    group.append((batch, spans, lo, hi))
                    metas.append((plan.epoch, batch, hi - lo, _distinct(spans, lo, hi)))
                    batch += 1
                stats.shuffle_seconds += time.perf_counter() - t0
                yield tuple(metas), cut_and_finish, setup.key, plan.epoch, tuple(group), with_ids
            else:
                lo, hi = bounds[batch], bounds[batch + 1]
                spans = _spans(segments, lo, hi)
                meta = (plan.epoch, batch, hi - lo, _distinct(spans, lo, hi))
                rows, _ = _cut(spans, lo, hi, with_ids)
                del spans
                stats.shuffle_seconds += time.perf_counter() - t0
                yield meta, finish_batch, setup.key, plan.epoch, batch, rows
                batch += 1


def produce(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats) -> Iterator[tuple]:
    """Yield ``(epoch, index, rows, distinct_groups, batch_dict)`` from position ``(epoch, batch)`` on."""
    tasks = _batch_tasks(setup, pool, epoch, batch, stats)
    if setup.finish_in_pool or setup.cut_in_pool:
        finished = _ahead(pool, tasks, setup.batches_ahead, stats, urgent=True)  # batches before reads
    else:
        finished = ((meta, fn(*args)) for meta, fn, *args in tasks)
    for meta, result in finished:
        if setup.cut_in_pool:  # a task of several batches
            for (e, index, n, distinct), item in zip(meta, result, strict=False):
                if isinstance(item, BaseException):
                    raise item
                out, convert_s, transform_s, gather_s = item
                stats.convert_seconds += convert_s
                stats.transform_seconds += transform_s
                stats.gather_seconds += gather_s
                yield e, index, n, distinct, out
        else:
            (e, index, n, distinct), (out, convert_s, transform_s) = meta, result
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
