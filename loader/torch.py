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
once. The shard is a function of ``K``: resuming needs the same ``num_workers``.

Epochs follow ``DistributedSampler``: one pass over the loader is one epoch, and ``set_epoch(e)`` before the
pass picks epoch ``e``'s order. :class:`LarderDataLoader` keeps a resumable ``state_dict()`` by taking each
worker's reader state along with every batch it delivers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("loader.torch needs PyTorch: pip install 'larder[torch]'") from _e

from .convert import to_padded
from .errors import ConfigError, StateError
from .reader import DEFAULT_MEMORY_BUDGET, make_reader

RAGGED_FORMS = ("padded", "offsets")
STRING_FORMS = ("list", "tensor")
STATE_KEY = "_larder_state"
MIN_WORKER_BUDGET = 64 << 20


def to_torch(batch: dict[str, np.ndarray], ragged: str = "padded", pad_value: Any = 0) -> dict[str, Any]:
    """Convert one reader batch (dict of numpy arrays, ragged columns as values + offsets) to tensors.

    Args:
        batch: A batch of :func:`loader.make_reader` with ``ragged="offsets"``.
        ragged: ``"padded"``: each ``col`` + ``col.offsets`` pair becomes an ``(n, longest)`` tensor padded
            with ``pad_value`` and ``col.lengths``; a two-level column (``col.value_offsets``: lists of
            strings or of lists) becomes ``(n, most items, longest item)`` with ``col.lengths`` and
            ``col.value_lengths`` (``(n, most items)``). ``"offsets"``: kept as values + offsets.
        pad_value: Fill value of the padding.

    String/object arrays become lists (a list of strings per row for ``list<string>``). Read-only arrays
    (zero-copy views of Arrow memory) are copied, so the tensors are safe to modify.
    """
    return as_tensors(prepare(batch, ragged, pad_value))


def prepare(batch: dict[str, np.ndarray], ragged: str = "padded", pad_value: Any = 0) -> dict[str, Any]:
    """Everything :func:`to_torch` does except making tensors: padding, and strings to lists."""
    batch = to_padded(batch, pad_value) if ragged == "padded" else dict(batch)
    for key, value in batch.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "O":  # str/bytes, or an array of them per row
            batch[key] = [v.tolist() if isinstance(v, np.ndarray) else v for v in value.tolist()]
        elif isinstance(value, np.ndarray) and value.dtype.kind in "US":
            batch[key] = value.tolist()
    return batch


def as_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """Numpy arrays to tensors (zero-copy unless read-only or strided); anything else as is."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "mM":
                value = value.view(np.int64)
            if not value.flags.writeable or not value.flags.c_contiguous:
                value = np.array(value, order="C")
            value = torch.from_numpy(value)
        out[key] = value
    return out


def _passthrough(item):
    """DataLoader ``collate_fn`` for ready batches (a module function so it pickles for spawn)."""
    return item


def _default_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class LarderIterableDataset(IterableDataset):
    """A larder cache as an ``IterableDataset`` yielding ready batches of tensors.

    Use with ``DataLoader(ds, batch_size=None)`` (or :func:`make_dataloader`); every DataLoader worker
    reads its own shard (see the module docstring).

    Args:
        url: Dataset directory, version directory or remote URL.
        batch_size: Rows per batch (batches are made by the reader, not by the DataLoader).
        rank: This trainer's rank; default: ``torch.distributed``'s rank if initialised, else 0.
        world_size: Number of trainers; default: ``torch.distributed``'s world size, else 1.
        ragged: ``"padded"`` or ``"offsets"`` form of variable-length lists.
        strings: ``"list"`` (Python ``str``/``bytes``) or ``"tensor"`` (``uint8`` in the ``ragged`` form).
        pad_value: Fill value of padded lists.
        epoch: The first epoch to read (see :meth:`set_epoch`).
        **reader_kwargs: Passed to :func:`loader.make_reader` (``columns``, ``shuffle``, ``seed``,
            ``transform``, ``workers``, ``pool``, ``drop_last``, ``cache_dir``...). ``num_epochs`` is not
            accepted: one pass is one epoch.

    Raises:
        ConfigError: An argument is invalid (names it).
    """

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        batch_size: int = 100,
        rank: int | None = None,
        world_size: int | None = None,
        ragged: str = "padded",
        strings: str = "list",
        pad_value: Any = 0,
        epoch: int = 0,
        **reader_kwargs,
    ):
        super().__init__()
        if ragged not in RAGGED_FORMS:
            raise ConfigError(f"ragged must be one of {RAGGED_FORMS}, got {ragged!r}")
        if strings not in STRING_FORMS:
            raise ConfigError(f"strings must be one of {STRING_FORMS}, got {strings!r}")
        if "num_epochs" in reader_kwargs:
            raise ConfigError("num_epochs: one pass over a LarderIterableDataset is one epoch; use set_epoch()")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if (rank is None) != (world_size is None):
            raise ConfigError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = _default_rank()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, world_size={world_size})")
        self.url = os.fspath(url)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.ragged, self.strings, self.pad_value = ragged, strings, pad_value
        self.reader_kwargs = reader_kwargs
        self.epoch = 0
        self.set_epoch(epoch)
        # Set by LarderDataLoader: deliver the reader state with every batch, and numpy arrays that the
        # loader turns into tensors in the main process (pickling a few hundred KB through the worker queue
        # costs far less than torch's per-tensor shared-memory file descriptors).
        self.with_state = False
        self.defer_tensors = False
        self._resume: dict[int, dict] | None = None
        self._reader = None

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next pass (call before each pass, as with ``DistributedSampler``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)`` this process reads as: the trainer's rank composed with the worker id."""
        info = get_worker_info()
        if info is None:
            return self.rank, self.world_size
        return self.rank * info.num_workers + info.id, self.world_size * info.num_workers

    def make_reader(self, rank: int, world_size: int, resume: dict | None = None):
        """The reader of one shard of the current epoch, positioned at its start (or at ``resume``)."""
        reader = make_reader(
            self.url,
            batch_size=self.batch_size,
            rank=rank,
            world_size=world_size,
            num_epochs=self.epoch + 1,
            ragged="offsets",  # padded here, with pad_value
            strings="object" if self.strings == "list" else "offsets",
            **self.reader_kwargs,
        )
        try:
            if resume is None:
                reader.set_epoch(self.epoch)  # a reader starts at epoch 0
            else:
                reader.load_state_dict(resume)
        except BaseException:
            reader.close()
            raise
        return reader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.shard()
        # Taken now (not when the generator starts) so a DataLoader can clear it once workers have copies.
        resume = (self._resume or {}).get(rank)
        return self._batches(rank, world, resume, self.with_state, self.defer_tensors)

    def _batches(
        self, rank: int, world: int, resume: dict | None, with_state: bool, defer_tensors: bool
    ) -> Iterator[dict[str, Any]]:
        reader = self.make_reader(rank, world, resume)
        self._reader = reader
        try:
            for batch in reader:
                out = prepare(batch, self.ragged, self.pad_value)
                if not defer_tensors:
                    out = as_tensors(out)
                if with_state:
                    out[STATE_KEY] = (rank, reader.state_dict())
                yield out
        finally:
            self._reader = None
            reader.close()

    def state_dict(self) -> dict:
        """The live reader's state (``num_workers=0`` only; use :class:`LarderDataLoader` for workers).

        Raises:
            StateError: No pass is in progress in this process.
        """
        if self._reader is None:
            raise StateError("no pass in progress: state_dict() needs a running iteration (or LarderDataLoader)")
        return {"epoch": self.epoch, "readers": {self.shard()[0]: self._reader.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        """Resume the next pass from a state of :meth:`state_dict` or :meth:`LarderDataLoader.state_dict`.

        Raises:
            StateError: The state is malformed.
        """
        try:
            epoch, readers = int(state["epoch"]), {int(k): v for k, v in state["readers"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateError(f"not a larder torch state: {e!r}") from e
        self.set_epoch(epoch)
        self._resume = readers


class LarderDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`LarderIterableDataset` with ``set_epoch`` and exact resume.

    ``state_dict()`` records, per worker shard, the reader state after the last batch this loader handed
    out; ``load_state_dict()`` makes the next pass continue from there. Resume needs the same
    ``num_workers``, ``rank`` and ``world_size``, and ``persistent_workers=False`` (workers must be
    started after the state is loaded).
    """

    def __init__(self, dataset: LarderIterableDataset, **kwargs):
        if not isinstance(dataset, LarderIterableDataset):
            raise ConfigError("LarderDataLoader needs a LarderIterableDataset")
        kwargs.setdefault("batch_size", None)
        kwargs.setdefault("collate_fn", _passthrough)
        if kwargs["batch_size"] is not None:
            raise ConfigError("batch_size: larder makes the batches; set it on the dataset, not the DataLoader")
        pin = bool(kwargs.pop("pin_memory", False))  # pinned here, after the tensors are made
        if pin and not torch.accelerator.is_available():
            warnings.warn("pin_memory=True but no accelerator is available: not pinning", stacklevel=3)
            pin = False
        super().__init__(dataset, **kwargs)
        dataset.with_state = True
        dataset.defer_tensors = True
        self._pin = pin
        self._states: dict[int, dict] = {}

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next pass."""
        self.dataset.set_epoch(epoch)
        self._states = {}

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
        if ds._resume is not None and self.persistent_workers and self.num_workers > 0:
            raise StateError("load_state_dict() needs persistent_workers=False")
        self._states = {k: v for k, v in (ds._resume or {}).items()}
        it = super().__iter__()  # workers get their copy of the dataset (and its resume states) here
        ds._resume = None
        return self._track(it)

    def _track(self, it) -> Iterator[dict[str, Any]]:
        for batch in it:
            rank, state = batch.pop(STATE_KEY)
            self._states[rank] = state
            batch = as_tensors(batch)
            if self._pin:
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            yield batch

    def state_dict(self) -> dict:
        """Where the current (or last) pass stands: epoch, worker layout and each shard's reader state."""
        ds: LarderIterableDataset = self.dataset
        return {
            "epoch": ds.epoch,
            "rank": ds.rank,
            "world_size": ds.world_size,
            "num_workers": self.num_workers,
            "readers": dict(self._states),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the next pass where ``state`` was taken.

        Raises:
            StateError: The state is malformed or was taken with another worker layout.
        """
        ds: LarderIterableDataset = self.dataset
        try:
            layout = (int(state["rank"]), int(state["world_size"]), int(state["num_workers"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"not a LarderDataLoader state: {e!r}") from e
        if layout != (ds.rank, ds.world_size, self.num_workers):
            raise StateError(
                f"state was taken with rank/world_size/num_workers {layout}, this loader has "
                f"{(ds.rank, ds.world_size, self.num_workers)}: shards differ, resume needs the same layout"
            )
        ds.load_state_dict(state)


def make_dataloader(
    url: str | os.PathLike,
    batch_size: int = 100,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context=None,
    timeout: float = 0,
    **dataset_kwargs,
) -> LarderDataLoader:
    """A ``DataLoader`` of tensor batches from a larder cache.

    Args:
        url: Dataset directory, version directory or remote URL.
        batch_size: Rows per batch.
        num_workers: DataLoader worker processes; each reads its own shard with its own reader, so the
            reader's ``memory_budget`` (default 256 MiB) is split between them unless given. Inside workers
            the reader uses ``pool="thread"`` (daemonic workers cannot start processes). The reader already
            reads, shuffles and converts in the background, so ``num_workers=0`` is usually fastest (on the
            2-core dev machine 2 workers cost ~2.5x the CPU per row: every batch is pickled through a pipe);
            use workers for heavy per-batch Python, or the reader's ``transform`` with ``pool="process"``.
        pin_memory, prefetch_factor, timeout: As for ``DataLoader``.
        multiprocessing_context: As for ``DataLoader`` (default: torch's, ``fork`` on Linux). Pass
            ``"forkserver"`` when the process has threads that make ``fork`` unsafe (TensorFlow imported, a
            Spark gateway, a running reader): a worker forked from such a process can crash. forkserver and
            spawn need the usual ``if __name__ == "__main__":`` guard in the training script.
        **dataset_kwargs: Passed to :class:`LarderIterableDataset` (``rank``, ``world_size``, ``ragged``,
            ``strings``, ``epoch``, and the reader's ``columns``, ``shuffle``, ``seed``, ``transform``...).

    Returns:
        A :class:`LarderDataLoader`; call ``set_epoch(e)`` before each pass.
    """
    if num_workers > 0 and dataset_kwargs.get("pool") == "process":
        warnings.warn("pool='process' inside DataLoader workers is not allowed; using pool='thread'", stacklevel=2)
        dataset_kwargs["pool"] = "thread"
    if num_workers > 1 and dataset_kwargs.get("memory_budget") is None:
        # Every worker runs its own reader: share the one budget so memory does not grow with num_workers.
        dataset_kwargs["memory_budget"] = max(MIN_WORKER_BUDGET, DEFAULT_MEMORY_BUDGET // num_workers)
    dataset = LarderIterableDataset(url, batch_size=batch_size, **dataset_kwargs)
    return LarderDataLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        multiprocessing_context=multiprocessing_context,
        timeout=timeout,
    )


__all__ = ["LarderDataLoader", "LarderIterableDataset", "as_tensors", "make_dataloader", "prepare", "to_torch"]
