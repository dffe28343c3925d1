"""Audit findings on changing Hive tables: partition values the metastore holds in another spelling than
Spark prints them (``day=2025-1-5``, ``hour=07``, as ``MSCK REPAIR`` adds an upstream writer's directories),
a source file rewritten in place while the job runs, and a vocabulary file saved with a UTF-8 BOM.

Job runs are few: the partition cases check the selection and the pyarrow plan on the driver and run the job
once; the rewrite cases run it five times over a 100-row table.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import direct
from etl.job import run
from etl.source import load_source
from etl.transforms import read_vocabulary_file
from loader.errors import SourceError
from tests.spark.published import assert_labels_match, live_version, published_rows, small_conf, table_rows

DB = "auditz"


def _write(path, ids, cats) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(list(ids), pa.int32()), "cat": cats}), path)


@pytest.fixture(scope="module")
def spelled(spark, tmp_path_factory) -> str:
    """An external table partitioned by ``day DATE, hour INT`` whose directories (added by MSCK REPAIR) spell
    the values unpadded or zero-padded: Spark reads ``day=2025-1-5/hour=07`` as 2025-01-05, 7."""
    ext = tmp_path_factory.mktemp("spelled")
    _write(str(ext / "day=2025-1-5" / "hour=07" / "f.parquet"), range(0, 5), ["a", "b", "a", "b", "a"])
    _write(str(ext / "day=2026-01-06" / "hour=10" / "f.parquet"), range(5, 9), ["b", "c", "b", "c"])
    _write(str(ext / "day=2026-1-7" / "hour=7" / "f.parquet"), range(9, 12), ["c", "a", "c"])
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    spark.sql(f"DROP TABLE IF EXISTS {DB}.spelled")
    spark.sql(f"CREATE EXTERNAL TABLE {DB}.spelled (id INT, cat STRING) PARTITIONED BY (day DATE, hour INT) "
              f"STORED AS PARQUET LOCATION '{ext}'")
    spark.sql(f"MSCK REPAIR TABLE {DB}.spelled")
    return f"{DB}.spelled"


@pytest.mark.slow
def test_unpadded_date_and_int_partitions_are_read_with_pyarrow_as_spark_reads_them(spark, spelled, tmp_path):
    said: list[str] = []
    run(small_conf(tmp_path, "spelled", spelled), spark, log=said.append)
    ds, got = published_rows(tmp_path, "spelled")
    assert ds.manifest.extra["source_reader"] == "pyarrow", said
    assert [{k: r[k] for k in ("id", "cat", "day", "hour")} for r in got] == table_rows(spark, spelled)
    assert_labels_match(ds, got)
    assert {(str(r["day"]), r["hour"]) for r in got} == {("2025-01-05", 7), ("2026-01-06", 10), ("2026-01-07", 7)}


@pytest.mark.slow
def test_a_partition_value_spark_reads_as_null_sends_the_read_through_spark(spark, tmp_path):
    """Without ANSI mode Spark reads an INT partition spelled ``x7`` as null; pyarrow cannot parse it the same
    way, so the plan declines on the driver (naming the partition) and never raises."""
    ext = tmp_path / "odd"
    _write(str(ext / "hour=x7" / "f.parquet"), range(3), ["a", "b", "a"])
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    spark.sql(f"DROP TABLE IF EXISTS {DB}.odd")
    spark.sql(f"CREATE EXTERNAL TABLE {DB}.odd (id INT, cat STRING) PARTITIONED BY (hour INT) STORED AS PARQUET "
              f"LOCATION '{ext}'")
    spark.sql(f"MSCK REPAIR TABLE {DB}.odd")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    try:
        cfg = small_conf(tmp_path, "odd", f"{DB}.odd", transforms=[])
        source = load_source(spark, cfg.source)
        assert [r["hour"] for r in source.df.collect()] == [None] * 3
        plan, why = direct.plan(spark, source.df, source.df, cfg, {}, source.partition_columns, 3)
        assert plan is None and "hour='x7'" in why, why
    finally:
        spark.conf.unset("spark.sql.ansi.enabled")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "spellings", "want"),
    [
        ("hour", ["07", "7"], [0, 1, 2, 3, 4, 9, 10, 11]),  # hour=07 and hour=7 both hold 7
        ("hour", ["10"], [5, 6, 7, 8]),
        ("day", ["2025-1-5", "2025-01-05"], [0, 1, 2, 3, 4]),
        ("day", ["2026-01-07", "2026-1-7"], [9, 10, 11]),
    ],
)
def test_source_partitions_select_by_stored_or_canonical_text(spark, spelled, tmp_path, key, spellings, want):
    for value in spellings:
        for given in (value, [value]):
            source = load_source(spark, small_conf(tmp_path, "p", spelled, partitions={key: given}).source)
            assert sorted(r["id"] for r in source.df.collect()) == want, (key, given)


@pytest.mark.slow
def test_a_partition_value_that_matches_no_partition_is_refused_listing_what_exists(spark, spelled, tmp_path):
    for key, value, listed in (("hour", "8", "07, 10, 7"), ("day", "2025-01-06", "2025-1-5, 2026-01-06, 2026-1-7"),
                               ("hour", "seven", "07, 10, 7")):
        cfg = small_conf(tmp_path, "p", spelled, partitions={key: ["07" if key == "hour" else "2025-1-5", value]})
        with pytest.raises(SourceError, match=rf"source.partitions: {spelled} has no partition {key}={value} "
                                              rf"\(its {key} values: {listed}\)"):
            load_source(spark, cfg.source)


@pytest.fixture
def rewritten(spark, tmp_path):
    """A table over one Parquet file, and a job log that rewrites that file in place (same rows, other
    values) at a message: ``source read`` comes after the values are counted, before the sizing sample and
    the write; ``attempt 1`` after the sample, before the write."""
    ext = tmp_path / "ext"
    path = str(ext / "part.parquet")
    _write(path, range(100), ["a", "b"] * 50)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    spark.sql(f"DROP TABLE IF EXISTS {DB}.chg")
    spark.sql(f"CREATE EXTERNAL TABLE {DB}.chg (id INT, cat STRING) STORED AS PARQUET LOCATION '{ext}'")

    def log_rewriting(cats, at="source read"):
        def log(message: str) -> None:
            if message.startswith(at):
                _write(path, range(100), cats)
        return log

    return f"{DB}.chg", path, log_rewriting


@pytest.mark.slow
def test_a_source_rewritten_during_the_run_is_never_published(spark, tmp_path, rewritten):
    table, path, log_rewriting = rewritten
    root = tmp_path / "cache"
    run(small_conf(root, "chg", table), spark, log=lambda _m: None)
    live = live_version(root, "chg")
    new_value = ["a", "b", "zzz", "b"] * 25  # a value the vocabulary counted at the start does not hold
    for reader, at, said in (("auto", "attempt 1", "the source"),  # the pyarrow read meets it
                             ("auto", "source read", f"source {table}"),  # Spark's sizing sample meets it
                             ("spark", "source read", f"source {table}")):
        _write(path, range(100), ["a", "b"] * 50)
        spark.catalog.refreshTable(table)
        cfg = small_conf(root, "chg", table, reader=reader)
        with pytest.raises(SourceError, match=rf"^{said} changed while the job ran: column 'cat' holds 'zzz', "
                                              r"which is not in the vocabulary of 'label'"):
            run(cfg, spark, force=True, log=log_rewriting(new_value, at))
        assert live_version(root, "chg") == live, reader
    # the same values in other rows: every label is known, but the files are not those fingerprinted
    _write(path, range(100), ["a", "b"] * 50)
    spark.catalog.refreshTable(table)
    with pytest.raises(SourceError, match=rf"^source {table} changed while the job ran: .*/part.parquet was "
                                          r"rewritten \(.*nothing published"):
        run(small_conf(root, "chg", table), spark, force=True, log=log_rewriting(["b", "a"] * 50))
    assert live_version(root, "chg") == live
    ds, got = published_rows(root, "chg")
    assert [r["cat"] for r in got] == ["a", "b"] * 50 and ds.vocabularies["label"] == ["a", "b"]


@pytest.mark.parametrize("text", ['["cat", "dog"]\n', "cat\ndog\n"])
def test_a_vocabulary_file_with_a_utf8_bom_reads_as_without(tmp_path, text):
    path = tmp_path / "vocab"
    path.write_text(text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_vocabulary_file(str(path), "transforms.0") == ["cat", "dog"]
