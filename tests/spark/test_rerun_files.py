"""A rerun over a table Spark reads through Hive's own reader (``STORED AS TEXTFILE``: a
``HiveTableRelation``, whose ``inputFiles()`` is the table's directory) fingerprints the files of the
partitions the selection reads.

A file added to a selected partition, or rows appended to a file in place, rebuild and publishes the new rows;
an insert into a partition the selection does not read leaves it up to date, and so does an unchanged
rerun, whose snapshot counts the selected partition's files (not one directory).
"""

from __future__ import annotations

import json
import os
import re

import pytest

from etl.job import run
from tests.spark.conftest import quiet
from tests.spark.published import assert_labels_match, published_rows, small_conf, table_rows

pytestmark = pytest.mark.slow
DB = "refiles"
SELECTIONS = {"partitions": {"partitions": {"dt": "a"}}, "where": {"where": "dt = 'a'"}}


@pytest.fixture(scope="module")
def db(spark) -> str:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    return DB


def _values(ids, dt: str | None = None) -> str:
    return ", ".join(f"({i}, 'c{i % 3}', 't{i}'" + (f", '{dt}')" if dt else ")") for i in ids)


def _text_file(path: str, ids) -> None:
    """A file in Hive's default text layout (fields separated by ``\\x01``)."""
    with open(path, "w") as f:
        f.writelines(f"{i}\x01c{i % 3}\x01t{i}\n" for i in ids)


def _location(spark, table: str, spec: str | None = None) -> str:
    """The local directory of a table (or of one of its partitions)."""
    query = f"DESCRIBE FORMATTED {table}" + (f" PARTITION ({spec})" if spec else "")
    for row in spark.sql(query).collect():
        if row[0].strip() == "Location":
            return re.sub(r"^file:", "", row[1].strip())
    raise AssertionError(f"no location for {table} {spec or ''}")


def _data_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith(("_", ".")))


def _snapshot(root, name: str, version: str) -> dict:
    with open(os.path.join(str(root), name, version, "_manifest.json")) as f:
        return json.load(f)["source"]["snapshot"]


@pytest.fixture
def text_table(spark, db, request) -> str:
    """A partitioned TEXTFILE table: 200 rows in dt=a (ids 0-199), 100 in dt=b."""
    table = f"{db}." + re.sub(r"\W+", "_", request.node.name).strip("_")
    spark.sql(f"DROP TABLE IF EXISTS {table}")
    spark.sql(f"CREATE TABLE {table} (id INT, cat STRING, txt STRING) PARTITIONED BY (dt STRING) STORED AS TEXTFILE")
    spark.sql(f"INSERT INTO {table} PARTITION (dt='a') VALUES {_values(range(200))}")
    spark.sql(f"INSERT INTO {table} PARTITION (dt='b') VALUES {_values(range(1000, 1100))}")
    return table


def _selected(spark, table: str) -> list[dict]:
    return [r for r in table_rows(spark, table) if r["dt"] == "a"]


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_file_added_to_the_selected_partition_rebuilds(spark, tmp_path, text_table, selection):
    cfg = small_conf(tmp_path, "txt", text_table, **SELECTIONS[selection])
    first = run(cfg, spark, log=quiet)
    assert first.status == "published" and first.rows == 200
    _text_file(os.path.join(_location(spark, text_table, "dt='a'"), "part-added-by-another-writer"), range(500, 600))

    second = run(cfg, spark, log=quiet)
    assert second.status == "published" and second.version != first.version and second.rows == 300
    ds, got = published_rows(tmp_path, "txt")
    want = _selected(spark, text_table)
    assert len(want) == 300
    assert [{k: v for k, v in r.items() if k != "label"} for r in got] == want
    assert_labels_match(ds, got)
    assert run(cfg, spark, log=quiet).status == "up to date"


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_insert_into_an_unselected_partition_is_up_to_date(spark, tmp_path, text_table, selection):
    cfg = small_conf(tmp_path, "txt", text_table, **SELECTIONS[selection])
    first = run(cfg, spark, log=quiet)
    assert first.status == "published"
    spark.sql(f"INSERT INTO {text_table} PARTITION (dt='b') VALUES {_values(range(2000, 2050))}")
    spark.sql(f"INSERT INTO {text_table} PARTITION (dt='c') VALUES {_values(range(3000, 3050))}")
    again = run(cfg, spark, log=quiet)
    assert again.status == "up to date" and again.version == first.version and again.rows == 200


def test_unchanged_rerun_is_up_to_date_and_fingerprints_the_partition_files(spark, tmp_path, text_table):
    cfg = small_conf(tmp_path, "txt", text_table, partitions={"dt": "a"})
    first = run(cfg, spark, log=quiet)
    assert first.status == "published"
    again = run(cfg, spark, log=quiet)
    assert again.status == "up to date" and again.version == first.version
    part = _location(spark, text_table, "dt='a'")
    files = _data_files(part)
    snapshot = _snapshot(tmp_path, "txt", first.version)
    assert snapshot["partitions"] == ["dt=a"]
    assert snapshot["files"] == len(files)
    assert snapshot["bytes"] == sum(os.path.getsize(os.path.join(part, n)) for n in files)


def test_file_appended_in_place_in_an_unpartitioned_text_table_rebuilds(spark, db, tmp_path):
    table = f"{db}.flat"
    spark.sql(f"DROP TABLE IF EXISTS {table}")
    spark.sql(f"CREATE TABLE {table} (id INT, cat STRING, txt STRING) STORED AS TEXTFILE")
    spark.sql(f"INSERT INTO {table} VALUES {_values(range(100))}")
    cfg = small_conf(tmp_path, "flat", table)
    first = run(cfg, spark, log=quiet)
    assert first.status == "published" and first.rows == 100
    location = _location(spark, table)
    name = _data_files(location)[0]
    before = os.stat(location)
    with open(os.path.join(location, name), "a") as f:  # appended in place, as HDFS appends: same listing
        f.writelines(f"{i}\x01c{i % 3}\x01t{i}\n" for i in range(100, 150))
    crc = os.path.join(location, f".{name}.crc")  # Hadoop's local checksum of the old content: it would not match
    if os.path.exists(crc):
        os.remove(crc)
    os.utime(location, ns=(before.st_atime_ns, before.st_mtime_ns))  # an append leaves the directory as it was

    second = run(cfg, spark, log=quiet)
    want = table_rows(spark, table)
    assert second.status == "published" and second.rows == len(want) == 150
    ds, got = published_rows(tmp_path, "flat")
    assert [{k: v for k, v in r.items() if k != "label"} for r in got] == want
    assert_labels_match(ds, got)
    assert run(cfg, spark, log=quiet).status == "up to date"
