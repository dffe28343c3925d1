"""The TensorFlow adapter, run for real through ``tf.data``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import loader  # noqa: E402
from loader.errors import ColumnNotFoundError, ConfigError  # noqa: E402
from loader.tf import make_dataset  # noqa: E402
from tests.adapters.conftest import config_error  # noqa: E402
from tests.conftest import published_in_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_signature_from_the_schema_and_values_match(adapter_data):
    table, ds = adapter_data
    data = make_dataset(ds.version_path, batch_size=64, seed=3)
    spec = data.element_spec
    assert spec["id"] == tf.TensorSpec([None], tf.int64)
    assert spec["x"] == tf.TensorSpec([None], tf.float32)
    assert spec["title"] == tf.TensorSpec([None], tf.string)
    assert spec["image"] == tf.TensorSpec([None], tf.string)
    assert spec["ids"] == tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1, row_splits_dtype=tf.int64)
    assert spec["tokens"] == tf.RaggedTensorSpec([None, None], tf.string, ragged_rank=1, row_splits_dtype=tf.int64)
    assert spec["nested"] == tf.RaggedTensorSpec(
        [None, None, None], tf.int16, ragged_rank=2, row_splits_dtype=tf.int64
    )
    assert set(spec) == set(table.column_names)
    seen = []
    for b in data:
        ids = b["id"].numpy()
        rows = table.take(ids)
        seen.append(ids)
        assert isinstance(b["ids"], tf.RaggedTensor)
        assert b["ids"].to_list() == rows["ids"].to_pylist()
        assert [t.decode() for t in b["title"].numpy()] == [t or "" for t in rows["title"].to_pylist()]
        assert list(b["image"].numpy()) == rows["image"].to_pylist()
        assert b["tokens"].to_list() == [[t.encode() for t in r or []] for r in rows["tokens"].to_pylist()]
        assert isinstance(b["nested"], tf.RaggedTensor) and b["nested"].ragged_rank == 2
        assert b["nested"].to_list() == rows["nested"].to_pylist()
        np.testing.assert_array_equal(b["x"].numpy(), rows["x"].to_numpy())
    assert sorted(np.concatenate(seen).tolist()) == list(range(table.num_rows))


def test_padded_form_and_several_epochs(adapter_data):
    table, ds = adapter_data
    data = make_dataset(ds.version_path, batch_size=100, ragged="padded", columns=["id", "ids"], num_epochs=2)
    assert data.element_spec["ids"] == tf.TensorSpec([None, None], tf.int32)
    assert data.element_spec["ids.lengths"] == tf.TensorSpec([None], tf.int64)
    ids = []
    for b in data:
        rows = table.take(b["id"].numpy())
        lengths = b["ids.lengths"].numpy()
        assert lengths.tolist() == [len(v) for v in rows["ids"].to_pylist()]
        padded = b["ids"].numpy()
        assert [padded[i, : lengths[i]].tolist() for i in range(len(lengths))] == rows["ids"].to_pylist()
        ids.append(b["id"].numpy())
    ids = np.concatenate(ids)
    half = table.num_rows
    assert sorted(ids[:half].tolist()) == sorted(ids[half:].tolist()) == list(range(half))
    assert ids[:half].tolist() != ids[half:].tolist()  # a new order in epoch 1


def test_row_ids_and_masks_are_in_the_signature(adapter_data):
    table, ds = adapter_data
    data = make_dataset(ds.version_path, batch_size=200, columns=["id", "title"], with_row_ids=True, masks=True)
    assert {"id", "id.valid", "title", "title.valid", "_row_group", "_row"} <= set(data.element_spec)
    for b in data:
        rows = table.take(b["id"].numpy())
        assert b["title.valid"].numpy().tolist() == [t is not None for t in rows["title"].to_pylist()]
        sizes = np.cumsum([0, *ds.row_group_sizes()])
        np.testing.assert_array_equal(sizes[b["_row_group"].numpy()] + b["_row"].numpy(), b["id"].numpy())


def test_padded_lists_of_strings_and_of_lists(adapter_data):
    table, ds = adapter_data
    data = make_dataset(ds.version_path, batch_size=90, ragged="padded", columns=["id", "tokens", "nested"])
    spec = data.element_spec
    assert spec["tokens"] == tf.TensorSpec([None, None], tf.string)
    assert spec["nested"] == tf.TensorSpec([None, None, None], tf.int16)
    assert spec["nested.value_lengths"] == tf.TensorSpec([None, None], tf.int64)
    for b in data:
        rows = table.take(b["id"].numpy())
        tokens, n_tokens = b["tokens"].numpy(), b["tokens.lengths"].numpy()
        expected = [[t.encode() for t in r or []] for r in rows["tokens"].to_pylist()]
        assert [list(tokens[i, : n_tokens[i]]) for i in range(len(n_tokens))] == expected
        assert all((tokens[i, n_tokens[i]:] == b"").all() for i in range(len(n_tokens)))
        nested, n_items, item_lengths = (b["nested"].numpy(), b["nested.lengths"].numpy(),
                                         b["nested.value_lengths"].numpy())
        got = [[nested[i, j, : item_lengths[i, j]].tolist() for j in range(n_items[i])] for i in range(len(n_items))]
        assert got == rows["nested"].to_pylist()


def test_strings_built_in_the_graph_equal_the_source(tmp_path):
    """Default forms: string columns travel as bytes + offsets and become tf.string in the graph; struct fields,
    large strings, null strings, null and empty lists and null items come out as before (nulls as b"")."""
    import pyarrow as pa

    n = 300
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "big": pa.array([None if i % 13 == 0 else "큰" * (i % 7) for i in range(n)], pa.large_string()),
        "words": pa.array([None if i % 17 == 0 else [None if j == 1 else f"w{i}-{j}" for j in range(i % 4)]
                           for i in range(n)], pa.list_(pa.string())),
        "st": pa.array([{"k": i, "name": None if i % 5 == 0 else "n" * (i % 3)} for i in range(n)]),
    })
    ds = loader.write_cache(table, tmp_path, "strings", row_group_bytes=2_000)
    data = make_dataset(ds.version_path, batch_size=64, seed=1)
    assert data.element_spec["big"] == tf.TensorSpec([None], tf.string)
    assert data.element_spec["st.name"] == tf.TensorSpec([None], tf.string)
    assert data.element_spec["words"] == tf.RaggedTensorSpec([None, None], tf.string, ragged_rank=1,
                                                             row_splits_dtype=tf.int64)
    seen = 0
    for b in data:
        rows = table.take(b["id"].numpy())
        assert [v.decode() for v in b["big"].numpy()] == [v or "" for v in rows["big"].to_pylist()]
        assert b["words"].to_list() == [[(w or "").encode() for w in r or []] for r in rows["words"].to_pylist()]
        assert [v.decode() for v in b["st.name"].numpy()] == [(v["name"] or "") for v in rows["st"].to_pylist()]
        seen += len(rows)
    assert seen == n


def reader_epochs(url, num_epochs: int, **kwargs) -> list[list[list[int]]]:
    """Ids per batch of ``make_reader``'s own epochs ``0 .. num_epochs - 1``."""
    with loader.make_reader(url, num_epochs=num_epochs, **kwargs) as reader:
        batches = [b["id"].tolist() for b in reader]
        per_epoch = reader.batches_per_epoch
    return [batches[e * per_epoch : (e + 1) * per_epoch] for e in range(num_epochs)]


def id_lists(data) -> list[list[int]]:
    return [b["id"].numpy().tolist() for b in data]


def test_each_iteration_reads_the_next_epoch(adapter_data):
    """Each iteration (a Keras epoch, a round of ``.repeat()``) is the next epoch of ``make_reader``, not
    epoch 0 again; ``set_epoch`` and ``epoch=`` pick the epoch of the next iteration."""
    table, ds = adapter_data
    kwargs = dict(batch_size=128, columns=["id"], seed=8)
    epochs = reader_epochs(ds.version_path, 4, **kwargs)
    assert epochs[0] != epochs[1]
    repeated = id_lists(make_dataset(ds.version_path, **kwargs).repeat(2))
    assert repeated == epochs[0] + epochs[1]
    for e in (0, 1):
        assert sorted(sum(epochs[e], [])) == list(range(table.num_rows))  # each round a permutation
    data = make_dataset(ds.version_path, **kwargs)
    assert [id_lists(data), id_lists(data)] == epochs[:2]
    data.set_epoch(0)
    assert id_lists(data) == epochs[0]
    assert id_lists(data.repeat(2)) == epochs[1] + epochs[2]  # derived datasets share the counter
    assert id_lists(make_dataset(ds.version_path, epoch=3, **kwargs)) == epochs[3]
    two = make_dataset(ds.version_path, num_epochs=2, **kwargs)  # two epochs per iteration: 0-1, then 2-3
    assert [id_lists(two), id_lists(two)] == [epochs[0] + epochs[1], epochs[2] + epochs[3]]
    with pytest.raises(ConfigError, match="epoch"):
        data.set_epoch(-1)


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), -1, np.int64(-2), 1.0, 2.5, "1", [1]], ids=repr)
def test_epoch_arguments_are_checked_as_the_reader_checks_them(adapter_data, bad):
    """``epoch=``, ``set_epoch`` and ``num_epochs=`` refuse what the reader refuses, with the same message."""
    _, ds = adapter_data
    with loader.make_reader(ds.version_path, columns=["id"]) as reader:
        expected = config_error(lambda: reader.set_epoch(bad))
    assert expected is not None and expected.startswith("epoch ")
    data = make_dataset(ds.version_path, columns=["id"])
    assert config_error(lambda: data.set_epoch(bad)) == expected
    assert config_error(lambda: make_dataset(ds.version_path, columns=["id"], epoch=bad)) == expected
    expected = config_error(lambda: loader.make_reader(ds.version_path, columns=["id"], num_epochs=bad))
    assert expected is not None and expected.startswith("num_epochs ")
    assert config_error(lambda: make_dataset(ds.version_path, columns=["id"], num_epochs=bad)) == expected


def test_numpy_integer_epochs_are_accepted_as_by_the_reader(adapter_data):
    _, ds = adapter_data
    kwargs = dict(batch_size=128, columns=["id"], seed=8)
    epochs = reader_epochs(ds.version_path, 3, **kwargs)
    data = make_dataset(ds.version_path, epoch=np.int64(1), num_epochs=np.int32(1), **kwargs)
    assert id_lists(data) == epochs[1]
    data.set_epoch(np.uint8(2))
    assert id_lists(data) == epochs[2]


def test_transform_columns_give_the_signature(adapter_data):
    table, ds = adapter_data

    def add_len(batch):
        return {"id": batch["id"], "n": np.diff(batch["ids.offsets"]).astype(np.int32)}

    data = make_dataset(ds.version_path, batch_size=50, columns=["id", "ids"], transform=add_len)
    assert set(data.element_spec) == {"id", "n"}
    for b in data.take(3):
        rows = table.take(b["id"].numpy())
        assert b["n"].numpy().tolist() == [len(v) for v in rows["ids"].to_pylist()]


def test_sharded_datasets_cover_the_rows(adapter_data):
    table, ds = adapter_data
    shards = [
        np.concatenate([b["id"].numpy() for b in make_dataset(ds.version_path, batch_size=40, rank=r, world_size=3)])
        for r in range(3)
    ]
    assert sorted(np.concatenate(shards).tolist()) == list(range(table.num_rows))


def test_bad_arguments(adapter_data):
    _, ds = adapter_data
    with pytest.raises(ConfigError, match="ragged"):
        make_dataset(ds.version_path, ragged="jagged")
    with pytest.raises(ColumnNotFoundError, match="colour"):
        make_dataset(ds.version_path, columns=["id", "colour"])
    with pytest.raises(loader.DatasetNotFoundError):
        make_dataset(os.path.join(ds.version_path, "nope"))


def boom(batch):
    raise ValueError("bad pixel in this batch")


def test_transform_error_reaches_the_consumer_with_its_traceback(adapter_data):
    """tf.data turns generator exceptions into UnknownError; the larder error and its traceback are in it."""
    _, ds = adapter_data
    plain = make_dataset(ds.version_path, columns=["id"])
    data = make_dataset(ds.version_path, columns=["id"], transform=boom, output_signature=plain.element_spec)
    with pytest.raises(tf.errors.UnknownError) as info:
        for _ in data:
            pass
    text = str(info.value)
    assert "TransformError: transform boom raised ValueError: bad pixel in this batch" in text
    assert 'in boom\n    raise ValueError("bad pixel in this batch")' in text


def test_import_loader_imports_no_framework():
    code = (
        "import sys, loader, loader.tf, loader.cli\n"
        "bad = [m for m in ('torch', 'tensorflow', 'pyspark', 'py4j') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


def nested_table(n: int = 120):
    """Lists of 2-D points (``list<fixed_size_list<float32, 2>>``, null and empty lists), lists of lists of
    3-vectors, dictionary-encoded tokens, lists of fixed-size hashes, and fixed-size pairs of strings (null pairs
    and null items)."""
    import pyarrow as pa

    words = ["신발", "", "a b", "zz"]
    return pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "pts": pa.array([None if i % 11 == 4 else [[i + 0.5, -j] for j in range(i % 4)] for i in range(n)],
                        pa.list_(pa.list_(pa.float32(), 2))),
        "tracks": pa.array([[[[i, j, k] for k in range((i + j) % 3)] for j in range(i % 3)] for i in range(n)],
                           pa.list_(pa.list_(pa.list_(pa.int16(), 3)))),
        "toks": pa.array([None if i % 13 == 2 else [words[(i + j) % 4] for j in range(i % 4)] for i in range(n)],
                         pa.list_(pa.dictionary(pa.int32(), pa.string()))),
        "hashes": pa.array([None if i % 9 == 5 else [bytes([i, j]) for j in range(i % 4)] for i in range(n)],
                           pa.list_(pa.binary(2))),
        "pair": pa.array([None if i % 5 == 1 else [words[i % 4] + str(i), None if i % 3 == 0 else "x"]
                          for i in range(n)], pa.list_(pa.string(), 2)),
        "cats": pa.array([None if i % 7 == 0 else [words[i % 4], words[(i + 1) % 4]] for i in range(n)],
                         pa.list_(pa.dictionary(pa.int8(), pa.string()), 2)),
    })


@pytest.fixture(scope="module")
def nested_data(tmp_path_factory):
    table = nested_table()
    return table, published_in_parts(tmp_path_factory, table, "tf_nested", 1_500)


def _bytes_rows(rows: list) -> list:
    """``list<string|binary>`` Python rows as tf gives them: bytes, null items b"", null lists empty."""
    return [[b"" if x is None else x.encode() if isinstance(x, str) else x for x in r or []] for r in rows]


def _pairs(rows: list, k: int = 2) -> list:
    """``fixed_size_list<string, k>`` Python rows as tf gives them: k bytes per row, nulls b""."""
    return _bytes_rows([r if r is not None else [None] * k for r in rows])


def _read(data, table, check) -> None:
    seen = 0
    for b in data:
        check(b, table.take(b["id"].numpy()))
        seen += len(b["id"])
    assert seen == table.num_rows


def test_lists_of_fixed_size_lists_keep_their_fixed_dimensions(nested_data):
    """``list<fixed_size_list<float32, 2>>`` (lists of points) could not be iterated with ``ragged="ragged"``: the
    spec said ``[None, None]`` while the values were ``(points, 2)``."""
    table, ds = nested_data
    data = make_dataset(ds.version_path, batch_size=32, columns=["id", "pts", "tracks"], seed=4)
    assert data.element_spec["pts"] == tf.RaggedTensorSpec([None, None, 2], tf.float32, ragged_rank=1,
                                                           row_splits_dtype=tf.int64)
    assert data.element_spec["tracks"] == tf.RaggedTensorSpec([None, None, None, 3], tf.int16, ragged_rank=2,
                                                              row_splits_dtype=tf.int64)

    def check(b, rows):
        assert b["pts"].to_list() == [r or [] for r in rows["pts"].to_pylist()]
        assert b["tracks"].to_list() == rows["tracks"].to_pylist()

    _read(data, table, check)
    padded = make_dataset(ds.version_path, batch_size=32, columns=["id", "pts", "tracks"], ragged="padded")
    assert padded.element_spec["pts"] == tf.TensorSpec([None, None, 2], tf.float32)
    assert padded.element_spec["tracks"] == tf.TensorSpec([None, None, None, 3], tf.int16)

    def check_padded(b, rows):
        pts, n = b["pts"].numpy(), b["pts.lengths"].numpy()
        assert [pts[i, : n[i]].tolist() for i in range(len(n))] == [r or [] for r in rows["pts"].to_pylist()]
        tracks, items, lengths = b["tracks"].numpy(), b["tracks.lengths"].numpy(), b["tracks.value_lengths"].numpy()
        assert [[tracks[i, j, : lengths[i, j]].tolist() for j in range(items[i])] for i in range(len(items))] == \
            rows["tracks"].to_pylist()

    _read(padded, table, check_padded)


@pytest.mark.parametrize("ragged", ["ragged", "padded"])
def test_lists_of_dictionary_strings_and_of_fixed_size_binaries_are_string_lists(nested_data, ragged):
    """``list<dictionary<string>>`` got the spec of a string column and failed at iteration;
    ``list<fixed_size_binary>`` too, and raised ArrowNotImplementedError in the padded form."""
    table, ds = nested_data
    data = make_dataset(ds.version_path, batch_size=32, columns=["id", "toks", "hashes"], ragged=ragged)
    for name in ("toks", "hashes"):
        want = tf.TensorSpec([None, None], tf.string) if ragged == "padded" else \
            tf.RaggedTensorSpec([None, None], tf.string, ragged_rank=1, row_splits_dtype=tf.int64)
        assert data.element_spec[name] == want

    def check(b, rows):
        for name in ("toks", "hashes"):
            want = _bytes_rows(rows[name].to_pylist())
            if ragged == "ragged":
                assert b[name].to_list() == want, name
            else:
                got, n = b[name].numpy(), b[name + ".lengths"].numpy()
                assert [list(got[i, : n[i]]) for i in range(len(n))] == want, name

    _read(data, table, check)


def keep_batch(batch):
    return batch


@pytest.mark.parametrize("ragged, transform", [("ragged", None), ("padded", None), ("ragged", keep_batch)])
def test_fixed_size_lists_of_strings_are_dense_string_tensors(nested_data, ragged, transform):
    """``fixed_size_list<string, 2>`` read nulls as "0" and failed with KeyError 'pair.offsets'; it is a dense
    ``tf.string`` ``[None, 2]`` (nulls b"") in every form, also when the signature comes from a transform's batch."""
    table, ds = nested_data
    data = make_dataset(ds.version_path, batch_size=32, columns=["id", "pair", "cats"], ragged=ragged,
                        transform=transform, masks=True)
    for name in ("pair", "cats"):
        assert data.element_spec[name] == tf.TensorSpec([None, 2], tf.string)

    def check(b, rows):
        for name in ("pair", "cats"):
            assert b[name].numpy().tolist() == _pairs(rows[name].to_pylist()), name
            assert b[name + ".valid"].numpy().tolist() == rows[name].is_valid().to_pylist()

    _read(data, table, check)


def test_fixed_size_lists_of_strings_as_bytes(nested_data):
    table, ds = nested_data
    data = make_dataset(ds.version_path, batch_size=32, columns=["id", "pair"], strings="bytes")
    assert data.element_spec["pair"] == tf.RaggedTensorSpec([None, None, None], tf.uint8, ragged_rank=2,
                                                            row_splits_dtype=tf.int64)

    def check(b, rows):
        assert [[bytes(x) for x in r] for r in b["pair"].to_list()] == _pairs(rows["pair"].to_pylist())

    _read(data, table, check)


def test_every_iteration_reads_the_version_opened(republished):
    """A new version published between (or during) iterations is not read: the dataset follows CURRENT once."""
    url, publish = republished
    data = make_dataset(url, batch_size=100, columns=["id", "tag"], seed=1)
    tags = []
    for i in range(3):
        batches = list(data)
        tags.append({int(t) for b in batches for t in b["tag"].numpy()})
        assert sorted(int(x) for b in batches for x in b["id"].numpy()) == list(range(1200))
        publish(i + 2)
    assert tags == [{1}, {1}, {1}]
    assert {int(t) for b in make_dataset(url, batch_size=100, columns=["tag"]) for t in b["tag"].numpy()} == {4}


def test_an_opened_dataset_is_read_as_it_is(republished):
    """``make_dataset`` takes a ``loader.Dataset`` (one version already), as ``make_reader`` does."""
    url, publish = republished
    ds = loader.open_dataset(url)
    publish(2)
    assert loader.pin_version(ds) is ds
    data = make_dataset(ds, batch_size=100, columns=["id", "tag"])
    assert sorted(int(x) for b in data for x in b["id"].numpy()) == list(range(1200))
    assert {int(t) for b in data for t in b["tag"].numpy()} == {1}


def test_null_fixed_size_binary_is_its_width_of_zero_bytes_and_null_string_empty(tmp_path):
    """A null ``binary(2)`` reaches tf as two zero bytes (its form in the numpy batch), a null string as b""."""
    import pyarrow as pa

    table = pa.table({"id": pa.array([0, 1, 2], pa.int64()),
                      "f": pa.array([b"ab", None, b"\0c"], pa.binary(2)),
                      "s": pa.array(["x", None, ""])})
    ds = loader.write_cache(table, str(tmp_path), "fsb")
    (b,) = list(make_dataset(ds.version_path, batch_size=3, shuffle=False))
    assert b["id"].numpy().tolist() == [0, 1, 2]
    assert b["f"].numpy().tolist() == [b"ab", b"\0\0", b"\0c"]
    assert b["s"].numpy().tolist() == [b"x", b"", b""]
