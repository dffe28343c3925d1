"""Batches converted together and split (the thread pool's grouped tasks) equal batches converted alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.convert import to_numpy


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    tokens = [None if i % 11 == 3 else [f"t{j}" * int(rng.integers(0, 4)) for j in range(int(rng.integers(0, 5)))]
              for i in range(n)]
    nested = [[list(range(int(rng.integers(0, 3)))) for _ in range(int(rng.integers(0, 3)))] for _ in range(n)]
    return pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "x": pa.array([None if i % 7 == 0 else float(i) for i in range(n)], pa.float64()),
        "title": pa.array([None if i % 5 == 0 else "가" * (i % 4) for i in range(n)]),
        "image": pa.array([bytes([i % 256]) * (i % 9) for i in range(n)], pa.binary()),
        "ids": pa.array([list(range(i % 6)) for i in range(n)], pa.list_(pa.int32())),
        "tokens": pa.array(tokens, pa.list_(pa.string())),
        "nested": pa.array(nested, pa.list_(pa.list_(pa.int16()))),
        "vec": pa.array([[float(i), 1.0, 2.0] for i in range(n)], pa.list_(pa.float32(), 3)),
        "s": pa.array([{"a": i, "b": "x" * (i % 3)} for i in range(n)]),
        "names": pa.array([f"n{i}" for i in range(n)]),
    })


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.lists(st.integers(1, 25), min_size=1, max_size=5), st.integers(0, 10**6),
       st.booleans(), st.sampled_from(["offsets", "object"]), st.sampled_from(["offsets", "padded"]))
def test_split_equals_per_batch_conversion(n_extra, sizes, seed, masks, strings, ragged):
    from loader import tasks

    table = _table(sum(sizes) + n_extra, seed).slice(n_extra)  # an offset slice, like a window's gather
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    tasks.install(tasks.ReadContext(key="split", dataset=None, columns=(), sizes=(), locations=(), seed=0, rank=0,
                                    world_size=1, stream=False, stream_chunk_rows=1, local_files=True,
                                    ragged=ragged, strings=strings, masks=masks, with_row_ids=False,
                                    transform=None, transform_takes_rng=False))
    try:
        parts = tasks.convert_split("split", table, bounds)  # converted once (offsets form), split, padded
    finally:
        tasks.uninstall("split")
    for part, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True):
        alone = to_numpy(table.slice(a, b - a), strings=strings, masks=masks, ragged=ragged)
        assert list(part.keys()) == list(alone.keys())
        for key, value in alone.items():
            got = part[key]
            assert got.dtype == value.dtype and got.shape == value.shape, key
            if value.dtype == object:
                assert [repr(v) for v in got] == [repr(v) for v in value], key
            else:
                np.testing.assert_array_equal(got, value, err_msg=key)
            assert got.flags.writeable, key
    for p, q in zip(parts, parts[1:], strict=False):  # the parts are disjoint: writing one leaves the others
        for key in p:
            if p[key].dtype != object:
                assert not np.shares_memory(p[key], q[key]), key


@pytest.mark.parametrize("pool", ["thread"])
def test_grouped_batches_equal_serial_ones_with_transform_and_ids(mixed_cache, pool):
    import loader

    def run(kind):
        with loader.make_reader(mixed_cache, batch_size=37, seed=9, pool=kind, num_epochs=2, with_row_ids=True,
                                masks=True, transform=_scale) as r:
            return [dict(b) for b in r]

    a, b = run(pool), run("serial")
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _scale(batch, rng):
    batch["noise"] = rng.random(len(batch["id"]))
    return batch
