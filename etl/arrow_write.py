"""The cache's data files encoded by pyarrow on the executors, through a two-stage exchange in the staging directory.

Spark's own path (a hash exchange of the laid-out rows, then parquet-mr) turns every row into an UnsafeRow
twice and encodes Parquet in Java; on the demo data that is most of the job. Here the rows stay columnar:

1. **Spill** (one task per input partition, ``mapInArrow``): every row carries its file number and in-file
   order key (:func:`etl.layout.assign_files` with ``exchange=False``). A task groups its Arrow batches by
   file and streams each file's rows into its own Arrow IPC slice ``_slices/<file>/<partition>.arrow``
   (written under a temporary name and renamed, so a retried or speculative task attempt replaces it whole).
2. **Encode** (one task per file): read the file's slices, order the rows by the key, encode the Parquet
   file in memory with pyarrow (one row group, page checksums, the conf's codec and page size), build its
   manifest entry from those bytes (sizes, whole-file, footer and column-chunk CRCs) and write it once.
   A file whose row group would exceed the block is cut into several row groups (reported back, so the
   caller rewrites with a better estimate), never written over the block: a row larger than the block
   goes first in its file as a row group of its own, the other rows keep their order in groups that fill
   the block (:func:`encode_within_block`).

The driver gets the entries back; nothing is read back from storage. An encode task holds one file's
rows in memory (decoded, then ordered) plus its encoded bytes: a few times the block size. Slices are
removed once every file is written (so a retried encode task still finds them; the staging directory holds
about the selection's uncompressed size on top of the files meanwhile); a killed run leaves them inside its
staging directory, which the next run deletes.
Executors need pyarrow (and pandas, which PySpark's Arrow path imports) in their Python.
"""

from __future__ import annotations

import glob
import math
import os
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader import encoding
from loader.manifest import FileInfo, file_info_from_bytes, row_group_sizes

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SLICES_DIR = "_slices"
MIN_BYTES_PER_ROW = 1 / 8  # a bit per row: the floor of a bytes-per-row figure (rows of a random bool and a
# small int compress to ~0.4 B); a file holds at most fill x block x 8 rows, which the encode task holds decoded
CUT_FILL = 0.95  # a file over the block is first cut into groups of this share of it


@dataclass(frozen=True)
class EncodeOptions:
    """How the executors encode the Parquet files.

    Attributes:
        columns: The codec and the per-column settings (:class:`loader.encoding.Encoding`; Spark's codec
            names are accepted).
        page_size: Data page size in bytes.
        block_size: The block size: no row group is written over it (files are cut into several instead).
    """

    columns: encoding.Encoding
    page_size: int
    block_size: int


def encode(table: pa.Table, options: EncodeOptions, row_group_rows: int | None = None) -> pa.Buffer:
    """``table`` as Parquet bytes (one row group unless ``row_group_rows``)."""
    per = max(1, row_group_rows or table.num_rows)
    return encode_runs(table, options, [min(per, table.num_rows - a) for a in range(0, table.num_rows, per)] or [0])


def encode_runs(table: pa.Table, options: EncodeOptions, runs: list[int]) -> pa.Buffer:
    """``table`` as Parquet bytes, one row group for each run of ``runs[i]`` consecutive rows."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, data_page_size=options.page_size, write_page_checksum=True,
                          **options.columns.parquet_options(table.schema)) as writer:
        start = 0
        for rows in runs:
            writer.write_table(table.slice(start, rows), row_group_size=max(1, rows))
            start += rows
    return sink.getvalue()


def group_bytes(data: pa.Buffer) -> list[tuple[int, int]]:
    """``(rows, compressed bytes)`` of each row group of Parquet file bytes (the manifest's measure)."""
    return row_group_sizes(pq.ParquetFile(pa.BufferReader(data)).metadata)


def measure(table: pa.Table, options: EncodeOptions, target: int, bytes_per_row: float | None = None
            ) -> tuple[int, int]:
    """``(rows, compressed bytes)`` of ``table`` (a sizing sample) encoded as the files will be.

    Without ``bytes_per_row``, as one row group. With it, in row groups of the rows a file will hold,
    ``target / bytes_per_row``, refined from what they measure (two or three encodings), counting the
    full groups only: a group's dictionaries and page headers cost more per row in a block-sized group
    than in one group of a sample several small blocks long (3.5% on the audit's data, so files planned
    from it overflowed the block).
    """
    per, rows, nbytes = None, table.num_rows, 0
    for _ in range(3 if bytes_per_row else 1):
        if bytes_per_row:
            per = max(1, math.floor(target / bytes_per_row))
        groups = group_bytes(encode(table, options, per))
        full = [g for g in groups if g[0] == per] or groups
        rows, nbytes = sum(r for r, _ in full), sum(c for _, c in full)
        bytes_per_row = max(MIN_BYTES_PER_ROW, nbytes / max(1, rows))
        if per == max(1, math.floor(target / bytes_per_row)):
            break
    return rows, nbytes


def encode_within_block(table: pa.Table, options: EncodeOptions) -> tuple[pa.Buffer, bool]:
    """Encode ``table`` as one row group, or as several when one would exceed the block.

    A file over the block is cut into parts (:func:`_parts`). Rows larger than the block then go first, each
    a row group of its own, and the other rows, in their order, are cut again by their own bytes: one huge
    row does not cut the rest of its file into small groups. Consecutive parts are joined into groups up to
    the block (a join that encodes over it is left in its parts).

    Returns:
        The bytes, and whether the file had to be cut into several row groups.
    """
    data = encode(table, options)
    rows, nbytes = group_bytes(data)[0]
    block = options.block_size
    if nbytes <= block or rows <= 1:
        return data, False
    parts = _parts(table, options, nbytes)
    huge = [a for a, _, c in parts if c > block]
    if huge:
        order = np.concatenate([huge, *(np.arange(a, z) for a, z, c in parts if c <= block)])
        table = table.take(pa.array(order, pa.int64()))
        rest = table.slice(len(huge))
        parts = [(a + len(huge), z + len(huge), c) for a, z, c in
                 _parts(rest, options, sum(c for *_, c in parts if c <= block))] if rest.num_rows else []
    joined: list[list[tuple[int, int, int]]] = []
    for part in parts:
        if joined and sum(c for *_, c in joined[-1]) + part[2] <= block:
            joined[-1].append(part)
        else:
            joined.append([part])
    runs = [sum(z - a for a, z, _ in run) for run in joined]
    data = encode_runs(table, options, [1] * len(huge) + runs)
    groups = group_bytes(data)[len(huge):]
    if any(c > block and r > 1 for r, c in groups):  # a join compressed worse than its parts: left in parts
        runs = [n for run, (_, c) in zip(joined, groups, strict=True)
                for n in ([z - a for a, z, _ in run] if c > block else [sum(z - a for a, z, _ in run)])]
        data = encode_runs(table, options, [1] * len(huge) + runs)
    return data, True


def _parts(table: pa.Table, options: EncodeOptions, nbytes: int) -> list[tuple[int, int, int]]:
    """``table`` (``nbytes`` in all) cut into groups of :data:`CUT_FILL` of the block, each halved until it
    fits (:func:`_split`): ``(first row, end row, bytes)`` parts, each under the block or a single row."""
    per_group = max(1, math.floor(table.num_rows * CUT_FILL * options.block_size / max(1, nbytes)))
    parts: list[tuple[int, int, int]] = []
    for r, c in group_bytes(encode(table, options, per_group)):
        start = parts[-1][1] if parts else 0
        parts += _split(table, options, start, start + r, c)
    return parts


def _split(table: pa.Table, options: EncodeOptions, start: int, end: int, nbytes: int) -> list[tuple[int, int, int]]:
    """Rows ``start:end`` (``nbytes`` as one row group) as ``(start, end, bytes)`` parts, each under the
    block or a single row: a part over the block is halved, and each half measured, until it fits."""
    if nbytes <= options.block_size or end - start <= 1:
        return [(start, end, nbytes)]
    mid = (start + end) // 2
    (_, left), (_, right) = group_bytes(encode_runs(table.slice(start, end - start), options, [mid - start, end - mid]))
    return _split(table, options, start, mid, left) + _split(table, options, mid, end, right)


def choose_encoding(sample: pa.Table, options: EncodeOptions) -> EncodeOptions:
    """``options`` with the per-column choices of :func:`loader.encoding.choose` made on ``sample``: a
    dictionary only for repetitive columns, no compression for columns the codec cannot shrink."""
    return replace(options, columns=encoding.choose(sample, options.columns.codec, data_page_size=options.page_size))


class SliceWriter:
    """The Arrow IPC slices one stage-1 task attempt writes: ``<slices>/<file>/<part>.arrow`` per output file.

    Each slice is streamed under a temporary name and renamed into place by :meth:`commit`, so a retried
    or speculative attempt of the same task replaces the slice whole instead of adding to it.
    """

    def __init__(self, slices: str, part: int, attempt: int) -> None:
        self.slices, self.part, self.attempt = slices, part, attempt
        self._open: dict[int, tuple] = {}
        self.rows = 0

    def write(self, batch: pa.RecordBatch, files: np.ndarray) -> None:
        """Append each row of ``batch`` to the slice of its file (``files[i]``: row ``i``'s file number)."""
        if not batch.num_rows:
            return
        order = np.argsort(files, kind="stable")
        files, batch = files[order], batch.take(pa.array(order))
        cuts = np.flatnonzero(np.diff(files)) + 1
        for a, z in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(files)]]), strict=True):
            k = int(files[a])
            if k not in self._open:
                directory = os.path.join(self.slices, str(k))
                os.makedirs(directory, exist_ok=True)
                tmp = os.path.join(directory, f".{self.part}.{self.attempt}.{uuid.uuid4().hex[:8]}.tmp")
                sink = pa.OSFile(tmp, "wb")
                self._open[k] = (pa.ipc.new_stream(sink, batch.schema), sink, tmp,
                                 os.path.join(directory, f"{self.part}.arrow"))
            self._open[k][0].write_batch(batch.slice(a, z - a))
        self.rows += batch.num_rows

    def commit(self) -> None:
        """Close every slice and rename it into place."""
        for writer, sink, tmp, final in self._open.values():
            writer.close()
            sink.close()
            os.replace(tmp, final)
        self._open.clear()

    def abort(self) -> None:
        """Close and remove the slices not committed."""
        for _, sink, tmp, _ in self._open.values():
            sink.close()
            if os.path.exists(tmp):
                os.remove(tmp)
        self._open.clear()


def spill(df: DataFrame, slices: str, file_column: str) -> int:
    """Stage 1: write every row of ``df`` into the Arrow slice of its file under ``slices`` (a local path).

    The columns cross ``mapInArrow`` under positional names (PySpark resolves each column it hands over by
    its name, which fails on a name holding a dot) and get their own names back in the task.

    Returns:
        The rows spilled.
    """
    names = df.columns
    position = names.index(file_column)

    def task(batches):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        out = SliceWriter(slices, ctx.partitionId(), ctx.attemptNumber())
        try:
            for batch in batches:  # own names back, nullability and metadata kept
                fields = [f.with_name(n) for f, n in zip(batch.schema, names, strict=True)]
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=pa.schema(fields, batch.schema.metadata))
                out.write(batch, batch.column(position).to_numpy())
            out.commit()
        except BaseException:
            out.abort()
            raise
        yield pa.RecordBatch.from_pydict({"rows": [out.rows]}, schema=pa.schema([("rows", pa.int64())]))

    positional = df.toDF(*[f"_{i}" for i in range(len(names))])
    return int(sum(r["rows"] for r in positional.mapInArrow(task, "rows long").collect()))


def encode_files(
    spark: SparkSession, slices: str, out_dir: str, num_files: int, drop: tuple[str, ...], order_column: str,
    options: EncodeOptions,
) -> list[tuple[FileInfo, bool]]:
    """Stage 2: one task per file encodes ``part-<k>.parquet`` in ``out_dir`` (a local path) from its slices.

    Returns:
        Per file, in order: its manifest entry and whether it had to be cut into several row groups.
    """

    def task(k: int) -> tuple[FileInfo, bool]:
        paths = sorted(glob.glob(os.path.join(slices, str(k), "*.arrow")))
        tables = [pa.ipc.open_stream(pa.memory_map(p)).read_all() for p in paths]
        if not tables:
            raise RuntimeError(f"larder: no rows were spilled for file {k} (slices in {slices})")
        table = pa.concat_tables(tables)
        table = table.take(pc.sort_indices(table, [(order_column, "ascending")])).drop_columns(list(drop))
        data, cut = encode_within_block(table, options)
        name = f"part-{k:05d}.parquet"
        info = file_info_from_bytes(data, name)  # a pa.Buffer: no copy
        tmp = os.path.join(out_dir, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with pa.OSFile(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(out_dir, name))  # slices stay until the driver removes them all: a
        return info, cut  # retried task attempt needs them

    return spark.sparkContext.parallelize(range(num_files), max(1, num_files)).map(task).collect()
