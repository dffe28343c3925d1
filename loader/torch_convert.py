"""Batches of :func:`loader.make_reader` (dicts of numpy arrays) to PyTorch tensors, for :mod:`loader.torch`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .convert import to_padded


def to_torch(batch: dict[str, np.ndarray], ragged: str = "padded", pad_value: Any = 0) -> dict[str, Any]:
    """Convert one reader batch (dict of numpy arrays, ragged columns as values + offsets) to tensors.

    Args:
        batch: A batch of :func:`loader.make_reader` with ``ragged="offsets"``.
        ragged: ``"padded"``: each ``col`` + ``col.offsets`` pair becomes an ``(n, longest)`` tensor padded
            with ``pad_value`` and ``col.lengths``; a two-level column (``col.value_offsets``: lists of
            strings or of lists) becomes ``(n, most items, longest item)`` with ``col.lengths`` and
            ``col.value_lengths`` (``(n, most items)``); a batch whose padding takes more than 8x its values
            and over 16 MiB (an outlier row) warns, once per column. ``"offsets"``: kept as values + offsets.
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
    method = getattr(data, "pin_memory", None)
    return method() if callable(method) and not isinstance(data, type) else data


__all__ = ["as_tensors", "pin", "prepare", "to_torch"]
