"""The one session-scoped SparkSession of the suite, plus shared Spark-made data.

local[2], UI off, warehouse and embedded Derby metastore in a temporary directory, small shuffle
partitions. Data is made by fixtures (the demo table; wide/narrow/clustered Parquet sources) at
session scope, because Spark work is the expensive part of the suite.
"""

from __future__ import annotations

import os

import pytest

pyspark = pytest.importorskip("pyspark")

from etl.config import from_dict  # noqa: E402
from etl.demo import make_demo_table  # noqa: E402
from etl.session import python_for_workers, session_settings  # noqa: E402

DEMO_TABLE = "demo.shopping_products"
DEMO_ROWS = 6000
DEMO_COLUMNS = ["product_id", "title", "tokens", "wordpiece_ids", "image", "category", "price"]


@pytest.fixture(scope="session")
def spark_dirs(tmp_path_factory):
    """Warehouse and metastore directories of the session."""
    base = tmp_path_factory.mktemp("spark")
    return {"warehouse_dir": str(base / "warehouse"), "metastore_dir": str(base / "metastore")}


@pytest.fixture(scope="session")
def spark(spark_dirs):
    """The suite's one SparkSession (local[2], Hive support, Derby metastore in a temp dir)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    python_for_workers()
    cfg = from_dict(
        {
            "name": "fixture",
            "source": {"table": "x.y"},
            "spark": {
                **spark_dirs,
                "conf": {
                    "spark.ui.enabled": False,
                    "spark.sql.shuffle.partitions": 4,
                    "spark.default.parallelism": 4,
                    "spark.driver.extraJavaOptions": f"-Dderby.system.home={spark_dirs['metastore_dir']}",
                },
            },
        }
    ).spark
    builder = SparkSession.builder.master("local[2]").appName("larder-tests")
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    session = builder.enableHiveSupport().getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_table(spark) -> str:
    """The demo Hive table: 6,000 rows over 3 days, small JPEG payloads."""
    make_demo_table(spark, DEMO_TABLE, rows=DEMO_ROWS, days=3, image_bytes=300, if_missing=False)
    return DEMO_TABLE


def quiet(_message: str) -> None:
    """A job log that says nothing."""


def job_conf(root, name="shop", **sections):
    """A job conf over the demo table writing under ``root`` (sections override the defaults)."""
    raw = {
        "name": name,
        "source": {"table": DEMO_TABLE, "columns": DEMO_COLUMNS},
        "transforms": [{"kind": "index", "column": "category", "output": "label"}],
        "output": {"root": str(root), "block_size": "256KiB", "keep_versions": 2},
        "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return from_dict(raw)


TYPED_COLUMNS = [  # every type the job accepts but timestamps: atomic types, decimals, dates, arrays, nulls
    "id", "id % 2 = 0 AS b", "cast(id % 100 AS tinyint) AS t", "cast(id AS smallint) AS sm",
    "cast(id AS int) AS i", "cast(id / 7 AS float) AS f", "id / 3 AS d", "cast(id / 9 AS decimal(12, 3)) AS dec",
    "IF(id % 5 = 0, NULL, concat('s', cast(id AS string))) AS s", "encode(cast(id AS string), 'utf-8') AS bin",
    "date_add(DATE'2026-01-01', cast(id % 400 AS int)) AS dt",
    "IF(id % 7 = 0, NULL, sequence(0, cast(id % 3 AS int))) AS arr",
    "array(cast(id AS string), NULL) AS sarr",
]  # fmt: skip
TIMESTAMP_COLUMNS = [
    "timestamp_seconds(1700000000 + id * 61) AS ts",
    "cast(timestamp_seconds(1700000000 + id) AS timestamp_ntz) AS ntz",
]


def write_typed_source(spark, path: str, timestamps: bool = True) -> None:
    """3,000 rows of :data:`TYPED_COLUMNS` (and :data:`TIMESTAMP_COLUMNS`) as Parquet at ``path``."""
    columns = TYPED_COLUMNS + (TIMESTAMP_COLUMNS if timestamps else [])
    spark.range(0, 3000, 1, 3).selectExpr(*columns).write.parquet(path)


def same_value(got, want) -> bool:
    """A value read from a published file equals Spark's: bytes as bytes, floats to 1e-6, timestamps that
    Arrow gives UTC-aware and Spark naive in UTC."""
    if getattr(got, "tzinfo", None) is not None:
        got = got.replace(tzinfo=None)
    if isinstance(want, (bytes, bytearray)):
        return bytes(got) == bytes(want)
    if isinstance(want, float):
        return got == pytest.approx(want, rel=1e-6)
    return got == want
