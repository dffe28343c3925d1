"""User-defined transforms used by the tests' ``kind: python`` confs."""

from __future__ import annotations


def price_bucket(df, buckets: int = 4):
    """Add ``price_bucket`` = price bucket in [0, buckets) (a typical static feature)."""
    from pyspark.sql import functions as F

    return df.withColumn("price_bucket", (F.col("price") % F.lit(buckets)).cast("int"))


def explode(df):
    """A hook that fails."""
    raise RuntimeError("boom in user code")


def not_a_frame(df):
    """A hook that returns the wrong thing."""
    return [1, 2, 3]


def add_map(df):
    """A hook that produces a column type the cache refuses."""
    from pyspark.sql import functions as F

    return df.withColumn("m", F.create_map(F.lit("k"), F.col("price")))


def fail_some(df, every: int = 997):
    """A hook whose UDF raises on some rows (only when the rows are computed, on the executors)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def double(x):
        if x % every == every - 1:
            raise ValueError(f"bad row id={x}")
        return x * 2

    return df.withColumn("id2", F.udf(double, T.LongType())("product_id"))
