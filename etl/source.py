"""Extract: open the source (Hive table or Parquet/ORC path) and validate it before any heavy work.

Everything here touches only the catalog, the schema and partition listings, never the rows: an unknown
table, database, partition, column or filter column, or an unsupported column type, is reported before
Spark reads a byte of data.

Supported column types (what the reader can hand to numpy): booleans, integers, floats, decimals,
strings, binary, dates, timestamps, and one-level arrays of those (``array<string>``, ``array<int>``).
Maps, structs, intervals, variants and nested arrays are refused with :class:`SourceError` naming the
column; cast or flatten them in a ``kind: python`` transform, or leave the column out.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from loader.errors import SourceError

from .config import SourceConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


@dataclass
class Source:
    """A validated, lazily evaluated selection.

    Attributes:
        df: The selected rows (filtered, projected, sampled); nothing has been read yet.
        description: What goes into the manifest's ``source``: kind, table or path, filter, columns.
        name: The table name or path, for messages.
        partition_columns: The table's partition columns (empty for paths).
    """

    df: DataFrame
    description: dict
    name: str
    partition_columns: list[str] = field(default_factory=list)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _close(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def unsupported_reason(data_type) -> str | None:
    """Why a Spark type cannot go into the cache, or None if it can."""
    from pyspark.sql import types as T

    atomic = (
        T.BooleanType, T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType,
        T.DecimalType, T.StringType, T.BinaryType, T.DateType, T.TimestampType, T.TimestampNTZType,
    )  # fmt: skip
    if isinstance(data_type, atomic):
        return None
    if isinstance(data_type, T.ArrayType):
        if isinstance(data_type.elementType, atomic):
            return None
        return f"arrays of {data_type.elementType.simpleString()} are not supported (only arrays of atomic types)"
    kind = data_type.simpleString()
    if isinstance(data_type, (T.MapType, T.StructType)):
        return f"{kind} is not supported; flatten it in a 'kind: python' transform or leave the column out"
    return f"{kind} is not supported; cast it in a 'kind: python' transform or leave the column out"


def check_types(df: DataFrame, where: str) -> None:
    """Raise :class:`SourceError` naming the first column whose type the cache cannot hold."""
    for f in df.schema.fields:
        reason = unsupported_reason(f.dataType)
        if reason:
            raise SourceError(f"{where}: column {f.name!r} has type {f.dataType.simpleString()}: {reason}")


def _open_table(spark: SparkSession, table: str) -> tuple[DataFrame, list[str]]:
    db = table.split(".")[0] if "." in table else None
    if db is not None and not spark.catalog.databaseExists(db):
        names = [d.name for d in spark.catalog.listDatabases()]
        raise SourceError(f"source.table {table!r}: database {db!r} does not exist{_close(db, names)}")
    if not spark.catalog.tableExists(table):
        tables = [t.name for t in spark.catalog.listTables(db)] if db else []
        bare = table.split(".")[-1]
        raise SourceError(f"source.table {table!r} does not exist{_close(bare, tables)}")
    parts = [c.name for c in spark.catalog.listColumns(table) if c.isPartition]
    return spark.table(table), parts


def quote_name(name: str) -> str:
    """``name`` as a Spark SQL identifier: in backticks, embedded backticks doubled, so that a dot (or a
    backtick) in a column name is part of the name rather than a struct field path."""
    return "`" + name.replace("`", "``") + "`"


def unescape_path_name(text: str) -> str:
    """Undo Hive's partition-path escaping (``FileUtils.unescapePathName``: ``%XX`` -> the character), as
    ``SHOW PARTITIONS`` prints the directory names: ``hour=2026-11-23 10%3A00`` holds ``10:00``."""
    return unquote(text)  # Hive escapes ASCII characters only, so this is exactly its inverse


def _existing_partitions(spark: SparkSession, table: str) -> list[dict[str, str]]:
    rows = spark.sql(f"SHOW PARTITIONS {table}").collect()
    out = []
    for row in rows:
        spec = {}
        for piece in row[0].split("/"):  # '/' inside a value is escaped (%2F), so this split is safe
            key, _, value = piece.partition("=")
            spec[unescape_path_name(key)] = unescape_path_name(value)
        out.append(spec)
    return out


def _partition_filter(spark: SparkSession, table: str, parts: list[str],
                      wanted: dict[str, str | tuple[str, ...]]) -> Column:
    from pyspark.sql import functions as F

    for key in wanted:
        if key not in parts:
            hint = _close(key, parts) or (f"; partition columns: {', '.join(parts)}" if parts else "")
            raise SourceError(f"source.partitions: {key!r} is not a partition column of {table}{hint}")
    existing = _existing_partitions(spark, table)
    condition = None
    for key, value in wanted.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]  # strings (etl.config)
        present = {p.get(key) for p in existing}
        for v in values:
            if v not in present:
                raise SourceError(f"source.partitions: {table} has no partition {key}={v}")
        clause = F.col(quote_name(key)).cast("string").isin(values)
        condition = clause if condition is None else condition & clause
    return condition


def load_source(spark: SparkSession, cfg: SourceConfig) -> Source:
    """Open, filter, project and sample the source; validate names and types against its schema.

    Raises:
        SourceError: The table, database, path, partition, filter, column or a column type is unknown
            or unsupported; the message names it.
    """
    from pyspark.errors import AnalysisException, ParseException

    parts: list[str] = []
    if cfg.table:
        name = cfg.table
        df, parts = _open_table(spark, cfg.table)
        description: dict[str, Any] = {"kind": "hive", "table": cfg.table}
    else:
        name = str(cfg.path)
        try:
            df = spark.read.format(cfg.format).load(cfg.path)
        except AnalysisException as e:
            raise SourceError(f"source.path {cfg.path!r} ({cfg.format}): {_first_line(e)}") from e
        description = {"kind": "path", "path": cfg.path, "format": cfg.format}
    all_columns = df.columns
    if cfg.partitions:
        df = df.where(_partition_filter(spark, cfg.table, parts, cfg.partitions))
        description["partitions"] = {k: v for k, v in cfg.partitions.items()}
    if cfg.where:
        try:
            df = df.where(cfg.where)
            df.schema  # noqa: B018 - forces analysis so a bad column is reported here
        except (AnalysisException, ParseException) as e:
            raise SourceError(f"source.where {cfg.where!r} on {name}: {_first_line(e)}") from e
        description["where"] = cfg.where
    if cfg.columns is not None:
        for column in cfg.columns:
            if column not in all_columns:
                raise SourceError(f"source.columns: {name} has no column {column!r}{_close(column, all_columns)}")
        df = df.select(*[df[quote_name(c)] for c in cfg.columns])
    check_types(df, f"source {name}")
    if cfg.sample < 1.0:
        df = df.sample(withReplacement=False, fraction=cfg.sample, seed=cfg.seed)
        description["sample"] = cfg.sample
        description["sample_seed"] = cfg.seed
    description["columns"] = df.columns
    return Source(df=df, description=description, name=name, partition_columns=parts)
