"""Stage 1 of the arrow writer straight from the source's Parquet files: pyarrow reads them, no JVM scan.

With ``output.writer: arrow``, Spark's scan of the source and its row-to-Arrow conversion for
``mapInArrow`` cost about as much CPU as a whole plain ``df.write.parquet``. When the selection is exactly
"every row of some local Parquet files", the executors can read those files with pyarrow instead and
spill the rows into the same Arrow slices (:class:`etl.arrow_write.SliceWriter`); stage 2 is unchanged.

:func:`plan` decides, before any heavy work, and says why when it declines (the job then reads through
Spark as before). It accepts a selection only when all of this holds:

* every input file (:func:`etl.fingerprint.selection_files`, after partition pruning) is a local ``file:``
  path and a Parquet file, and the row count in their footers equals the selection's count as Spark took
  it: a filter or a sample can only remove rows, so equal counts mean the selection is all of those files'
  rows (a ``where`` on partition columns, pruned, passes; one that drops rows does not);
* ``output.shuffle`` is on (unshuffled files keep the order of Spark's scan, which only Spark knows);
* transforms are index transforms only (their vocabularies are already built by Spark's count);
* every selected column is in every file with exactly the Arrow type Spark hands ``mapInArrow`` (list
  item names and nullability aside), or is a Hive partition column of a string, integer or date type
  (its value comes from the metastore: the spec of the partition whose location holds the file,
  :func:`etl.source.partition_locations`, as Spark takes it, whatever the directory is called, and read as Spark
  reads it, :func:`etl.source.partition_values`: ``day=2025-1-5`` is 2025-01-05, ``hour=07`` is 7; a value
  Spark reads as null or refuses, such as ``hour=x7``, is left to Spark); the partition columns of a path
  source (its ``k=v`` directories, :func:`etl.source.discovered_partition_columns`) are left to Spark, which
  reads their values from the directory names even where a file also holds such a column; timestamps are left
  to Spark (their Arrow form depends on the session time zone), and so are the date columns of a file
  that Spark reads with a calendar rebase (:func:`rebase_mode`: written by Spark < 3 or with LEGACY
  rebase, or without Spark's metadata while the session's ``datetimeRebaseModeInRead`` is not
  CORRECTED), and Hive ``CHAR(n)``/``VARCHAR(n)`` columns (Spark pads a ``CHAR`` to ``n`` on read and
  checks lengths; pyarrow would hand over the stored text);
* fewer than :data:`etl.layout.LONG_SAFE_ROWS` rows.

Rows are laid out as :func:`etl.layout.assign_files` lays them out: a global index ``g`` in source order
(files in path order, then row groups, then rows), ``file = perm(g) // rows_per_file`` with the
same seeded affine permutation, and inside a file a seeded random order key (``numpy``'s
``default_rng([seed, first row of the row group, batch])``), so a retried task writes the same slices.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader.convert import as_arrow
from loader.errors import SourceError

from . import fingerprint
from .arrow_write import SliceWriter
from .layout import FILE_COLUMN, LONG_SAFE_ROWS, ORDER_COLUMN, affine_permutation
from .source import local_path, partition_locations, partition_values
from .transforms import NULL_ID, SHOWN_CHARS, SOURCE_CHANGED, unknown_value

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from .config import JobConfig

CHAR_VARCHAR_KEY = "__CHAR_VARCHAR_TYPE_STRING"  # field metadata Spark keeps for a Hive CHAR/VARCHAR column
TASK_BYTES = 128 << 20  # compressed input bytes per stage-1 task (at least 2 tasks per core)
BATCH_BYTES = 8 << 20  # decoded bytes per Arrow batch read


@dataclass(frozen=True)
class Piece:
    """One row group of one input file.

    Attributes:
        path: Local path of the file.
        row_group: Row group index in the file.
        rows: Rows in the row group (from the footer).
        offset: Global index of its first row (source order).
        batch_rows: Rows per Arrow batch when reading it.
        partition: Values of the selected partition columns (from the metastore, as Spark reads them: an
            ``int``, a ``datetime.date`` or a ``str``; None for null).
    """

    path: str
    row_group: int
    rows: int
    offset: int
    batch_rows: int
    partition: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class IndexStep:
    """An index transform, as :func:`etl.transforms.index_column` applies it."""

    column: str
    output: str
    vocabulary: tuple[str, ...]
    drop_input: bool


@dataclass(frozen=True)
class DirectPlan:
    """What the stage-1 tasks read and how they turn it into the transformed selection's rows.

    Attributes:
        pieces: The input row groups, in source order.
        file_columns: Columns read from the files.
        partition_types: Selected partition columns -> Arrow type.
        selection: The selection's columns, in order (before transforms).
        steps: The index transforms, in order.
        schema: The transformed selection's Arrow schema (as Spark hands it to ``mapInArrow``).
        total: Rows in the selection.
        compressed_bytes: Compressed bytes of the pieces' column chunks.
    """

    pieces: tuple[Piece, ...]
    file_columns: tuple[str, ...]
    partition_types: dict[str, pa.DataType]
    selection: tuple[str, ...]
    steps: tuple[IndexStep, ...]
    schema: pa.Schema
    total: int
    compressed_bytes: int = 0

    def tasks(self, parallelism: int) -> list[list[Piece]]:
        """The pieces cut into consecutive runs of about equal rows, one task each: ``2 × parallelism`` runs,
        or more when the input exceeds :data:`TASK_BYTES` per run, at most one per piece (fewer when a
        piece alone holds more than a run's share)."""
        sizes = np.array([p.rows for p in self.pieces], dtype=np.int64)
        want = max(2 * max(1, parallelism), 1)
        n = int(min(len(self.pieces), max(want, math.ceil(self.compressed_bytes / TASK_BYTES))))
        bounds = np.searchsorted(np.cumsum(sizes), np.arange(1, n) * sizes.sum() / n, side="left") + 1
        edges = sorted({0, *bounds.tolist(), len(self.pieces)})
        return [list(self.pieces[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=False) if a < b]


def _normalize(t: pa.DataType) -> pa.DataType:
    """``t`` with list item names and nullability erased (what type equality here ignores)."""
    if pa.types.is_list(t):
        return pa.list_(_normalize(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_normalize(t.value_type))
    return t


def _partition_of(path: str, locations: dict[str, dict[str, str | None]]) -> dict[str, str | None] | None:
    """The values of the partition whose location holds ``path`` (the nearest enclosing one), or None."""
    directory = os.path.dirname(path)
    while True:
        values = locations.get(directory.rstrip("/") or "/")
        if values is not None:
            return values
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _partition_array(value: object, t: pa.DataType, n: int) -> pa.Array:
    """``n`` times a partition value as Spark reads it (:func:`etl.source.partition_values`)."""
    return pa.nulls(n, t) if value is None else pa.repeat(pa.scalar(value, t), n)


_PARTITION_TYPES = (pa.types.is_string, pa.types.is_integer, pa.types.is_date32)


def _has_timestamp(data_type) -> bool:
    from pyspark.sql.types import ArrayType, TimestampNTZType, TimestampType

    if isinstance(data_type, ArrayType):
        return _has_timestamp(data_type.elementType)
    return isinstance(data_type, (TimestampType, TimestampNTZType))


def _has_date(data_type) -> bool:
    from pyspark.sql.types import ArrayType, DateType

    if isinstance(data_type, ArrayType):
        return _has_date(data_type.elementType)
    return isinstance(data_type, DateType) or _has_timestamp(data_type)


GREGORIAN_START = datetime.date(1582, 10, 15)  # the calendars (and every rebase) agree from this day on


def _before_gregorian(meta: pq.FileMetaData, columns: list[str]) -> str | None:
    """The first of ``columns`` whose footer statistics do not prove every value is from
    :data:`GREGORIAN_START` on (no statistics count as "may be earlier"), or None."""
    wanted = set(columns)
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for j in range(rg.num_columns):
            chunk = rg.column(j)
            path = chunk.path_in_schema  # a column's leaves are 'name' or 'name.…' (a name may hold dots)
            name = next((c for c in wanted if path == c or path.startswith(c + ".")), None)
            if name is None:
                continue
            stats = chunk.statistics
            try:
                ok = stats is None and chunk.num_values == 0 or (
                    stats is not None and (stats.null_count == chunk.num_values or (
                        stats.has_min_max and isinstance(stats.min, datetime.date)
                        and stats.min >= GREGORIAN_START)))
            except (ValueError, OverflowError):  # a day before year 1 has no datetime.date
                ok = False
            if not ok:
                return name
    return None


REBASE_READ_KEYS = ("spark.sql.parquet.datetimeRebaseModeInRead", "spark.sql.legacy.parquet.datetimeRebaseModeInRead")


def rebase_mode(metadata: dict | None, session_mode: str) -> tuple[str, str]:
    """How Spark reads the dates of a Parquet file (``DataSourceUtils.datetimeRebaseSpec``), and why.

    A file written by Spark 3+ records its version and, when written with the LEGACY (Julian calendar)
    rebase, ``org.apache.spark.legacyDateTime``; Spark before 3.0 always wrote Julian dates. A file
    without Spark's version (Hive, pyarrow...) is read with the session's
    ``spark.sql.parquet.datetimeRebaseModeInRead``. pyarrow never rebases: it reads a file as Spark does
    only when the answer is CORRECTED.
    """
    meta = metadata or {}
    version = meta.get(b"org.apache.spark.version")
    if version is not None:
        if version.decode(errors="replace") < "3.0.0":
            return "LEGACY", f"written by Spark {version.decode(errors='replace')} (Julian calendar dates)"
        if b"org.apache.spark.legacyDateTime" in meta:
            return "LEGACY", "written with Spark's LEGACY datetime rebase (org.apache.spark.legacyDateTime)"
        return "CORRECTED", "written by Spark 3+"
    return session_mode, f"no Spark version in the file: spark.sql.parquet.datetimeRebaseModeInRead={session_mode}"


def plan(spark: SparkSession, source_df: DataFrame, df: DataFrame, cfg: JobConfig, vocabularies: dict[str, list[str]],
         partition_columns: list[str], total: int, input_files: list[str] | None = None
         ) -> tuple[DirectPlan | None, str]:
    """A :class:`DirectPlan` for the transformed selection ``df`` of ``source_df``, or None and the reason.

    Args:
        spark: The session (its time zone and Arrow settings decide the Arrow types).
        source_df: The validated selection (partition pruning applied).
        df: ``source_df`` after the conf's transforms.
        cfg: The job conf.
        vocabularies: The index transforms' vocabularies, output column -> values.
        partition_columns: The Hive table's partition columns, or the path's discovered ones (None: unknown).
        total: The selection's row count, as Spark took it.
        input_files: :func:`etl.fingerprint.selection_files` of ``source_df`` if already listed.

    Raises:
        SourceError: The first row group cannot be read (a corrupt page: names the file), or holds a value a
            vocabulary lacks (the file changed since its values were counted).
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    if cfg.source.reader == "spark":
        return None, "source.reader is spark"
    if not cfg.output.shuffle:
        return None, "output.shuffle is false: files keep Spark's scan order"
    if any(t.kind != "index" for t in cfg.transforms):
        return None, "a python transform needs Spark's rows"
    if total >= LONG_SAFE_ROWS:
        return None, "too many rows for 64-bit layout arithmetic"
    timestamps = [f.name for f in df.schema.fields if _has_timestamp(f.dataType)]
    if timestamps:
        return None, f"timestamp column {timestamps[0]!r} (its Arrow form follows the session time zone)"
    padded = [f for f in source_df.schema.fields if CHAR_VARCHAR_KEY in (f.metadata or {})]
    if padded:
        return None, f"column {padded[0].name!r} is a Hive {padded[0].metadata[CHAR_VARCHAR_KEY]} (Spark pads or " \
                     "checks its values on read)"
    selection = tuple(source_df.columns)
    if partition_columns is None:
        return None, "Spark's plan does not tell the source's partition columns"
    if cfg.source.path is not None:  # Spark reads a path's partition columns from its k=v directory names
        named = next((c for c in selection if c.lower() in {p.lower() for p in partition_columns}), None)
        if named is not None:
            return None, f"column {named!r} is a partition column of {cfg.source.path} (Spark reads its values " \
                         "from the k=v directory names, not the files)"
    uris = fingerprint.selection_files(source_df) if input_files is None else input_files
    if not uris:
        return None, "the source has no input files"
    paths = [local_path(u) for u in uris]
    if any(p is None for p in paths):
        return None, "input files are not on the local filesystem"
    large = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") == "true"
    schema = to_arrow_schema(df.schema, timezone="UTC", prefers_large_types=large)
    source_schema = to_arrow_schema(source_df.schema, timezone="UTC", prefers_large_types=large)
    partition_types = {c: source_schema.field(c).type for c in selection if c in partition_columns}
    for name, t in partition_types.items():
        if not any(check(t) for check in _PARTITION_TYPES):
            return None, f"partition column {name!r} is {t}"
    file_columns = tuple(c for c in selection if c not in partition_types)
    locations: dict[str, dict[str, str | None]] = {}
    typed: dict[str, dict[str, object]] = {}
    if partition_types:
        try:
            locations = partition_locations(spark, cfg.source.table, list(partition_types))
        except Exception as e:  # py4j: a catalog without these accessors, or the metastore failing; its
            # message may quote the metastore's connection settings, so only its kind is told
            return None, f"the partitions of {cfg.source.table} could not be listed from the catalog " \
                         f"({type(e).__name__})"
        typed = {c: partition_values(spark, [v[c] for v in locations.values()], source_df.schema[c].dataType)
                 for c in partition_types}  # the texts as Spark reads them (hour=07 -> 7)
    dated = [c for c in file_columns if _has_date(source_df.schema[c].dataType)]
    session_mode = next((str(spark.conf.get(k, None)).upper() for k in REBASE_READ_KEYS
                         if spark.conf.get(k, None)), "CORRECTED")
    pieces: list[Piece] = []
    offset = compressed = 0
    for path in paths:
        try:
            with pq.ParquetFile(path) as pf:  # the footer only
                meta, file_schema = pf.metadata, pf.schema_arrow
        except (OSError, pa.ArrowException) as e:
            return None, f"{path} is not a readable Parquet file ({e})"
        if dated:
            mode, why = rebase_mode(meta.metadata, session_mode)
            early = _before_gregorian(meta, dated)
            if mode != "CORRECTED" and early:  # Spark would rebase (or refuse) these dates, pyarrow would not
                return None, f"{path}: date column {early!r} may hold dates before 1582-10-15, which Spark " \
                             f"reads with {mode} rebase ({why})"
        for c in file_columns:
            i = file_schema.get_field_index(c)
            if i < 0:
                return None, f"{path} has no column {c!r}"
            if _normalize(file_schema.field(i).type) != _normalize(source_schema.field(c).type):
                return None, f"{path}: column {c!r} is {file_schema.field(i).type}, Spark reads it as " \
                             f"{source_schema.field(c).type}"
        values = _partition_of(path, locations) if partition_types else {}
        if values is None:
            return None, f"{path} is under no partition location of {cfg.source.table} in the catalog"
        odd = next((c for c, text in values.items() if text is not None and typed[c][text] is None), None)
        if odd is not None:
            return None, f"{path}: Spark reads the partition value {odd}={values[odd]!r} of {cfg.source.table} " \
                         f"as null or refuses it ({source_df.schema[odd].dataType.simpleString()})"
        values = {c: None if text is None else typed[c][text] for c, text in values.items()}
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if not rg.num_rows:
                continue
            per_row = max(1.0, rg.total_byte_size / rg.num_rows)
            batch_rows = int(max(1024, min(1 << 20, BATCH_BYTES / per_row)))
            pieces.append(Piece(path, g, rg.num_rows, offset, batch_rows, tuple(values.items())))
            offset += rg.num_rows
            compressed += sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
    if offset != total:
        return None, f"the selection keeps {total} of the files' {offset} rows (a row filter or sample)"
    steps = []
    for t in cfg.transforms:
        output = t.output or t.column
        steps.append(IndexStep(t.column, output, tuple(vocabularies[output]), t.drop_input))
    direct = DirectPlan(tuple(pieces), file_columns, partition_types, selection, tuple(steps), schema, total,
                        compressed)
    try:
        rows = _first_rows(direct)
    except OSError as e:  # a corrupt page (Spark's read fails on it too)
        raise SourceError(f"reading {cfg.source.table or cfg.source.path} failed: {e}") from e
    try:
        probe = transform(rows, direct)  # the column order and types the tasks will produce
    except RuntimeError as e:  # a value the vocabulary lacks: the file changed since its values were counted
        raise SourceError(str(e).removeprefix("larder: ")) from e
    if probe.schema.names != schema.names or [_normalize(f.type) for f in probe.schema] != [
            _normalize(f.type) for f in schema]:
        return None, f"pyarrow would produce {probe.schema}, Spark {schema}"
    return direct, f"{len(pieces)} row groups of {len(paths)} local Parquet files"


def _batches(piece: Piece, columns: tuple[str, ...], batch_rows: int):
    """The piece's row group as Arrow batches of ``columns``.

    Raises:
        OSError: It cannot be read (a corrupt page), naming the file and the row group.
    """
    try:
        with pq.ParquetFile(piece.path) as pf:
            yield from pf.iter_batches(batch_rows, row_groups=[piece.row_group], columns=list(columns),
                                       use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise OSError(f"{piece.path} row group {piece.row_group}: {' '.join(str(e).split())}") from e


def _first_rows(direct: DirectPlan) -> pa.RecordBatch:
    piece = direct.pieces[0]
    batch = next(_batches(piece, direct.file_columns, 1), None)
    if batch is None:
        raise OSError(f"{piece.path} row group {piece.row_group} holds no rows, its footer said {piece.rows}")
    return with_partitions(batch, piece, direct)


def with_partitions(batch: pa.RecordBatch, piece: Piece, direct: DirectPlan) -> pa.RecordBatch:
    """``batch`` (the file columns) with the piece's partition values added, in the selection's order."""
    values = dict(piece.partition)
    arrays = [
        _partition_array(values[c], direct.partition_types[c], batch.num_rows) if c in direct.partition_types
        else batch.column(c)
        for c in direct.selection
    ]
    return pa.RecordBatch.from_arrays(arrays, names=list(direct.selection))


def transform(batch: pa.RecordBatch, direct: DirectPlan) -> pa.RecordBatch:
    """The index transforms applied to ``batch`` as :func:`etl.transforms.index_column` applies them
    (null -> ``-1``; ``output`` replaces ``column`` in place, or is appended after the other columns: it
    names no other column, :func:`etl.transforms.check_index_output`), then cast to the Arrow schema Spark
    would hand over.

    Raises:
        RuntimeError: ``larder: the source changed while the job ran: ...``: a non-null value the vocabulary
            lacks (:func:`etl.transforms.unknown_value`; :func:`spill` turns it into a :class:`SourceError`).
    """
    names, arrays = list(batch.schema.names), list(batch.columns)
    for step in direct.steps:
        values = arrays[names.index(step.column)]
        ids = pc.index_in(values, value_set=pa.array(step.vocabulary, values.type))
        unknown = pc.and_(pc.is_null(ids), pc.is_valid(values))
        if pc.any(unknown).as_py():
            head, tail = unknown_value(step.column, step.output)
            raise RuntimeError(f"larder: {head}{values.filter(unknown)[0].as_py()[:SHOWN_CHARS]!r}{tail}")
        ids = pc.fill_null(ids, NULL_ID).cast(pa.int32())
        if step.output == step.column:
            arrays[names.index(step.column)] = ids
            continue
        keep = [i for i, c in enumerate(names) if not (step.drop_input and c == step.column)]
        names, arrays = [names[i] for i in keep] + [step.output], [arrays[i] for i in keep] + [ids]
    out = pa.RecordBatch.from_arrays(arrays, names=names)
    if out.schema.names == direct.schema.names:
        out = out.cast(direct.schema)
    return out


def order_keys(piece: Piece, batch_index: int, rows: int, seed: int) -> np.ndarray:
    """The seeded in-file order keys of a batch's rows (uniform in [0, 1))."""
    return np.random.default_rng([seed, piece.offset, batch_index]).random(rows)


def _spill_piece(piece: Piece, direct: DirectPlan, out: SliceWriter, a: int, b: int, rows_per_file: int,
                 seed: int) -> None:
    """Read one row group, transform it and append each row to its file's slice (``file = perm(g) //
    rows_per_file``, ``perm(g) = (a·g + b) mod total``)."""
    start = piece.offset
    for i, raw in enumerate(_batches(piece, direct.file_columns, piece.batch_rows)):  # read errors name the file
        batch = transform(with_partitions(raw, piece, direct), direct)
        g = np.arange(start, start + batch.num_rows, dtype=np.int64)
        start += batch.num_rows
        files = ((g * a + b) % direct.total // rows_per_file).astype(np.int32)
        batch = batch.append_column(ORDER_COLUMN, as_arrow(order_keys(piece, i, batch.num_rows, seed)))
        out.write(batch.append_column(FILE_COLUMN, as_arrow(files)), files)
    if start != piece.offset + piece.rows:
        raise RuntimeError(f"larder: {piece.path} row group {piece.row_group} holds {start - piece.offset} rows, "
                           f"its footer said {piece.rows}")


def spill(spark: SparkSession, direct: DirectPlan, slices: str, rows_per_file: int, seed: int) -> int:
    """Stage 1 read with pyarrow: every row of the selection into the Arrow slice of its file, laid out
    with the seeded permutation (the plan is only made for shuffled output).

    Returns:
        The rows spilled.

    Raises:
        SourceError: An input file no longer holds the rows its footer held at planning (names it).
    """
    a, b = affine_permutation(direct.total, seed)
    tasks = direct.tasks(spark.sparkContext.defaultParallelism)
    direct = replace(direct, pieces=())  # what the tasks need besides their own pieces (not all of them)

    def task(part: int, runs):
        from pyspark import TaskContext

        out = SliceWriter(slices, part, TaskContext.get().attemptNumber())
        try:
            for pieces in runs:  # one run of pieces per partition
                for piece in pieces:
                    _spill_piece(piece, direct, out, a, b, rows_per_file, seed)
            out.commit()
        except BaseException:
            out.abort()
            raise
        yield out.rows

    rdd = spark.sparkContext.parallelize(tasks, len(tasks))  # as many slices as elements: one run each
    try:
        return int(sum(rdd.mapPartitionsWithIndex(task).collect()))
    except Exception as e:  # a task's error arrives wrapped in Spark's; name the file it names
        said = [line.strip() for line in str(e).splitlines() if line.strip().startswith("RuntimeError: larder:")]
        if said:
            text = said[-1].split("larder:", 1)[1].strip()
            raise SourceError(text if text.startswith(SOURCE_CHANGED) else f"{SOURCE_CHANGED}: {text}") from e
        raise
