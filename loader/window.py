"""Shuffle windows: assembling a window from its pieces, and gathering, converting and splitting batches.

A shuffled window keeps its small columns contiguous and its large string / binary columns as one
``binary_view`` array over the pieces' own value buffers (only 16-byte views are written). A batch is the
window's rows in the order of the window's permutation, gathered once: an Arrow ``take`` of the plain
columns and, for viewed columns, one copy of the rows' bytes straight from the pieces. Thread workers cut
and convert several consecutive batches at a time and split the result into exactly the per-batch forms
(:func:`loader.convert.split_batch`). An unshuffled window is kept as read and cut in zero-copy slices.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from .convert import as_arrow
from .plan import EpochPlan, window_permutation
from .tasks import ROW_ID_FIELDS, convert_split, finish_batch, transform_batch

if TYPE_CHECKING:
    from .pipeline import Setup


class Window(NamedTuple):
    """A buffered window: its rows as read, their stream order, stream offset, and the rows' sources.

    ``groups`` and ``ids`` are in stream order (already permuted), ``rows`` in read order. In a shuffled
    window, large string / binary columns are kept as one ``binary_view`` array over the pieces' own value
    buffers (``views`` holds their positions, ``schema`` the columns' real types): a batch gathers their
    bytes once, straight from the pieces, instead of a contiguous copy of the window being made first.
    """

    rows: pa.RecordBatch | pa.Table
    perm: np.ndarray | None  # stream position -> row of ``rows`` (None: unshuffled, same order)
    first: int
    groups: np.ndarray  # global row group of each row
    ids: np.ndarray | None  # row of each row in its row group (only when the reader keeps row ids)
    schema: pa.Schema | None = None  # the batch schema when ``rows`` holds view columns
    views: frozenset = frozenset()  # columns of ``rows`` held as binary views
    local: np.ndarray | None = None  # piece of each row, stream order (None: two pieces share a row group)
    plain: tuple[int, ...] = ()  # the other columns of ``rows`` (gathered with one take)

    @property
    def stop(self) -> int:
        return self.first + self.rows.num_rows

    def gather(self, a: int, b: int) -> pa.RecordBatch | pa.Table:
        """Rows ``a..b`` of the window's stream order: a zero-copy slice when unshuffled, else one gather
        per column (the batch owns its memory)."""
        if self.perm is None:
            return self.rows.slice(a, b - a)
        idx = self.perm[a:b]
        if not self.views:
            return self.rows.take(as_arrow(idx))
        taken = iter(self.rows.select(list(self.plain)).take(as_arrow(idx)).columns if self.plain else ())
        columns = [
            _take_views(self.rows.column(i), idx, field.type) if i in self.views else next(taken)
            for i, field in enumerate(self.schema)
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


def assemble(parts: list, setup: Setup, plan: EpochPlan, w_index: int, first: int, with_ids: bool) -> Window:
    """Assemble a window's pieces ``(table, group, ids)``.

    A shuffled window is made contiguous column by column (each column's pieces released once copied),
    except for large string / binary columns, which become views of the pieces' buffers (no copy); each
    batch is then one gather of its rows. An unshuffled window is kept as read and cut in zero-copy slices.
    """
    table = pa.concat_tables([t for t, _, _ in parts])
    piece_groups = [g for _, g, _ in parts]
    sizes = [t.num_rows for t, _, _ in parts]
    groups = np.repeat(np.array(piece_groups, dtype=np.int64), sizes)
    # Pieces of distinct row groups (the usual case): a batch's distinct row groups are its distinct pieces,
    # counted with a bincount of small piece numbers instead of a sort.
    local = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes) if len(set(piece_groups)) == len(sizes) else None
    ids = np.concatenate([i for _, _, i in parts]) if with_ids else None
    parts.clear()  # the window's table holds the pieces now: let _combine release them column by column
    perm = window_permutation(
        table.num_rows, setup.seed, plan.epoch, plan.rank, plan.world_size, w_index, setup.shuffle
    )
    if perm is not None and table.num_rows:
        schema, columns = table.schema, table.columns
        del table
        combined, views = _combine(columns)
        groups = groups[perm]
        local = local[perm] if local is not None else None
        ids = ids[perm] if with_ids else None
        if views:
            rows = pa.RecordBatch.from_arrays(combined, names=schema.names)
            plain = tuple(i for i in range(len(combined)) if i not in views)
            return Window(rows, perm, first, groups, ids, schema, frozenset(views), local, plain)
        return Window(pa.RecordBatch.from_arrays(combined, schema=schema), perm, first, groups, ids, local=local)
    return Window(table, perm, first, groups, ids, local=local)


_VIEW_MIN_BYTES = 1 << 20  # smaller columns are concatenated by Arrow (cheap), larger ones viewed
_BINARY_KINDS = {  # type id -> (zero-copy binary reinterpretation, its view type)
    pa.binary().id: (pa.binary(), pa.binary_view()),
    pa.string().id: (pa.binary(), pa.binary_view()),
    pa.large_binary().id: (pa.large_binary(), pa.binary_view()),
    pa.large_string().id: (pa.large_binary(), pa.binary_view()),
}


def _combine(columns: list[pa.ChunkedArray]) -> tuple[list[pa.Array], list[int]]:
    """One array per column, one column at a time, releasing each column's pieces once done (peak memory:
    the window plus its largest copied column, not two windows). Large string / binary columns without
    nulls become ``binary_view`` arrays over the pieces' value buffers; returns their positions too."""
    out, views = [], []
    for i, column in enumerate(columns):
        columns[i] = None
        viewed = _as_views(column)
        if viewed is not None:
            out.append(viewed)
            views.append(i)
        elif column.num_chunks == 1:
            out.append(column.chunk(0))
        else:
            out.append(pa.concat_arrays(column.chunks))
        del column
    return out, views


def _as_views(column: pa.ChunkedArray) -> pa.Array | None:
    """A multi-chunk string / binary column without nulls as one ``binary_view`` array that refers to the
    chunks' value buffers (only 16-byte views are written), or None where this does not apply. Strings
    are reinterpreted as binary first: a cast to ``string_view`` would re-validate their UTF-8."""
    kinds = _BINARY_KINDS.get(column.type.id)
    if kinds is None or column.num_chunks < 2 or column.null_count or column.nbytes < _VIEW_MIN_BYTES:
        return None
    plain, view = kinds
    return pa.concat_arrays([chunk.view(plain).cast(view) for chunk in column.chunks])


def _take_views(column: pa.Array, idx: np.ndarray, out_type: pa.DataType) -> pa.Array:
    """Rows ``idx`` of a ``binary_view`` array as a plain array of ``out_type`` (one copy of their bytes).

    The views (16 bytes per row, no nulls) are gathered with numpy, then Arrow's cast copies each row's
    bytes from whichever piece's buffer holds them into one new contiguous buffer.
    """
    buffers = column.buffers()
    views = np.frombuffer(buffers[1], dtype=np.uint64).reshape(-1, 2)[column.offset : column.offset + len(column)]
    taken = pa.Array.from_buffers(pa.binary_view(), len(idx), [None, pa.py_buffer(views[idx]), *buffers[2:]])
    plain = _BINARY_KINDS[out_type.id][0]
    out = taken.cast(plain)
    return out if plain == out_type else out.view(out_type)


def cut(spans, lo: int, hi: int, with_ids: bool) -> tuple[pa.RecordBatch | pa.Table, np.ndarray]:
    """Rows ``[lo, hi)`` of the rank's stream from the buffered windows ``spans``, and their row groups.

    Shuffled windows are gathered (a batch-sized copy: the batch owns its memory, and a window is freed
    as soon as its last batch is cut), unshuffled ones sliced without a copy. With row ids, ``_row_group``
    and ``_row`` columns are appended.
    """
    parts, groups, ids = [], [], []
    for w in spans:
        a, b = max(lo, w.first) - w.first, min(hi, w.stop) - w.first
        if a < b:
            parts.append(w.gather(a, b))
            groups.append(w.groups[a:b])
            if with_ids:
                ids.append(w.ids[a:b])
    if len(parts) == 1:
        rows, group = parts[0], groups[0]
    else:
        rows = pa.concat_tables([p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts])
        group = np.concatenate(groups)
    if with_ids:
        ids = np.concatenate(ids) if len(ids) > 1 else ids[0]
        group_field, row_field = ROW_ID_FIELDS  # int64 both, like the window's groups and ids
        rows = rows.append_column(group_field, as_arrow(group)).append_column(row_field, as_arrow(ids))
    return rows, group


def spans_of(segments: deque, lo: int, hi: int) -> tuple[Window, ...]:
    """The buffered windows holding rows of ``[lo, hi)``; windows wholly before ``hi`` leave ``segments``
    (freed once the batches that refer to them are cut)."""
    spans = tuple(w for w in segments if w.first < hi and w.stop > lo)
    while segments and segments[0].stop <= hi:
        segments.popleft()
    return spans


def distinct(spans, lo: int, hi: int) -> int:
    """Distinct row groups among the rows ``[lo, hi)``."""
    if len(spans) == 1 and spans[0].local is not None:
        w = spans[0]
        return int(np.count_nonzero(np.bincount(w.local[lo - w.first : hi - w.first])))
    seen: set = set()  # a set of a batch's ~100 ids: a few us, where np.unique costs several times that
    for w in spans:
        seen.update(w.groups[max(lo, w.first) - w.first : min(hi, w.stop) - w.first].tolist())
    return len(seen)


def cut_and_finish(key: str, epoch: int, group: tuple, with_ids: bool,
                   transform: bool = True) -> list[tuple[dict, float, float, float]]:
    """Cut batches ``(index, windows, lo, hi)`` from their windows and finish each, in a thread worker (the
    windows are shared memory). The group's consecutive rows are gathered and converted once and split
    into the batches (exactly the per-batch forms, each batch its own disjoint part of the memory): one set
    of Arrow and numpy calls per task instead of per batch, which keeps the GIL free for the other workers.

    With ``transform`` False the batches are only cut and converted (the reader runs its transform
    elsewhere: in a process pool).

    Returns one ``(batch, convert_s, transform_s, gather_s)`` per batch, in order; a batch that fails ends
    the list with its exception (raised by the consumer after the batches before it).
    """
    out: list = []
    if len(group) > 1:
        try:
            t0 = time.perf_counter()
            spans = tuple({id(w): w for _, ws, _, _ in group for w in ws}.values())
            first, last = group[0][2], group[-1][3]
            rows, _ = cut(spans, first, last, with_ids)
            t1 = time.perf_counter()
            parts = convert_split(key, rows, [lo - first for _, _, lo, _ in group] + [last - first])
            t2 = time.perf_counter()
        except Exception:  # noqa: BLE001 - redo batch by batch, so the failing batch is the one reported
            pass
        else:
            share = 1.0 / len(group)
            for (index, _, _, _), part in zip(group, parts, strict=True):
                try:
                    batch, transform_s = transform_batch(key, epoch, index, part) if transform else (part, 0.0)
                except Exception as e:  # the batches before it are delivered first, then this is raised
                    out.append(e)
                    break
                out.append((batch, (t2 - t1) * share, transform_s, (t1 - t0) * share))
            return out
    for index, spans, lo, hi in group:
        try:
            t0 = time.perf_counter()
            rows, _ = cut(spans, lo, hi, with_ids)
            gathered = time.perf_counter() - t0
            out.append((*finish_batch(key, epoch, index, rows, transform), gathered))
        except Exception as e:  # the batches before it are delivered first, then this is raised
            out.append(e)
            break
    return out


__all__ = ["Window", "assemble", "cut", "cut_and_finish", "distinct", "spans_of"]
