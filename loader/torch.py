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

DDP: every rank follows a dataset directory's ``CURRENT`` when its dataset is made; open a dataset that the
job may republish with :func:`pin_version_across_ranks` so that every rank reads rank 0's version.

``pool="process"`` (the reader's transform in worker processes; ``num_workers=0`` only): the workers start
by importing the training script's imports (seconds with torch), so the dataset keeps the reader of a
finished pass, with its workers, for the next pass when that is the next epoch; ``close()`` stops it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from itertools import islice
from typing import Any

try:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("loader.torch needs PyTorch: pip install -e '.[torch]' in the larder checkout") from _e

from .arguments import check_int
from .dataset import pin_version
from .errors import ConfigError, StateError
from .reader import DEFAULT_MEMORY_BUDGET, fs_options_of, make_reader
from .torch_convert import _default_rank, as_tensors, pin, pin_version_across_ranks, prepare, to_torch

RAGGED_FORMS = ("padded", "offsets")
STRING_FORMS = ("list", "tensor")
STATE_KEY = "_larder_state"
MIN_WORKER_BUDGET = 64 << 20


class _Collate:
    """LarderDataLoader's ``collate_fn`` (a class: it pickles for spawn): ``(reader state, out, deferred)`` per
    batch; ``out`` is ``fn(batch as tensors)``, or without ``fn`` the numpy batch (``deferred``: made tensors in
    the main process, which is cheaper through the worker queue)."""

    def __init__(self, fn=None):
        self.fn = fn

    def __call__(self, batch: dict) -> tuple:
        state = batch.pop(STATE_KEY)
        return (state, batch, True) if self.fn is None else (state, self.fn(as_tensors(batch)), False)


class LarderIterableDataset(IterableDataset):
    """A larder cache as an ``IterableDataset`` yielding ready batches of tensors.

    Use with ``DataLoader(ds, batch_size=None)`` (or :func:`make_dataloader`); every DataLoader worker
    reads its own shard (see the module docstring).

    Args:
        url: Dataset directory, version directory or remote URL. A dataset directory's ``CURRENT`` is
            followed once, at construction: every pass and every worker reads that version. Under DDP pass
            ``pin_version_across_ranks(url)`` when the job may publish a new version meanwhile: each rank
            would otherwise follow ``CURRENT`` by itself, possibly to another version (different batch counts
            hang the job).
        batch_size: Rows per batch (batches are made by the reader, not by the DataLoader).
        rank: This trainer's rank; default: ``torch.distributed``'s rank if initialised, else 0.
        world_size: Number of trainers; default: ``torch.distributed``'s world size, else 1.
        ragged: ``"padded"`` or ``"offsets"`` form of variable-length lists.
        strings: ``"list"`` (Python ``str``/``bytes``) or ``"tensor"`` (``uint8`` in the ``ragged`` form).
        pad_value: Fill value of padded lists.
        epoch: The epoch of the first pass; later passes read the next epochs (see :meth:`set_epoch`).
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
        check_int("batch_size", batch_size, 1)
        if (rank is None) != (world_size is None):
            raise ConfigError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = _default_rank()
        check_int("rank", rank, 0)
        check_int("world_size", world_size, 1)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, world_size={world_size})")
        # CURRENT followed once, here: every pass and every DataLoader worker reads this version, even
        # after a newer one is published (as one make_reader does for all its epochs).
        self.url = pin_version(url, **fs_options_of(reader_kwargs))
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.ragged, self.strings, self.pad_value = ragged, strings, pad_value
        self.reader_kwargs = reader_kwargs
        self._resume: dict[int, dict] | None = None
        self.epoch = 0  # the epoch of the next pass
        self.set_epoch(epoch)
        # Set by LarderDataLoader: deliver the reader state with every batch, and numpy arrays that the
        # loader turns into tensors in the main process (pickling a few hundred KB through the worker queue
        # costs far less than torch's per-tensor shared-memory file descriptors).
        self.with_state = False
        self.defer_tensors = False
        self._reader = None
        self._reading: tuple[int, int] | None = None  # (shard rank, epoch) of the live reader
        self._kept: tuple[int, Any] | None = None  # (pid, reader): pool="process", see _batches

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers under spawn/forkserver) without the live or kept reader."""
        return {**self.__dict__, "_reader": None, "_reading": None, "_kept": None}

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` on the next pass (as with ``DistributedSampler``).

        Each pass started from this object reads :attr:`epoch` and then advances it by one, so calling this
        before every pass is optional in a process that iterates the dataset itself. A resume state loaded
        with :meth:`load_state_dict` is kept when ``epoch`` is the state's ``"epoch"`` (also for a state taken
        after the last batch of an epoch, which says the next epoch), and dropped otherwise.

        Args:
            epoch: A non-negative integer.

        Raises:
            ConfigError: ``epoch`` is not a non-negative integer.
        """
        check_int("epoch", epoch, 0)  # as Reader.set_epoch
        epoch = int(epoch)
        if epoch != self.epoch:
            self._resume = None
        self.epoch = epoch

    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)`` this process reads as: the trainer's rank composed with the worker id."""
        info = get_worker_info()
        if info is None:
            return self.rank, self.world_size
        return self.rank * info.num_workers + info.id, self.world_size * info.num_workers

    def make_reader(self, rank: int, world_size: int, resume: dict | None = None, epoch: int | None = None,
                    endless: bool = False):
        """The reader of one shard of ``epoch`` (default :attr:`epoch`), positioned at its start (or at ``resume``).

        Args:
            rank: The shard's rank.
            world_size: The number of shards.
            resume: A reader state of this shard in ``epoch`` to continue from.
            epoch: The epoch to read; default: :attr:`epoch`.
            endless: Read on into the following epochs (``num_epochs=None``) instead of stopping.

        Returns:
            A :class:`loader.reader.Reader` that stops at the end of ``epoch`` (unless ``endless``).
        """
        epoch = self.epoch if epoch is None else epoch
        reader = make_reader(
            self.url,
            batch_size=self.batch_size,
            rank=rank,
            world_size=world_size,
            num_epochs=None if endless else epoch + 1,
            ragged="offsets",  # padded here, with pad_value
            strings="object" if self.strings == "list" else "offsets",
            **self.reader_kwargs,
        )
        try:
            if resume is None:
                reader.set_epoch(epoch)  # a reader starts at epoch 0
            else:
                reader.load_state_dict(resume)
        except BaseException:
            reader.close()
            raise
        return reader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Start a pass: epoch :attr:`epoch` (continued from a loaded state, if any), then advance :attr:`epoch`.

        In a DataLoader worker the shard is the worker's, rotated on a resumed pass so that worker 0 reads
        the shard that was due next (see the module docstring).
        """
        info = get_worker_info()
        k = 1 if info is None else info.num_workers
        epoch, resume = self._start(k)
        if info is None:
            rank, world = self.shard()
        else:
            first = rank_base = self.rank * k
            if resume:
                first = min(range(rank_base, rank_base + k), key=lambda r: _progress(resume.get(r), epoch))
            rank, world = rank_base + (first - rank_base + info.id) % k, self.world_size * k
        # Taken now (not when the generator starts); this object's next pass is the next epoch, from its
        # start: a persistent DataLoader worker keeps its copy of the dataset and counts its passes this way.
        self.epoch, self._resume = epoch + 1, None
        return self._batches(rank, world, epoch, (resume or {}).get(rank), self.with_state, self.defer_tensors)

    def _start(self, k: int) -> tuple[int, dict[int, dict] | None]:
        """``(epoch, resume states)`` of the next pass read by ``k`` shards per trainer: a loaded state whose every
        shard is past its last batch (taken at the end of an epoch) is the next epoch's start.

        Raises:
            StateError: The loaded state has reader states of shards this pass does not read (another rank,
                world size or number of workers): the pass would restart them instead of resuming.
        """
        epoch, resume = self.epoch, self._resume
        if not resume:
            return epoch, resume
        shards = range(self.rank * k, self.rank * k + k)
        if set(resume) - set(shards):
            raise StateError(
                f"the loaded state has reader states of shards {sorted(resume)}, but this pass reads shards "
                f"{list(shards)} (rank {self.rank} of world_size {self.world_size}, {k} per trainer): it was taken "
                "with another rank/world_size/num_workers; resume needs the same layout")
        if _ended(resume, shards, epoch):
            return epoch + 1, None
        return epoch, resume

    def _batches(
        self, rank: int, world: int, epoch: int, resume: dict | None, with_state: bool, defer_tensors: bool
    ) -> Iterator[dict[str, Any]]:
        # A process pool's workers take seconds to start (each imports the training script's imports, e.g. torch):
        # its reader reads on into the next epoch and is kept for the next pass, if that pass is the next epoch.
        keep = self.reader_kwargs.get("pool") == "process"
        reader = self._take_kept(rank, world, epoch, resume)
        if reader is None:
            reader = self.make_reader(rank, world, resume, epoch, endless=keep)
        self._reader, self._reading = reader, (rank, epoch)
        finished = False
        try:
            position = reader.state_dict()
            left = reader.batches_per_epoch - position["batch"] if position["epoch"] == epoch else 0
            for batch in islice(reader, left):
                out = prepare(batch, self.ragged, self.pad_value)
                if not defer_tensors:
                    out = as_tensors(out)
                if with_state:
                    out[STATE_KEY] = (rank, reader.state_dict())
                yield out
            finished = True
        finally:
            self._reader = self._reading = None
            if keep and finished and self._kept is None:
                self._kept = (os.getpid(), reader)
            else:
                reader.close()

    def _take_kept(self, rank: int, world: int, epoch: int, resume: dict | None):
        """The kept reader if it reads shard ``rank`` of ``world`` from the start of ``epoch`` (no ``resume``), else
        None (after closing it; one inherited through ``fork`` is left alone: its workers are the parent's)."""
        pid, reader = self._kept or (None, None)
        if pid != os.getpid():
            return None
        self._kept = None
        if resume is None and (reader.rank, reader.world_size, reader.epoch) == (rank, world, epoch):
            return reader
        reader.close()
        return None

    def close(self) -> None:
        """Close the reader kept between passes (``pool="process"``), stopping its workers; idempotent."""
        pid, reader = self._kept or (None, None)
        if pid == os.getpid():
            self._kept = None
            reader.close()

    def state_dict(self) -> dict:
        """The live reader's state (``num_workers=0`` only; use :class:`LarderDataLoader` for workers), with this
        dataset's ``rank`` and ``world_size``; after the last batch of an epoch, the next epoch's start.

        Raises:
            StateError: No pass is in progress in this process.
        """
        if self._reader is None or self._reading is None:
            raise StateError("no pass in progress: state_dict() needs a running iteration (or LarderDataLoader)")
        rank, epoch = self._reading
        readers = {rank: self._reader.state_dict()}
        if _ended(readers, [rank], epoch):  # after the epoch's last batch: the next epoch's start
            epoch, readers = epoch + 1, {}
        return {"epoch": epoch, "rank": self.rank, "world_size": self.world_size, "readers": readers}

    def load_state_dict(self, state: dict) -> None:
        """Resume the next pass from a state of :meth:`state_dict` or :meth:`LarderDataLoader.state_dict`.

        Raises:
            StateError: The state is malformed, or was taken with another ``rank``/``world_size`` (checked here
                when the state names them, else when the next pass starts, before its first batch).
        """
        try:
            epoch, readers = int(state["epoch"]), {int(k): v for k, v in state["readers"].items()}
            layout = None
            if "rank" in state or "world_size" in state:
                layout = (int(state["rank"]), int(state["world_size"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateError(f"not a larder torch state: {e!r}") from e
        if layout is not None and layout != (self.rank, self.world_size):
            raise StateError(f"state was taken with rank/world_size {layout}, this dataset has "
                             f"{(self.rank, self.world_size)}: shards differ, resume needs the same layout")
        self.set_epoch(epoch)
        self._resume = readers


def _progress(state: dict | None, epoch: int) -> tuple[int, int]:
    """How far a shard's reader state is into pass ``epoch``, comparable between shards (no state: not started;
    a reader past its last batch is at the next epoch's start, after every batch of ``epoch``)."""
    if state is None:
        return (0, 0)
    try:
        return (int(state["epoch"]) - epoch, int(state["batch"]))
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"not a larder reader state: {e!r}") from e


def _ended(readers: dict, shards, epoch: int) -> bool:
    """Whether the reader state of every shard in ``shards`` is past the last batch of ``epoch``."""
    return bool(readers) and all(_progress(readers.get(r), epoch)[0] > 0 for r in shards)


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
        start of the next pass (or the state loaded for it).
        """
        ds: LarderIterableDataset = self.dataset
        if self._pass is None:
            epoch, readers = ds.epoch, dict(ds._resume or {})
        else:
            epoch, readers = self._pass_epoch, dict(self._states)
            k = max(1, self.num_workers)
            if _ended(readers, range(ds.rank * k, ds.rank * k + k), epoch):  # after the epoch's last batch
                epoch, readers = epoch + 1, {}
        return {
            "epoch": epoch,
            "rank": ds.rank,
            "world_size": ds.world_size,
            "num_workers": self.num_workers,
            "readers": readers,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the next pass where ``state`` was taken (each shard's reader state is checked here).

        Args:
            state: A dict of :meth:`state_dict` (it survives a JSON round trip).

        Raises:
            StateError: The state is malformed, was taken with another worker layout, or a reader state
                does not fit this dataset (another version, other settings).
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
        k = max(1, self.num_workers)
        shards = range(ds.rank * k, ds.rank * k + k)
        ds.load_state_dict(state)
        self._pass = None
        for rank, reader_state in ds._resume.items():  # fail here, not in a worker halfway through the pass
            if rank not in shards or _progress(reader_state, ds.epoch)[0] not in (0, 1):
                ds._resume = None
                raise StateError(f"state has a reader state for shard {rank} at epoch {reader_state.get('epoch')!r}; "
                                 f"this loader's shards are {list(shards)}, the state's epoch {ds.epoch}")
            try:
                ds.make_reader(rank, ds.world_size * k, reader_state, ds.epoch).close()
            except BaseException:
                ds._resume = None
                raise


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
            reader's ``memory_budget`` (default 256 MiB) is split between them unless given. Inside workers
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
        persistent_workers=persistent_workers,
        collate_fn=collate_fn,
    )


__all__ = ["LarderDataLoader", "LarderIterableDataset", "as_tensors", "make_dataloader", "pin_version_across_ranks",
           "prepare", "to_torch"]
