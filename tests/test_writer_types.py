"""``write_cache`` on inputs Parquet stores only after a change, or not at all: a clear error naming the column (or
file), or the data written faithfully."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader.errors import ConfigError, SourceError


def _left(root, name: str) -> list[str]:
    """What a failed write left in the dataset directory (nothing but an empty directory, if anything)."""
    path = os.path.join(root, name)
    return sorted(os.listdir(path)) if os.path.exists(path) else []


DECODE = "column.dictionary_decode()"
CAST = "column.cast(pa.dictionary(pa.int32(), pa.large_string()))"


@pytest.mark.parametrize("values,advice", [
    (pa.array([[1, 2], []], pa.list_(pa.int32())), DECODE),
    (pa.array([{"a": 1}, {"a": 2}], pa.struct([("a", pa.int32())])), DECODE),
    (pa.array([[1], [2, 3]], pa.large_list(pa.int64())), DECODE),
    (pa.array(["a", "b"], pa.string_view()), CAST),
], ids=["list", "struct", "large_list", "string_view"])
def test_a_dictionary_of_values_parquet_cannot_store_is_refused_naming_the_column(tmp_path, values, advice):
    column = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), values)
    with pytest.raises(ConfigError, match=r"column 'tags' has type dictionary<") as e:
        loader.write_cache(pa.table({"id": [0, 1, 2], "tags": column}), tmp_path, "d")
    assert advice in str(e.value)
    assert _left(tmp_path, "d") == []
    plain = pa.dictionary(pa.int32(), pa.large_string())
    fixed = column.dictionary_decode() if advice == DECODE else column.cast(plain)
    ds = loader.write_cache(pa.table({"id": [0, 1, 2], "tags": fixed}), tmp_path, "d")  # the advice works
    assert ds.num_rows == 3


def test_a_dictionary_holding_a_null_is_written_with_the_null_in_its_indices(tmp_path):
    col = pa.array(["a", None, "b", "a", None], pa.string()).dictionary_encode(null_encoding="encode")
    assert col.dictionary.null_count == 1
    small = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1, 2, 0], pa.int8()), pa.array(["x", None, "y"]))
    stream = pa.RecordBatchReader.from_batches(  # every batch re-encoded, not only the first
        pa.schema([("cat", col.type), ("small", small.type)]),
        [pa.record_batch([col, small], names=["cat", "small"])] * 3)
    ds = loader.write_cache(stream, tmp_path, "e")
    assert ds.schema.field("cat").type == col.type and ds.schema.field("small").type == small.type
    with loader.make_reader(ds, batch_size=15, shuffle=False, strings="object", masks=True) as r:
        (b,) = list(r)
    assert b["cat"].tolist() == ["a", None, "b", "a", None] * 3
    assert b["cat.valid"].tolist() == [True, False, True, True, False] * 3
    assert b["small"].tolist() == [None, "x", None, "y", "x"] * 3


def test_a_nested_dictionary_holding_a_null_is_refused_naming_the_column(tmp_path):
    d = pa.array(["a", None, "b"]).dictionary_encode(null_encoding="encode")
    nested = pa.ListArray.from_arrays(pa.array([0, 2, 3], pa.int32()), d)
    with pytest.raises(ConfigError, match=r"column 'tags' of type list<item: dictionary.*cannot be stored"):
        loader.write_cache(pa.table({"id": [0, 1], "tags": nested}), tmp_path, "n")
    assert _left(tmp_path, "n") == []


@pytest.mark.parametrize("shuffle", [False, True])
def test_views_are_written_in_many_row_groups_and_shuffled(tmp_path, shuffle):
    """pyarrow's writer cannot write a struct (or list of structs) holding views of more than 1024 rows: those are
    stored as plain strings / binaries (the manifest says so); views elsewhere keep their type. A shuffle takes
    the views too (no take kernel for them)."""
    n = 3_000
    texts = [None if i % 7 == 0 else f"text {i} " + "x" * (i % 30) for i in range(n)]
    table = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "sv": pa.array(texts, pa.string_view()),
        "st": pa.StructArray.from_arrays([pa.array(texts, pa.string_view()), pa.array(range(n), pa.int32())],
                                         ["s", "i"], mask=pa.array([i % 5 == 0 for i in range(n)])),
        "lst": pa.array([[{"b": t.encode() if t else None}] * (i % 3) for i, t in enumerate(texts)],
                        pa.list_(pa.struct([("b", pa.binary_view())]))),
    }).slice(7)  # an input that is itself a slice
    ds = loader.write_cache(table, tmp_path, "sv", row_group_bytes=8_000, shuffle=shuffle)
    assert ds.num_row_groups > 3
    assert ds.schema.field("sv").type == pa.string_view()
    assert ds.schema.field("st").type == pa.struct([("s", pa.large_string()), ("i", pa.int32())])
    assert ds.schema.field("lst").type == pa.list_(pa.struct([("b", pa.large_binary())]))
    back = pa.concat_tables(pq.read_table(ds.file_path(f)) for f in ds.files)
    assert back.schema.field("st").type == ds.schema.field("st").type
    rows = back.to_pylist()
    if shuffle:
        assert [r["id"] for r in rows] != sorted(r["id"] for r in rows)
        rows.sort(key=lambda r: r["id"])
    assert rows == table.to_pylist()


def test_a_parquet_source_whose_files_disagree_names_the_file_and_column(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "x": pa.array([1, 2], pa.int32())}), src / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([3, 4], pa.int64()), "x": pa.array(["p", "q"])}), src / "b.parquet")
    pq.write_table(pa.table({"id": pa.array([5], pa.int64())}), src / "c.parquet")
    with pytest.raises(SourceError) as e:
        loader.write_cache(str(src), tmp_path / "out", "m")
    message = str(e.value)
    assert "b.parquet" in message and "column 'x'" in message and "string" in message and "int32" in message
    assert "a.parquet" not in message
    assert _left(tmp_path / "out", "m") == []
    with pytest.raises(SourceError, match="b.parquet"):  # the shuffled path reads the whole source first
        loader.write_cache(str(src), tmp_path / "out", "m", shuffle=True)


def test_a_parquet_source_whose_types_widen_is_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"x": pa.array([1, 2], pa.int64())}), src / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([3], pa.int32())}), src / "b.parquet")
    ds = loader.write_cache(str(src), tmp_path / "out", "w")
    with loader.make_reader(ds, batch_size=3, shuffle=False) as r:
        assert np.sort(next(iter(r))["x"]).tolist() == [1, 2, 3]
