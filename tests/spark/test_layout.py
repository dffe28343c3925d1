"""Pure parts of the layout and sizing: the seeded permutation, vocabulary order, page sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.layout import affine_permutation, permute
from etl.sizing import default_page_size
from etl.transforms import extend_vocabulary


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31))
def test_permutation_is_a_bijection(n, seed):
    out = permute(np.arange(n), n, seed)
    assert sorted(out.tolist()) == list(range(n))


def test_permutation_depends_on_seed_and_is_pure():
    assert affine_permutation(10_000, 1) == affine_permutation(10_000, 1)
    assert affine_permutation(10_000, 0) != affine_permutation(10_000, 1)


def test_permutation_spreads_runs_over_files():
    """A contiguous run of the source (one category) lands in every file in about its share."""
    n, rows_per_file = 20_000, 1_000
    files = (permute(np.arange(n), n, 0) // rows_per_file).astype(int)
    run = files[5_000:7_000]  # 10% of the rows
    per_file = np.bincount(run, minlength=n // rows_per_file)
    assert per_file.min() >= 80 and per_file.max() <= 120  # 100 expected in each file


def test_vocabulary_order():
    counts = {"b": 5, "a": 5, "c": 9, "d": 1}
    assert extend_vocabulary([], counts) == ["c", "a", "b", "d"]  # by descending count, then value
    assert extend_vocabulary(["d", "x"], counts) == ["d", "x", "c", "a", "b"]  # known ids stay


def test_page_size_scales_with_block():
    assert default_page_size(128 << 20, 7) == 128 << 10
    assert default_page_size(4 << 20, 8) == 8 << 10
    assert 8 << 10 <= default_page_size(8 << 20, 3) <= 128 << 10


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [True, False])
def test_spark_layout_matches_the_permutation(spark, monkeypatch, shuffle):
    """Spark's file assignment equals the Python mirror, in long and in decimal arithmetic, and file i
    is exactly partition i."""
    from pyspark.sql import functions as F

    from etl import layout

    df = spark.range(0, 1000, 1, 3).toDF("g")  # ids in source order are the global indexes
    counts = layout.partition_counts(df)
    want = (permute(np.arange(1000), 1000, 5) if shuffle else np.arange(1000)) // 300
    for safe in (layout.LONG_SAFE_ROWS, 0):  # 0 forces the decimal path used beyond ~3e9 rows
        monkeypatch.setattr(layout, "LONG_SAFE_ROWS", safe)
        out, n = layout.assign_files(spark, df, counts, 300, shuffle, 5)
        got = out.select("g", F.spark_partition_id().alias("p")).collect()
        assert n == 4 and len(got) == 1000
        assert all(want[r["g"]] == r["p"] for r in got)


@pytest.mark.slow
def test_one_scan_counts_partitions_and_values_as_separate_jobs(spark):
    """The grouping-sets scan gives partition_counts' per-partition rows and groupBy's value counts
    (nulls left out), for two columns at once, without the (partition, value) product."""
    from etl import layout

    df = spark.range(0, 5000, 1, 5).selectExpr(
        "id",
        "CASE WHEN id % 11 = 0 THEN NULL ELSE cast(id % 7 AS string) END AS a",
        "cast(id % 3 AS string) AS b",
    ).where("id % 13 <> 0")  # uneven partitions
    counts, values = layout.scan_counts(df, ["a", "b", "a"])
    assert counts == layout.partition_counts(df) and sum(counts) == df.count()
    for column in ("a", "b"):
        want = {r[0]: r[1] for r in df.groupBy(column).count().collect() if r[0] is not None}
        assert values[column] == want
    assert layout.scan_counts(df, []) == (counts, {})


@pytest.mark.slow
def test_values_are_precounted_only_for_index_transforms_on_source_strings(spark):
    from etl.config import TransformConfig
    from etl.transforms import precountable_columns

    df = spark.range(3).selectExpr("id", "cast(id AS string) AS s", "cast(id AS string) AS t")
    index = TransformConfig(kind="index", column="s", output="label")
    assert precountable_columns(df, ()) == []
    assert precountable_columns(df, (index, TransformConfig(kind="index", column="t"))) == ["s", "t"]
    assert precountable_columns(df, (TransformConfig(kind="index", column="id"),)) is None  # not a string
    assert precountable_columns(df, (index, TransformConfig(kind="index", column="label"))) is None  # replaced
    assert precountable_columns(df, (TransformConfig(kind="python", function="m:f"), index)) is None
