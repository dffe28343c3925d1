"""PyTorch adapter: a larder cache as an ``IterableDataset`` of ready batches, and a ``DataLoader`` for it.

``import loader`` never imports torch; importing this module does (it is the torch adapter), with a clear
error if PyTorch is missing.

Batches come from :func:`loader.make_reader` already shuffled and batched, so the ``DataLoader`` runs with
``batch_size=None`` and only moves tensors. The forms of a batch (``dict[str, ...]``):

* fixed-width columns: 1-D tensors (``datetime64`` as ``int64``);
* variable-length lists, ``ragged="padded"`` (default): ``b[col]`` an ``(n, longest)`` tensor padded with
  ``pad_value`` and ``b[col + ".lengths"]`` an ``int64`` tensor; ``ragged="offsets"``: ``b[col]`` the flat
  values and ``b[col + ".offsets"]`` ``n + 1`` ``int64`` offsets;
* strings and binaries, ``strings="list"`` (default): a Python ``list`` of ``str`` / ``bytes`` (torch has no
  string tensors; this is the one per-row Python object in larder); ``strings="tensor"``: ``uint8`` tensors
  in the ``ragged`` form.

DataLoader workers: each worker reads a disjoint shard. With ``num_workers = K`` and the trainer's
``rank``/``world_size``, worker ``w`` reads as rank ``rank * K + w`` of ``world_size * K``; larder's plan
makes these shards disjoint, covering, and equal in batch count, so one pass yields every row exactly
once. The shard is a function of ``K``: resuming needs the same ``num_workers``. With ``drop_last=True`` each
worker, being a rank of its own, drops its own shard's remainder, so a pass yields fewer rows with workers than
without (320 rows, ``world_size=2``, ``batch_size=16``: 288 rows with ``num_workers=3``, all 320 with none).

Epochs: one pass over the loader is one epoch. ``set_epoch(e)`` before a pass picks epoch ``e``'s order (as
with ``DistributedSampler``); without it, each pass reads the epoch after the previous pass's, so the order
changes every pass and is deterministic for a given ``seed``. :class:`LarderDataLoader` keeps this true with
``persistent_workers=True``: its workers' dataset copies count their passes like the loader does, and when
``set_epoch`` or ``load_state_dict`` asks for anything else the loader restarts its workers. (A plain
``DataLoader`` cannot pass ``set_epoch`` to workers that are already running: with persistent workers each
pass reads the next epoch of the copies the workers started with; with non-persistent workers the copies
are made at every pass, so call ``set_epoch`` on the dataset before each pass.)

Resume: :class:`LarderDataLoader` keeps a resumable ``state_dict()`` by taking each worker's reader state
along with every batch it delivers. ``DataLoader`` takes batches from its workers round-robin, always
starting a pass at worker 0; a resumed pass therefore rotates the shards, so that worker 0 reads the shard
that was due next (the first one with the fewest batches delivered) and the batches come in exactly the
order of an uninterrupted run. Passes after the resumed one are not rotated, like the uninterrupted run.
Exact order needs ``DataLoader``'s default ``in_order=True``. A state taken after the last batch of epoch ``e``
is the start of epoch ``e + 1`` (its ``"epoch"``), so ``load_state_dict(s)`` then ``set_epoch(s["epoch"])``
resumes wherever ``s`` was taken. A state is refused (``StateError``) by a dataset of another rank or world size.
A resumed run plans every pass and shard with the windows of the run that saved the state (another
``memory_budget`` plans other windows): its reader states record them, or its ``"layout"`` when it has none.

DDP: every rank follows a dataset directory's ``CURRENT`` when its dataset is made; open a dataset that the
job may republish with :func:`pin_version_across_ranks` so that every rank reads rank 0's version.

``pool="process"`` (the reader's transform in worker processes; with ``num_workers=0`` only: a DataLoader worker may
not start processes, so there it reads with the thread pool, with a warning): the workers start
by importing the training script's imports (seconds with torch), so the dataset keeps the reader of a
finished pass, with its workers, for the next pass when that is the next epoch; ``close()`` stops it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

try:
    import torch
    from torch.utils.data import DataLoader
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("loader.torch needs PyTorch: pip install -e '.[torch]' in the larder checkout") from _e

from .errors import ConfigError, EmptyDatasetError, StateError
from .plan import size_text
from .reader import DEFAULT_MEMORY_BUDGET
from .torch_convert import as_tensors, pin, prepare, to_torch
from .torch_dataset import (  # noqa: F401 - RAGGED_FORMS, STRING_FORMS: importable from here as before
    RAGGED_FORMS,
    STATE_KEY,
    STRING_FORMS,
    LarderIterableDataset,
    _ended,
    _progress,
    _state_int,
)
from .torch_ranks import pin_version_across_ranks

MIN_WORKER_BUDGET = 64 << 20
"""The least of the default ``memory_budget`` that :func:`make_dataloader` gives each worker's reader. Below it a
budget no longer bounds the reader: it mixes 8 or more row groups, streamed in slices when they are block-sized, and
each of its 10 streams holds a read buffer and a page (up to 1 MiB) per Parquet column, about 50 MiB for 5 columns
whatever the budget (:func:`loader.sizes.stream_overhead`); a smaller budget only cuts thinner slices (slower) and
warns. So more than 4 workers take more than the default 256 MiB in all (a warning says so)."""


class _Collate:
    """LarderDataLoader's ``collate_fn`` (a class: it pickles for spawn): ``(reader state, out, deferred)`` per
    batch; ``out`` is ``fn(batch as tensors)``, or without ``fn`` the numpy batch (``deferred``: made tensors in
    the main process, which is cheaper through the worker queue)."""

    def __init__(self, fn=None):
        self.fn = fn

    def __call__(self, batch: dict) -> tuple:
        state = batch.pop(STATE_KEY)
        return (state, batch, True) if self.fn is None else (state, self.fn(as_tensors(batch)), False)


class LarderDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`LarderIterableDataset` with ``set_epoch`` and exact resume.

    One pass is one epoch: the epoch given by ``set_epoch``, else the one after the previous pass's.
    ``state_dict()`` records the epoch and, per worker shard, the reader state after the last batch this loader
    handed out; ``load_state_dict()`` makes the next pass continue from there, in the order of an uninterrupted
    run (see the module docstring). Resume needs the same ``num_workers``, ``rank`` and ``world_size``.

    ``persistent_workers=True`` works with both: the workers' dataset copies advance one epoch per pass as the
    loader does, and a pass that needs anything else (``set_epoch`` to another epoch, a loaded state) restarts
    the workers first.

    ``collate_fn`` (optional; runs where DataLoader runs it, in the workers if any) gets each batch exactly as
    the loader yields it without one: a ``dict`` of tensors (strings as lists), no internal keys, not yet
    pinned. It may return anything; with ``pin_memory`` the tensors in its result are pinned (inside dicts,
    lists, tuples, or objects with a ``pin_memory()`` method). State tracking does not depend on it.
    """

    def __init__(self, dataset: LarderIterableDataset, **kwargs):
        if not isinstance(dataset, LarderIterableDataset):
            raise ConfigError("LarderDataLoader needs a LarderIterableDataset")
        kwargs.setdefault("batch_size", None)
        if kwargs["batch_size"] is not None:
            raise ConfigError("batch_size: larder makes the batches; set it on the dataset, not the DataLoader")
        user_collate = kwargs.pop("collate_fn", None)
        if user_collate is not None and not callable(user_collate):
            raise ConfigError(f"collate_fn must be callable, got {type(user_collate).__name__}")
        kwargs["collate_fn"] = _Collate(user_collate)
        pin = bool(kwargs.pop("pin_memory", False))  # pinned here, after the tensors are made
        if pin and not torch.accelerator.is_available():
            warnings.warn("pin_memory=True but no accelerator is available: not pinning", stacklevel=3)
            pin = False
        super().__init__(dataset, **kwargs)
        if self.num_workers > 1:  # the workers' shards (the dataset checked its own): each must have batches
            k = self.num_workers
            try:
                dataset.check_reader(dataset.rank * k, dataset.world_size * k)
            except EmptyDatasetError as e:  # its message counts the workers' shards as ranks
                more = ", or the dataset's batch_size, or set drop_last=False" if "drop_last" in str(e) else ""
                raise EmptyDatasetError(
                    f"rank {dataset.rank} of {dataset.world_size} with num_workers={k}: each DataLoader worker reads "
                    f"a shard of its own ({dataset.world_size * k} in all), and one would be empty ({e}, counting "
                    f"the shards as ranks); lower num_workers{more}") from e
        dataset.with_state = True
        dataset.defer_tensors = True
        self._pin = pin
        self._pass: object | None = None  # token of the pass in progress (None between passes)
        self._pass_epoch = dataset.epoch
        self._states: dict[int, dict] = {}
        self._workers_next: int | None = None  # the epoch live persistent workers read on their next pass

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next pass (see :meth:`LarderIterableDataset.set_epoch`)."""
        self.dataset.set_epoch(epoch)
        self._pass = None

    def __len__(self) -> int:
        """Batches in one pass (all workers together); opens the manifest, reads no data."""
        ds: LarderIterableDataset = self.dataset
        k = max(1, self.num_workers)
        reader = ds.make_reader(ds.rank * k, ds.world_size * k)  # same count for every worker shard
        try:
            return k * reader.batches_per_epoch
        finally:
            reader.close()

    def __iter__(self):
        ds: LarderIterableDataset = self.dataset
        epoch, resume = ds._start(max(1, self.num_workers))  # a state at the end of an epoch: the next one
        ds.epoch, ds._resume = epoch, resume
        if self.persistent_workers and self._iterator is not None and (
            resume is not None or epoch != self._workers_next
        ):
            # The live workers' copies would read epoch self._workers_next from its start: start new workers,
            # which copy the dataset as it is now.
            self._iterator._shutdown_workers()
            self._iterator = None
        it = super().__iter__()  # workers get their copy of the dataset (and its resume states) here
        # This process's copy moves on as the workers' copies do (with num_workers=0 its __iter__ already did).
        ds.epoch, ds._resume = epoch + 1, None
        self._workers_next = epoch + 1
        token = self._pass = object()
        self._pass_epoch, self._states = epoch, dict(resume or {})
        return self._track(it, token)

    def _track(self, it, token: object) -> Iterator[Any]:
        for (rank, state), batch, deferred in it:
            if self._pass is token:
                self._states[rank] = state
            if deferred:
                batch = as_tensors(batch)
            yield pin(batch) if self._pin else batch
        if self._pass is token:  # the pass is complete: the next batch is the next pass's first
            self._pass = None

    def state_dict(self) -> dict:
        """Where the next batch comes from: epoch, worker layout and each shard's reader state.

        During a pass (or after a pass left unfinished): that pass's epoch and the reader states after the last
        batch handed out (after the epoch's last batch: the next epoch, no reader states). Between passes: the
        start of the next pass (or the state loaded for it). A state without reader states records the windows
        the run plans with (``"layout"``), which a resumed run keeps (reader states record them otherwise).
        """
        ds: LarderIterableDataset = self.dataset
        if self._pass is None:
            epoch, readers = ds.epoch, dict(ds._resume or {})
        else:
            epoch, readers = self._pass_epoch, dict(self._states)
            k = max(1, self.num_workers)
            if _ended(readers, range(ds.rank * k, ds.rank * k + k), epoch):  # after the epoch's last batch
                epoch, readers = epoch + 1, {}
        state = {
            "epoch": epoch,
            "rank": ds.rank,
            "world_size": ds.world_size,
            "num_workers": self.num_workers,
            "readers": readers,
        }
        if not readers:  # the windows the run plans with, which reader states record otherwise
            state["layout"] = ds.layout(ds.world_size * max(1, self.num_workers))
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue the next pass where ``state`` was taken (each shard's reader state is checked here).

        Args:
            state: A dict of :meth:`state_dict` (it survives a JSON round trip).

        Raises:
            StateError: The state is malformed, was taken with another worker layout, or a reader state
                does not fit this dataset (another version, other settings).
        """
        ds: LarderIterableDataset = self.dataset
        layout = (_state_int(state, "rank", 0), _state_int(state, "world_size", 1),
                  _state_int(state, "num_workers", 0))
        if layout != (ds.rank, ds.world_size, self.num_workers):
            raise StateError(
                f"state was taken with rank/world_size/num_workers {layout}, this loader has "
                f"{(ds.rank, ds.world_size, self.num_workers)}: shards differ, resume needs the same layout"
            )
        k = max(1, self.num_workers)
        shards = range(ds.rank * k, ds.rank * k + k)
        windows = ds._layout
        ds.load_state_dict(state)
        self._pass = None
        try:
            for rank, reader_state in ds._resume.items():  # fail here, not in a worker halfway through the pass
                if rank not in shards or _progress(reader_state, ds.epoch)[0] not in (0, 1):
                    raise StateError(f"state has a reader state for shard {rank} at epoch "
                                     f"{reader_state.get('epoch')!r}; this loader's shards are {list(shards)}, the "
                                     f"state's epoch {ds.epoch}")
                ds.make_reader(rank, ds.world_size * k, reader_state, ds.epoch).close()
        except BaseException:
            ds._resume, ds._layout = None, windows
            raise
        self._workers_next = None  # live persistent workers plan with the windows they started with: restart them


def make_dataloader(
    url: str | os.PathLike,
    batch_size: int = 100,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context=None,
    timeout: float = 0,
    persistent_workers: bool = False,
    collate_fn=None,
    **dataset_kwargs,
) -> LarderDataLoader:
    """A ``DataLoader`` of tensor batches from a larder cache.

    Args:
        url: Dataset directory, version directory or remote URL. A dataset directory's ``CURRENT`` is
            followed once, at construction: every pass and every worker reads that version (under DDP, see
            :func:`pin_version_across_ranks`).
        batch_size: Rows per batch.
        num_workers: DataLoader worker processes; each reads its own shard with its own reader, so the
            reader's ``memory_budget`` (default 256 MiB) is split between them unless given (a given one is each
            worker's), but not below 64 MiB a worker (:data:`MIN_WORKER_BUDGET`): more than 4 workers take more
            than 256 MiB in all, with a warning. Inside workers
            the reader uses ``pool="thread"`` (daemonic workers cannot start processes). The reader already
            reads, shuffles and converts in the background, so ``num_workers=0`` is usually fastest (on the
            2-core dev machine 2 workers cost ~2.5x the CPU per row: every batch is pickled through a pipe);
            use workers for heavy per-batch Python, or the reader's ``transform`` with ``pool="process"``.
        pin_memory, prefetch_factor, timeout, persistent_workers: As for ``DataLoader``
            (``persistent_workers`` keeps epochs and resume right; see :class:`LarderDataLoader`).
        multiprocessing_context: As for ``DataLoader`` (default: torch's, ``fork`` on Linux). Pass
            ``"forkserver"`` when the process has threads that make ``fork`` unsafe (TensorFlow imported, a
            Spark gateway, a running reader): a worker forked from such a process can crash. forkserver and
            spawn need the usual ``if __name__ == "__main__":`` guard in the training script.
        collate_fn: Called on each batch (a dict of tensors); may return anything (see :class:`LarderDataLoader`).
        **dataset_kwargs: Passed to :class:`LarderIterableDataset` (``rank``, ``world_size``, ``ragged``,
            ``strings``, ``epoch``, and the reader's ``columns``, ``shuffle``, ``seed``, ``transform``...).

    Returns:
        A :class:`LarderDataLoader`; each pass is the next epoch, or the one given by ``set_epoch(e)``.
    """
    if num_workers > 0 and dataset_kwargs.get("pool") == "process":
        warnings.warn("pool='process' inside DataLoader workers is not allowed; using pool='thread'", stacklevel=2)
        dataset_kwargs["pool"] = "thread"
    if num_workers > 1 and dataset_kwargs.get("memory_budget") is None:
        # Every worker runs its own reader: share the one budget, down to a floor per worker (MIN_WORKER_BUDGET).
        budget = max(MIN_WORKER_BUDGET, DEFAULT_MEMORY_BUDGET // num_workers)
        if budget * num_workers > DEFAULT_MEMORY_BUDGET:
            warnings.warn(
                f"num_workers={num_workers}: each DataLoader worker's reader gets memory_budget={budget} "
                f"({size_text(budget)}, the floor per worker: a reader's streams of block-sized row groups take about "
                f"that whatever its budget), "
                f"{size_text(budget * num_workers)} in all, more than the default {size_text(DEFAULT_MEMORY_BUDGET)}; "
                "pass memory_budget= (each worker's) to choose", UserWarning, stacklevel=2)
        dataset_kwargs["memory_budget"] = budget
    dataset = LarderIterableDataset(url, batch_size=batch_size, **dataset_kwargs)
    return LarderDataLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        multiprocessing_context=multiprocessing_context,
        timeout=timeout,
        persistent_workers=persistent_workers,
        collate_fn=collate_fn,
    )


__all__ = ["LarderDataLoader", "LarderIterableDataset", "as_tensors", "make_dataloader", "pin_version_across_ranks",
           "prepare", "to_torch"]
