"""Columns whose names or values the batch forms could get wrong: names that look like another column's ragged
structure, decimals of every width, strings that are not UTF-8, types without a numpy form."""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.convert import check_keys, check_schema, to_numpy
from loader.errors import ConfigError
from tests.reader.conftest import POOLS, unchanged


def _reader(ds, pool: str, **kwargs):
    transform = unchanged if pool == "process" else None  # the process pool starts only with a transform
    return loader.make_reader(ds, pool=pool, workers=2, transform=transform, **kwargs)


# ------------------------------------------------------------------------------------- names of structure


N = 40
CLASHES = {  # columns, reader options, the two names the error must give
    "offsets of an int": ({"x": pa.int64(), "x.offsets": pa.int64()}, {}, ("x", "x.offsets")),
    "value_offsets of an int": ({"x": pa.int64(), "x.value_offsets": pa.int64()}, {}, ("x", "x.value_offsets")),
    "lengths of an int": ({"x": pa.int64(), "x.lengths": pa.int64()}, {}, ("x", "x.lengths")),
    "value_lengths of a list": ({"x": pa.list_(pa.int32()), "x.value_lengths": pa.int64()}, {"ragged": "padded"},
                                ("x", "x.value_lengths")),
    "lengths of a string, offsets form": ({"s": pa.string(), "s.lengths": pa.int64()}, {}, ("s", "s.lengths")),
    "offsets of a struct field": ({"st": pa.struct([("a", pa.int32())]), "st.a.offsets": pa.int64()}, {},
                                  ("st.a", "st.a.offsets")),
    "sibling struct fields": ({"st": pa.struct([("a", pa.int32()), ("a.offsets", pa.int64())])}, {},
                              ("st.a", "st.a.offsets")),
    "offsets of a mask": ({"x": pa.int64(), "x.valid.offsets": pa.int64()}, {"masks": True}, ("x", "x.valid.offsets")),
    "offsets of a row id": ({"_row.offsets": pa.int64()}, {"with_row_ids": True}, ("_row", "_row.offsets")),
    "a mask": ({"x": pa.int64(), "x.valid": pa.bool_()}, {"masks": True}, ("x", "x.valid")),
}


def _table(types: dict) -> pa.Table:
    cols = {"id": pa.array(range(N), pa.int64())}
    for name, t in types.items():
        if pa.types.is_struct(t):
            cols[name] = pa.StructArray.from_arrays([pa.array(range(N), f.type) for f in t], [f.name for f in t])
        elif pa.types.is_list(t):
            cols[name] = pa.array([[i] * (i % 3) for i in range(N)], t)
        elif pa.types.is_string(t):
            cols[name] = pa.array([f"s{i}" for i in range(N)], t)
        elif pa.types.is_boolean(t):
            cols[name] = pa.array([i % 2 == 0 for i in range(N)])
        else:
            cols[name] = pa.array([None if i % 9 == 4 else i * 7 for i in range(N)], t)
    return pa.table(cols)


@pytest.mark.parametrize("case", list(CLASHES))
def test_a_column_named_like_anothers_structure_is_refused_when_the_reader_is_made(tmp_path, case):
    types, options, names = CLASHES[case]
    ds = loader.write_cache(_table(types), tmp_path, "clash")
    for pool in POOLS:
        with pytest.raises(ConfigError) as e:
            _reader(ds, pool, **options)
        assert all(repr(n) in str(e.value) for n in names), str(e.value)
    with pytest.raises(ConfigError):  # the converter's own check, called alone
        check_keys(ds.schema, ds.columns, **options)
    if "masks" in options or "with_row_ids" in options:  # without the option that makes the key: read as is
        without = {k: v for k, v in options.items() if k not in ("masks", "with_row_ids")}
        check_keys(ds.schema, ds.columns, **without)


def test_torch_refuses_a_column_named_like_anothers_offsets(tmp_path):
    lt = pytest.importorskip("loader.torch")
    ds = loader.write_cache(_table({"x": pa.int64(), "x.offsets": pa.int64()}), tmp_path, "clash")
    with pytest.raises(ConfigError, match="'x.offsets'.*'x'"):
        next(iter(lt.make_dataloader(ds.version_path, batch_size=4, shuffle=False, pool="serial", num_workers=0)))


@pytest.mark.parametrize("ragged", ["offsets", "padded"])
@pytest.mark.parametrize("pool", POOLS)
def test_names_with_structure_suffixes_and_no_such_column_are_read_as_they_are(tmp_path_factory, pool, ragged):
    """``a.value_offsets`` and ``b.offsets`` without an ``a`` or ``b`` (and ``x.valid`` without masks) are plain
    columns in every pool (the thread pool splits converted batches by key names)."""
    n = 3_000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "a.value_offsets": pa.array(np.arange(n) * 3),
                      "b.offsets": pa.array(np.arange(n) * 5), "x": pa.array(np.arange(n) * 7),
                      "x.valid": pa.array(np.arange(n) % 2 == 0), "s": pa.array([f"s{i}" for i in range(n)])})
    ds = loader.write_cache(table, tmp_path_factory.mktemp("suffix"), "suffix", row_group_bytes=4_000)
    with _reader(ds, pool, batch_size=8, shuffle=True, ragged=ragged) as r:
        batches = list(r)
    assert sorted(np.concatenate([b["id"] for b in batches]).tolist()) == list(range(n))
    for b in batches:
        ids = b["id"]
        assert b["a.value_offsets"].tolist() == (ids * 3).tolist()
        assert b["b.offsets"].tolist() == (ids * 5).tolist()
        assert b["x"].tolist() == (ids * 7).tolist() and b["x.valid"].tolist() == (ids % 2 == 0).tolist()
        lengths = b["s.lengths"] if ragged == "padded" else np.diff(b["s.offsets"])
        assert lengths.tolist() == [len(f"s{i}") for i in ids]


# ---------------------------------------------------------------------------------------------- decimals


def test_decimals_of_every_width_are_the_nearest_float64(tmp_path):
    vals = [decimal.Decimal(i) / 100 for i in range(-20000, 20000, 7)] + [None]
    nearest = np.array([np.nan if v is None else float(v) for v in vals])
    table = pa.table({"d32": pa.array(vals, pa.decimal32(9, 2)), "d64": pa.array(vals, pa.decimal64(12, 2)),
                      "d128": pa.array(vals, pa.decimal128(12, 2)), "d256": pa.array(vals, pa.decimal256(12, 2)),
                      "d64_15": pa.array([None if v is None else v * 10**9 for v in vals], pa.decimal64(15, 2))})
    out = to_numpy(table.slice(3))  # an offset into the buffers too
    for name in ("d32", "d64", "d128", "d256"):
        np.testing.assert_array_equal(out[name], nearest[3:], err_msg=name)
    np.testing.assert_array_equal(out["d64_15"], [np.nan if v is None else float(v * 10**9) for v in vals[3:]])
    ds = loader.write_cache(table, tmp_path, "dec")
    with loader.make_reader(ds, batch_size=len(vals), shuffle=False) as r:
        b = next(iter(r))
    for name in ("d32", "d64", "d128", "d256"):
        np.testing.assert_array_equal(b[name], nearest, err_msg=name)


# ------------------------------------------------------------------------------------------- invalid UTF-8


BAD = pa.array([b"ok", b"\xff\xfe bad", b"caf\xc3"] * 10, pa.binary()).view(pa.string())


@pytest.fixture(scope="module")
def bad_utf8(tmp_path_factory) -> loader.Dataset:
    """Strings that are not UTF-8 (Hive tables can hold them), alone, in lists, in fixed-size lists, in structs."""
    n = len(BAD)
    table = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "s": BAD,
        "ls": pa.ListArray.from_arrays(pa.array(range(n + 1), pa.int32()), BAD),
        "fs": pa.FixedSizeListArray.from_arrays(pa.concat_arrays([BAD, BAD]), 2),
        "st": pa.StructArray.from_arrays([BAD], ["v"]),
    })
    return loader.write_cache(table, tmp_path_factory.mktemp("utf8"), "utf8", row_group_bytes=200)


@pytest.mark.parametrize("column", ["s", "ls", "fs", "st"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("pool", POOLS)
def test_strings_that_are_not_utf8_in_the_object_form_name_the_column(bad_utf8, pool, shuffle, column):
    with _reader(bad_utf8, pool, columns=["id", column], batch_size=4, shuffle=shuffle, strings="object") as r:
        with pytest.raises(ConfigError) as e:
            list(r)
    name = "st.v" if column == "st" else column
    assert isinstance(e.value, ValueError) and isinstance(e.value, loader.LarderError)
    assert f"column {name!r}" in str(e.value) and "UTF-8" in str(e.value) and 'strings="offsets"' in str(e.value)
    with _reader(bad_utf8, pool, columns=["id", "s"], batch_size=4, shuffle=shuffle) as r:  # the raw bytes
        for b in r:
            got = [bytes(b["s"][b["s.offsets"][i]:b["s.offsets"][i + 1]]) for i in range(len(b["id"]))]
            assert got == [BAD.view(pa.binary())[i].as_py() for i in b["id"]]


# ------------------------------------------------------------------------------------- no numpy form: why


def test_a_list_of_structs_is_refused_for_what_it_is():
    schema = pa.schema([("ls", pa.list_(pa.struct([("a", pa.int32())]))), ("lls", pa.list_(pa.list_(pa.string()))),
                        ("llst", pa.list_(pa.list_(pa.struct([("a", pa.int32())]))))])
    with pytest.raises(ConfigError, match=r"column 'ls'.*lists of structs") as e:
        check_schema(schema, ["ls"])
    assert "more than two list levels" not in str(e.value)
    with pytest.raises(ConfigError, match=r"column 'lls'.*more than two list levels"):
        check_schema(schema, ["lls"])
    with pytest.raises(ConfigError, match=r"column 'llst'.*lists of lists of struct"):
        check_schema(schema, ["llst"])
