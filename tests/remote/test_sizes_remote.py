"""The reader's decoded-size sample (loader.sizes) on a remote dataset with a local file cache: read straight
from storage, so the constructor downloads nothing and starts no thread (the cache's prefetch would)."""

from __future__ import annotations

import glob
import os
import threading
from collections import Counter

import numpy as np
import pytest

import loader
from tests.conftest import make_table
from tests.remote.conftest import FAST_RETRY, data_opens


def test_constructing_a_cached_remote_reader_starts_no_thread_and_reads_each_file_once(server, tmp_path):
    """The sample goes through the file cache like a first read (the first file is copied, nothing else), so
    every remote file is still read once, and a second reader on the warm cache reads no storage at all."""
    table = make_table(300)
    ds = loader.write_cache(table, server.url("/caches"), "sampled", row_group_bytes=3_000)
    def larder_threads() -> set:
        return {t for t in threading.enumerate() if t.name.startswith("larder") and t.is_alive()}

    before = larder_threads()  # other tests' caches may still have theirs
    server.clear_log()
    reader = loader.make_reader(server.url("/caches/sampled"), batch_size=50, retry=FAST_RETRY,
                                cache_dir=tmp_path / "c", shuffle=False)
    assert not larder_threads() - before  # no prefetch (download) threads yet
    cached = glob.glob(str(tmp_path / "c" / "**" / "*.parquet"), recursive=True)
    assert [os.path.basename(p) for p in cached] == [os.path.basename(ds.files[0].path)]
    with reader:
        ids = np.concatenate([b["id"] for b in reader])
    assert ids.tolist() == table["id"].to_pylist()
    assert data_opens(server) == Counter({f.path: 1 for f in ds.files})
    server.clear_log()
    with loader.make_reader(server.url("/caches/sampled"), batch_size=50, retry=FAST_RETRY,
                            cache_dir=tmp_path / "c", shuffle=False) as again:
        assert np.concatenate([b["id"] for b in again]).tolist() == ids.tolist()
    assert data_opens(server) == Counter()


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
