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
from .plan import MIN_MIX, STREAMS, size_text, window_size_for
from .streams import stream_buffer_for

SAMPLE_ROWS = 1024
"""Rows decoded to measure the decoded size of a row (from the front of the first non-empty row group)."""
_SAMPLE_BUFFER = 64 << 10  # read buffer per column for the sample: its first pages, not the whole chunks


def decoded_scale(ds: Dataset, columns: list[str]) -> float:
    """Decoded bytes of ``columns`` per byte of the manifest's ``uncompressed_bytes`` (:func:`measure`)."""
    return measure(ds, columns)[0]


def measure(ds: Dataset, columns: list[str]) -> tuple[float, tuple[float, ...] | None]:
    """Decoded bytes of ``columns`` per byte of the manifest's ``uncompressed_bytes``, measured on a sample.

    The sample's first rows may be unlike the rest (a column that starts out null, data sorted by length), so
    the ratio is never below the selected columns' share of the row group's Parquet bytes (from its footer):
    a column decodes to at least about its plain-encoded bytes; only dictionary encoding makes it larger.

    Returns:
        The ratio (1.0 when there is nothing to measure, or the first file cannot be read as Parquet: a damaged
        file, which the read of that row group then reports); and each selected Parquet leaf column's share of
        the sampled row group's Parquet bytes, from its footer (None when the footer was not read).

    Raises:
        RemoteError: Remote storage failed (after retries): not taken as a reason to plan other windows, which
            would make the batches depend on an outage.
    """
    groups = [g for f in ds.files for g in f.row_groups]
    index = next((i for i, g in enumerate(groups) if g.num_rows and g.uncompressed_bytes), None)
    if index is None or not columns:
        return 1.0, None
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
            shares = leaf_shares(pf, local, columns)
            batch = next(pf.iter_batches(batch_size=min(SAMPLE_ROWS, group.num_rows), row_groups=[local],
                                         columns=list(columns), use_threads=False), None)
        finally:
            pf.close(force=True)
    except RemoteError:
        raise
    except (LarderError, OSError, pa.ArrowException, ValueError):  # reported by the read of that row group
        return 1.0, None
    if batch is None or not batch.num_rows:
        return 1.0, shares
    decoded_per_row = max(1.0, batch.nbytes / batch.num_rows)
    return max(decoded_per_row / (group.uncompressed_bytes / group.num_rows), sum(shares)), shares


def leaf_shares(pf: pq.ParquetFile, row_group: int, columns: list[str]) -> tuple[float, ...]:
    """Each Parquet leaf column of the selected ``columns``: its share of a row group's Parquet bytes (after
    encoding, before compression)."""
    rg = pf.metadata.row_group(row_group)
    wanted, leaf, selected = set(columns), 0, []
    for field in pf.schema_arrow:
        n = leaf_count(pa.schema([field]))
        if field.name in wanted:
            selected.extend(rg.column(i).total_uncompressed_size for i in range(leaf, leaf + n))
        leaf += n
    total = max(1, sum(rg.column(i).total_uncompressed_size for i in range(rg.num_columns)))
    return tuple(size / total for size in selected)


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


def stream_overhead(leaves: int, buffer_size: int, group_bytes: float,
                    shares: tuple[float, ...] | None = None) -> float:
    """Bytes one stream of a row group holds besides the rows it hands out: per Parquet column, its read buffer
    and its current page, still encoded (at most :data:`PAGE_BYTES`, at most the column's share of the row
    group's Parquet bytes ``group_bytes``: on a wide table of small column chunks, a stream holds about its
    whole row group in pages). ``shares``: each column's share (:func:`leaf_shares`); without them, all
    ``leaves`` columns' pages are taken as up to :data:`PAGE_BYTES` each."""
    if shares is None:
        return leaves * buffer_size + min(leaves * PAGE_BYTES, group_bytes)
    return leaves * buffer_size + sum(min(PAGE_BYTES, share * group_bytes) for share in shares)


@dataclass(frozen=True)
class Layout:
    """How a reader cuts its windows (:func:`plan_layout`).

    Attributes:
        window: Pieces per shuffle window.
        max_piece_rows: Longest piece in rows; None: whole row groups.
        row_bytes: Decoded bytes per row of the selection (mean).
        leaves: Parquet leaf columns of the selection.
        window_bytes: A window's share of the budget (a sixth, less the streams' buffers and pages when
            row groups are streamed).
        stream_bytes: What the streams hold besides their rows (read buffers and pages: :func:`stream_overhead`),
            when row groups are streamed; else 0.
    """

    window: int
    max_piece_rows: int | None
    row_bytes: float
    leaves: int
    window_bytes: int
    stream_bytes: float = 0.0


def plan_layout(ds: Dataset, columns: list[str], *, budget: int, shuffle: bool, shuffle_buffer: int | None,
                world_size: int, decoded_cache: bool) -> Layout:
    """Choose a reader's windows from the decoded sizes (:func:`decoded_scale`) and ``budget``, warning when the
    budget cannot hold what was asked (see :func:`loader.plan.window_size_for`)."""
    groups = [g for f in ds.files for g in f.row_groups]
    scale, shares = measure(ds, columns)  # decoded bytes of the selection per manifest byte, columns' shares
    encoded_bytes = sum(g.uncompressed_bytes for g in groups) / max(1, len(groups))  # Parquet's, as in its pages
    group_bytes = encoded_bytes * scale
    group_rows = sum(g.num_rows for g in groups) / max(1, len(groups))
    num_groups = math.ceil(len(groups) / world_size) + (world_size > 1)  # a rank's share (+ a part)
    # Shuffled batches mix 8 row groups or more: with a budget too small for 8 whole ones, windows interleave
    # slices (slower to decode, but the shuffle keeps its quality). The decoded cache holds whole row groups
    # only: with it, windows stay whole, and a skewed large row group is read whole.
    min_mix = MIN_MIX if shuffle and not decoded_cache else 1
    leaves = leaf_count(pa.schema([ds.schema.field(c) for c in columns]))

    largest_group = 0.0 if decoded_cache else max((g.uncompressed_bytes for g in groups), default=0) * scale
    largest_row = max((g.uncompressed_bytes / g.num_rows for g in groups if g.num_rows), default=0) * scale

    def windows(window_bytes: int) -> tuple[int, int | None]:
        return window_size_for(group_rows, group_bytes, shuffle_buffer=shuffle_buffer, window_bytes=window_bytes,
                               num_groups=num_groups, min_mix=min_mix, largest_group_bytes=largest_group,
                               largest_row_bytes=largest_row)

    def streams_bytes(window: int, window_bytes: int) -> float:  # what the streams hold besides their rows
        return window * stream_overhead(leaves, stream_buffer_for(window_bytes, window, leaves), encoded_bytes, shares)

    window_bytes = budget // 6
    window, max_piece_rows = windows(window_bytes)
    if max_piece_rows is not None:
        # Streamed: each stream's read buffers and pages come out of the budget too. Three windows (one being
        # filled, two being cut) take half of it and the batches three eighths (batch_depths): the streams take
        # the eighth left, then from the windows' share, down to a quarter of it, or to a row of each stream if
        # more (below that, batches would stop mixing). Past that the reader takes more than the budget and
        # says so (warn_about_streams).
        floor = max(budget // 24, min(window_bytes, int(STREAMS * largest_row)))
        left = 5 * budget / 8 - streams_bytes(window, window_bytes)  # for the streams and three windows
        window_bytes = max(floor, min(window_bytes, int(left) // 3))
        window, max_piece_rows = windows(window_bytes)
    if decoded_cache and max_piece_rows is not None:
        warnings.warn(
            f"row groups of about {size_text(group_bytes)} (decoded) are larger than a window's share of "
            f"memory_budget={budget} ({size_text(window_bytes)}), so they are streamed in slices, and "
            "decoded_cache_dir, which keeps whole row groups, is not used; raise memory_budget to use it",
            UserWarning, stacklevel=4,
        )
    row_bytes = max(1.0, group_bytes / max(1.0, group_rows))
    warn_about_windows(window, budget=budget, window_bytes=window_bytes, row_bytes=row_bytes, columns=columns,
                       mix=min(min_mix, num_groups) if shuffle and shuffle_buffer is None else 1)
    overhead = 0.0 if max_piece_rows is None else streams_bytes(window, window_bytes)
    return Layout(window, max_piece_rows, row_bytes, leaves, window_bytes, overhead)


def warn_about_windows(window: int, *, budget: int, window_bytes: int, mix: int, row_bytes: float,
                       columns: list[str]) -> None:
    """Warn when rows are so large that a window's share of the budget (``window_bytes``) holds fewer than
    ``mix`` row groups."""
    if window < mix:
        warnings.warn(
            f"rows of about {size_text(row_bytes)} (decoded, {', '.join(columns)}) are so large that a shuffle "
            f"window's share of memory_budget={budget} ({size_text(window_bytes)}) holds only {window}: batches "
            f"mix at most {window} row groups instead of {mix}; raise memory_budget for a better shuffle",
            UserWarning, stacklevel=5,
        )


_ESTIMATE_MARGIN = 1.1
"""The reader warns that streams take it past its budget when its estimate is above the budget by this factor
or more: the estimate errs high by a few percent (measured against Arrow's peak on wide tables: 3-10%)."""


def warn_about_streams(layout: Layout, *, budget: int, batch_bytes: float) -> None:
    """Warn when streamed row groups make the reader take more than ``budget``: the streams' read buffers and
    pages (:attr:`Layout.stream_bytes`), three windows (one being filled, two being cut) and the finished
    batches (``batch_bytes``: :attr:`loader.plan.BatchDepths.peak_batch_bytes`) together."""
    if not layout.stream_bytes:
        return
    total = layout.stream_bytes + 3 * layout.window_bytes + batch_bytes
    if total > _ESTIMATE_MARGIN * budget:  # the estimate errs high (it counts three full windows)
        warnings.warn(
            f"memory_budget={budget} ({size_text(budget)}) is small for these row groups: the reader streams "
            f"slices of {layout.window} of them at a time, and each stream holds a read buffer and a page for each "
            f"of its {layout.leaves} Parquet columns, about {size_text(layout.stream_bytes)} in all; with the "
            f"shuffle windows and finished batches the reader takes about {size_text(total)}; raise memory_budget "
            f"(to {size_text(max(2 * layout.stream_bytes, total))} or more) or select fewer columns",
            UserWarning, stacklevel=4,
        )


__all__ = ["PAGE_BYTES", "SAMPLE_ROWS", "Layout", "decoded_scale", "leaf_count", "leaf_shares", "measure",
           "plan_layout", "stream_overhead", "warn_about_streams", "warn_about_windows"]
