"""The numpy ragged forms of :mod:`loader.convert`: padding, re-padding a converted batch, splitting it.

Pure numpy (no Arrow): values + ``int64`` offsets (one level), values + ``value_offsets`` + ``offsets`` (two
levels: rows of items of values), and the padded forms made from them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .errors import ConfigError


def _ragged(name: str, values: np.ndarray, offsets: np.ndarray, out: dict, form: str, pad_value) -> None:
    if form == "offsets":
        out[name] = values
        out[name + ".offsets"] = offsets
        return
    lengths = np.diff(offsets)
    out[name] = pad(values, lengths, _fitting(pad_value, values.dtype, name))
    out[name + ".lengths"] = lengths


def _ragged2(name: str, values: np.ndarray, value_offsets: np.ndarray, offsets: np.ndarray, out: dict, form: str,
             pad_value) -> None:
    """Two-level ragged columns: rows of items (strings or lists) of values."""
    if form == "offsets":
        out[name] = values
        out[name + ".offsets"] = offsets
        out[name + ".value_offsets"] = value_offsets
        return
    item_lengths, lengths = np.diff(value_offsets), np.diff(offsets)
    pad_value = _fitting(pad_value, values.dtype, name)
    out[name] = pad(pad(values, item_lengths, pad_value), lengths, pad_value)
    out[name + ".lengths"] = lengths
    out[name + ".value_lengths"] = pad(item_lengths, lengths, 0)


def to_padded(batch: dict[str, np.ndarray], pad_value: Any = 0) -> dict[str, np.ndarray]:
    """The ``ragged="padded"`` form of a batch converted in the ``"offsets"`` form: exactly what
    :func:`to_numpy` gives with ``ragged="padded"`` for the same rows (keys in the same order)."""
    out: dict[str, np.ndarray] = {}
    for key, values in batch.items():
        if _structure(key, batch):
            continue
        offsets = batch.get(key + ".offsets")
        if offsets is None:
            out[key] = values
            continue
        inner = batch.get(key + ".value_offsets")
        if inner is None:
            _ragged(key, values, offsets, out, "padded", pad_value)
        else:
            _ragged2(key, values, inner, offsets, out, "padded", pad_value)
    return out


def _structure(key: str, batch: dict) -> bool:
    """Whether ``key`` holds the offsets of another key of ``batch`` (``col.offsets``, ``col.value_offsets``;
    :func:`loader.convert.check_keys` refuses columns whose own names look so)."""
    return (key.endswith(".offsets") and key[:-8] in batch) or (key.endswith(".value_offsets") and key[:-14] in batch)


def _fitting(pad_value: Any, dtype: np.dtype, name: str) -> Any:
    """``pad_value`` if the padded column's values can hold it exactly (checked once per value and dtype:
    it runs for every padded column of every batch).

    Raises:
        ConfigError: They cannot (e.g. -1 for the ``uint8`` bytes of a string column); names the column.
    """
    try:
        fits = _fits(type(pad_value), pad_value, dtype)
    except TypeError:  # an unhashable fill (an array): checked every time
        fits = _fits.__wrapped__(type(pad_value), pad_value, dtype)
    if isinstance(fits, BaseException):
        raise ConfigError(f"pad_value {pad_value!r} does not fit column {name!r} ({dtype} values)") from fits
    if not fits:
        raise ConfigError(f"pad_value {pad_value!r} does not fit column {name!r} ({dtype} values)")
    return pad_value


@functools.lru_cache(maxsize=256)
def _fits(_kind: type, pad_value: Any, dtype: np.dtype) -> bool | BaseException:
    """Whether ``dtype`` holds ``pad_value`` (the error that says it cannot, if converting it fails).
    ``_kind`` keeps ``0``, ``0.0`` and ``False`` apart in the cache."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            given = np.array(pad_value)
            fill = given.astype(dtype)
            if dtype.kind in "fc":  # rounding is fine, overflow is not
                return bool(np.all(np.isfinite(fill) | ~np.isfinite(given)))
            return dtype.kind in "OSUVmM" or bool(np.all(fill == given))
    except (OverflowError, ValueError, TypeError) as e:
        return e


def pad(values: np.ndarray, lengths: np.ndarray, pad_value: Any = 0) -> np.ndarray:
    """Scatter flat ragged ``values`` into an ``(n, max(lengths), ...)`` array padded with ``pad_value``.

    Args:
        values: The flat values of all rows (first axis).
        lengths: Values per row.
        pad_value: Fill for the padding.

    Returns:
        The padded array.
    """
    n = len(lengths)
    longest = int(lengths.max()) if n else 0
    out = np.full((n, longest) + values.shape[1:], pad_value, dtype=values.dtype)
    if len(values):
        # A boolean mask of the filled cells, assigned in row-major order: one pass, no index arrays. Indexing
        # out[rows, cols] with a row and a column index per value cost 22x more on image bytes (100 rows of
        # 2-6 KB: 5.0 ms against 0.22 ms) and 2x more on short lists (wordpiece ids: 16 against 8 us).
        out[np.arange(longest) < lengths[:, None]] = values
    return out


def split_batch(batch: dict[str, np.ndarray], bounds: list[int]) -> list[dict[str, np.ndarray]]:
    """Split a converted batch (offsets forms) at row ``bounds`` into the batches a per-batch conversion gives.

    Row-first arrays are sliced; ``col.offsets`` (rows -> values or items) and ``col.value_offsets`` (items ->
    values) are sliced and rebased to 0, and the flat values cut where the offsets say.
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in bounds[:-1]]
    for key, values in batch.items():
        if _structure(key, batch):
            continue  # handled with their column
        offsets = batch.get(key + ".offsets")
        if offsets is None:  # row-first: fixed-width, masks, object arrays, fixed-size lists
            for part, a, b in zip(out, bounds[:-1], bounds[1:], strict=True):
                part[key] = values[a:b]
            continue
        inner = batch.get(key + ".value_offsets")
        for part, a, b in zip(out, bounds[:-1], bounds[1:], strict=True):  # keys in to_numpy's order
            rows = offsets[a : b + 1]
            if inner is None:
                part[key] = values[rows[0] : rows[-1]]
                part[key + ".offsets"] = rows - rows[0]
            else:
                items = inner[rows[0] : rows[-1] + 1]
                part[key] = values[items[0] : items[-1]]
                part[key + ".offsets"] = rows - rows[0]
                part[key + ".value_offsets"] = items - items[0]
    return out


__all__ = ["pad", "split_batch", "to_padded"]
