"""A small cache shared by the adapter tests (read-only: tests that damage data make their own)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import loader

ROWS = 730  # not a multiple of any batch size used, so last batches are short


def adapter_table(n: int = ROWS) -> pa.Table:
    """Ids, a float, Korean titles (some null), image bytes, variable-length id lists (some empty), token lists
    (``list<string>``, some null or empty) and lists of lists (``list<list<int16>>``)."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(0, 9, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    titles = [None if i % 97 == 5 else f"상품 {i} " + "가나다라"[: i % 5] for i in range(n)]
    words = ["신발", "가방", "모자", "", "셔츠 M", "b"]
    tokens = [None if i % 89 == 3 else [words[(i + j) % 6] for j in range(i % 4)] for i in range(n)]
    nested = [[list(range(j, j + (i + j) % 3)) for j in range(i % 3)] for i in range(n)]
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(rng.random(n).astype(np.float32)),
            "title": pa.array(titles, pa.string()),
            "image": pa.array([rng.bytes(int(k)) for k in rng.integers(1, 40, n)], pa.binary()),
            "ids": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(rng.integers(1, 30_000, offsets[-1]), pa.int32())
            ),
            "label": pa.array((np.arange(n) % 5).astype(np.int32)),
            "tokens": pa.array(tokens, pa.list_(pa.string())),
            "nested": pa.array(nested, pa.list_(pa.list_(pa.int16()))),
        }
    )


@pytest.fixture(scope="session")
def adapter_data(tmp_path_factory) -> tuple[pa.Table, loader.Dataset]:
    """``(table, dataset)``: the table published with ~12 row groups in 6 files."""
    table = adapter_table()
    ds = loader.write_cache(table, tmp_path_factory.mktemp("adapters"), "adapt", row_group_bytes=4_000,
                            row_groups_per_file=2)
    assert ds.num_row_groups >= 8 and len(ds.files) >= 4
    return table, ds


def config_error(call) -> str | None:
    """The message of the ``ConfigError`` that ``call()`` raises (None if it raises none)."""
    try:
        call()
    except loader.ConfigError as e:
        return str(e)
    return None


def tagged_table(tag: int, rows: int = 1200) -> pa.Table:
    """Rows ``id`` 0.. with ``tag`` in every row: which version a batch came from."""
    return pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)),
                     "tag": pa.array(np.full(rows, tag, dtype=np.int32))})


@pytest.fixture
def republished(tmp_path):
    """``(dataset dir, publish)``: a cache of :func:`tagged_table` 1; ``publish(tag)`` publishes a new version
    of it (tag 2, 3...) over the same directory, as the job does while trainers read."""
    def publish(tag: int) -> None:
        loader.write_cache(tagged_table(tag), tmp_path, "d", row_group_bytes=2_000)

    publish(1)
    return str(tmp_path / "d"), publish
