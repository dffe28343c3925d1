"""Fixtures of the reader tests: small caches published once per session, and process/shm leak probes."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader import fs as lfs
from loader.publish import begin_staging
from tests.conftest import make_table

POOLS = ["serial", "thread", "process"]


def publish_groups(root, name: str, sizes: list[int], groups_per_file: int = 2, seed: int = 0) -> loader.Dataset:
    """Publish a version whose row groups hold exactly ``sizes`` rows (ids 0..N-1 in order)."""
    table = make_table(sum(sizes), seed=seed)
    fs, root_path = lfs.resolve(str(root))
    with begin_staging(fs, root_path, name) as staging:
        fs.create_dir(staging.path, recursive=True)
        start = 0
        for f in range(0, len(sizes), groups_per_file):
            chunk = sizes[f : f + groups_per_file]
            path = lfs.join(staging.path, f"part-{f:05d}.parquet")
            with pq.ParquetWriter(path, table.schema, filesystem=fs, write_page_checksum=True) as w:
                for n in chunk:
                    w.write_table(table.slice(start, n), row_group_size=n)
                    start += n
        version = staging.commit(source={"kind": "test"}, created_by={"job": "tests"})
    return loader.open_dataset(os.path.join(str(root), name, version))


@pytest.fixture(scope="session")
def mixed_cache(tmp_path_factory) -> loader.Dataset:
    """1,000 rows of every column kind in 20 row groups (~50 rows each), one row group per file."""
    return loader.write_cache(make_table(1000), tmp_path_factory.mktemp("reader") / "cache", "demo",
                              row_group_bytes=2_500)


@pytest.fixture(scope="session")
def uneven_cache(tmp_path_factory) -> loader.Dataset:
    """A cache with uneven row groups (1 to 97 rows), two per file."""
    return publish_groups(tmp_path_factory.mktemp("uneven"), "uneven", [97, 1, 40, 13, 64, 5, 33, 22, 8, 61])


@pytest.fixture(scope="session")
def shape_caches(tmp_path_factory) -> list[loader.Dataset]:
    """A few dataset shapes for the end-to-end property tests (including fewer groups than ranks)."""
    root = tmp_path_factory.mktemp("shapes")
    shapes = [[37], [5, 3], [20, 1, 9, 30], [12] * 9, [7, 50, 2, 31, 16, 3, 44]]
    return [publish_groups(root, f"s{i}", sizes) for i, sizes in enumerate(shapes)]


def descendants() -> set[int]:
    """Live (non-zombie) descendant processes of this process, from /proc."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        pid = int(stat.split("/")[2])
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[pid] = int(fields[1])
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - mine
        mine |= frontier
    return mine


def segments() -> set[str]:
    """Shared-memory segments made by this test process's pools (other processes on the machine may have theirs)."""
    return {os.path.basename(p) for p in glob.glob(f"/dev/shm/lrd{os.getpid():x}x*")}


def unchanged(batch: dict) -> dict:
    """A transform that returns its batch (module level: process-pool workers import it)."""
    return batch


@pytest.fixture
def leak_probe(mixed_cache):
    """Warm up the process machinery, then check the test leaves no extra process or segment behind."""
    with loader.make_reader(mixed_cache, pool="process", workers=1, batch_size=500, shuffle=False,
                            transform=unchanged) as r:
        next(r)
    before_procs, before_shm = descendants(), segments()
    yield
    assert descendants() - before_procs == set()
    assert segments() - before_shm == set()


def ids_of(batches) -> np.ndarray:
    """Concatenated ``id`` column of a list of batches."""
    return np.concatenate([b["id"] for b in batches]) if batches else np.zeros(0, np.int64)


def pylist(column: pa.ChunkedArray | pa.Array) -> list:
    """Arrow values as Python objects (tests only)."""
    return column.to_pylist()
