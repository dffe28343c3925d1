"""The arrow writer (etl/arrow_write.py): same rows and guarantees as Spark's writer, its own checksums right,
dictionaries only where values repeat, retried spill tasks replace their slices, nothing left behind."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import loader
from etl import arrow_write
from etl.config import from_dict
from etl.job import run
from etl.layout import FILE_COLUMN, ORDER_COLUMN, assign_files, partition_counts
from loader.encoding import Encoding
from loader.errors import ConfigError
from loader.manifest import checksum_file

from .conftest import same_value, write_typed_source

pytestmark = pytest.mark.slow


def _conf(source: str, root, name: str, **output):
    return from_dict({
        "name": name,
        "source": {"path": source, "format": "parquet"},
        "output": {"root": str(root), "block_size": "256KiB", **output},
        "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
    })  # fmt: skip


@pytest.fixture(scope="module")
def source(spark, tmp_path_factory):
    """20,000 rows: unique ids and payloads, a 5-value category, a list column."""
    path = str(tmp_path_factory.mktemp("arrow-src") / "src")
    spark.range(0, 20_000, 1, 3).selectExpr(
        "id", "sha2(cast(id AS string), 256) AS payload", "concat('c', cast(id % 5 AS string)) AS category",
        "transform(sequence(0, cast(id % 4 AS int)), j -> cast(id + j AS int)) AS ids",
    ).write.parquet(path)
    return path


def test_both_writers_publish_the_same_rows_and_the_arrow_files_check(spark, source, tmp_path):
    got = {}
    for writer in ("arrow", "spark"):
        run(_conf(source, tmp_path, writer, writer=writer), spark, log=lambda _m: None)
        ds = loader.open_dataset(tmp_path / writer)
        assert ds.manifest.extra["writer"] == writer
        assert all(g.compressed_bytes <= ds.manifest.block_size for f in ds.files for g in f.row_groups)
        with loader.make_reader(ds.version_path, batch_size=1000, shuffle=False) as reader:
            rows = [b for b in reader]
        ids = np.concatenate([b["id"] for b in rows])
        got[writer] = np.sort(ids)
        if writer == "arrow":  # the manifest's whole-file CRCs were computed from the bytes in memory
            fs = pafs.LocalFileSystem()
            for f in ds.files:
                assert checksum_file(fs, ds.file_path(f)) == f.checksum, f.path
            assert not any(name.startswith("_") for name in os.listdir(ds.version_path) if name != "_manifest.json")
    assert np.array_equal(got["arrow"], got["spark"]) and np.array_equal(got["arrow"], np.arange(20_000))


def test_dictionaries_only_where_values_repeat(spark, source, tmp_path):
    run(_conf(source, tmp_path, "dict", writer="arrow"), spark, log=lambda _m: None)
    ds = loader.open_dataset(tmp_path / "dict")
    meta = pq.ParquetFile(ds.file_path(ds.files[0])).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" in encodings["category"]
    assert "RLE_DICTIONARY" not in encodings["payload"] and "RLE_DICTIONARY" not in encodings["id"]
    assert ds.manifest.extra["encoding"]["dictionary"] == ["category", "ids.list.element"]  # ids repeat across rows


def test_random_bytes_are_stored_uncompressed_the_rest_with_the_codec(spark, tmp_path):
    source = str(tmp_path / "src")
    spark.range(0, 5_000, 1, 2).selectExpr(
        "id", "unhex(sha2(cast(id AS string), 256)) AS digest", "concat('c', cast(id % 5 AS string)) AS category",
    ).write.parquet(source)
    run(_conf(source, tmp_path, "plain", writer="arrow"), spark, log=lambda _m: None)
    ds = loader.open_dataset(tmp_path / "plain")
    assert ds.manifest.extra["encoding"] == {"codec": "zstd", "dictionary": ["category"], "uncompressed": ["digest"]}
    for info in ds.files:
        meta = pq.ParquetFile(ds.file_path(info)).metadata
        for g in range(meta.num_row_groups):
            codecs = {meta.row_group(g).column(i).path_in_schema: meta.row_group(g).column(i).compression
                      for i in range(meta.num_columns)}
            assert codecs == {"id": "ZSTD", "digest": "UNCOMPRESSED", "category": "ZSTD"}
    want = {r["id"]: bytes(r["digest"]) for r in spark.read.parquet(source).collect()}
    got = {}
    for b in loader.make_reader(ds, batch_size=1000, shuffle=False):
        off = b["digest.offsets"]
        got.update({int(i): b["digest"][off[k]:off[k + 1]].tobytes() for k, i in enumerate(b["id"])})
    assert got == want


def test_a_retried_spill_replaces_its_slices(spark, source, tmp_path):
    """Spark may run a task again (retry, speculation): the slices of a partition are replaced, not added to."""
    df = spark.read.parquet(source)
    laid, n = assign_files(spark, df, partition_counts(df), 7000, True, 0, exchange=False)
    slices, out = str(tmp_path / "slices"), str(tmp_path / "out")
    os.makedirs(out)
    assert arrow_write.spill(laid, slices, FILE_COLUMN) == 20_000
    assert arrow_write.spill(laid, slices, FILE_COLUMN) == 20_000  # every task ran twice
    options = arrow_write.EncodeOptions(Encoding("zstd"), 64 << 10, 1 << 30)
    written = arrow_write.encode_files(spark, slices, out, n, (FILE_COLUMN, ORDER_COLUMN), ORDER_COLUMN, options)
    assert [info.path for info, _ in written] == [f"part-{k:05d}.parquet" for k in range(n)]
    table = pa.concat_tables([pq.read_table(os.path.join(out, info.path)) for info, _ in written])
    assert sorted(table.column("id").to_pylist()) == list(range(20_000))
    assert FILE_COLUMN not in table.column_names and ORDER_COLUMN not in table.column_names


def test_a_file_over_the_block_is_cut_never_written_over_it():
    rng = np.random.default_rng(0)
    table = pa.table({"blob": [rng.bytes(1000) for _ in range(400)]})  # ~400 KB, incompressible
    options = arrow_write.EncodeOptions(Encoding("zstd"), 16 << 10, 100 << 10)
    data, cut = arrow_write.encode_within_block(table, options)
    groups = arrow_write.group_bytes(data)
    assert cut and len(groups) > 1 and sum(r for r, _ in groups) == 400
    assert all(c <= options.block_size for _, c in groups)
    small, cut_small = arrow_write.encode_within_block(table.slice(0, 50), options)
    assert not cut_small and len(arrow_write.group_bytes(small)) == 1


def test_the_arrow_writer_refuses_a_remote_destination(spark, source):
    cfg = _conf(source, "webhdfs://127.0.0.1:9/caches", "remote", writer="arrow")
    with pytest.raises(ConfigError, match="output.writer"):
        run(cfg, spark, log=lambda _m: None)


def test_a_misspelled_writer_names_the_key():
    with pytest.raises(ConfigError, match="output.writer"):
        _conf("/x", "/y", "n", writer="pyarrow")


def test_auto_falls_back_to_spark_without_pandas(monkeypatch):
    from etl.job import choose_writer

    local, said = pafs.LocalFileSystem(), []
    assert choose_writer("auto", local, said.append) == "arrow"
    assert choose_writer("spark", local, said.append) == "spark"
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # import pandas now raises ImportError
    assert choose_writer("auto", local, said.append) == "spark" and "pandas" in said[-1]
    with pytest.raises(ConfigError, match="output.writer.*pandas"):
        choose_writer("arrow", local, said.append)


@pytest.mark.parametrize("writer", ["arrow", "spark"])
def test_every_supported_type_round_trips(spark, tmp_path, writer):
    """Every type the job accepts (atomic types, arrays of them, nulls) comes out of either writer with the
    values Spark reads from the source, compared by key."""
    source = str(tmp_path / "src" / "typed")
    write_typed_source(spark, source)
    run(_conf(source, tmp_path, "typed", writer=writer), spark, log=lambda _m: None)
    ds = loader.open_dataset(tmp_path / "typed")
    got = pa.concat_tables([pq.read_table(ds.file_path(f)) for f in ds.files]).sort_by("id").to_pylist()
    want = [r.asDict() for r in spark.read.parquet(source).orderBy("id").collect()]
    assert len(got) == len(want) == 3000
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            assert same_value(g[k], v), (k, g[k], v)
