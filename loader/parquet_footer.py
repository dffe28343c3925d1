"""A Parquet file's footer and the byte ranges of its column chunks, read without decoding any data.

The manifest's checksums (:mod:`loader.manifest`) are computed over these: the footer's bytes, and each column
chunk's range. Plain functions over an open file or its ``FileMetaData``; no manifest types.
"""

from __future__ import annotations

import struct

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CorruptFileError


def read_footer(f, size: int, where: str) -> tuple[bytes, int]:
    """Read the Parquet footer (metadata + length + magic) from an open random-access file.

    Returns:
        ``(footer bytes, footer size)``.

    Raises:
        CorruptFileError: The file is too small or lacks the ``PAR1`` magic.
    """
    if size < 12:
        raise CorruptFileError(f"{where}: {size} bytes is too small for a Parquet file", where)
    f.seek(size - 8)
    tail = f.read(8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise CorruptFileError(f"{where}: no Parquet footer magic (truncated or not Parquet)", where)
    (meta_len,) = struct.unpack("<I", tail[:4])
    footer_size = meta_len + 8
    if footer_size + 4 > size:
        raise CorruptFileError(f"{where}: footer length {meta_len} exceeds the file size {size}", where)
    f.seek(size - footer_size)
    return f.read(footer_size), footer_size


def chunk_layout(f, size: int, where: str) -> tuple[bytes, int, list[tuple[int, int, int, int]]]:
    """Read a Parquet file's footer (a small ranged read) and list its column chunks.

    Returns:
        ``(footer, footer_size, ranges)`` with ``(offset, length, row group, column)`` per column chunk.

    Raises:
        CorruptFileError: No valid footer, or a chunk lies outside the file.
    """
    footer, footer_size = read_footer(f, size, where)
    meta = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    ranges = []
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for c in range(rg.num_columns):
            start, length = chunk_range(rg.column(c))
            if not chunk_inside(start, length, size):
                raise CorruptFileError(f"{where}: row group {i} column {c} lies outside the file", where)
            ranges.append((start, length, i, c))
    return footer, footer_size, ranges


def chunk_range(column) -> tuple[int, int]:
    """``(offset, length)`` of a column chunk's bytes (``ColumnChunkMetaData``), dictionary page included."""
    start = column.data_page_offset
    if column.has_dictionary_page and column.dictionary_page_offset:
        start = min(start, column.dictionary_page_offset)
    return start, column.total_compressed_size


def chunk_inside(start: int, length: int, size: int) -> bool:
    """Whether a column chunk's byte range lies inside a file of ``size`` bytes (a footer saying otherwise is
    corrupt)."""
    return start >= 0 and length >= 0 and start + length <= size


def row_group_sizes(meta: pq.FileMetaData) -> list[tuple[int, int]]:
    """``(rows, compressed bytes)`` of each row group (the manifest's measure of a row group against the
    block: the sum of its column chunks' compressed sizes)."""
    out = []
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        out.append((rg.num_rows, sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))))
    return out
