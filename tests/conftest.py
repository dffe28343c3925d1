"""Fixtures shared by every test module: small Arrow tables and caches made with ``write_cache``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import loader


def make_table(n: int, seed: int = 0) -> pa.Table:
    """A table with one column of every kind the reader handles: ids, floats, strings, bytes, lists."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = rng.integers(0, 30_000, int(offsets[-1])).astype(np.int32)
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(rng.random(n)),
            "title": pa.array([f"title {i} " + "가나다"[i % 3] * int(i % 5) for i in range(n)]),
            "image": pa.array([bytes([i % 256]) * int(1 + i % 9) for i in range(n)], pa.binary()),
            "ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            "label": pa.array((np.arange(n) % 7).astype(np.int32)),
        }
    )


@pytest.fixture
def table() -> pa.Table:
    """1,000 rows of every column kind."""
    return make_table(1000)


@pytest.fixture
def cache(tmp_path, table) -> loader.Dataset:
    """A published cache of ``table`` with ~10 row groups of ~100 rows, one per file."""
    return loader.write_cache(table, tmp_path / "cache", "demo", row_group_bytes=2_500)


def published_in_parts(tmp_path_factory, table: pa.Table, name: str, row_group_bytes: int) -> loader.Dataset:
    """``table`` published as dataset ``name`` in a fresh directory, in row groups of ``row_group_bytes``;
    checks there are at least two (what tests of reads across row groups need)."""
    ds = loader.write_cache(table, tmp_path_factory.mktemp(name), name, row_group_bytes=row_group_bytes)
    assert ds.num_row_groups >= 2
    return ds


def read_all(ds: loader.Dataset, columns=None) -> pa.Table:
    """Every row group of ``ds`` through ``Dataset.read_row_group`` (the reader's door, checks included)."""
    return pa.concat_tables([ds.read_row_group(f, i, columns) for f in ds.files for i in range(len(f.row_groups))])
