"""The reader's pipeline: planned pieces -> pool reads -> window shuffle -> batch cuts -> pool finish -> queue.

One producer (a background thread started at the first ``next``, or the caller itself for the serial
pool) walks the epoch plans in order. It keeps a bounded number of piece reads in flight on the pool (one
stream of reads across epochs, so an epoch boundary does not stall) and assembles each window from its
pieces: small columns made contiguous, large string / binary columns kept as views over the pieces'
buffers. Each planned batch is then the window's rows in the order of the window's permutation (a batch
may span two windows), gathered with one Arrow ``take`` (plus one copy of the viewed bytes) and converted
to numpy. The gathers and conversions run in the thread workers, several consecutive batches per task
(gathered and converted together, then split), ahead of queued reads; with the serial pool the producer
does them. A process-pool reader does all of this on threads too (pyarrow releases the GIL) and sends only
the user transform to its worker processes, several consecutive batches per task, through shared memory.
Finished batches wait in a bounded ready queue. Results are consumed in submission order, so the output
does not depend on which worker ran what. Errors from workers or the producer travel through the queue as
data and are raised in the consumer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .dataset import Dataset
from .errors import WorkerError
from .plan import EpochPlan
from .pools import Pool
from .tasks import finish_batch, read_piece, transform_batches
from .window import assemble, cut, cut_and_finish, distinct, spans_of


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
        consumer_wait_seconds: Consumer waiting for the ready queue (the trainer starved); with the serial pool,
            the consumer producing each batch itself.
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
    _transformed: int = field(default=0, repr=False)  # batches whose transform time is in transform_seconds

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
        cut_in_pool: Send the cutting (the gather of a batch's rows from its windows), the conversion and
            the transform to the pool: thread pools, whose workers share the windows' memory (otherwise, the
            serial pool, the producer does it all).
        batches_per_task: Batches cut and finished by one task when ``cut_in_pool``.
        transform_apart: Run the user transform as a task of its own on the pipeline's transform pool (a
            process pool: pure-Python transforms in parallel), everything else on the main pool's threads.
        has_transform: The reader has a user transform: tasks then hold as many batches as its measured
            cost allows in about :data:`TASK_SECONDS` (one until it is measured), so a slow transform
            neither holds back the next batches nor the pool's close.
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
    cut_in_pool: bool = False
    batches_per_task: int = 1
    transform_apart: bool = False
    has_transform: bool = False
    with_row_ids: bool = False
    on_epoch: Callable[[EpochPlan], None] | None = None


@dataclass(frozen=True)
class PrefetchHint:
    """A :attr:`Setup.on_epoch`: tells a dataset's local file cache which files an epoch reads, in plan order."""

    dataset: Dataset
    locations: tuple[tuple[int, int], ...]

    def __call__(self, plan: EpochPlan) -> None:
        order = dict.fromkeys(self.locations[p.group][0] for w in plan.windows for p in w.pieces)
        self.dataset.prefetch([self.dataset.files[i] for i in order])


TASK_SECONDS = 0.05
"""A task that transforms several batches runs about this long at most."""


def _task_size(setup: Setup, stats: ReaderStats) -> int:
    """Batches in the next task: ``setup.batches_per_task``, fewer for a transform that is slow (or not yet
    measured), down to one."""
    if not setup.has_transform:
        return setup.batches_per_task
    if not stats._transformed:
        return 1
    per_batch = stats.transform_seconds / stats._transformed
    return max(1, min(setup.batches_per_task, int(TASK_SECONDS / max(per_batch, 1e-9))))


def _ahead(pool: Pool, tasks: Iterator[tuple], ahead: int, stats: ReaderStats, urgent: bool = False,
           wait_first: bool = False) -> Iterator[tuple]:
    """Submit ``(meta, fn, *args)`` tasks keeping ``ahead`` in flight; yield ``(meta, result)`` in order, each
    as soon as it is ready (a result is never held back to fill the lookahead). ``urgent`` tasks go ahead
    of the pool's queued ones; with ``wait_first`` the first result is awaited before more are submitted
    (the first batch is not queued behind read-ahead)."""
    pending: deque = deque()
    first = wait_first
    try:
        for meta, fn, *args in tasks:
            pending.append((meta, pool.submit(fn, *args, urgent=urgent)))
            while pending and (len(pending) >= ahead or pending[0][1].done() or first):
                first = False
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


def _batch_tasks(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats) -> Iterator[tuple]:
    """Yield ``(meta, fn, *args)`` finishing tasks of every batch from position ``(epoch, batch)`` on.

    With ``setup.cut_in_pool`` (thread pools) a task cuts its batches from the windows itself, so gathers run
    in parallel; otherwise the producer cuts and the task only converts (and transforms).
    """
    plans: deque = deque()
    plan = None
    with_ids = setup.with_row_ids
    started = False
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
        window = assemble(parts, setup, plan, w_index, end, with_ids)
        parts = []
        segments.append(window)
        end = window.stop
        stats.windows += 1
        stats.shuffle_seconds += time.perf_counter() - t0
        while batch < plan.num_batches and end >= bounds[batch + 1]:
            t0 = time.perf_counter()
            if setup.cut_in_pool:  # up to batches_per_task batches whose rows are buffered: one task
                group, metas = [], []
                limit = _task_size(setup, stats) if started else 1  # the very first batch alone: it comes sooner
                started = True
                while len(group) < limit and batch < plan.num_batches and end >= bounds[batch + 1]:
                    lo, hi = bounds[batch], bounds[batch + 1]
                    spans = spans_of(segments, lo, hi)
                    group.append((batch, spans, lo, hi))
                    metas.append((plan.epoch, batch, hi - lo, distinct(spans, lo, hi)))
                    batch += 1
                stats.shuffle_seconds += time.perf_counter() - t0
                yield (tuple(metas), cut_and_finish, setup.key, plan.epoch, tuple(group), with_ids,
                       not setup.transform_apart)
            else:
                lo, hi = bounds[batch], bounds[batch + 1]
                spans = spans_of(segments, lo, hi)
                meta = (plan.epoch, batch, hi - lo, distinct(spans, lo, hi))
                rows, _ = cut(spans, lo, hi, with_ids)
                del spans
                stats.shuffle_seconds += time.perf_counter() - t0
                yield meta, finish_batch, setup.key, plan.epoch, batch, rows
                batch += 1


def produce(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats,
            transform_pool: Pool | None = None) -> Iterator[tuple]:
    """Yield ``(epoch, index, rows, distinct_groups, batch_dict)`` from position ``(epoch, batch)`` on.

    With ``setup.transform_apart``, every batch finished on ``pool`` is transformed on ``transform_pool``
    (``setup.batches_ahead`` in flight), in order.
    """
    batches = _produce(setup, pool, epoch, batch, stats)
    if not setup.transform_apart:
        yield from batches
        return
    tasks = (((tuple(b[:4] for b in group), error), transform_batches, setup.key,
              tuple((e, index) for e, index, *_ in group), tuple(b[4] for b in group))
             for group, error in _groups(batches, lambda: _task_size(setup, stats)))
    for (metas, error), results in _ahead(transform_pool, tasks, setup.batches_ahead, stats):
        for (e, index, n, mixed), item in zip(metas, results, strict=False):
            if isinstance(item, BaseException):
                raise item
            out, transform_s = item
            stats.transform_seconds += transform_s
            stats._transformed += 1
            yield e, index, n, mixed, out
        if error is not None:
            raise error


def _groups(batches: Iterator[tuple], size: Callable[[], int]) -> Iterator[tuple[list, BaseException | None]]:
    """Consecutive batches in groups of ``size()`` (the first alone: it comes sooner). An error raised while a
    group is gathered ends the stream as data: ``(batches before it, error)``, so they are delivered first."""
    limit = 1
    while True:
        group = []
        try:
            while len(group) < limit:
                group.append(next(batches))
        except StopIteration:
            if group:
                yield group, None
            return
        except Exception as e:  # noqa: BLE001 - travels as data, raised by the consumer in order
            yield group, e
            return
        yield group, None
        limit = size()


def _produce(setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats) -> Iterator[tuple]:
    tasks = _batch_tasks(setup, pool, epoch, batch, stats)
    if setup.cut_in_pool:
        finished = _ahead(pool, tasks, setup.batches_ahead, stats, urgent=True, wait_first=True)  # before reads
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
                stats._transformed += bool(setup.has_transform and not setup.transform_apart)
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
        transform_pool: Where transforms run when ``setup.transform_apart`` (owned: closed with the pipeline).
    """

    def __init__(self, setup: Setup, pool: Pool, epoch: int, batch: int, stats: ReaderStats,
                 on_close: Callable[[], None] | None = None, transform_pool: Pool | None = None):
        self._setup, self._pool, self._stats = setup, pool, stats
        self._transform_pool = transform_pool
        self._gen = produce(setup, pool, epoch, batch, stats, transform_pool)
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
                self._close_pools()  # closed from this very thread (garbage collection): finish the job here
                if self._on_close is not None:
                    self._on_close()

    def _close_pools(self) -> None:
        try:
            if self._transform_pool is not None:
                self._transform_pool.close()
        finally:
            self._pool.close()

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
        if self._inline:  # the consumer produces the batch itself: all that time is its wait
            t0 = time.perf_counter()
            try:
                return next(self._gen)
            finally:
                self._stats.consumer_wait_seconds += time.perf_counter() - t0
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
        if thread is not None and threading.current_thread() in self._pool_threads():
            # On a worker (garbage collection runs on any thread): the producer may be waiting for this very
            # task, so waiting for the producer here would never end. Another thread closes.
            threading.Thread(target=self._finish_close, args=(thread,), name="larder-close", daemon=True).start()
            return
        self._finish_close(thread)

    def _pool_threads(self) -> list[threading.Thread]:
        """The threads of the pools (a thread pool's workers, a process pool's executor threads)."""
        pools = (self._pool, self._transform_pool)
        return [t for p in pools if p is not None for t in p.threads()]

    def _finish_close(self, thread: threading.Thread | None) -> None:
        try:
            if thread is not None:
                # The thread pool first: its queued tasks are dropped and only running ones are waited for (a
                # slow transform's queued batches would otherwise run first); the producer then ends at once.
                # (A process pool's replies may be in the producer's hands: it closes after the producer.)
                if self._pool.kind == "thread":
                    self._pool.close()
                while thread.is_alive():
                    try:  # unblock a producer waiting on a full queue
                        while True:
                            self._queue.get_nowait()
                    except queue.Empty:
                        pass
                    thread.join(0.1)
            elif self._inline:
                self._gen.close()
        finally:  # even when interrupted (a second Ctrl-C): no pool, worker or segment is left behind
            try:
                self._close_pools()
            finally:
                if self._on_close is not None:
                    self._on_close()
