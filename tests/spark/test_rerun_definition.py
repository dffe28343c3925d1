"""A rerun over a table whose definition changed but whose files did not must rebuild, and one over an
unchanged table must not.

The fingerprint covers the selection's resolved schema and the catalog definition of every table and
view it reads (:func:`etl.fingerprint.selection_definition`), and the transforms' columns are checked
before the up-to-date exit: a redefined view, an added, widened or dropped column publish a version equal
to what Spark reads from the table now; a renamed indexed column is an error naming it; dropping and
recreating a table with the same definition over the same files stays up to date.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from etl.job import run
from loader.errors import ConfigError
from tests.spark.conftest import quiet
from tests.spark.published import assert_labels_match, live_version, published_rows, small_conf, table_rows

pytestmark = pytest.mark.slow
DB = "redef"
COLUMNS = "id INT, cat STRING, txt STRING"


@pytest.fixture(scope="module")
def db(spark) -> str:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    return DB


def without(row: dict, *keys: str) -> dict:
    return {k: v for k, v in row.items() if k not in keys}


def test_redefined_nested_view_rebuilds_and_an_unchanged_one_is_up_to_date(spark, db, tmp_path):
    spark.sql(f"CREATE TABLE {db}.base (id INT, cat STRING) STORED AS PARQUET")
    rows = [(i, "abc"[i % 3]) for i in range(200)]
    spark.createDataFrame(rows, "id int, cat string").coalesce(1).write.insertInto(f"{db}.base")
    spark.sql(f"CREATE VIEW {db}.inner_v AS SELECT id, cat FROM {db}.base WHERE id < 100")
    spark.sql(f"CREATE VIEW {db}.outer_v AS SELECT * FROM {db}.inner_v WHERE cat IS NOT NULL")
    cfg = small_conf(tmp_path, "view", f"{db}.outer_v")
    first = run(cfg, spark, log=quiet)
    assert first.status == "published" and first.rows == 100
    assert run(cfg, spark, log=quiet).status == "up to date"

    spark.sql(f"ALTER VIEW {db}.inner_v AS SELECT id, cat FROM {db}.base WHERE id >= 150")  # same files
    second = run(cfg, spark, log=quiet)
    assert second.status == "published" and second.version != first.version
    ds, got = published_rows(tmp_path, "view")
    want = table_rows(spark, f"{db}.outer_v")
    assert [r["id"] for r in want] == list(range(150, 200))
    assert [without(r, "label") for r in got] == want
    assert_labels_match(ds, got)
    assert run(cfg, spark, log=quiet).status == "up to date"  # the new definition is stable too


def _create(spark, table: str, location: str, columns: str) -> None:
    spark.sql(f"DROP TABLE IF EXISTS {table}")  # external: the files stay
    spark.sql(
        f"CREATE EXTERNAL TABLE {table} ({columns}) PARTITIONED BY (dt STRING) STORED AS PARQUET LOCATION '{location}'"
    )
    spark.sql(f"MSCK REPAIR TABLE {table}")


def _add_column(spark, table, location):
    spark.sql(f"ALTER TABLE {table} ADD COLUMNS (extra STRING)")


def _widen(spark, table, location):
    _create(spark, table, location, "id BIGINT, cat STRING, txt STRING")


def _drop(spark, table, location):
    _create(spark, table, location, "id INT, cat STRING")


CHANGES = {  # change -> (what it does to the table, the published id type, the published columns)
    "column added": (_add_column, pa.int32(), ["id", "cat", "txt", "extra", "dt", "label"]),
    "int widened to bigint": (_widen, pa.int64(), ["id", "cat", "txt", "dt", "label"]),
    "column dropped": (_drop, pa.int32(), ["id", "cat", "dt", "label"]),
}


@pytest.fixture
def table(spark, db, tmp_path, request):
    """An external partitioned table over one partition of Parquet files, and a first published version."""
    name = f"{db}." + re.sub(r"\W+", "_", request.node.name).strip("_")
    location = str(tmp_path / "ext")
    _create(spark, name, location, COLUMNS)
    rows = [(i, "abc"[i % 3], f"t{i}") for i in range(300)]
    spark.createDataFrame(rows, "id int, cat string, txt string").createOrReplaceTempView("redef_rows")
    spark.sql(f"INSERT OVERWRITE TABLE {name} PARTITION (dt='d1') SELECT * FROM redef_rows")
    cfg = small_conf(tmp_path / "cache", "t", name)
    first = run(cfg, spark, log=quiet)
    assert first.status == "published"
    _create(spark, name, location, COLUMNS)  # dropped and created again as it was: nothing changed
    again = run(cfg, spark, log=quiet)
    assert again.status == "up to date" and again.version == first.version
    return name, location, cfg, first


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_table_definition_over_the_same_files_rebuilds(spark, tmp_path, table, change):
    name, location, cfg, first = table
    alter, id_type, columns = CHANGES[change]
    alter(spark, name, location)
    second = run(cfg, spark, log=quiet)
    assert second.status == "published" and second.version != first.version
    ds, got = published_rows(tmp_path / "cache", "t")
    assert ds.columns == columns
    assert ds.read_row_group(ds.files[0], 0).schema.field("id").type == id_type
    assert [without(r, "label") for r in got] == table_rows(spark, name)
    assert_labels_match(ds, got)
    assert run(cfg, spark, log=quiet).status == "up to date"


def test_renamed_indexed_column_is_an_error_naming_it(spark, tmp_path, table):
    name, location, cfg, first = table
    _create(spark, name, location, "id INT, kind STRING, txt STRING")
    message = rf"transforms.0.column: no column 'cat' to index in {name} \(columns: id, kind"
    with pytest.raises(ConfigError, match=message):
        run(cfg, spark, log=quiet)
    assert live_version(tmp_path / "cache", "t") == first.version
