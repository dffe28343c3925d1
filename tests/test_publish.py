"""Publishing: atomic versions, CURRENT swap, pruning, dead staging cleanup, nothing lost on failure."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import loader
from loader import publish


def _read_all(ds: loader.Dataset) -> pa.Table:
    return pa.concat_tables(ds.read_row_group(f, i) for f in ds.files for i in range(len(f.row_groups)))


def test_write_cache_round_trip_and_row_group_target(tmp_path, table):
    ds = loader.write_cache(table, tmp_path, "demo", row_group_bytes=4_000)
    assert _read_all(ds).equals(table)
    sizes = [g.compressed_bytes for f in ds.files for g in f.row_groups]
    assert max(sizes[:-1]) <= 4_000 * 1.1  # the estimate is corrected from each written file
    assert np.median(sizes[:-1]) >= 4_000 * 0.8
    assert ds.manifest.row_group_target == 4_000


def test_write_cache_from_parquet_path_and_stream(tmp_path, table):
    pq.write_table(table, tmp_path / "src.parquet")
    a = loader.write_cache(str(tmp_path / "src.parquet"), tmp_path / "out", "a")
    b = loader.write_cache(table.to_reader(max_chunksize=77), tmp_path / "out", "b", row_groups_per_file=3,
                           row_group_bytes=3_000)
    assert _read_all(a).equals(table) and _read_all(b).equals(table)
    assert a.source["kind"] == "parquet" and max(len(f.row_groups) for f in b.files) == 3


def test_keep_versions_prunes_old_ones(tmp_path, table):
    names = [loader.write_cache(table.slice(0, 10 + i), tmp_path, "d", keep_versions=2).version for i in range(4)]
    fs = pafs.LocalFileSystem()
    assert publish.list_versions(fs, str(tmp_path / "d")) == names[-2:]
    assert loader.open_dataset(tmp_path / "d").num_rows == 13


def test_empty_data_publishes_nothing(tmp_path, table):
    first = loader.write_cache(table, tmp_path, "d")
    with pytest.raises(loader.EmptyDatasetError, match="no rows"):
        loader.write_cache(table.slice(0, 0), tmp_path, "d")
    assert loader.open_dataset(tmp_path / "d").version == first.version
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]


def test_failure_mid_write_keeps_previous_version(tmp_path, table):
    first = loader.write_cache(table, tmp_path, "d")

    def exploding():
        yield from table.slice(0, 500).to_batches(max_chunksize=100)
        raise RuntimeError("source died")

    broken = pa.RecordBatchReader.from_batches(table.schema, exploding())
    with pytest.raises(RuntimeError, match="source died"):
        loader.write_cache(broken, tmp_path, "d", row_group_bytes=2_000)
    ds = loader.open_dataset(tmp_path / "d")
    assert ds.version == first.version and _read_all(ds).equals(table)
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]


def test_killed_run_leaves_previous_live_and_next_run_cleans(tmp_path, table):
    first = loader.write_cache(table, tmp_path, "d")
    code = f"""
import os, pyarrow.fs as pafs, pyarrow as pa, pyarrow.parquet as pq
from loader import publish
s = publish.begin_staging(pafs.LocalFileSystem(), {str(tmp_path)!r}, "d")
os.makedirs(s.path)
pq.write_table(pa.table({{"id": [1, 2]}}), s.path + "/part-00000.parquet")
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == -9
    assert [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]  # debris of the dead run
    assert loader.open_dataset(tmp_path / "d").version == first.version
    second = loader.write_cache(table.slice(0, 5), tmp_path, "d")
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]
    assert loader.open_dataset(tmp_path / "d").version == second.version


def test_live_staging_of_another_run_is_not_cleaned(tmp_path, table):
    fs = pafs.LocalFileSystem()
    running = publish.begin_staging(fs, str(tmp_path), "d")
    os.makedirs(running.path)
    loader.write_cache(table, tmp_path, "d")  # a concurrent run cleans only dead runs
    assert os.path.isdir(running.path)
    running.abort()
    assert not os.path.exists(running.path)


def test_destination_not_writable(tmp_path, table):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the root should be")
    with pytest.raises(loader.PublishError, match="cannot write"):
        loader.write_cache(table, blocker, "d")


def test_bad_dataset_names_and_arguments(tmp_path, table):
    with pytest.raises(loader.PublishError, match="plain directory name"):
        loader.write_cache(table, tmp_path, "../escape")
    with pytest.raises(loader.ConfigError, match="fill"):
        loader.write_cache(table, tmp_path, "d", fill=1.5)
    with pytest.raises(loader.ConfigError, match="pyarrow Table"):
        loader.write_cache([1, 2, 3], tmp_path, "d")
