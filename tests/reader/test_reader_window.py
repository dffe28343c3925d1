"""The window's contiguous copy: large string / binary columns go into reusable slabs, exactly as Arrow
would concatenate them, and batches read through slabs are the same whatever the pool."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader import pipeline
from loader.pipeline import _into_slab, _Slabs
from tests.reader.conftest import POOLS


def _chunked(kind: pa.DataType, sliced: bool) -> pa.ChunkedArray:
    rng = np.random.default_rng(0)
    chunks = []
    for n in (300, 500, 700):
        values = [bytes(rng.integers(97, 123, size=int(rng.integers(0, 4000)), dtype=np.uint8)) for _ in range(n)]
        arr = pa.array([v.decode() for v in values] if kind == pa.string() else values, type=kind)
        chunks.append(arr.slice(37, n - 80) if sliced else arr)
    return pa.chunked_array(chunks)


@pytest.mark.parametrize("kind", [pa.string(), pa.binary()])
@pytest.mark.parametrize("sliced", [False, True])
def test_slab_concatenation_equals_arrow(kind, sliced):
    column = _chunked(kind, sliced)
    got = _into_slab(column, _Slabs())
    assert got is not None and got.type == kind
    assert got.equals(pa.concat_arrays(column.chunks))


def test_slabs_are_reused_only_once_free():
    slabs = _Slabs()
    column = _chunked(pa.binary(), False)
    first = _into_slab(column, slabs)
    kept = first.slice(5, 3)  # still refers to the slab's memory
    expected = kept.to_pylist()
    del first
    second = _into_slab(_chunked(pa.binary(), True), slabs)
    assert len(slabs._slabs) == 2  # the first slab was busy: a second one was made
    assert kept.to_pylist() == expected  # and the data still referred to was not overwritten
    del kept, second
    free = [sys.getrefcount(slabs._slabs[i]) == 2 for i in range(len(slabs._slabs))]  # list + argument
    assert free == [True, True]
    _into_slab(column, slabs)
    assert len(slabs._slabs) == 2  # reused


def test_columns_with_nulls_or_small_ones_are_left_to_arrow():
    with_nulls = pa.chunked_array([pa.array([b"x" * 4000] * 300 + [None]), pa.array([b"y" * 4000] * 300)])
    assert _into_slab(with_nulls, _Slabs()) is None
    assert _into_slab(pa.chunked_array([pa.array([b"ab"] * 10), pa.array([b"c"] * 10)]), _Slabs()) is None


@pytest.fixture(scope="module")
def big_values_cache(tmp_path_factory) -> loader.Dataset:
    """~26 row groups whose binary column adds up to ~4 MB per window of 11 (the slab path)."""
    rng = np.random.default_rng(1)
    n = 2400
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "blob": pa.array([rng.integers(0, 256, size=int(s), dtype=np.uint8).tobytes()
                          for s in rng.integers(2000, 6000, size=n)], type=pa.binary()),
    })
    return loader.write_cache(table, tmp_path_factory.mktemp("big") / "cache", "big", row_group_bytes=400_000)


@pytest.mark.parametrize("pool", POOLS)
def test_batches_through_slabs_are_exact_and_deterministic(big_values_cache, pool, monkeypatch):
    ds = big_values_cache
    assert ds.num_row_groups >= 20
    calls = []
    monkeypatch.setattr(pipeline, "_into_slab", lambda c, s: calls.append(r := _into_slab(c, s)) or r)
    whole = pa.concat_tables([ds.read_row_group(f, i) for f in ds.files for i in range(len(f.row_groups))])
    blobs = whole.column("blob").to_pylist()

    def run(pool_kind, workers):
        out = []
        for epoch_batches in [list(loader.make_reader(ds, batch_size=50, seed=3, pool=pool_kind, workers=workers,
                                                      num_epochs=2, memory_budget=24 << 20))]:
            for b in epoch_batches:
                offsets = b["blob.offsets"]
                rows = [bytes(b["blob"][offsets[i]:offsets[i + 1]]) for i in range(len(b["id"]))]
                assert rows == [blobs[i] for i in b["id"]]  # every row's bytes are its own
                out.append(b["id"].copy())
        return out

    got = run(pool, 2)
    ids = np.concatenate(got)
    assert sorted(ids[: len(blobs)].tolist()) == list(range(len(blobs)))  # each row once per epoch
    assert sorted(ids[len(blobs):].tolist()) == list(range(len(blobs)))
    assert any(r is not None for r in calls)  # the slab path ran (in this process: the producer builds windows)
    reference = run("serial", 1)
    assert all(np.array_equal(a, b) for a, b in zip(got, reference, strict=True))
