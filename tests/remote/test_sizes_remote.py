"""The reader's decoded-size sample (loader.sizes) on a remote dataset with a local file cache: read straight
from storage, so the constructor downloads nothing and starts no thread (the cache's prefetch would)."""

from __future__ import annotations

import glob
import threading

import numpy as np
import pytest

import loader
from tests.conftest import make_table
from tests.remote.conftest import FAST_RETRY


def test_constructing_a_cached_remote_reader_fetches_no_file_and_starts_no_thread(server, tmp_path):
    table = make_table(300)
    loader.write_cache(table, server.url("/caches"), "sampled", row_group_bytes=3_000)
    threads = threading.active_count()
    server.clear_log()
    reader = loader.make_reader(server.url("/caches/sampled"), batch_size=50, retry=FAST_RETRY,
                                cache_dir=tmp_path / "c", shuffle=False)
    assert threading.active_count() == threads
    assert not glob.glob(str(tmp_path / "c" / "**" / "*.parquet"), recursive=True)
    sampled = {r.path for r in server.log if r.node == "datanode" and r.op == "OPEN" and r.path.endswith(".parquet")}
    assert len(sampled) <= 1  # the first file's first pages, read in place
    with reader:
        ids = np.concatenate([b["id"] for b in reader])
    assert ids.tolist() == table["id"].to_pylist()
    assert len(glob.glob(str(tmp_path / "c" / "**" / "*.parquet"), recursive=True)) == 4  # copied as read


def test_storage_failing_during_the_sample_fails_construction_not_the_plan(server, tmp_path):
    """A plan made without the sample would give other batches than the same reader made a minute later
    (audit R): remote storage failing after retries fails make_reader with the RemoteError naming the file."""
    loader.write_cache(make_table(300), server.url("/caches"), "sampledown", row_group_bytes=3_000)
    server.fail_always(503, op="OPEN", path=".parquet")
    try:
        with pytest.raises(loader.RemoteError, match=r"sampledown/v.*part-00000\.parquet"):
            loader.make_reader(server.url("/caches/sampledown"), batch_size=50, retry=FAST_RETRY)
    finally:
        server.clear_faults()
    with loader.make_reader(server.url("/caches/sampledown"), batch_size=50, retry=FAST_RETRY, seed=3) as a, \
            loader.make_reader(server.url("/caches/sampledown"), batch_size=50, retry=FAST_RETRY, seed=3) as b:
        assert (a.window, a.max_piece_rows) == (b.window, b.max_piece_rows)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["id"], y["id"])
