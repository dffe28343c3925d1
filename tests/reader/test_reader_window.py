"""The shuffled window: large string / binary columns are kept as binary views over the pieces' buffers
(no contiguous copy), a batch's gather through them equals Arrow's ``take`` on the concatenated column,
and batches read through views are exact and the same whatever the pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader import window
from loader.window import _as_views, _take_views
from tests.reader.conftest import POOLS


def _chunked(kind: pa.DataType, sliced: bool) -> pa.ChunkedArray:
    rng = np.random.default_rng(0)
    chunks = []
    for n in (300, 500, 700):
        # lengths 0..4000: short values are inlined in their views, long ones point into the buffers
        values = [bytes(rng.integers(97, 123, size=int(rng.integers(0, 4000)), dtype=np.uint8)) for _ in range(n)]
        values[:20] = [v[: i % 13] for i, v in enumerate(values[:20])]
        arr = pa.array([v.decode() for v in values] if kind in (pa.string(), pa.large_string()) else values,
                       type=kind)
        chunks.append(arr.slice(37, n - 80) if sliced else arr)
    return pa.chunked_array(chunks)


@pytest.mark.parametrize("kind", [pa.string(), pa.binary(), pa.large_string(), pa.large_binary()])
@pytest.mark.parametrize("sliced", [False, True])
def test_view_gather_equals_arrow_take(kind, sliced):
    column = _chunked(kind, sliced)
    views = _as_views(column)
    assert views is not None and pa.types.is_binary_view(views.type)
    # no value was copied: the views refer to the chunks' own value buffers
    own = {c.buffers()[2].address for c in column.chunks}
    assert {b.address for b in views.buffers()[2:]} <= own
    whole = pa.concat_arrays(column.chunks)
    idx = np.random.default_rng(1).permutation(len(whole))[:250]
    got = _take_views(views, idx, kind)
    assert got.type == kind
    assert got.equals(whole.take(pa.array(idx)))
    assert got.buffers()[2].is_mutable  # a fresh buffer: numpy views of it are writable without a copy


def test_columns_with_nulls_small_ones_or_one_chunk_are_concatenated():
    with_nulls = pa.chunked_array([pa.array([b"x" * 4000] * 300 + [None]), pa.array([b"y" * 4000] * 300)])
    assert _as_views(with_nulls) is None
    assert _as_views(pa.chunked_array([pa.array([b"ab"] * 10), pa.array([b"c"] * 10)])) is None
    assert _as_views(pa.chunked_array([pa.array([b"x" * 4000] * 600)])) is None
    assert _as_views(pa.chunked_array([pa.array(np.arange(300_000)), pa.array(np.arange(300_000))])) is None


@pytest.fixture(scope="module")
def big_values_cache(tmp_path_factory) -> loader.Dataset:
    """~26 row groups whose binary and string columns add up to > 1 MB per window (the view path)."""
    rng = np.random.default_rng(1)
    n = 2400
    blobs = [rng.integers(0, 256, size=int(s), dtype=np.uint8).tobytes() for s in rng.integers(2000, 6000, size=n)]
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "blob": pa.array(blobs, type=pa.binary()),
        "text": pa.array(["한국어 " * int(k) for k in rng.integers(1, 200, size=n)], type=pa.string()),
    })
    return loader.write_cache(table, tmp_path_factory.mktemp("big") / "cache", "big", row_group_bytes=400_000)


@pytest.mark.parametrize("pool", POOLS)
def test_batches_through_views_are_exact_and_deterministic(big_values_cache, pool, monkeypatch):
    ds = big_values_cache
    assert ds.num_row_groups >= 20
    calls = []
    monkeypatch.setattr(window, "_as_views", lambda c: calls.append(r := _as_views(c)) or r)
    whole = pa.concat_tables([ds.read_row_group(f, i) for f in ds.files for i in range(len(f.row_groups))])
    blobs, texts = whole.column("blob").to_pylist(), whole.column("text").to_pylist()

    def run(pool_kind, workers):
        out = []
        for b in loader.make_reader(ds, batch_size=50, seed=3, pool=pool_kind, workers=workers, num_epochs=2,
                                    memory_budget=24 << 20):
            offsets, text_offsets = b["blob.offsets"], b["text.offsets"]
            rows = [bytes(b["blob"][offsets[i]:offsets[i + 1]]) for i in range(len(b["id"]))]
            assert rows == [blobs[i] for i in b["id"]]  # every row's bytes are its own
            text = [bytes(b["text"][text_offsets[i]:text_offsets[i + 1]]).decode() for i in range(len(b["id"]))]
            assert text == [texts[i] for i in b["id"]]
            assert b["blob"].flags.writeable
            out.append(b["id"].copy())
        return out

    got = run(pool, 2)
    ids = np.concatenate(got)
    assert sorted(ids[: len(blobs)].tolist()) == list(range(len(blobs)))  # each row once per epoch
    assert sorted(ids[len(blobs):].tolist()) == list(range(len(blobs)))
    assert any(r is not None for r in calls)  # the view path ran (in this process: the producer builds windows)
    reference = run("serial", 1)
    assert all(np.array_equal(a, b) for a, b in zip(got, reference, strict=True))


def test_distinct_counts_the_row_groups_of_a_batch_across_windows():
    table = pa.table({"x": np.arange(6)})
    a = window.Window(table.slice(0, 4), None, 0, np.array([5, 5, 7, 9]), None)
    b = window.Window(table.slice(4, 2), None, 4, np.array([9, 3]), None)
    assert window.distinct((a, b), 1, 6) == 4  # 5, 7, 9 (in both windows), 3
    assert window.distinct((a, b), 0, 2) == 1
    assert window.distinct((a,), 2, 4) == 2
    local = window.Window(table.slice(0, 4), None, 0, np.array([5, 5, 7, 9]), None, local=np.array([0, 0, 1, 2]))
    assert window.distinct((local,), 0, 4) == 3
