"""The dataset of :mod:`loader.torch`: a larder cache as a torch ``IterableDataset`` of ready batches, one shard
per DataLoader worker, with its resume state (the sharding, epochs and resume rules are in :mod:`loader.torch`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from .arguments import check_int
from .errors import ConfigError, StateError
from .kept import KeptReader, PinnedVersion
from .reader import make_reader
from .state import is_layout, is_state_int
from .torch_convert import as_tensors, prepare
from .torch_ranks import _default_rank

RAGGED_FORMS = ("padded", "offsets")
STRING_FORMS = ("list", "tensor")
STATE_KEY = "_larder_state"


class LarderIterableDataset(IterableDataset):
    """A larder cache as an ``IterableDataset`` yielding ready batches of tensors.

    Use with ``DataLoader(ds, batch_size=None)`` (or :func:`make_dataloader`); every DataLoader worker
    reads its own shard (see the module docstring).

    Args:
        url: Dataset directory, version directory or remote URL. A dataset directory's ``CURRENT`` is
            followed once, at construction, and the version's manifest read: every pass and every worker reads
            that version from that manifest (with ``cache_dir``, from the local copies even after the version
            was pruned remotely). Under DDP pass
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
            ``transform``, ``workers``, ``pool``, ``drop_last``, ``cache_dir``...), which checks them here (a
            reader is made and closed). ``num_epochs`` is not accepted: one pass is one epoch.

    Raises:
        ConfigError: An argument is invalid (names it).
        ColumnNotFoundError, EmptyDatasetError, DatasetNotFoundError, ManifestError: As :func:`loader.make_reader`.
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
        # CURRENT followed and the manifest read once, here: every pass and every DataLoader worker reads this
        # version, even after a newer one is published or this one pruned (as one make_reader does for all epochs).
        self._pinned = PinnedVersion(url, reader_kwargs)
        self.url = self._pinned.url
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.ragged, self.strings, self.pad_value = ragged, strings, pad_value
        self.reader_kwargs = reader_kwargs
        self._resume: dict[int, dict] | None = None
        # The windows (window, max_piece_rows) of a loaded state's run, which every later reader plans with (None:
        # the reader's own, from memory_budget...); and the readers' own, per number of shards (see layout()).
        self._layout: tuple[int, int | None] | None = None
        self._layouts: dict[int, tuple[int, int | None]] = {}
        self.epoch = 0  # the epoch of the next pass
        self.set_epoch(epoch)
        # Set by LarderDataLoader: deliver the reader state with every batch, and numpy arrays that the
        # loader turns into tensors in the main process (pickling a few hundred KB through the worker queue
        # costs far less than torch's per-tensor shared-memory file descriptors).
        self.with_state = False
        self.defer_tensors = False
        self._reader = None
        self._reading: tuple[int, int] | None = None  # (shard rank, epoch) of the live reader
        self._kept = KeptReader(self._pinned.close_reader)  # pool="process": see _batches
        self.check_reader(self.rank, self.world_size)

    def check_reader(self, rank: int, world_size: int) -> None:
        """Make and close the reader of shard ``rank`` of ``world_size``: ``make_reader``'s checks of the reader
        arguments (columns, sample, pool...) fail here, not at the first batch (in a DataLoader worker). It starts
        no thread and reads what a reader's construction reads (the first rows of one row group).

        Raises:
            ConfigError, ColumnNotFoundError, EmptyDatasetError: As :func:`loader.make_reader`.
        """
        reader = self.make_reader(rank, world_size)
        self._layouts[world_size] = (reader.window, reader.max_piece_rows)
        self._pinned.close_reader(reader)

    def layout(self, world_size: int) -> list:
        """``[window, max_piece_rows]``: the windows this dataset's readers of shards of ``world_size`` plan with
        (a loaded state's, else those of the reader arguments), as a state records them."""
        if self._layout is None and world_size not in self._layouts:
            self.check_reader(self.rank * (world_size // self.world_size), world_size)
        return list(self._layout or self._layouts[world_size])

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers under spawn/forkserver) without the live or kept reader."""
        return {**self.__dict__, "_reader": None, "_reading": None}

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
        kwargs = self._pinned.reader_kwargs  # without the filesystem options: the pinned dataset has its filesystem
        if kwargs.get("pool") == "process" and get_worker_info() is not None:  # daemonic: no child processes
            warnings.warn("pool='process' inside DataLoader workers is not allowed; using pool='thread'", stacklevel=2)
            kwargs = {**kwargs, "pool": "thread"}
        reader = make_reader(
            self._pinned.open(),
            batch_size=self.batch_size,
            rank=rank,
            world_size=world_size,
            num_epochs=None if endless else epoch + 1,
            ragged="offsets",  # padded here, with pad_value
            strings="object" if self.strings == "list" else "offsets",
            **kwargs,
        )
        if resume is None and self._layout not in (None, (reader.window, reader.max_piece_rows)):
            # A resumed run plans with the windows of the run that saved its state, in every pass and shard (the
            # reader adopts a state's windows: a state of this epoch's start made with them).
            resume = reader.state_dict()
            resume["config"].update(window=self._layout[0], max_piece_rows=self._layout[1])
            resume.update(epoch=epoch, batch=0)
        try:
            if resume is None:
                reader.set_epoch(epoch)  # a reader starts at epoch 0
            else:
                reader.load_state_dict(resume)
        except BaseException:
            self._pinned.close_reader(reader)
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
        reader = self._kept.take((rank, world, epoch) if resume is None else None)
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
            if not (keep and finished and self._kept.put(reader)):
                self._pinned.close_reader(reader)

    def close(self) -> None:
        """Close the reader kept between passes (``pool="process"``), stopping its workers; idempotent."""
        self._kept.close()

    def state_dict(self) -> dict:
        """The live reader's state (``num_workers=0`` only; use :class:`LarderDataLoader` for workers), with this
        dataset's ``rank`` and ``world_size``; after the last batch of an epoch, the next epoch's start and the
        windows the run plans with (``"layout"``: ``[window, max_piece_rows]``).

        Raises:
            StateError: No pass is in progress in this process.
        """
        if self._reader is None or self._reading is None:
            raise StateError("no pass in progress: state_dict() needs a running iteration (or LarderDataLoader)")
        rank, epoch = self._reading
        readers = {rank: self._reader.state_dict()}
        if _ended(readers, [rank], epoch):  # after the epoch's last batch: the next epoch's start, and its windows
            layout = [self._reader.window, self._reader.max_piece_rows]
            return {"epoch": epoch + 1, "rank": self.rank, "world_size": self.world_size, "readers": {},
                    "layout": layout}
        return {"epoch": epoch, "rank": self.rank, "world_size": self.world_size, "readers": readers}

    def load_state_dict(self, state: dict) -> None:
        """Resume the next pass from a state of :meth:`state_dict` or :meth:`LarderDataLoader.state_dict`.

        Every later pass and shard plans with the windows of the run that saved the state (its ``layout``, or its
        reader states'), as :meth:`loader.reader.Reader.load_state_dict` does, so a run resumed with another
        ``memory_budget`` yields the batches of the uninterrupted run.

        Raises:
            StateError: The state is malformed, or was taken with another ``rank``/``world_size`` (checked here
                when the state names them, else when the next pass starts, before its first batch).
        """
        epoch, readers = _state_int(state, "epoch", 0), _state_readers(state)
        windows = _state_layout(state, readers)
        layout = None
        if "rank" in state or "world_size" in state:
            layout = (_state_int(state, "rank", 0), _state_int(state, "world_size", 1))
        if layout is not None and layout != (self.rank, self.world_size):
            raise StateError(f"state was taken with rank/world_size {layout}, this dataset has "
                             f"{(self.rank, self.world_size)}: shards differ, resume needs the same layout")
        self.set_epoch(epoch)
        self._resume = readers
        if windows != self._layout:
            self._kept.close()  # a reader kept from a pass planned with other windows
            self._layout = windows


def _state_layout(state: Mapping, readers: dict[int, Mapping]) -> tuple[int, int | None] | None:
    """The windows ``(window, max_piece_rows)`` a state's run planned with: its ``"layout"`` (written when it holds
    no reader state), else its reader states'; None when it records none (a state of an earlier larder).

    Raises:
        StateError: ``"layout"`` is not ``[window, max_piece_rows]`` of a reader's values.
    """
    if "layout" in state:
        value = state["layout"]
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and is_layout(*value)):
            raise StateError(f"state key 'layout' must be [window, max_piece_rows] (an integer >= 1, and one or "
                             f"null), got {value!r}")
        return value[0], value[1]
    for reader_state in readers.values():
        config = reader_state.get("config")
        if isinstance(config, Mapping) and is_layout(config.get("window"), config.get("max_piece_rows")):
            return config["window"], config["max_piece_rows"]
    return None


def _progress(state: dict | None, epoch: int) -> tuple[int, int]:
    """How far a shard's reader state is into pass ``epoch``, comparable between shards (no state: not started;
    a reader past its last batch is at the next epoch's start, after every batch of ``epoch``)."""
    if state is None:
        return (0, 0)
    return (_state_int(state, "epoch", 0, "reader state") - epoch, _state_int(state, "batch", 0, "reader state"))


def _state_int(state, key: str, minimum: int, kind: str = "state") -> int:
    """``state[key]`` if it is an integer of at least ``minimum`` (not a bool, a float or a string): the rule of the
    reader's own state check (:func:`loader.state.check_state`), for the adapters' states.

    Raises:
        StateError: ``state`` is not a dict, or ``key`` is missing or malformed (names the key and the value).
    """
    if not isinstance(state, Mapping):
        raise StateError(f"not a larder {kind}: a dict was expected, got {type(state).__name__}")
    if key not in state:
        raise StateError(f"{kind} key {key!r} is missing (not a larder {kind})")
    value = state[key]
    if not is_state_int(value, minimum):
        raise StateError(f"{kind} key {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _state_readers(state: Mapping) -> dict[int, Mapping]:
    """A state's ``"readers"``: shard rank (an int, or its decimal string after a JSON round trip) -> reader state.

    Raises:
        StateError: Not a dict of such ranks to dicts (names the key and the shard).
    """
    readers = state.get("readers")
    if not isinstance(readers, Mapping):
        raise StateError("state key 'readers' must be a dict of shard rank -> reader state, got "
                         f"{type(readers).__name__}")
    out = {}
    for shard, reader_state in readers.items():
        if isinstance(shard, str) and shard.isascii() and shard.isdigit():
            rank = int(shard)
        elif isinstance(shard, int) and not isinstance(shard, bool) and shard >= 0:
            rank = shard
        else:
            raise StateError(f"state key 'readers' has shard {shard!r}: shards are non-negative integers")
        if not isinstance(reader_state, Mapping):
            raise StateError(f"state key 'readers' has a {type(reader_state).__name__} for shard {shard!r}, "
                             "not a reader state (a dict)")
        out[rank] = reader_state
    return out


def _ended(readers: dict, shards, epoch: int) -> bool:
    """Whether the reader state of every shard in ``shards`` is past the last batch of ``epoch``."""
    return bool(readers) and all(_progress(readers.get(r), epoch)[0] > 0 for r in shards)


__all__ = ["STATE_KEY", "LarderIterableDataset"]
