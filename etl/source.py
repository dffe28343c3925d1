"""Extract: open the source (Hive table or Parquet/ORC path) and validate it before any heavy work.

Everything here touches only the catalog, the schema and partition listings, never the rows: an unknown
table, database, partition, column or filter column, or an unsupported column type, is reported before
Spark reads a byte of data.

Supported column types (what the reader can hand to numpy): booleans, integers, floats, decimals,
strings, binary, dates, timestamps, and one-level arrays of those (``array<string>``, ``array<int>``).
Maps, structs, intervals, variants and nested arrays are refused with :class:`SourceError` naming the
column; cast or flatten them in a ``kind: python`` transform, or leave the column out. When a python
transform follows, the selection's types are checked after the transforms instead (:mod:`etl.job`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from loader.errors import ConfigError, SourceError

from .config import SourceConfig, empty_partitions

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


@dataclass
class Source:
    """A validated, lazily evaluated selection.

    Attributes:
        df: The selected rows (filtered, projected, sampled); nothing has been read yet.
        description: What goes into the manifest's ``source``: kind, table or path, filter, columns.
        name: The table name or path, for messages.
        partition_columns: The table's partition columns, or for a path those Spark discovered in its
            ``k=v`` directories (:func:`discovered_partition_columns`); None when Spark's plan does not tell.
    """

    df: DataFrame
    description: dict
    name: str
    partition_columns: list[str] | None = field(default_factory=list)


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


def discovered_partition_columns(df: DataFrame) -> list[str] | None:
    """The partition columns Spark discovered under a path source (its ``k=v`` directories), in order.

    Spark reads such a column's values from the directory names, even where the files also hold a column
    of that name. ``df`` is the path as loaded (``spark.read.load(path)``: the plan is the file relation).

    Returns:
        The names, or None when the plan is not a file relation this Spark describes.
    """
    try:
        schema = df._jdf.queryExecution().analyzed().relation().partitionSchema()
        return [str(name) for name in schema.fieldNames()]
    except Exception:  # py4j: a plan of another shape, or another Spark
        return None


HIVE_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # the partition value Hive (and Spark) reads as null


def quote_name(name: str) -> str:
    """``name`` as a Spark SQL identifier: in backticks, embedded backticks doubled, so that a dot (or a
    backtick) in a column name is part of the name rather than a struct field path."""
    return "`" + name.replace("`", "``") + "`"


def unescape_path_name(text: str) -> str:
    """Undo Hive's partition-path escaping (``FileUtils.unescapePathName``: ``%XX`` -> the character), as
    ``SHOW PARTITIONS`` prints the directory names: ``hour=2026-11-23 10%3A00`` holds ``10:00``."""
    return unquote(text)  # Hive escapes ASCII characters only, so this is exactly its inverse


def partition_values(spark: SparkSession, texts, data_type) -> dict[str, Any]:
    """Spark's value of each partition value text for a partition column of ``data_type``: what Spark reads
    for a partition whose metastore spec holds the text (``CatalogTablePartition.toRow``: ``CAST(text AS
    type)`` as the session evaluates it, so ``hour=07`` is 7 and ``day=2025-1-5`` is 2025-01-05; Hive's
    null partition is None). None too where that cast gives null or, in ANSI mode, fails.

    The casts are evaluated on the driver over a local relation (no Spark job), all texts in one query.

    Args:
        spark: The session (its ANSI mode and time zone decide the casts).
        texts: Partition value texts (unescaped, as the metastore holds them); None stands for null.
        data_type: The column's Spark type.
    """
    from pyspark.sql import types as T

    distinct = sorted({t for t in texts if t is not None and t != HIVE_NULL_PARTITION})
    found: dict[str, Any] = {HIVE_NULL_PARTITION: None}
    if isinstance(data_type, T.StringType) or not distinct:
        return {**found, **{t: t for t in distinct}}
    import pyarrow as pa

    ansi = str(spark.conf.get("spark.sql.ansi.enabled")).lower() == "true"  # (a default given to get() wins)
    cast = "try_cast" if ansi else "cast"  # try_cast: the ANSI cast, null where it fails
    local = spark.createDataFrame(pa.table({"v": pa.array(distinct, pa.string())}))
    rows = local.selectExpr("v", f"{cast}(v AS {data_type.simpleString()}) AS typed").collect()
    return {**found, **{r["v"]: r["typed"] for r in rows}}


def local_path(uri: str) -> str | None:
    """The local path of a file URI (``file:`` or no scheme, percent-escapes undone), or None."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        return None
    return unquote(parsed.path)


def partition_locations(spark: SparkSession, table: str, names: list[str]
                        ) -> dict[str, dict[str, str | None]]:
    """Every partition of the Hive table ``table`` as the metastore holds it: its location (a local path,
    or the URI when not local) -> the values of ``names`` (Hive's null partition as None).

    Spark takes a partition's values from the metastore, never from its directory's name (a partition
    added with ``LOCATION '.../p=old'`` holds the value it was added with).

    Raises:
        Py4JError: The catalog could not be asked (the caller declines the pyarrow read).
    """
    session = spark._jsparkSession.sessionState()
    ident = session.sqlParser().parseTableIdentifier(table)
    parts = session.catalog().listPartitions(ident, spark._jvm.scala.Option.apply(None))
    found: dict[str, dict[str, str | None]] = {}
    for i in range(parts.size()):
        part = parts.apply(i)
        uri = part.storage().locationUri()
        if not uri.isDefined():
            continue
        location, spec = str(uri.get()), part.spec()
        values = {name: str(spec.apply(name)) for name in names}
        found[(local_path(location) or location).rstrip("/") or "/"] = {
            k: None if v == HIVE_NULL_PARTITION else v for k, v in values.items()}
    return found


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


def _listed(values: list[str], most: int = 20) -> str:
    shown = ", ".join(values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def _partition_filter(spark: SparkSession, df: DataFrame, table: str, parts: list[str],
                      wanted: dict[str, str | tuple[str, ...]]) -> Column:
    """The filter selecting the ``wanted`` partitions, each value checked against ``SHOW PARTITIONS``.

    A value selects the partitions whose stored text it is, or whose value as Spark reads it
    (:func:`partition_values`) is the given text's: ``hour: "7"`` and ``hour: "07"`` both select the
    partition stored as ``hour=07`` of an INT column. The filter compares those typed values (``IS NULL``
    for a value Spark reads as null, such as Hive's null partition), so what the check accepts is what
    the filter selects.

    Raises:
        ConfigError: A key's value is null or an empty list (naming the key).
        SourceError: A key is not a partition column, or a value matches no partition (naming the table,
            the column and the value, and listing the column's stored values).
    """
    from pyspark.sql import functions as F

    for key in wanted:
        if key not in parts:
            hint = _close(key, parts) or (f"; partition columns: {', '.join(parts)}" if parts else "")
            raise SourceError(f"source.partitions: {key!r} is not a partition column of {table}{hint}")
    problem = empty_partitions(wanted)  # refused by etl.config, but a SourceConfig built in Python may hold it
    if problem:  # null or [] is never "no filter" on that key
        raise ConfigError(problem)
    existing = _existing_partitions(spark, table)
    condition = None
    for key, value in wanted.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]  # strings (etl.config)
        stored = sorted({p[key] for p in existing if key in p})
        typed = partition_values(spark, stored + values, df.schema[key].dataType)
        present = {typed[s] for s in stored}
        for v in values:
            if v not in stored and (typed[v] is None or typed[v] not in present):
                raise SourceError(f"source.partitions: {table} has no partition {key}={v} (its {key} values: "
                                  f"{_listed(stored) or 'none'})")
        column = F.col(quote_name(key))
        known = list(dict.fromkeys(typed[v] for v in values if typed[v] is not None))
        clause = column.isin(known) if known else None
        if any(typed[v] is None for v in values):
            clause = column.isNull() if clause is None else clause | column.isNull()
        condition = clause if condition is None else condition & clause
    return condition


def load_source(spark: SparkSession, cfg: SourceConfig, check_column_types: bool = True) -> Source:
    """Open, filter, project and sample the source; validate names and types against its schema.

    Args:
        spark: The session.
        cfg: The conf's ``source`` section.
        check_column_types: Refuse a column the cache cannot hold (:func:`check_types`); False when a
            ``kind: python`` transform follows, which may flatten or cast it (the caller checks its output).

    Raises:
        ConfigError: A partition key's value is null or an empty list (a conf that skipped validation).
        SourceError: The table, database, path, partition, filter, column or a column type is unknown
            or unsupported; the message names it.
    """
    from pyspark.errors import AnalysisException, ParseException

    parts: list[str] | None = []
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
        parts = discovered_partition_columns(df)
    all_columns = df.columns
    if cfg.partitions:
        df = df.where(_partition_filter(spark, df, cfg.table, parts, cfg.partitions))
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
    if check_column_types:
        check_types(df, f"source {name}")
    if cfg.sample < 1.0:
        df = df.sample(withReplacement=False, fraction=cfg.sample, seed=cfg.seed)
        description["sample"] = cfg.sample
        description["sample_seed"] = cfg.seed
    description["columns"] = df.columns
    return Source(df=df, description=description, name=name, partition_columns=parts)
