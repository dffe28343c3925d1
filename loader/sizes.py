"""Decoded sizes: how many bytes the selected columns of a row group take once decoded into Arrow.

The manifest records each row group's Parquet ``total_byte_size``: its bytes after encoding, before
compression. For plain-encoded columns that is close to the decoded size, but a dictionary-encoded column
(categorical strings: the Spark job's and ``write_cache``'s default for columns of few distinct values)
decodes to many times it (an audit measured 1.7 MiB in the manifest against 22 MiB decoded), and a selection
of a few columns decodes to a fraction of it. The reader sizes its windows, slices and ready queue from
decoded bytes, so it measures the ratio once, when it is made: it decodes the first rows (at most
:data:`SAMPLE_ROWS`) of the first non-empty row group with the selected columns, in a streamed read that
fetches only the footer and the first pages (a remote file with a local file cache is fetched into the cache
first, as its first read would, without starting the cache's prefetch threads), and scales every row group's
manifest bytes by the decoded bytes per manifest byte found there (:func:`decoded_scale`).

The ratio depends only on the data and the selection, so every rank, pool and worker count plans the same
windows and the shuffle stays deterministic. Since the first rows may be unlike the rest, it is never below
the selected columns' share of the row group's Parquet bytes (from the footer). A file that cannot be read
as Parquet falls back to the manifest's bytes (a scale of 1): the read of that row group reports the damage
when it comes. Remote storage that fails after retries fails the reader's construction instead (a plan made
from other numbers would give other batches).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import Dataset
from .errors import LarderError, RemoteError
from .plan import MIN_MIX, size_text, window_size_for
from .streams import stream_buffer_for

SAMPLE_ROWS = 1024
"""Rows decoded to measure the decoded size of a row (from the front of the first non-empty row group)."""
_SAMPLE_BUFFER = 64 << 10  # read buffer per column for the sample: its first pages, not the whole chunks


def decoded_scale(ds: Dataset, columns: list[str]) -> float:
    """Decoded bytes of ``columns`` per byte of the manifest's ``uncompressed_bytes``, measured on a sample.

    The sample's first rows may be unlike the rest (a column that starts out null, data sorted by length), so
    the ratio is never below the selected columns' share of the row group's Parquet bytes (from its footer):
    a column decodes to at least about its plain-encoded bytes; only dictionary encoding makes it larger.

    Returns:
        The ratio (1.0 when there is nothing to measure, or the first file cannot be read as Parquet: a damaged
        file, which the read of that row group then reports).

    Raises:
        RemoteError: Remote storage failed (after retries): not taken as a reason to plan other windows, which
            would make the batches depend on an outage.
    """
    groups = [g for f in ds.files for g in f.row_groups]
    index = next((i for i, g in enumerate(groups) if g.num_rows and g.uncompressed_bytes), None)
    if index is None or not columns:
        return 1.0
    group = groups[index]
    file_index, local = ds.row_group_index()[index]
    # Through the dataset's checked read path: a remote file goes to the local file cache (if any) as it would
    # for its first read (so nothing is read twice and a warm cache needs no storage), but without starting the
    # cache's prefetch threads from the reader's constructor.
    quiet = ds.file_cache.without_prefetch() if ds.file_cache is not None else contextlib.nullcontext()
    try:
        with quiet:
            pf = ds.open_file(ds.files[file_index], pre_buffer=False, buffer_size=_SAMPLE_BUFFER)
        try:
            share = _selected_share(pf, local, columns)
            batch = next(pf.iter_batches(batch_size=min(SAMPLE_ROWS, group.num_rows), row_groups=[local],
                                         columns=list(columns), use_threads=False), None)
        finally:
            pf.close(force=True)
    except RemoteError:
        raise
    except (LarderError, OSError, pa.ArrowException, ValueError):  # reported by the read of that row group
        return 1.0
    if batch is None or not batch.num_rows:
        return 1.0
    decoded_per_row = max(1.0, batch.nbytes / batch.num_rows)
    return max(decoded_per_row / (group.uncompressed_bytes / group.num_rows), share)


def _selected_share(pf: pq.ParquetFile, row_group: int, columns: list[str]) -> float:
    """The selected columns' share of a row group's Parquet bytes (after encoding, before compression)."""
    rg = pf.metadata.row_group(row_group)
    wanted, leaf, selected = set(columns), 0, 0
    for field in pf.schema_arrow:
        n = leaf_count(pa.schema([field]))
        if field.name in wanted:
            selected += sum(rg.column(i).total_uncompressed_size for i in range(leaf, leaf + n))
        leaf += n
    return selected / max(1, sum(rg.column(i).total_uncompressed_size for i in range(rg.num_columns)))


def leaf_count(schema: pa.Schema) -> int:
    """Parquet leaf columns of ``schema``: one per primitive value, through lists, maps and structs (a stream
    of a row group keeps a read buffer and a page per leaf)."""

    def leaves(t: pa.DataType) -> int:
        if pa.types.is_struct(t):
            return sum(leaves(t.field(i).type) for i in range(t.num_fields)) or 1
        if pa.types.is_map(t):
            return leaves(t.key_type) + leaves(t.item_type)
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or (
                pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
            return leaves(t.value_type)
        return 1

    return sum(leaves(f.type) for f in schema)


PAGE_BYTES = 1 << 20
"""Parquet's default data page size (pyarrow's and parquet-mr's): what a stream holds of each column at once."""


def stream_overhead(leaves: int, buffer_size: int, group_bytes: float) -> float:
    """Bytes one stream of a row group holds besides the rows it hands out: per Parquet column, its read buffer
    and its current page, still encoded (at most :data:`PAGE_BYTES`, at most the column's share of the row
    group's Parquet bytes ``group_bytes``: on a wide table of small column chunks, a stream holds about its
    whole row group in pages)."""
    return leaves * buffer_size + min(leaves * PAGE_BYTES, group_bytes)


@dataclass(frozen=True)
class Layout:
    """How a reader cuts its windows (:func:`plan_layout`).

    Attributes:
        window: Pieces per shuffle window.
        max_piece_rows: Longest piece in rows; None: whole row groups.
        row_bytes: Decoded bytes per row of the selection (mean).
        leaves: Parquet leaf columns of the selection.
    """

    window: int
    max_piece_rows: int | None
    row_bytes: float
    leaves: int


def plan_layout(ds: Dataset, columns: list[str], *, budget: int, shuffle: bool, shuffle_buffer: int | None,
                world_size: int, decoded_cache: bool) -> Layout:
    """Choose a reader's windows from the decoded sizes (:func:`decoded_scale`) and ``budget``, warning when the
    budget cannot hold what was asked (see :func:`loader.plan.window_size_for`)."""
    groups = [g for f in ds.files for g in f.row_groups]
    scale = decoded_scale(ds, columns)  # decoded bytes of the selection per manifest byte
    encoded_bytes = sum(g.uncompressed_bytes for g in groups) / max(1, len(groups))  # Parquet's, as in its pages
    group_bytes = encoded_bytes * scale
    group_rows = sum(g.num_rows for g in groups) / max(1, len(groups))
    num_groups = math.ceil(len(groups) / world_size) + (world_size > 1)  # a rank's share (+ a part)
    # Shuffled batches mix 8 row groups or more: with a budget too small for 8 whole ones, windows interleave
    # slices (slower to decode, but the shuffle keeps its quality). The decoded cache holds whole row groups
    # only: with it, windows stay whole, and a skewed large row group is read whole.
    min_mix = MIN_MIX if shuffle and not decoded_cache else 1
    window, max_piece_rows = window_size_for(
        group_rows, group_bytes, shuffle_buffer=shuffle_buffer, window_bytes=budget // 6, num_groups=num_groups,
        min_mix=min_mix,
        largest_group_bytes=0.0 if decoded_cache else max((g.uncompressed_bytes for g in groups), default=0) * scale,
        largest_row_bytes=max((g.uncompressed_bytes / g.num_rows for g in groups if g.num_rows), default=0) * scale,
    )
    if decoded_cache and max_piece_rows is not None:
        warnings.warn(
            f"row groups of about {size_text(group_bytes)} (decoded) are larger than a window's share of "
            f"memory_budget={budget} ({size_text(budget // 6)}), so they are streamed in slices, and "
            "decoded_cache_dir, which keeps whole row groups, is not used; raise memory_budget to use it",
            UserWarning, stacklevel=4,
        )
    leaves = leaf_count(pa.schema([ds.schema.field(c) for c in columns]))
    stream_buffer = stream_buffer_for(budget // 6, window, leaves)
    row_bytes = max(1.0, group_bytes / max(1.0, group_rows))
    warn_about_windows(window, max_piece_rows, budget=budget, mix=min(min_mix, num_groups) if shuffle and
                       shuffle_buffer is None else 1, row_bytes=row_bytes, columns=columns, leaves=leaves,
                       stream_buffer=stream_buffer, group_bytes=encoded_bytes)
    return Layout(window, max_piece_rows, row_bytes, leaves)


def warn_about_windows(window: int, max_piece_rows: int | None, *, budget: int, mix: int, row_bytes: float,
                       columns: list[str], leaves: int, stream_buffer: int, group_bytes: float) -> None:
    """Warn when the budget cannot hold what the reader was asked for: rows so large that a window mixes fewer
    than ``mix`` row groups, or streams whose buffers and pages (``group_bytes``: Parquet bytes of a row group,
    as encoded) alone take more than ``budget``."""
    if window < mix:
        warnings.warn(
            f"rows of about {size_text(row_bytes)} (decoded, {', '.join(columns)}) are so large that a shuffle "
            f"window's share of memory_budget={budget} ({size_text(budget // 6)}) holds only {window}: batches "
            f"mix at most {window} row groups instead of {mix}; raise memory_budget for a better shuffle",
            UserWarning, stacklevel=5,
        )
    overhead = window * stream_overhead(leaves, stream_buffer, group_bytes)
    if max_piece_rows is not None and overhead > budget:  # the budget itself cannot hold them
        warnings.warn(
            f"memory_budget={budget} ({size_text(budget)}) is small for these row groups: the reader streams "
            f"slices of {window} of them at a time, and each stream holds a read buffer and a page for each of its "
            f"{leaves} Parquet columns, about {size_text(overhead)} in all, more than the whole budget; "
            f"raise memory_budget (to {size_text(2 * overhead)} or more) or select fewer columns",
            UserWarning, stacklevel=5,
        )


__all__ = ["PAGE_BYTES", "SAMPLE_ROWS", "Layout", "decoded_scale", "leaf_count", "plan_layout", "stream_overhead",
           "warn_about_windows"]
