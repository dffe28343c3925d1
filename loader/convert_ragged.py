"""The numpy ragged forms of :mod:`loader.convert`: padding, re-padding a converted batch, splitting it.

Pure numpy (no Arrow): values + ``int64`` offsets (one level), values + ``value_offsets`` + ``offsets`` (two
levels: rows of items of values), and the padded forms made from them.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ConfigError
from .plan import size_text

_WASTE_RATIO = 8
"""A padded batch warns when its padded arrays take more than this many times the bytes of the column's values
and more than :data:`_WASTE_BYTES`. Ordinary ragged data (lengths within a few times their mean: token ids cut
at a maximum length, 2-6 KB images) pads to 1-3x its values; past 8x, seven eighths are padding, and the
reader's ``memory_budget``, which counts values (the manifest's bytes per row), is off by as much."""
_WASTE_BYTES = 16 << 20
"""Half the ready queue's share of the default budget (an eighth of 256 MiB): a smaller padded batch costs little
however wasteful (256 token lists with a long tail: 2 MiB), so small batches never warn."""
_MASK_CELLS = 1 << 22
"""Most cells :func:`pad` fills through one boolean mask (one byte a cell): larger arrays are filled in row blocks,
so the mask adds at most 4 MiB to the padded array instead of another ``n x longest`` bytes."""
_warned: set[str] = set()  # columns warned about in this process
_warned_lock = threading.Lock()  # batches are padded in the reader's pool threads


def _ragged(name: str, values: np.ndarray, offsets: np.ndarray, out: dict, form: str, pad_value) -> None:
    if form == "offsets":
        out[name] = values
        out[name + ".offsets"] = offsets
        return
    lengths = np.diff(offsets)
    pad_value = _fitting(pad_value, values.dtype, name)
    longest = int(lengths.max()) if len(lengths) else 0
    _check_waste(name, values, (len(lengths), longest))
    out[name] = _pad(values, lengths, pad_value, longest)
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
    most = int(lengths.max()) if len(lengths) else 0
    longest = int(item_lengths.max()) if len(item_lengths) else 0
    _check_waste(name, values, (len(lengths), most, longest), extra=len(lengths) * most * 8)  # + value_lengths
    out[name] = _pad(_pad(values, item_lengths, pad_value, longest), lengths, pad_value, most)
    out[name + ".lengths"] = lengths
    out[name + ".value_lengths"] = _pad(item_lengths, lengths, 0, most)


def _check_waste(name: str, values: np.ndarray, shape: tuple[int, ...], extra: int = 0) -> None:
    """Warn (once per column and process) when padding ``values`` to ``shape`` (``(rows, longest)``, or
    ``(rows, most items, longest item)``; + ``extra`` bytes of padded lengths) takes more than
    :data:`_WASTE_RATIO` times their bytes and more than :data:`_WASTE_BYTES`: a batch with an outlier row,
    which pads every row to its length. Checked before the arrays are made."""
    padded = math.prod(shape + values.shape[1:]) * values.itemsize + extra
    if padded <= _WASTE_BYTES or padded <= _WASTE_RATIO * values.nbytes:
        return
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    longest = f"a row of {shape[1]} values" if len(shape) == 2 else \
        f"a row of {shape[1]} items (and items of up to {shape[2]} values)"
    warnings.warn(
        f"ragged=\"padded\": column {name!r} has {longest}, so a batch of {shape[0]} rows pads to "
        f"{size_text(padded)} for {size_text(values.nbytes)} of values ({padded / max(1, values.nbytes):.0f}x; "
        "memory_budget counts the values, not the padding); read it with ragged=\"offsets\" (values + offsets), "
        "or cap its lengths in a transform. Warned once per column.",
        UserWarning, stacklevel=2,
    )


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


def batch_rows(batch: Mapping) -> int:
    """The number of rows of a batch in the reader's numpy forms (0 for an empty dict).

    Read from the batch itself, not from the reader's plan: a transform may keep fewer rows than were
    planned. A key is classified as :func:`split_batch` does (:func:`_structure`): the flat values of a ragged
    column (``col`` next to ``col.offsets``) and item offsets (``col.value_offsets``) do not count rows, a
    column's ``col.offsets`` holds ``n + 1`` entries, and every other array (fixed width, masks, lengths, padded
    and object arrays, fixed-size lists, row ids) holds one entry (``shape[0]``) per row.
    """
    for key, values in batch.items():
        if key.endswith(".value_offsets") or key + ".offsets" in batch:
            continue
        return len(values) - 1 if _structure(key, batch) else len(values)
    return 0


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
    return _pad(values, lengths, pad_value, int(lengths.max()) if len(lengths) else 0)


def _pad(values: np.ndarray, lengths: np.ndarray, pad_value: Any, longest: int) -> np.ndarray:
    """:func:`pad` given ``longest`` (``lengths.max()``, 0 if no rows)."""
    n = len(lengths)
    out = np.full((n, longest) + values.shape[1:], pad_value, dtype=values.dtype)
    if not len(values):
        return out
    # A boolean mask of the filled cells, assigned in row-major order: one pass, no index arrays. Indexing
    # out[rows, cols] with a row and a column index per value cost 22x more on image bytes (100 rows of
    # 2-6 KB: 5.0 ms against 0.22 ms) and 2x more on short lists (wordpiece ids: 16 against 8 us).
    columns = np.arange(longest)
    if n * longest <= _MASK_CELLS:
        out[columns < lengths[:, None]] = values
        return out
    step, start = max(1, _MASK_CELLS // max(1, longest)), 0  # a mask of at most _MASK_CELLS at a time
    for a in range(0, n, step):
        part = lengths[a : a + step]
        end = start + int(part.sum())
        out[a : a + step][columns < part[:, None]] = values[start:end]
        start = end
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


__all__ = ["batch_rows", "pad", "split_batch", "to_padded"]
