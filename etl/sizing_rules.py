"""The sizing job's pure rules: page size, which written files missed the block, the next attempt's bytes per
row, whether a cut attempt is kept, and a row's bytes before encoding (used to give rows larger than the block
row groups of their own). :mod:`etl.sizing` writes and measures; these decide from what it measured.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from . import arrow_write
from .source import quote_name

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql.types import DataType, StructType

RETRY_MARGIN = 0.02  # the next attempt aims at the worst misfit's bytes per row plus this
MAX_CUT_SHARE = 0.1  # an attempt whose misfits were cut into groups under the block is kept up to this share


def default_page_size(block_size: int, num_columns: int) -> int:
    """``block / (64 × columns)``, between 8KiB and 128KiB.

    parquet-mr decides when to cut a row group from its buffered size, which counts every column's open
    page uncompressed (and a page is checked only every 100 rows); with this page size the open pages stay
    a small share of blocks of 4 MiB and more, so files sized to ``fill × block`` stay one row group.
    Smaller pages compress worse; below ~4 MiB blocks parquet-mr may still cut a small tail group.
    """
    return max(8 << 10, min(128 << 10, block_size // (64 * max(1, num_columns))))


def too_big(
    files: list[list[tuple[int, int]]], block: int, sizes: list[int] | None = None
) -> list[tuple[int, int]]:
    """``(rows, bytes)`` of the files that did not fit one row group under the block: a row group over the
    block, or more bytes than a block in all (parquet-mr then cut a tail group). Files whose row groups
    over the block are single rows are not counted: no layout can split a row.

    A file's bytes are its whole size when ``sizes`` gives it (parallel to ``files``): its Parquet footer, page
    indexes and magic count too (on a 64 KiB block they are ~5% of a file, enough to take files of groups
    under the block over it, and parquet-mr then cuts them in two); else the sum of its row groups' bytes.
    """
    bad = []
    for i, groups in enumerate(files):
        rows = sum(r for r, _ in groups)
        nbytes = sizes[i] if sizes is not None else sum(c for _, c in groups)
        if rows > 1 and (group_over_block(groups, block) or (nbytes > block and not any(c > block for _, c in groups))):
            bad.append((rows, nbytes))
    return bad


def group_over_block(groups: list[tuple[int, int]], block: int) -> bool:
    """Whether a file holds a row group of several rows over the block (which a rewrite must fix)."""
    return any(c > block and r > 1 for r, c in groups)


def next_bytes_per_row(bpr: float, bad: list[tuple[int, int]], measured: float) -> float:
    """The estimate of the next attempt: the bytes per row of the worst file that did not fit, plus
    :data:`RETRY_MARGIN` (never below this attempt's estimate or the measured average).

    Not compounded: every attempt starts from what a file actually held, so with skewed rows the
    attempts converge on the file size the spread of the data allows instead of multiplying the
    estimate by the same ratio again (which shrank files to a few rows).
    """
    worst = max(c / max(1, r) for r, c in bad)
    return max(bpr, measured, worst) * (1 + RETRY_MARGIN)


def last_bytes_per_row(bpr: float, over: list[tuple[int, int]], measured: float) -> float:
    """The estimate of the last attempt when groups of several rows still came out over the block: this
    attempt's estimate times the worst misfit's excess over the average (compounded, so files shrink
    enough that the last write fits, as :func:`next_bytes_per_row` alone may not with skewed rows)."""
    worst = max(c / max(1, r) for r, c in over)
    return max(measured, bpr) * max(1 + RETRY_MARGIN, worst / max(measured, arrow_write.MIN_BYTES_PER_ROW))


def raw_row_bytes(schema: StructType) -> Column:
    """A Spark expression of a row's bytes before encoding: strings and binaries by their length, arrays
    by their items, other values by their width (nulls count 0)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, BinaryType, StringType

    def length(c: Column) -> Column:
        return F.coalesce(F.octet_length(c).cast("long"), F.lit(0).cast("long"))

    def width(t: DataType) -> int:
        return {"boolean": 1, "byte": 1, "short": 2, "integer": 4, "float": 4, "date": 4, "decimal": 16}.get(
            t.typeName(), 8)

    fixed, total = 0, F.lit(0).cast("long")
    for f in schema.fields:
        c, t = F.col(quote_name(f.name)), f.dataType
        item = t.elementType if isinstance(t, ArrayType) else None
        if isinstance(t, (StringType, BinaryType)):
            total = total + length(c)
        elif isinstance(item, (StringType, BinaryType)):
            total = total + F.coalesce(F.aggregate(c, F.lit(0).cast("long"), lambda acc, x: acc + length(x)), F.lit(0))
        elif item is not None:
            total = total + F.when(c.isNotNull(), F.size(c) * width(item)).otherwise(0).cast("long")
        else:
            fixed += width(t)
    return total + F.lit(fixed)


def keep_cut_files(
    per_file: list[list[tuple[int, int]]], block: int, shrink: float, sizes: list[int] | None = None
) -> bool:
    """Whether an attempt whose misfits were all cut into row groups under the block is kept.

    Every row group is under the block either way (on HDFS parquet-mr also aligns groups to blocks);
    the question is only which fills more. Kept when at most :data:`MAX_CUT_SHARE` of the files were cut,
    or when the median fill of the groups written is at least that of the rewrite, predicted by shrinking
    every file by ``shrink`` (the ratio of the two estimates). With a few rows much larger than the rest
    (a row a good share of the block), files with fewer rows mostly hold none of them and fill little.
    A file's bytes are its whole size when ``sizes`` gives it, as in :func:`too_big`.
    """
    totals = sizes if sizes is not None else [sum(c for _, c in f) for f in per_file]
    cut = sum(1 for total in totals if total > block)
    if cut <= MAX_CUT_SHARE * len(per_file):
        return True
    now = statistics.median(c for f in per_file for _, c in f)
    rewritten = statistics.median(min(block, sum(c for _, c in f) * shrink) for f in per_file)
    return now >= rewritten


__all__ = ["MAX_CUT_SHARE", "RETRY_MARGIN", "default_page_size", "group_over_block", "keep_cut_files",
           "last_bytes_per_row", "next_bytes_per_row", "raw_row_bytes", "too_big"]
