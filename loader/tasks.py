"""The reader's worker-side tasks: read a planned piece of a row group, and finish a batch.

Both run in a pool worker (thread, process, or the caller for the serial pool). They find the reader's
settings in a per-process registry filled by the pool's initializer (:func:`install`), so a process pool
pickles the dataset and the user transform once per worker, not once per task. Every task is a pure
function of its arguments and those settings: which worker runs it cannot change its result.
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .convert import to_numpy
from .dataset import Dataset
from .errors import CorruptFileError, TransformError
from .plan import sample_rows, transform_rng

ROW_GROUP_COLUMN = "_row_group"
ROW_COLUMN = "_row"
_STREAM_CHUNK = 65_536


@dataclass(frozen=True)
class ReadContext:
    """What every task of one reader needs (pickled once per process worker).

    Attributes:
        key: Registry key of this reader.
        dataset: The opened version.
        columns: Columns to read.
        sizes: Rows of every row group, global order.
        locations: ``(file index, row group in file)`` of every row group.
        seed: The user's seed.
        rank: This rank.
        world_size: Number of ranks.
        stream: Read pieces with ``iter_batches`` instead of whole row groups (huge row groups).
        ragged: Form of variable-length columns.
        strings: Form of string columns.
        masks: Add validity masks.
        with_row_ids: Keep the ``_row_group`` / ``_row`` columns in batches.
        transform: The user transform, or None.
        transform_takes_rng: Call it as ``transform(batch, rng)`` rather than ``transform(batch)``.
    """

    key: str
    dataset: Dataset
    columns: tuple[str, ...]
    sizes: tuple[int, ...]
    locations: tuple[tuple[int, int], ...]
    seed: int
    rank: int
    world_size: int
    stream: bool
    ragged: str
    strings: str
    masks: bool
    with_row_ids: bool
    transform: Callable | None
    transform_takes_rng: bool


_CONTEXTS: dict[str, ReadContext] = {}


def install(ctx: ReadContext) -> None:
    """Register a reader's context in this process (the pools' initializer)."""
    _CONTEXTS[ctx.key] = ctx


def uninstall(key: str) -> None:
    """Forget a reader's context in this process."""
    _CONTEXTS.pop(key, None)


def takes_rng(fn: Callable) -> bool:
    """True if ``fn`` accepts a second positional argument (the RNG)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def read_piece(key: str, epoch: int, group: int, start: int, stop: int, kept: int | None) -> tuple[pa.Table, float]:
    """Read rows ``[start, stop)`` of a row group's kept rows, with their ids; returns ``(table, seconds)``.

    Raises:
        CorruptFileError: The file fails its size, footer or page checks (names the file).
    """
    t0 = time.perf_counter()
    ctx = _CONTEXTS[key]
    ds = ctx.dataset
    file_index, local = ctx.locations[group]
    info = ds.files[file_index]
    size = ctx.sizes[group]
    rows = None
    if kept is not None and kept < size:
        rows = sample_rows(size, kept, ctx.seed, epoch, group)[start:stop]
    pf = ds.open_file(info)
    try:
        if ctx.stream:
            table = _stream_rows(ds, info, local, pf, list(ctx.columns), rows, start, stop)
        else:
            table = ds.read_row_group(info, local, list(ctx.columns), pf)
            table = table.take(pa.array(rows)) if rows is not None else table.slice(start, stop - start)
    finally:
        pf.close(force=True)
    ids = rows if rows is not None else np.arange(start, stop, dtype=np.int64)
    table = table.append_column(ROW_GROUP_COLUMN, pa.array(np.full(len(ids), group, dtype=np.int64)))
    table = table.append_column(ROW_COLUMN, pa.array(ids))
    return table, time.perf_counter() - t0


def _stream_rows(ds, info, local, pf, columns, rows, start, stop) -> pa.Table:
    """Read part of a huge row group chunk by chunk, keeping only the wanted rows in memory."""
    lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows is not None and len(rows) else (start, stop)
    parts, pos = [], 0
    try:
        for chunk in pf.iter_batches(batch_size=_STREAM_CHUNK, row_groups=[local], columns=columns,
                                     use_threads=False):
            end = pos + chunk.num_rows
            if end > lo and pos < hi:
                if rows is not None:
                    sel = rows[(rows >= pos) & (rows < end)] - pos
                    parts.append(chunk.take(pa.array(sel)))
                else:
                    parts.append(chunk.slice(max(0, lo - pos), min(end, hi) - max(pos, lo)))
            pos = end
            if pos >= hi:
                break
    except (OSError, pa.ArrowException) as e:
        where = ds.display(info)
        raise CorruptFileError(f"{where}: row group {local} cannot be read ({e})", where) from e
    schema = pf.schema_arrow
    schema = pa.schema([schema.field(c) for c in columns])
    return pa.Table.from_batches(parts, schema=schema) if parts else schema.empty_table()


def finish_batch(key: str, epoch: int, index: int, table: pa.Table) -> tuple[dict, float, float]:
    """Convert a cut batch to numpy and apply the transform; returns ``(batch, convert_s, transform_s)``.

    Raises:
        TransformError: The transform raised (its traceback is in the message and ``__cause__``) or
            returned something other than a dict of equal-length columns.
    """
    ctx = _CONTEXTS[key]
    t0 = time.perf_counter()
    if not ctx.with_row_ids:
        table = table.drop_columns([ROW_GROUP_COLUMN, ROW_COLUMN])
    batch = to_numpy(table, ragged=ctx.ragged, strings=ctx.strings, masks=ctx.masks)
    t1 = time.perf_counter()
    if ctx.transform is None:
        return batch, t1 - t0, 0.0
    name = getattr(ctx.transform, "__qualname__", repr(ctx.transform))
    try:
        if ctx.transform_takes_rng:
            out = ctx.transform(batch, transform_rng(ctx.seed, epoch, ctx.rank, ctx.world_size, index))
        else:
            out = ctx.transform(batch)
    except Exception as e:
        text = "".join(traceback.format_exception(e))
        raise TransformError(
            f"transform {name} raised {type(e).__name__}: {e} (epoch {epoch}, batch {index})\n\n"
            f"transform traceback:\n{text}"
        ) from e
    return check_output(out, name), t1 - t0, time.perf_counter() - t1


def check_output(out, name: str) -> dict:
    """Check a transform's result: a mapping of equal-length columns.

    Raises:
        TransformError: Not a mapping, a scalar column, or columns of unequal lengths (all named).
    """
    if not isinstance(out, Mapping):
        raise TransformError(f"transform {name} must return a dict of columns, it returned {type(out).__name__}")
    lengths = {}
    for k, v in out.items():
        try:
            lengths[k] = len(v)
        except TypeError as e:
            raise TransformError(f"transform {name} returned column {k!r} without a length ({type(v).__name__})") from e
    # Ragged values (``col`` next to ``col.offsets``) are flat, offsets hold one entry more than rows, and
    # the item offsets of two-level columns (``col.value_offsets``) follow the items, not the rows.
    rows = {k: n - 1 if k.endswith(".offsets") else n for k, n in lengths.items()
            if k + ".offsets" not in out and not k.endswith(".value_offsets")}
    if len(set(rows.values())) > 1:
        shown = ", ".join(f"{k!r}: {n}" for k, n in rows.items())
        raise TransformError(f"transform {name} returned columns of unequal lengths (rows per column: {shown})")
    return dict(out)


__all__ = ["ROW_COLUMN", "ROW_GROUP_COLUMN", "ReadContext", "finish_batch", "install", "read_piece", "takes_rng"]
