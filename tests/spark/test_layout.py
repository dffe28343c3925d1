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
