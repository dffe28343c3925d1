"""Batches of :func:`loader.make_reader` (dicts of numpy arrays) to PyTorch tensors, and the ``torch.distributed``
helpers (rank, version pinning) of :mod:`loader.torch`, which uses them."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .convert import to_padded
from .dataset import pin_version
from .errors import LarderError


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


def pin(data):
    """``data`` with its tensors pinned (in dicts, lists and tuples; other objects by their ``pin_memory()``)."""
    if isinstance(data, dict):
        return {k: pin(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        items = [pin(v) for v in data]
        return type(data)(*items) if hasattr(data, "_fields") else type(data)(items)  # namedtuples too
    pin = getattr(data, "pin_memory", None)
    return pin() if callable(pin) and not isinstance(data, type) else data


def _default_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pin_version_across_ranks(url: str | os.PathLike, **fs_options) -> str:
    """:func:`loader.pin_version` on rank 0 of ``torch.distributed``'s default group, sent to every rank.

    A :class:`~loader.torch.LarderIterableDataset` follows a dataset directory's ``CURRENT`` by itself, when made:
    under DDP, a version published while the ranks start gives ranks different versions (overlapping shards, and
    batch counts that differ and hang the job in its next collective). Open a changing dataset with
    ``make_dataloader(pin_version_across_ranks(url), ...)`` instead: every rank reads the version rank 0 found.
    A collective (``broadcast_object_list``): call it on every rank. Without an initialised process group it is
    :func:`loader.pin_version`.

    Args:
        url: Dataset directory, version directory or remote URL.
        **fs_options: Filesystem options, as for :func:`loader.make_reader`.

    Returns:
        The version's path or URL, the same on every rank.

    Raises:
        DatasetNotFoundError, ManifestError: As :func:`loader.pin_version`, on rank 0; the other ranks raise a
            :class:`~loader.errors.LarderError` with rank 0's error (instead of waiting for a version).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return pin_version(url, **fs_options)
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, pin_version(url, **fs_options))
        except Exception as e:
            dist.broadcast_object_list([(False, f"{type(e).__name__}: {e}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, text = box[0]
    if not ok:
        raise LarderError(f"rank 0 could not pin the version: {text}")
    return text


__all__ = ["as_tensors", "pin", "pin_version_across_ranks", "prepare", "to_torch"]
