"""``make_reader``: stream shuffled batches of numpy arrays from a published cache.

The reader opens the dataset from its manifest (no data file is touched until the first batch), plans
every epoch before any I/O (:mod:`loader.plan`), and runs the pipeline of :mod:`loader.pipeline` on a
serial, thread or process pool (:mod:`loader.pools`). Batches are dicts of numpy arrays in the forms of
:mod:`loader.convert`. ``state_dict`` / ``load_state_dict`` resume exactly (:mod:`loader.state`).

Memory: the decoded size of a row group is the manifest's (Parquet's uncompressed bytes) scaled by the
decoded bytes per manifest byte measured on the first rows of the selected columns (:mod:`loader.sizes`:
dictionary-encoded columns decode to many times their Parquet bytes, a few columns to a fraction of them).
A sixth of ``memory_budget`` goes to one shuffle window, so a window holds ``budget / 6 / row_group_bytes``
row groups (at most 64 unless ``shuffle_buffer`` asks for more). At the peak the reader holds about four
windows' worth: the reads in flight (one window ahead), the window being assembled (its small columns made
contiguous, its large string / binary columns kept as views over the pieces' own buffers, not copied), and
the previous window while its last batches are cut; the ready queue holds up to an eighth of the budget in
batches (at most 32: a deeper queue only added memory whose first touch costs CPU, bench: VmHWM 320 -> 284
MB, CPU per row no higher), and the batches being finished up to a quarter of it (at most ``max(4, 2 *
workers)`` tasks of up to a quarter of the queue each; :func:`batch_depths`). Both keep at least one batch:
a batch larger than the queue's share is allowed but warned about, and the few such batches in hand
(:attr:`BatchDepths.peak_batches`) then take memory beyond the budget.
Each batch is gathered from its window once (an Arrow ``take``, and for viewed columns one copy of the
rows' bytes straight from the pieces), in the thread pool's workers, so gathers run in parallel; the window
is never copied in shuffled order. Row groups larger than a window's share (the usual case for
block-sized row groups and a small budget) are streamed: each is decoded once, front to back, by a
``ParquetFile.iter_batches`` stream kept open between tasks (opened without pre-buffering), and each window
takes one slice from each of up to 10 such streams, so batches still mix row groups. Peak memory follows the
budget, never the dataset's size.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import secrets
import time
import warnings
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from . import fs as lfs
from . import streams, tasks
from .arguments import check_arguments, check_int, check_not_empty, select_columns
from .convert import check_keys
from .convert_ragged import batch_rows
from .dataset import Dataset, open_dataset
from .decoded import DecodedCache
from .errors import ConfigError, StateError
from .pipeline import Pipeline, PrefetchHint, ReaderStats, Setup
from .plan import EpochPlan, Planner, batch_depths, epoch_rows, num_batches, size_text
from .pools import make_pool
from .sizes import plan_layout, warn_about_streams
from .state import check_state, is_layout, make_state

DEFAULT_MEMORY_BUDGET = 256 << 20


class Closeable:
    """Closes on ``with`` exit and on garbage collection; subclasses define an idempotent ``close``."""

    def close(self) -> None:
        """Release every resource; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: S110 - nothing sensible to do at interpreter shutdown
            pass


class Reader(Closeable):
    """An iterator of batches over ``num_epochs`` epochs; build it with :func:`make_reader`.

    Iterating yields every batch of every epoch in order, then stops (``num_epochs=None``: never).
    Threads or processes start at the first ``next``; ``close()`` (or leaving a ``with`` block, or
    garbage collection) stops them.
    """

    def __init__(
        self,
        url,
        columns=None,
        batch_size: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        num_epochs: int | None = 1,
        workers: int | None = None,
        pool: str = "thread",
        shuffle_buffer: int | None = None,
        prefetch: int | None = None,
        transform: Callable | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        cache_dir=None,
        sample: float | None = None,
        memory_budget: int | None = None,
        ragged: str = "offsets",
        strings: str = "offsets",
        masks: bool = False,
        with_row_ids: bool = False,
        decoded_cache_dir: str | os.PathLike | None = None,
        max_decoded_bytes: int | None = None,
        **fs_options,
    ):
        check_arguments(batch_size=batch_size, seed=seed, num_epochs=num_epochs, world_size=world_size, rank=rank,
                         pool=pool, workers=workers, shuffle_buffer=shuffle_buffer, prefetch=prefetch,
                         memory_budget=memory_budget, sample=sample, transform=transform, ragged=ragged,
                         strings=strings)
        check_int("max_decoded_bytes", max_decoded_bytes, 0, allow_none=True)
        if decoded_cache_dir is not None and not isinstance(decoded_cache_dir, (str, os.PathLike)):
            raise ConfigError(f"decoded_cache_dir must be a path (str or os.PathLike) or None, got "
                              f"{type(decoded_cache_dir).__name__} {decoded_cache_dir!r}")
        for name, flag in (("shuffle", shuffle), ("drop_last", drop_last), ("masks", masks),
                           ("with_row_ids", with_row_ids)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ConfigError(f"{name} must be True or False, got {flag!r}")
        # Plain Python values (numpy scalars are accepted): the state and the plan stay JSON-able.
        batch_size, seed, rank, world_size = int(batch_size), int(seed), int(rank), int(world_size)
        shuffle, drop_last, masks, with_row_ids = bool(shuffle), bool(drop_last), bool(masks), bool(with_row_ids)
        sample = None if sample is None else float(sample)
        num_epochs = None if num_epochs is None else int(num_epochs)
        if fs_options and (isinstance(url, Dataset) or not lfs.is_remote(os.fspath(url))):
            raise ConfigError(
                f"make_reader got unexpected keyword arguments {sorted(fs_options)} (extra keywords are options "
                "of a remote URL's filesystem)"
            )
        self._owns_dataset = not isinstance(url, Dataset)
        if isinstance(url, Dataset):
            ds = url
        elif cache_dir is not None:
            ds = open_dataset(url, cache_dir=cache_dir, **fs_options)
        else:
            ds = open_dataset(url, **fs_options)
        self.dataset = ds
        self.columns = columns = select_columns(ds, columns, with_row_ids)
        check_keys(ds.schema, columns, ragged=ragged, strings=strings, masks=masks,  # row-id names refused above
                   with_row_ids=with_row_ids)
        sizes = ds.row_group_sizes()
        check_not_empty(ds, epoch_rows(sum(sizes), sample), rank, world_size, batch_size, drop_last, sample)

        budget = memory_budget or DEFAULT_MEMORY_BUDGET
        layout = plan_layout(ds, columns, budget=budget, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                             world_size=world_size, decoded_cache=decoded_cache_dir is not None)
        window, max_piece_rows = layout.window, layout.max_piece_rows
        if workers is None:
            workers = 1 if pool == "serial" else min(8, os.cpu_count() or 1)
        depths = batch_depths(budget, layout.row_bytes * batch_size, workers, pool, prefetch)
        if depths.over_budget:
            warnings.warn(
                f"batch_size={batch_size} makes batches of about {size_text(depths.batch_bytes)} (estimated from "
                f"the manifest and a decoded sample), more than the ready queue's share (an eighth) of "
                f"memory_budget={budget} ({size_text(budget)}): the reader keeps only {depths.prefetch} ready and "
                f"{depths.batches_ahead} being finished, but may still hold about "
                f"{size_text(depths.peak_batch_bytes)} of finished batches "
                f"({depths.peak_batches}) besides its reads and windows, past the budget; "
                "raise memory_budget or lower batch_size",
                UserWarning, stacklevel=3,
            )
        prefetch = depths.prefetch
        warn_about_streams(layout, budget=budget, batch_bytes=depths.peak_batch_bytes)

        self.batch_size, self.shuffle, self.seed, self.num_epochs = batch_size, shuffle, seed, num_epochs
        self.rank, self.world_size, self.drop_last, self.sample = rank, world_size, drop_last, sample
        self.window, self.max_piece_rows = window, max_piece_rows
        self._layout_inputs = (layout.window_bytes, layout.leaves)  # for a state's other windows (load_state_dict)
        self.pool_kind, self.workers, self.prefetch = pool, workers, prefetch
        self.transform = transform
        # Owned here; the read context (registered for the workers) refers to it weakly: see tasks.Transform.
        self._transform = None if transform is None else tasks.Transform(transform)
        self._sizes = sizes
        self._planner = Planner(tuple(sizes), seed, rank, world_size, batch_size, shuffle, sample, drop_last,
                                 window, max_piece_rows)
        rng_given = None if transform is None else tasks.rng_parameter(transform)  # how the transform takes its RNG
        self._ctx = tasks.ReadContext(
            key=f"reader-{os.getpid()}-{secrets.token_hex(6)}",
            dataset=ds,
            columns=tuple(columns),
            sizes=tuple(sizes),
            locations=tuple(ds.row_group_index()),
            seed=seed,
            rank=rank,
            world_size=world_size,
            **self._stream_settings(window, max_piece_rows),
            local_files=isinstance(ds.fs, pafs.LocalFileSystem) or getattr(ds, "file_cache", None) is not None,
            ragged=ragged,
            strings=strings,
            masks=masks,
            with_row_ids=with_row_ids,
            transform=None if transform is None else weakref.ref(self._transform),
            transform_takes_rng=rng_given is not None,
            transform_rng_by_keyword=rng_given == "keyword",
            decoded=None if decoded_cache_dir is None else DecodedCache.for_dataset(
                decoded_cache_dir, ds.manifest.dataset, ds.version,
                pa.schema([ds.schema.field(c) for c in columns]), max_decoded_bytes),
        )
        self._setup = Setup(
            key=self._ctx.key,
            plan=self._planner,
            seed=seed,
            shuffle=shuffle,
            num_epochs=num_epochs,
            pieces_ahead=self._pieces_ahead(window),
            batches_ahead=depths.batches_ahead,
            prefetch=prefetch,
            cut_in_pool=pool != "serial",
            batches_per_task=depths.batches_per_task,
            transform_apart=pool == "process" and transform is not None,
            has_transform=transform is not None,
            with_row_ids=with_row_ids,
            on_epoch=PrefetchHint(ds, self._ctx.locations) if getattr(ds, "file_cache", None) else None,
        )
        self.stats = ReaderStats()
        self._position = (0, 0)  # (epoch, batch) of the next batch the consumer gets
        self._pipeline: Pipeline | None = None
        self._started_at: float | None = None
        self._error: BaseException | None = None
        self._closed = False

    def __repr__(self) -> str:
        epoch, batch = self._position
        return (
            f"<Reader {self.dataset.name}@{self.dataset.version} rank {self.rank}/{self.world_size} "
            f"{self.batches_per_epoch} batches of {self.batch_size}/epoch, next epoch {epoch} batch {batch}, "
            f"pool={self.pool_kind} workers={self.workers} window={self.window}>"
        )

    # --- planning -----------------------------------------------------------------------------------

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's plan for ``epoch`` (pure; see :mod:`loader.plan`)."""
        return self._planner(epoch)

    @functools.cached_property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (the same on every rank); settings are fixed, so computed once
        (it is read for every batch)."""
        return num_batches(epoch_rows(sum(self._sizes), self.sample), self.world_size, self.batch_size,
                           self.drop_last)

    def __len__(self) -> int:
        if self.num_epochs is None:
            raise TypeError("a reader with num_epochs=None has no length")
        return self.batches_per_epoch * self.num_epochs

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._position[0]

    # --- iteration ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise StopIteration
        if self._pipeline is None:
            self._started_at = time.perf_counter()
            key = self._ctx.key
            tasks.install(self._ctx)  # for the producer and thread workers of this process
            # A process pool runs only the transform: reads, shuffles and conversions run on threads here.
            kind = "thread" if self.pool_kind == "process" else self.pool_kind
            pool = make_pool(kind, self.workers, tasks.install, (self._ctx,))
            apart = None
            if self._setup.transform_apart:
                apart = make_pool("process", self.workers, tasks.install, (self._ctx,))
            self._pipeline = Pipeline(self._setup, pool, *self._position, self.stats,
                                      on_close=lambda: tasks.uninstall(key), transform_pool=apart)
        try:
            epoch, index, rows, distinct, batch = self._pipeline.next()
            if self.stats.first_batch_seconds is None:
                self.stats.first_batch_seconds = time.perf_counter() - self._started_at
            self.stats.batches += 1
            self.stats.rows += rows if self.transform is None else batch_rows(batch)  # a transform may drop rows
            self.stats.add_mixed(distinct)
            # Last: an interruption before this line leaves the position at this batch, which comes again.
            self._position = (epoch, index + 1) if index + 1 < self.batches_per_epoch else (epoch + 1, 0)
        except StopIteration:
            self.close()
            raise
        except Exception as e:  # the reader stays failed: later calls raise the same error
            self._error = e
            self.close()
            raise
        except BaseException:  # Ctrl-C, SystemExit: stop every worker, then let it through
            # Not closed: the next call restarts the pipeline at the position of the next undelivered batch
            # (a notebook's training loop interrupted and run again continues where it stopped).
            pipeline = self._pipeline
            try:
                pipeline.close()  # interrupt-safe: its pools are closed even if a second Ctrl-C lands here
            finally:
                self._pipeline = None
            raise
        return batch

    def print_stats(self, file=None) -> None:
        """Print :attr:`stats` as a table."""
        print(self.stats.format(), file=file)

    # --- state ----------------------------------------------------------------------------------------

    def _config(self) -> dict:
        sample = None if self.sample is None or self.sample >= 1 else self.sample  # 1.0 keeps all rows, as None
        return {
            "seed": self.seed, "batch_size": self.batch_size, "shuffle": self.shuffle, "sample": sample,
            "drop_last": self.drop_last, "rank": self.rank, "world_size": self.world_size,
            "columns": self.columns, "window": self.window, "max_piece_rows": self.max_piece_rows,
        }

    def state_dict(self) -> dict:
        """A small JSON-able dict: where the next batch comes from, and what decides the batches."""
        epoch, batch = self._position
        return make_state(dataset=self.dataset.name, version=self.dataset.version, config=self._config(),
                          epoch=epoch, batch=batch)

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state``: the next batches are those an uninterrupted run would yield next.

        Raises:
            StateError: The state comes from another dataset or version, or from settings that give
                other batches (the key is named), or the position is past the end of an epoch, or past the
                reader's last epoch (``num_epochs``; a state taken after its last batch loads, and yields nothing).
        """
        layout = (self.window, self.max_piece_rows)
        saved = state.get("config") if isinstance(state, dict) else None
        window, pieces = (saved.get("window"), saved.get("max_piece_rows")) if isinstance(saved, dict) else layout
        if (window, pieces) != layout and is_layout(window, pieces):
            # The run that saved it planned other windows (another memory_budget, or an earlier larder's size
            # estimate): plan with its windows, so the batches are the ones it would have yielded next.
            self._use_layout(window, pieces)
        try:
            epoch, batch = self._check_state(state)
        except StateError:
            self._use_layout(*layout)
            raise
        if self._pipeline is not None:  # restart the pipeline at the new position
            self._pipeline.close()
            self._pipeline = None
        self._closed, self._error = False, None
        self._position = (epoch, batch)

    def _use_layout(self, window: int, max_piece_rows: int | None) -> None:
        """Plan windows of ``window`` pieces of at most ``max_piece_rows`` rows (None: whole row groups)."""
        if (window, max_piece_rows) == (self.window, self.max_piece_rows):
            return
        self.window, self.max_piece_rows = window, max_piece_rows
        self._planner = dataclasses.replace(self._planner, window=window, max_piece_rows=max_piece_rows)
        self._ctx = dataclasses.replace(self._ctx, **self._stream_settings(window, max_piece_rows))
        self._setup = dataclasses.replace(self._setup, plan=self._planner, pieces_ahead=self._pieces_ahead(window))

    def _stream_settings(self, window: int, max_piece_rows: int | None) -> dict:
        """The read context's settings that follow from the windows (:class:`loader.tasks.ReadContext`)."""
        window_bytes, leaves = self._layout_inputs
        return {"stream": max_piece_rows is not None,
                "stream_chunk_rows": max(1, min(streams.MAX_CHUNK_ROWS, max_piece_rows or 1)),
                "stream_buffer": streams.stream_buffer_for(window_bytes, window, leaves)}

    def _pieces_ahead(self, window: int) -> int:
        return max(self.workers, window) if self.pool_kind != "serial" else 1

    def _check_state(self, state) -> tuple[int, int]:
        """The position ``(epoch, batch)`` a state of this reader resumes at; changes nothing.

        Raises:
            StateError: As :meth:`load_state_dict`.
        """
        epoch, batch = check_state(state, dataset=self.dataset.name, version=self.dataset.version,
                                   config=self._config())
        if batch > self.batches_per_epoch:
            raise StateError(f"state key 'batch' is {batch}, but an epoch has {self.batches_per_epoch} batches")
        if self.num_epochs is not None and (epoch, batch) > (self.num_epochs, 0):  # the end itself: a finished run
            raise StateError(f"state key 'epoch' is {epoch}, past this reader's epochs 0..{self.num_epochs - 1} "
                             f"(num_epochs={self.num_epochs}: it would yield nothing); make it with num_epochs=None, "
                             "or one more than the state's epoch")
        return (epoch + 1, 0) if batch == self.batches_per_epoch else (epoch, batch)

    def set_epoch(self, epoch: int) -> None:
        """Continue from the first batch of ``epoch`` (like ``DistributedSampler.set_epoch``).

        Raises:
            ConfigError: ``epoch`` is not a non-negative integer, or not below ``num_epochs`` (the reader
                would yield nothing: it reads epochs ``0 .. num_epochs - 1``).
        """
        check_int("epoch", epoch, 0)
        if self.num_epochs is not None and epoch >= self.num_epochs:
            raise ConfigError(
                f"epoch {epoch} is past this reader's epochs 0..{self.num_epochs - 1} (num_epochs={self.num_epochs}: "
                "it would yield nothing); make it with num_epochs=None, or one more than the last epoch to read")
        self.load_state_dict(make_state(dataset=self.dataset.name, version=self.dataset.version,
                                        config=self._config(), epoch=epoch, batch=0))

    # --- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background thread and every worker, and the downloads ahead into a local file cache the
        reader opened (``cache_dir=``); idempotent."""
        self._closed = True
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()
        if getattr(self, "_owns_dataset", False) and getattr(self, "dataset", None) is not None:
            self.dataset.close()  # its file cache's downloads and its connections; a restarted reader reopens them


def fs_options_of(reader_kwargs: dict) -> dict:
    """The filesystem options among keyword arguments meant for :func:`make_reader` (those it does not name)."""
    named = inspect.signature(make_reader).parameters
    return {k: v for k, v in reader_kwargs.items() if k not in named}


def make_reader(url, columns=None, batch_size: int = 100, shuffle: bool = True, seed: int = 0,
                num_epochs: int | None = 1, workers: int | None = None, pool: str = "thread",
                shuffle_buffer: int | None = None, prefetch: int | None = None, transform: Callable | None = None,
                rank: int = 0, world_size: int = 1, drop_last: bool = False, cache_dir=None,
                sample: float | None = None, memory_budget: int | None = None, ragged: str = "offsets",
                strings: str = "offsets", masks: bool = False, with_row_ids: bool = False,
                decoded_cache_dir: str | os.PathLike | None = None, max_decoded_bytes: int | None = None,
                **fs_options) -> Reader:
    """Open a cache and return a :class:`Reader` of shuffled numpy batches.

    Example::

        with loader.make_reader("cache/shopping_category", columns=["title", "label"], batch_size=256,
                                num_epochs=None, rank=rank, world_size=world) as reader:
            for batch in reader:                       # {"title": uint8, "title.offsets": int64, "label": int32}
                train_step(batch)
                if step % 1000 == 0:
                    save(reader.state_dict())          # small JSON; load_state_dict() resumes exactly

    Args:
        url: A dataset directory (its ``CURRENT`` is followed), a version directory, a remote URL, or an
            opened :class:`~loader.dataset.Dataset`.
        columns: Columns to read (default: all).
        batch_size: Rows per batch.
        shuffle: Shuffle row groups and rows within windows each epoch (False: source order).
        seed: Seed of every random choice (0 is a seed like any other).
        num_epochs: Epochs to yield; None repeats forever.
        workers: Pool workers (default ``min(8, cpus)``; 1 for the serial pool).
        pool: ``"thread"`` (default), ``"process"`` (pure-Python transforms: the transform runs in
            ``workers`` worker processes, several batches per round trip through shared memory, while reads,
            shuffles and conversions run on threads of this process; without a transform it reads as
            ``"thread"`` and starts no process) or ``"serial"`` (debugging).
        shuffle_buffer: Rows shuffled together (rounded to whole row groups); default from the budget.
        prefetch: Ready batches kept ahead of the consumer; default from the budget (1 to 32).
        transform: ``transform(batch)`` or ``transform(batch, rng)`` on each batch dict, run in the
            workers; ``rng`` depends only on (seed, epoch, rank, world size, batch index). The RNG goes to
            a second positional parameter without a default, or one named ``rng`` (by keyword unless it is
            second; a positional-only ``rng`` after a parameter with a default is refused).
        rank: This trainer's rank in ``[0, world_size)``.
        world_size: Number of trainers sharing the epoch.
        drop_last: Only full batches (see :mod:`loader.plan` for the equal-batch-count rule).
        cache_dir: Local directory that keeps copies of remote files.
        sample: Fraction of rows per epoch in ``(0, 1]``, a different subset each epoch.
        memory_budget: Bytes for in-flight reads, the shuffle windows and the finished batches (256 MiB); a
            batch larger than an eighth of it warns (it is still read, counted past the budget).
        ragged: ``"offsets"`` or ``"padded"`` form of variable-length columns (:mod:`loader.convert`).
        strings: ``"offsets"`` (follow ``ragged``) or ``"object"`` arrays of str/bytes.
        masks: Add a ``col.valid`` mask for every nullable column.
        with_row_ids: Add ``_row_group`` (global row-group index) and ``_row`` (row in it) columns.
        decoded_cache_dir: Local directory keeping decoded row groups as checksummed Arrow IPC files
            (:mod:`loader.decoded`): epochs after the first, and later runs, map them instead of decoding
            Parquet. About the uncompressed size of the columns read; off by default.
        max_decoded_bytes: Most bytes ``decoded_cache_dir`` holds for this dataset version, whoever wrote them
            (every reader, pass, worker and process; :mod:`loader.decoded`); None: no cap.
        **fs_options: Options of the URL's filesystem.

    Raises:
        ConfigError: An argument is out of range (names it), e.g. batch_size <= 0, rank outside
            [0, world_size), sample outside (0, 1], an unknown pool.
        ColumnNotFoundError: A column is not in the schema (lists the available ones).
        EmptyDatasetError: The dataset, or a rank's share of an epoch, holds no rows or no batch.
        DatasetNotFoundError, ManifestError: The cache cannot be opened.
    """
    return Reader(url, columns=columns, batch_size=batch_size, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                  workers=workers, pool=pool, shuffle_buffer=shuffle_buffer, prefetch=prefetch, transform=transform,
                  rank=rank, world_size=world_size, drop_last=drop_last, cache_dir=cache_dir, sample=sample,
                  memory_budget=memory_budget, ragged=ragged, strings=strings, masks=masks,
                  with_row_ids=with_row_ids, decoded_cache_dir=decoded_cache_dir,
                  max_decoded_bytes=max_decoded_bytes, **fs_options)


__all__ = ["DEFAULT_MEMORY_BUDGET", "Closeable", "Reader", "ReaderStats", "make_reader"]
