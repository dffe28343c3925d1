"""Audit W: the torch and tf adapters read every pass from the manifest they pinned when made, so once a remote
version is in ``cache_dir``, a later pass reads the local copies even after the job pruned that version remotely
(as one ``make_reader(num_epochs=2)`` does) — also in DataLoader workers, which get the pinned version pickled."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.remote import RetryPolicy
from tests.remote.webhdfs_server import WebHdfs

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
ROWS = 1000


@pytest.fixture(scope="module")
def hdfs(tmp_path_factory):
    """A WebHDFS name node + data node on 127.0.0.1."""
    with WebHdfs(str(tmp_path_factory.mktemp("hdfs-pinned")), block_size=1 << 20) as srv:
        yield srv


def _ids(n: int, base: int) -> pa.Table:
    return pa.table({"id": np.arange(base, base + n, dtype=np.int64), "x": np.arange(n, dtype=np.float64)})


def _publish(hdfs, name: str, n: int, base: int) -> loader.Dataset:
    return loader.write_cache(_ids(n, base), hdfs.url("/pinned"), name, row_group_bytes=2_000, keep_versions=1,
                              retry=FAST)


def _pruned_after_first_pass(hdfs, name: str, pinned: loader.Dataset) -> None:
    """The job publishes again (``keep_versions=1``): the version the adapter pinned is gone remotely."""
    _publish(hdfs, name, 100, 900_000)
    assert not os.path.exists(hdfs.local(f"/pinned/{name}/{pinned.version}"))
    hdfs.clear_log()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_torch_pass_after_the_remote_prune_reads_the_cached_copies(hdfs, tmp_path, num_workers):
    pytest.importorskip("torch")
    from loader.torch import make_dataloader

    name = f"torch{num_workers}"
    pinned = _publish(hdfs, name, ROWS, 0)
    workers = {"multiprocessing_context": "forkserver", "timeout": 120} if num_workers else {}
    dl = make_dataloader(hdfs.url(f"/pinned/{name}"), batch_size=100, num_workers=num_workers,
                         cache_dir=str(tmp_path / "cache"), retry=FAST, **workers)
    first = sorted(i for b in dl for i in b["id"].tolist())
    assert first == list(range(ROWS))
    _pruned_after_first_pass(hdfs, name, pinned)
    second = [i for b in dl for i in b["id"].tolist()]
    assert sorted(second) == list(range(ROWS)) and second != first  # the next epoch, of the pinned version
    assert hdfs.count(op="OPEN") == 0  # no manifest, no data file read remotely: the local copies only


def test_tf_iteration_after_the_remote_prune_reads_the_cached_copies(hdfs, tmp_path):
    pytest.importorskip("tensorflow")
    from loader.tf import make_dataset

    pinned = _publish(hdfs, "tf", ROWS, 0)
    ds = make_dataset(hdfs.url("/pinned/tf"), batch_size=100, cache_dir=str(tmp_path / "cache"), retry=FAST)
    first = sorted(i for b in ds for i in b["id"].numpy().tolist())
    assert first == list(range(ROWS))
    _pruned_after_first_pass(hdfs, "tf", pinned)
    second = [i for b in ds for i in b["id"].numpy().tolist()]
    assert sorted(second) == list(range(ROWS))
    assert hdfs.count(op="OPEN") == 0
