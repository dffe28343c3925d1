"""The adapters on odd values: null fixed-size binaries in every tf form, strings that are not UTF-8."""

from __future__ import annotations

import pyarrow as pa
import pytest

import loader
from loader.errors import ConfigError

N = 24


def keep_batch(batch):
    """A transform that returns its batch (tf then converts the reader's object form of strings)."""
    return batch


@pytest.fixture(scope="module")
def fsb_cache(tmp_path_factory) -> loader.Dataset:
    """Null fixed-size binaries alone, as list items, in fixed-size lists (null lists too), in structs."""
    table = pa.table({
        "id": pa.array(range(N), pa.int64()),
        "f": pa.array([None if i % 3 == 1 else bytes([i, i, i]) for i in range(N)], pa.binary(3)),
        "lf": pa.array([None if i % 5 == 2 else [None if (i + j) % 2 else bytes([i, j]) for j in range(i % 3)]
                        for i in range(N)], pa.list_(pa.binary(2))),
        "ff": pa.array([None if i % 4 == 3 else [bytes([i, 1]), None if i % 2 else bytes([i, 2])] for i in range(N)],
                       pa.list_(pa.binary(2), 2)),
        "st": pa.array([None if i % 6 == 0 else {"h": None if i % 4 == 1 else bytes([i, 9])} for i in range(N)],
                       pa.struct([("h", pa.binary(2))])),
    })
    return loader.write_cache(table, tmp_path_factory.mktemp("fsb"), "fsb", row_group_bytes=300)


def _want(ds: loader.Dataset) -> dict[str, list]:
    """Each key's rows with a null fixed-size binary as its width of zero bytes (a null list empty, a null
    fixed-size list its k null items), as in the numpy batch."""
    import pyarrow.parquet as pq

    rows = pa.concat_tables(pq.read_table(ds.file_path(f)) for f in ds.files).to_pylist()
    zero2 = bytes(2)
    return {
        "f": [r["f"] or bytes(3) for r in rows],
        "lf": [[x or zero2 for x in r["lf"] or []] for r in rows],
        "ff": [[x or zero2 for x in r["ff"] or [None, None]] for r in rows],
        "st.h": [(r["st"] or {}).get("h") or zero2 for r in rows],
    }


@pytest.mark.parametrize("transform", [None, keep_batch])
@pytest.mark.parametrize("ragged", ["ragged", "padded"])
def test_tf_null_fixed_size_binary_is_its_width_of_zero_bytes_in_every_form(fsb_cache, ragged, transform):
    pytest.importorskip("tensorflow")
    from loader.tf import make_dataset

    want = _want(fsb_cache)
    seen = 0
    for b in make_dataset(fsb_cache.version_path, batch_size=5, ragged=ragged, transform=transform, seed=1):
        ids = b["id"].numpy().tolist()
        seen += len(ids)
        assert b["f"].numpy().tolist() == [want["f"][i] for i in ids]
        assert b["ff"].numpy().tolist() == [want["ff"][i] for i in ids]
        assert b["st.h"].numpy().tolist() == [want["st.h"][i] for i in ids]
        if ragged == "ragged":
            assert b["lf"].to_list() == [want["lf"][i] for i in ids]
        else:
            lf, lengths = b["lf"].numpy().tolist(), b["lf.lengths"].numpy().tolist()
            assert [row[:k] for row, k in zip(lf, lengths, strict=True)] == [want["lf"][i] for i in ids]
    assert seen == N


@pytest.fixture(scope="module")
def bad_utf8(tmp_path_factory) -> loader.Dataset:
    s = pa.array([b"ok", b"\xff\xfe bad", b"caf\xc3"], pa.binary()).view(pa.string())
    return loader.write_cache(pa.table({"id": pa.array([0, 1, 2], pa.int64()), "s": s}),
                              tmp_path_factory.mktemp("utf8"), "utf8")


def test_torch_strings_that_are_not_utf8_name_the_column(bad_utf8):
    lt = pytest.importorskip("loader.torch")
    with pytest.raises(ConfigError, match=r"column 's'.*UTF-8.*strings=\"tensor\""):
        list(lt.make_dataloader(bad_utf8.version_path, batch_size=3, shuffle=False, pool="serial", num_workers=0))
    (b,) = list(lt.make_dataloader(bad_utf8.version_path, batch_size=3, shuffle=False, pool="serial", num_workers=0,
                                   strings="tensor", ragged="offsets"))
    assert bytes(b["s"].numpy()) == b"ok\xff\xfe badcaf\xc3"


@pytest.mark.parametrize("ragged", ["ragged", "padded"])
def test_tf_strings_that_are_not_utf8_name_the_column_or_pass_as_bytes(bad_utf8, ragged):
    """The forms that convert strings to Python objects (padded, or with a transform) name the column; the
    in-graph form (ragged, no transform) and strings="bytes" give the bytes."""
    tf = pytest.importorskip("tensorflow")
    from loader.tf import make_dataset

    spec = {"id": tf.TensorSpec([None], tf.int64), "s": tf.TensorSpec([None], tf.string)}
    for transform in (keep_batch, None) if ragged == "padded" else (keep_batch,):
        data = make_dataset(bad_utf8.version_path, batch_size=3, shuffle=False, ragged=ragged, transform=transform,
                            output_signature=spec if transform else None)
        with pytest.raises(tf.errors.OpError, match=r"ConfigError: column 's'.*UTF-8.*strings=\"bytes\""):
            list(data)  # InvalidArgumentError: tf's name for a ValueError
    (b,) = list(make_dataset(bad_utf8.version_path, batch_size=3, shuffle=False, ragged=ragged, strings="bytes"))
    s = b["s"] if ragged == "ragged" else tf.RaggedTensor.from_tensor(b["s"], lengths=b["s.lengths"])
    assert [bytes(r) for r in s.to_list()] == [b"ok", b"\xff\xfe bad", b"caf\xc3"]
    if ragged == "ragged":
        (b,) = list(make_dataset(bad_utf8.version_path, batch_size=3, shuffle=False))  # bytes, in the graph
        assert b["s"].numpy().tolist() == [b"ok", b"\xff\xfe bad", b"caf\xc3"]
