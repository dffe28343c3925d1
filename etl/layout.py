"""Which output file each row goes to: exact file sizes, and decorrelation across files.

Every row gets an exact global index ``g`` in source order, without a global sort: one light job counts
the rows of each input partition, and ``g = offset[partition] + (monotonically_increasing_id() -
(partition << 33))``. Then:

* ``shuffle: false`` — ``file = g // rows_per_file``: files are consecutive runs of the source order.
* ``shuffle: true`` — ``file = perm(g) // rows_per_file`` with the seeded bijection
  ``perm(g) = (a·g + b) mod N`` (``a`` coprime to ``N``, near ``N/φ``). ``a/N`` close to the golden
  ratio makes the rows of each file an evenly spread (low-discrepancy) sample of the whole source order,
  so every file holds every day, category and seller in about its overall share — closer than a
  random sample would. Inside a file rows are ordered by a seeded random key.

Both give ``n - 1`` files of exactly ``rows_per_file`` rows and one remainder file, whatever Spark's
partitioning, so row groups land on the byte target instead of on ``target × (n-1)/n``. Each file is one
partition of a hash repartition whose keys are chosen so that file ``i`` lands in partition ``i``
(:func:`partition_keys`): one writer task per file, no dynamic-partition writer, no extra sort.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .source import quote_name

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

FILE_COLUMN = "__larder_file"
_ORDER = "__larder_order"
ORDER_COLUMN = _ORDER
_PART = "__larder_partition"
# Counting partitions and writing the laid-out rows must see the same partitions: adaptive execution
# could coalesce or split shuffle partitions differently in the two jobs (and would merge the
# one-file-per-partition layout), so both run with it off.
LAYOUT_SETTINGS = {"spark.sql.adaptive.enabled": "false"}
_INV_PHI = (math.sqrt(5) - 1) / 2
LONG_SAFE_ROWS = 3_037_000_000  # below this, a*g < 2**63 for a, g < rows


def _dense(per_partition: dict[int, int], num_partitions: int) -> list[int]:
    counts = [0] * max(num_partitions, max(per_partition, default=-1) + 1)
    for p, n in per_partition.items():
        counts[p] = n
    return counts


def partition_counts(df: DataFrame) -> list[int]:
    """Rows in each partition of ``df`` (index = partition id), from one light job."""
    from pyspark.sql import functions as F

    rows = df.select(F.spark_partition_id().alias(_PART)).groupBy(_PART).count().collect()
    return _dense({int(r[_PART]): int(r["count"]) for r in rows}, df.rdd.getNumPartitions())


def scan_counts(df: DataFrame, columns: list[str]) -> tuple[list[int], dict[str, dict[str, int]]]:
    """Rows per partition of ``df`` and, from the same scan, each column's value counts.

    One aggregation with grouping sets ``(partition), (column_1), (column_2)…``: the driver receives one
    row per partition plus one per distinct value, never the (partition, value) product.

    Args:
        df: The rows; its partitions are counted as :func:`partition_counts` counts them.
        columns: Columns whose values are counted (nulls are not counted).

    Returns:
        ``(partition_counts(df), {column: {value: count}})``.
    """
    from pyspark.sql import functions as F

    columns = list(dict.fromkeys(columns))
    if not columns:
        return partition_counts(df), {}
    names = [f"__larder_value_{i}" for i in range(len(columns))]
    projected = df.select(
        F.spark_partition_id().alias(_PART),
        *(F.col(quote_name(c)).alias(n) for c, n in zip(columns, names, strict=True)),
    )
    grouped = projected.groupingSets([[_PART]] + [[n] for n in names], _PART, *names)
    flags = [F.grouping(c).alias(f"{c}_g") for c in [_PART, *names]]
    rows = grouped.agg(F.count(F.lit(1)).alias("n"), *flags).collect()
    per_partition: dict[int, int] = {}
    values: dict[str, dict[str, int]] = {c: {} for c in columns}
    for r in rows:
        if r[f"{_PART}_g"] == 0:
            per_partition[int(r[_PART])] = int(r["n"])
            continue
        for column, name in zip(columns, names, strict=True):
            if r[f"{name}_g"] == 0 and r[name] is not None:
                values[column][r[name]] = int(r["n"])
    return _dense(per_partition, df.rdd.getNumPartitions()), values


def affine_permutation(n: int, seed: int) -> tuple[int, int]:
    """``(a, b)`` of the seeded bijection ``g -> (a·g + b) mod n`` on ``range(n)``."""
    if n <= 2:
        return 1, 0
    rng = np.random.default_rng([seed, n])
    a = max(1, round(n * _INV_PHI) + int(rng.integers(-(n // 200) - 1, n // 200 + 2)))
    while math.gcd(a, n) != 1:
        a += 1
    return a % n or 1, int(rng.integers(0, n))


def permute(g: int | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Python mirror of the permutation the Spark plan applies (for tests and reasoning)."""
    a, b = affine_permutation(n, seed)
    return (np.asarray(g, dtype=object) * a + b) % n


def partition_keys(spark: SparkSession, n: int) -> list[int]:
    """For each partition ``i < n``, a long key that Spark's hash partitioning sends to partition ``i``.

    ``repartition(n, col)`` places a row in ``pmod(hash(col), n)`` (Murmur3, seed 42 — the SQL ``hash``
    function); asking Spark itself for the keys keeps this exact for any Spark version.
    """
    from pyspark.sql import functions as F

    keys: dict[int, int] = {}
    start, step = 0, max(64, 8 * n)
    while len(keys) < n:
        rows = spark.range(start, start + step).select("id", F.pmod(F.hash("id"), F.lit(n)).alias("p")).collect()
        for r in rows:
            keys.setdefault(int(r["p"]), int(r["id"]))
        start += step
    return [keys[i] for i in range(n)]


def assign_files(
    spark: SparkSession, df: DataFrame, counts: list[int], rows_per_file: int, shuffle: bool, seed: int,
    exchange: bool = True, first: Column | None = None,
) -> tuple[DataFrame, int]:
    """Lay ``df`` out as ``n`` partitions, partition ``i`` holding exactly the rows of file ``i``.

    With ``exchange=False`` the rows are not moved: each gets its file number (``0..n-1``, column
    :data:`FILE_COLUMN`) and its in-file order key (column :data:`ORDER_COLUMN`), for a writer that does
    the exchange itself (:mod:`etl.arrow_write`).

    Args:
        spark: The session.
        df: The rows, partitioned exactly as when ``counts`` was measured.
        counts: :func:`partition_counts` of ``df``.
        rows_per_file: Rows in every file but the last.
        shuffle: Decorrelate (seeded permutation, random order inside files) or keep source order.
        seed: The permutation and in-file order seed.
        first: A condition on the rows: those that meet it go first in their file (the others keep their order;
            with ``exchange=True`` only).

    Returns:
        The laid-out rows (same columns as ``df``) and the number of files ``n``.
    """
    from pyspark.sql import functions as F

    total = sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist() if counts else [0]
    pid = F.spark_partition_id()
    local = F.monotonically_increasing_id() - F.shiftleft(pid.cast("long"), 33)
    g = F.element_at(F.lit(offsets), pid + 1) + local
    if shuffle:
        a, b = affine_permutation(total, seed)
        if total < LONG_SAFE_ROWS:  # a*g fits a signed 64-bit long
            position = F.pmod(g * F.lit(a) + F.lit(b), F.lit(total))
        else:
            dec = "decimal(38,0)"
            position = F.pmod(g.cast(dec) * F.lit(a).cast(dec) + F.lit(b).cast(dec), F.lit(total).cast(dec))
            position = position.cast("long")
        order = F.rand(seed)
    else:
        position, order = g, g
    n_files = max(1, math.ceil(total / rows_per_file))
    if not exchange:
        file_index = F.floor(position / F.lit(rows_per_file)).cast("int")
        return df.withColumn(_ORDER, order).withColumn(FILE_COLUMN, file_index), n_files
    keys = partition_keys(spark, n_files)
    file_id = F.floor(position / F.lit(rows_per_file)) + 1
    file_key = F.element_at(F.lit(keys), file_id.cast("int")).cast("long")  # the type partition_keys hashed
    out = df.withColumn(_ORDER, order).withColumn(FILE_COLUMN, file_key)
    # One sort key, -1 for the rows that go first (the order key is >= 0): a prefix sort.
    keys = [_ORDER] if first is None else [F.when(first, F.lit(-1)).otherwise(F.col(_ORDER)), _ORDER]
    out = out.repartition(n_files, FILE_COLUMN).sortWithinPartitions(*keys).drop(_ORDER, FILE_COLUMN)
    return out, n_files
