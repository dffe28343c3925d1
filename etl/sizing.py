"""Write Parquet whose row groups sit just under the storage block size, and prove it from the footers.

What works here (measured, see DESIGN): estimate the compressed bytes per row from a *shuffled* sample
write (or reuse the bytes per row measured in the live version's files, which are such a write of the
whole previous selection, while the selection still looks the same: :class:`PriorSizing`); give every
file exactly ``rows_per_file = fill × block / bytes_per_row`` rows (one row group;
:mod:`etl.layout` assigns rows to files, ``maxRecordsPerFile`` guards it); set ``parquet.block.size``
to the block size itself (a ceiling, not the target) and ``parquet.page.size`` to 128 KiB, or smaller
for small blocks (:func:`default_page_size`: the open pages parquet-mr counts must stay a small share of
the block); read the footers back. If a file did not fit one row group under the block (a group over
it, or more than a block in all so the writer cut it into several groups), rewrite with the bytes per
row of the worst such file plus a 2% margin (:func:`next_bytes_per_row`; not compounded across attempts,
so skewed row sizes converge instead of shrinking files to a few rows). Files cut into groups that are
each under the block are kept when few (at most 10%) or when a rewrite would fill less
(:func:`keep_cut_files`); a group of several rows over the block is always rewritten (at most 3 writes; the
last one with a compounded estimate, :func:`last_bytes_per_row`, so that it fits).
A row larger than a whole block (its bytes before encoding, :func:`raw_row_bytes`) is left out of the
estimate, goes first in its file and is published as a row group of its own, with a warning; such groups
do not count as misfits (no layout can split a row), so they never shrink the other files. parquet-mr
checks a group's size only after a row, so with ``parquet.page.size.row.check.min=1`` it closes the group
right after that first row. Timestamps are
written as INT64 microseconds by both writers (:data:`SPARK_WRITE_SETTINGS`). Spark settings changed
for the write are restored in ``finally``.

With ``writer="arrow"`` (:mod:`etl.arrow_write`) the pilot and the sample are encoded by pyarrow in the
driver's memory with the data's settings (the sample in row groups of a file's rows), each file is encoded
as one row group (cut into several rather than written over the block, which then counts as not fitting),
and the manifest entries come from the encoded bytes instead of a read-back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from etl.checksums import file_infos_on_executors
from loader import encoding
from loader import fs as lfs
from loader.manifest import FileInfo, row_group_sizes

from . import arrow_write, direct
from .layout import FILE_COLUMN, LAYOUT_SETTINGS, ORDER_COLUMN, assign_files
from .prior import PriorSizing
from .sizing_rules import (
    default_page_size,
    group_over_block,
    keep_cut_files,
    last_bytes_per_row,
    next_bytes_per_row,
    raw_row_bytes,
    too_big,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from .direct import DirectPlan

SAMPLE_DIR = "_larder_sample"
PILOT_ROWS = 2000
MIN_SAMPLE_ROWS = 2000
MAX_SAMPLE_BYTES = 8 << 20  # compression per row settles well before a 128 MiB row group
MAX_ATTEMPTS = 3
ARROW_BATCH_ROWS = 10_000  # rows per Arrow batch between the JVM and the Python workers (PySpark's default)
ARROW_BATCH_BYTES = 8 << 20
_KEY = "__larder_sample_key"
# parquet-mr's timestamps as the arrow writer stores them: INT64 microseconds (UTC-adjusted for
# ``timestamp``, local for ``timestamp_ntz``), not INT96 (nanoseconds that wrap outside 1677-2262 when
# read as Arrow ``timestamp[ns]``), and dates and timestamps in the proleptic Gregorian calendar that
# pyarrow assumes (never a session's LEGACY rebase).
SPARK_WRITE_SETTINGS = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",
}
_HDFS_SCHEMES = ("hdfs", "webhdfs", "swebhdfs", "viewfs")


@dataclass
class SizingResult:
    """What the sized write produced.

    Attributes:
        files: Manifest entries of the data files (relative names, checksums, row groups).
        block_size: The block size the row groups are sized for.
        target: The planned row-group bytes (``fill × block``).
        bytes_per_row: The estimate the final write used.
        num_files: Files planned in the final write.
        attempts: Writes needed (1 unless a row group came out over the block).
        oversized_rows: Row groups of a single row larger than the block (warned about).
        history: The estimate's origin and figures, then one entry per write attempt.
    """

    files: list[FileInfo]
    block_size: int
    target: int
    bytes_per_row: float
    num_files: int
    attempts: int
    oversized_rows: int = 0
    history: list[dict] = field(default_factory=list)

    def fill(self) -> dict:
        """Row-group fill as a fraction of the block: min, median, max, and counts."""
        sizes = [g.compressed_bytes / self.block_size for f in self.files for g in f.row_groups]
        return {
            "min": round(min(sizes), 4),
            "median": round(statistics.median(sizes), 4),
            "max": round(max(sizes), 4),
            "row_groups": len(sizes),
            "files": len(self.files),
        }


@contextlib.contextmanager
def temporary_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set Spark SQL settings for the duration of a block; the previous values come back in ``finally``."""
    saved = {}
    for key, value in settings.items():
        saved[key] = spark.conf.get(key, None)
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def destination_block_size(spark: SparkSession, uri: str, configured: int | None, default: int) -> tuple[int, str]:
    """The block size to size row groups for, and where it came from.

    The conf wins; on HDFS-like schemes the destination filesystem's ``getDefaultBlockSize(path)``;
    elsewhere (local disk, object stores) a block size means nothing, so ``default``.
    """
    if configured:
        return int(configured), "conf"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme in _HDFS_SCHEMES:
        jvm = spark._jvm
        path = jvm.org.apache.hadoop.fs.Path(uri)
        hfs = path.getFileSystem(spark._jsc.hadoopConfiguration())
        return int(hfs.getDefaultBlockSize(path)), f"{scheme} getDefaultBlockSize"
    return default, "default"


def _footer_groups(fs: pafs.FileSystem, path: str) -> list[tuple[int, int]]:
    with fs.open_input_file(path) as f:
        return row_group_sizes(pq.ParquetFile(f).metadata)


def _parquet_entries(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    entries = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted((
        e for e in entries
        if e.type == pafs.FileType.File and e.base_name.endswith(".parquet") and not e.base_name.startswith(("_", "."))
    ), key=lambda e: e.path)  # fmt: skip


def _parquet_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    return [e.path for e in _parquet_entries(fs, directory)]


def _measure(fs: pafs.FileSystem, directory: str) -> tuple[int, int, list[tuple[int, int]]]:
    groups = [g for p in _parquet_files(fs, directory) for g in _footer_groups(fs, p)]
    return sum(n for n, _ in groups), sum(c for _, c in groups), groups


class SizedWriter:
    """Writes one DataFrame into a directory with row groups just under ``block_size``.

    Args:
        spark: The session.
        fs: The destination filesystem (pyarrow), to read footers back.
        path: The output directory on ``fs``.
        uri: The same directory as a Hadoop URI (for Spark).
        block_size: Storage block size in bytes.
        fill: Row-group target as a fraction of the block.
        page_size: Parquet page size.
        compression: Parquet codec.
        shuffle: Decorrelate rows across files (seeded).
        seed: The shuffle seed.
        log: Progress messages.
        prior: The live version's measured bytes per row, reused when it still applies.
        input_bytes: Bytes of the input files (the fingerprint's snapshot), if the source has files.
        writer: ``"spark"`` (an exchange, then parquet-mr) or ``"arrow"`` (:mod:`etl.arrow_write`: pyarrow
            on the executors; local destinations).
        direct: With the arrow writer, read the rows from the source files with pyarrow
            (:mod:`etl.direct`) instead of through Spark.
    """

    def __init__(
        self,
        spark: SparkSession,
        fs: pafs.FileSystem,
        path: str,
        uri: str,
        *,
        block_size: int,
        fill: float,
        page_size: int | None,
        compression: str,
        shuffle: bool,
        seed: int,
        log: Callable[[str], None],
        prior: PriorSizing | None = None,
        input_bytes: int | None = None,
        writer: str = "spark",
        direct: DirectPlan | None = None,
    ) -> None:
        if writer not in ("spark", "arrow"):
            raise ValueError(f"writer must be 'spark' or 'arrow', not {writer!r}")
        if writer == "arrow" and not isinstance(fs, pafs.LocalFileSystem):
            raise ValueError("the arrow writer needs a local destination (output.writer: spark for remote ones)")
        self.writer = writer
        self.direct = direct if writer == "arrow" else None
        self._count = 0  # rows of the selection, set by write()
        self.spark, self.fs, self.path, self.uri = spark, fs, path, uri
        self.block_size, self.fill = int(block_size), fill
        self.page_size = int(page_size) if page_size else None
        self.compression = "uncompressed" if compression == "none" else compression
        # the arrow writer's codec and per-column choices (dictionary, uncompressed columns), set by the pilot
        self.encoding = encoding.Encoding(encoding.codec_name(self.compression))
        self.shuffle, self.seed = shuffle, seed
        self.log: Callable[[str], None] = log
        self.target = int(fill * block_size)
        self.prior, self.input_bytes = prior, input_bytes

    def _options(self, max_records: int | None = None) -> dict[str, str]:
        assert self.page_size, "page size is resolved in write()"
        opts = {
            "compression": self.compression,
            "parquet.block.size": str(self.block_size),
            "parquet.page.size": str(self.page_size),
            "parquet.page.write-checksum.enabled": "true",
            "parquet.enable.summary-metadata": "false",
            # parquet-mr checks page and row-group sizes from the first row on (not the 100th), so a row
            # larger than the block, written first in its file (_lay_out), is a row group of its own
            "parquet.page.size.row.check.min": "1",
        }
        if max_records:
            opts["maxRecordsPerFile"] = str(max_records)
        return opts

    def _write(self, df: DataFrame, uri: str, max_records: int | None = None) -> None:
        writer = df.write.mode("overwrite").format("parquet")
        for key, value in self._options(max_records).items():
            writer = writer.option(key, value)
        with temporary_conf(self.spark, SPARK_WRITE_SETTINGS):
            writer.save(uri)

    def _with_key(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        return df.withColumn(_KEY, F.rand(self.seed))

    def sizing_key(self, df: DataFrame) -> str:
        """A digest of what bytes per row depend on besides the rows: schema and Parquet settings."""
        doc = {
            "schema": df.schema.simpleString(), "compression": self.compression, "block": self.block_size,
            "page": self.page_size, "shuffle": self.shuffle,
            **({"writer": self.writer} if self.writer != "spark" else {}),
        }  # fmt: skip
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def column_encoding(self) -> dict:
        """The arrow writer's per-column choices (dictionary, uncompressed columns), for the manifest."""
        return self.encoding.describe()

    def _options_arrow(self) -> arrow_write.EncodeOptions:
        assert self.page_size, "page size is resolved in write()"
        return arrow_write.EncodeOptions(self.encoding, self.page_size, self.block_size)

    def _write_and_measure(self, df: DataFrame, uri: str, path: str, pilot: bool = False,
                           bytes_per_row: float | None = None) -> tuple[int, int]:
        """Write ``df`` as the data will be written and return its ``(rows, compressed bytes)``.

        The arrow writer encodes in the driver's memory instead (the rows are a small sample); the pilot
        also decides which columns get a dictionary and which are stored uncompressed
        (:func:`etl.arrow_write.choose_encoding`); given ``bytes_per_row``, in row groups of a file's rows
        (:func:`etl.arrow_write.measure`).
        """
        if self.writer == "arrow":
            table = df.toArrow()
            if pilot:
                self.encoding = arrow_write.choose_encoding(table, self._options_arrow()).columns
            if not table.num_rows:
                return 0, 0
            return arrow_write.measure(table, self._options_arrow(), self.target, bytes_per_row)
        self._write(df, uri)
        rows, nbytes, _ = _measure(self.fs, path)
        return rows, nbytes

    def estimate_bytes_per_row(self, df: DataFrame, count: int) -> tuple[float, dict]:
        """Compressed bytes per row, and where the figure came from.

        A pilot write of the first :data:`PILOT_ROWS` rows comes first. If the live version was made
        under the same :meth:`sizing_key` and its pilot and input bytes per row agree with this run's
        (:meth:`PriorSizing.applies`), the bytes per row measured in its files are reused. Otherwise a
        shuffled sample of about one row group (at most :data:`MAX_SAMPLE_BYTES`, at least
        :data:`MIN_SAMPLE_ROWS`) is written with the same Parquet settings as the data (by the arrow
        writer in row groups of a file's rows). Rows larger than the block (:func:`raw_row_bytes`) are
        left out of the pilot and the sample, unless every row is: each is a row group of its own, so it
        says nothing of how many rows fill a block. Figures are floored at
        :data:`etl.arrow_write.MIN_BYTES_PER_ROW`.
        """
        base_uri, base = f"{self.uri}/{SAMPLE_DIR}", lfs.join(self.path, SAMPLE_DIR)
        key = self.sizing_key(df)
        input_bpr = round(self.input_bytes / count, 3) if self.input_bytes and count else None
        floor = arrow_write.MIN_BYTES_PER_ROW
        rows_fitting = df.filter(raw_row_bytes(df.schema) <= self.block_size)  # the others get own groups
        try:
            rows, nbytes = self._write_and_measure(
                rows_fitting.limit(PILOT_ROWS).coalesce(1), f"{base_uri}/pilot", lfs.join(base, "pilot"), pilot=True)
            if not rows:  # every row is larger than the block
                rows_fitting = df
                rows, nbytes = self._write_and_measure(
                    df.limit(PILOT_ROWS).coalesce(1), f"{base_uri}/pilot", lfs.join(base, "pilot"), pilot=True)
            pilot = max(floor, nbytes / max(1, rows))
            info = {"key": key, "pilot_bytes_per_row": round(pilot, 3), "input_bytes_per_row": input_bpr}
            if self.prior is not None and self.prior.applies(key, pilot, input_bpr):
                estimate = self.prior.bytes_per_row
                self.log(f"bytes/row: pilot {pilot:.1f}, measured in {self.prior.version} {estimate:.1f} (reused)")
                return estimate, {**info, "estimate_from": self.prior.version}
            # at most a row per byte of MAX_SAMPLE_BYTES, however small the rows compress: the arrow
            # writer decodes the sample in the driver
            want = max(MIN_SAMPLE_ROWS, math.ceil(min(self.target, MAX_SAMPLE_BYTES) / max(1.0, pilot)))
            fraction = min(1.0, want / max(1, count))
            sample = rows_fitting.sample(withReplacement=False, fraction=fraction, seed=self.seed) \
                if fraction < 1 else rows_fitting
            # One partition (an exchange of the sampled rows only: coalesce(1) would make the scan one
            # task, orderBy would add a range-sampling pass), in random order when the output is shuffled.
            sample = self._with_key(sample).repartition(1)
            sample = (sample.sortWithinPartitions(_KEY) if self.shuffle else sample).drop(_KEY)
            rows, nbytes = self._write_and_measure(sample, f"{base_uri}/sample", lfs.join(base, "sample"),
                                                   bytes_per_row=pilot)
            estimate = max(floor, nbytes / max(1, rows)) if rows else pilot
            self.log(f"bytes/row: pilot {pilot:.1f}, shuffled sample of {rows} rows {estimate:.1f}")
            return estimate, {**info, "estimate_from": "sample", "sample_rows": rows}
        finally:
            if lfs.exists(self.fs, base):
                self.fs.delete_dir(base)

    def write(self, df: DataFrame, counts: list[int]) -> SizingResult:
        """Write ``df`` and verify every row group from the footers.

        Args:
            df: The rows to write.
            counts: Rows per partition of ``df`` (:func:`etl.layout.partition_counts`).

        Returns:
            The result with manifest entries of the written files.
        """
        count = sum(counts)
        self._count = count
        self.page_size = self.page_size or default_page_size(self.block_size, len(df.columns))
        started = time.time()
        bpr, origin = self.estimate_bytes_per_row(df, count)
        history: list[dict] = [{**origin, "sample_seconds": round(time.time() - started, 2)}]
        with temporary_conf(self.spark, LAYOUT_SETTINGS):  # restored in finally
            for attempt in range(1, MAX_ATTEMPTS + 1):
                if bpr > self.block_size:
                    self.log(f"warning: rows average {bpr:.0f} bytes, more than the {self.block_size}-byte block")
                rows_per_file = max(1, math.floor(self.target / bpr))
                if self.direct is not None:  # the tasks lay the rows out as they read them
                    laid_out, n = df, max(1, math.ceil(count / rows_per_file))
                elif self.writer == "arrow":
                    laid_out, n = assign_files(self.spark, df, counts, rows_per_file, self.shuffle, self.seed,
                                               exchange=False)
                else:
                    laid_out, n = self._lay_out(df, counts, rows_per_file)
                self.log(f"attempt {attempt}: {n} files of {rows_per_file} rows (~{rows_per_file * bpr:.0f} bytes)")
                started = time.time()
                if self.writer == "arrow":
                    infos = self._write_arrow(laid_out, n, bpr, rows_per_file)
                    per_file = [[(g.num_rows, g.compressed_bytes) for g in info.row_groups] for info in infos]
                    sizes = [info.size for info in infos]
                else:
                    self._write(laid_out, self.uri, rows_per_file)
                    infos = None
                written = time.time()
                if infos is None:
                    entries = _parquet_entries(self.fs, self.path)  # the listing gives the sizes
                    per_file = [_footer_groups(self.fs, e.path) for e in entries]
                    sizes = [e.size for e in entries]
                single = [g for f in per_file for g in f if g[0] == 1 and g[1] > self.block_size]
                # a row larger than the block is a group of its own whatever the layout: the other groups
                # alone say whether the files fit and what a row of them takes
                per_file = [[g for g in f if g[0] > 1 or g[1] <= self.block_size] for f in per_file]
                groups = [g for f in per_file for g in f]
                rows, nbytes = sum(r for r, _ in groups), sum(c for _, c in groups)
                measured = nbytes / max(1, rows)
                bad = too_big(per_file, self.block_size, sizes)
                over = [(sum(r for r, _ in f), sum(c for _, c in f)) for f in per_file
                        if group_over_block(f, self.block_size)]
                history.append({"attempt": attempt, "rows_per_file": rows_per_file, "bytes_per_row": round(bpr, 2),
                                "files_too_big": len(bad), "groups_over_block": len(over),
                                "write_seconds": round(written - started, 2),
                                "verify_seconds": round(time.time() - written, 2)})  # fmt: skip
                following = next_bytes_per_row(bpr, over or bad, measured) if bad else bpr
                if over and attempt == MAX_ATTEMPTS - 1:  # the last write must fit: compound the estimate
                    following = max(following, last_bytes_per_row(bpr, over, measured))
                keep = bool(bad) and not over and keep_cut_files(per_file, self.block_size, bpr / following, sizes)
                if not bad or keep or attempt == MAX_ATTEMPTS:
                    if single:
                        self.log(f"warning: {len(single)} rows are larger than the block; each is its own row group")
                    if over:  # parquet-mr cuts a row group only after a row: rows near half a block defeat it
                        self.log(f"warning: {len(over)} files still hold a row group of several rows over the "
                                 f"block after {attempt} writes (rows of very uneven size); writer 'arrow' cuts "
                                 "row groups by bytes")
                    if keep:
                        self.log(f"{len(bad)} of {len(per_file)} files held more than a block and were cut into "
                                 "row groups under it; kept (a rewrite with fewer rows per file would fill less)")
                    break
                bpr = following
                self.log(f"{len(bad)} files did not fit one row group under the block; rewriting at {bpr:.1f} B/row")
        if infos is None:
            self._tidy()
            infos = self._file_infos()
        self._keep_only({info.path for info in infos})
        return SizingResult(
            files=infos, block_size=self.block_size, target=self.target, bytes_per_row=bpr,
            num_files=n, attempts=attempt, oversized_rows=len(single), history=history,
        )  # fmt: skip

    def _lay_out(self, df: DataFrame, counts: list[int], rows_per_file: int) -> tuple[DataFrame, int]:
        """The rows of :func:`etl.layout.assign_files`, one partition per file in its seeded order, except
        that rows larger than the block (:func:`raw_row_bytes`) go first in their file: parquet-mr checks
        a group's size only after a row, so a huge row anywhere else would share a group over the block
        with the rows before it."""
        return assign_files(self.spark, df, counts, rows_per_file, self.shuffle, self.seed,
                            first=raw_row_bytes(df.schema) > self.block_size)

    def _write_arrow(self, laid_out: DataFrame, n: int, bytes_per_row: float, rows_per_file: int) -> list[FileInfo]:
        """Write the laid-out rows with :mod:`etl.arrow_write` (spill, then encode); the staging directory
        holds only the new ``part-<k>.parquet`` files afterwards."""
        for entry in lfs.listdir(self.fs, self.path):  # an earlier attempt's files
            if entry.type == pafs.FileType.File and entry.base_name.endswith(".parquet"):
                self.fs.delete_file(entry.path)
        slices = lfs.join(self.path, arrow_write.SLICES_DIR)
        try:
            started = time.time()
            if self.direct is not None:
                direct.spill(self.spark, self.direct, slices, rows_per_file, self.seed)
            else:  # Arrow batches of about 8 MiB of input between the JVM and the Python workers
                row_bytes = max(1.0, bytes_per_row, self._input_bytes_per_row())
                per_batch = int(max(1, min(ARROW_BATCH_ROWS, ARROW_BATCH_BYTES // row_bytes)))
                with temporary_conf(self.spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(per_batch)}):
                    arrow_write.spill(laid_out, slices, FILE_COLUMN)
            spilled = time.time()
            written = arrow_write.encode_files(
                self.spark, slices, self.path, n, (FILE_COLUMN, ORDER_COLUMN), ORDER_COLUMN, self._options_arrow())
            self.log(f"arrow writer: rows spilled in {spilled - started:.1f}s, {n} files encoded in "
                     f"{time.time() - spilled:.1f}s")
        finally:
            if lfs.exists(self.fs, slices):
                self.fs.delete_dir(slices)
        return [info for info, _ in written]

    def _input_bytes_per_row(self) -> float:
        return self.input_bytes / self._count if self._count and self.input_bytes else 0.0

    def _tidy(self) -> None:
        """Name the data files ``part-00000.parquet``... in partition (= file) order and drop Spark's
        ``_SUCCESS`` and checksum side files."""
        for entry in lfs.listdir(self.fs, self.path):
            base = entry.base_name
            if entry.type == pafs.FileType.File and (base.startswith(("_", ".")) or not base.endswith(".parquet")):
                self.fs.delete_file(entry.path)
        for i, src in enumerate(_parquet_files(self.fs, self.path)):  # Spark's names start part-<partition>
            self.fs.move(src, lfs.join(self.path, f"part-{i:05d}.parquet"))

    def _keep_only(self, names: set[str]) -> None:
        """Remove everything in the staging directory but the files ``names`` (the manifest's): a killed
        task attempt's ``.part-<k>.parquet.<id>.tmp``, side files, directories. The staging directory
        becomes the version as it is, so whatever is left here would be published with it."""
        for entry in lfs.listdir(self.fs, self.path):
            if entry.base_name in names and entry.type == pafs.FileType.File:
                continue
            if entry.type == pafs.FileType.Directory:
                self.fs.delete_dir(entry.path)
            else:
                self.fs.delete_file(entry.path)

    def _file_infos(self) -> list[FileInfo]:
        """Manifest entries of the staged files, checksummed on the executors (the driver reads no data)."""
        return file_infos_on_executors(self.spark, self.uri, self.fs, self.path)
