"""The PyTorch adapter on string items the reader gained forms for: lists of fixed-size binaries (which raised
ArrowNotImplementedError with the default ``strings="list"``) and fixed-size lists of strings (read as "0")."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from loader.torch import make_dataloader  # noqa: E402
from tests.conftest import published_in_parts  # noqa: E402


def string_items_table(n: int = 90) -> pa.Table:
    return pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "hashes": pa.array([None if i % 9 == 5 else [None if j == 1 else bytes([i, j]) for j in range(i % 4)]
                            for i in range(n)], pa.list_(pa.binary(2))),
        "pair": pa.array([None if i % 5 == 1 else [f"p{i}", None if i % 3 == 0 else "가"] for i in range(n)],
                         pa.list_(pa.string(), 2)),
    })


@pytest.fixture(scope="module")
def string_items(tmp_path_factory):
    table = string_items_table()
    return table, published_in_parts(tmp_path_factory, table, "torch_items", 1_000)


def test_default_string_lists(string_items):
    table, ds = string_items
    seen = 0
    for b in make_dataloader(ds.version_path, batch_size=16, seed=2):
        rows = table.take(b["id"].numpy())
        assert b["hashes"] == rows["hashes"].to_pylist()  # a list of bytes per row; None where null
        assert b["pair"] == [r if r is not None else [None, None] for r in rows["pair"].to_pylist()]
        seen += len(rows)
    assert seen == table.num_rows


def test_fixed_size_lists_of_strings_as_tensors(string_items):
    table, ds = string_items
    for b in make_dataloader(ds.version_path, batch_size=16, strings="tensor", columns=["id", "pair"]):
        rows = table.take(b["id"].numpy())
        pair, lengths, item_lengths = b["pair"].numpy(), b["pair.lengths"].numpy(), b["pair.value_lengths"].numpy()
        assert pair.dtype == np.uint8 and (lengths == 2).all()
        got = [[pair[i, j, : item_lengths[i, j]].tobytes().decode() for j in range(2)] for i in range(len(lengths))]
        assert got == [[x or "" for x in r or [None, None]] for r in rows["pair"].to_pylist()]
