"""Arrow -> numpy forms: compared with pyarrow's own Python values, row by row, in the tests only."""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
import pyarrow.types as pat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loader
from loader.convert import check_options, check_schema, pad, to_numpy
from loader.errors import ConfigError
from tests.conftest import published_in_parts
from tests.reader.conftest import POOLS, unchanged


@pytest.fixture
def messy() -> pa.Table:
    return pa.table({
        "i": pa.array([1, None, 3, 4], pa.int32()),
        "f": pa.array([0.5, None, 2.0, -1.0], pa.float32()),
        "b": pa.array([True, None, False, True]),
        "s": pa.array(["ab", None, "가나", ""]),
        "bin": pa.array([b"\x00\x01", b"", None, b"xyz"], pa.large_binary()),
        "l": pa.array([[1, 2], None, [], [3, 4, 5]], pa.list_(pa.int64())),
        "fsl": pa.array([[1, 2], [3, 4], None, [7, 8]], pa.list_(pa.float32(), 2)),
        "st": pa.array([{"x": 1, "y": "p"}, None, {"x": 3, "y": "qq"}, {"x": None, "y": None}]),
        "d": pa.array(["a", "b", None, "a"]).dictionary_encode(),
    })


def rows(values: np.ndarray, offsets: np.ndarray) -> list:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


@pytest.mark.parametrize("start,length", [(0, 4), (1, 3), (2, 1), (0, 0)])
def test_offsets_form_equals_source_values(messy, start, length):
    t = messy.slice(start, length)
    out = to_numpy(t, masks=True)
    n = t.num_rows
    for name in ("s", "bin", "d"):
        src = t[name].to_pylist()
        got = rows(out[name], out[name + ".offsets"])
        assert len(got) == n and out[name + ".offsets"][0] == 0 and out[name].dtype == np.uint8
        want = [b"" if v is None else (v.encode() if isinstance(v, str) else v) for v in src]
        assert [g.tobytes() for g in got] == want
        assert out[name + ".valid"].tolist() == [v is not None for v in src]
    got = rows(out["l"], out["l.offsets"])
    assert [g.tolist() for g in got] == [v or [] for v in t["l"].to_pylist()]
    assert out["i"].dtype == np.int32 and out["f"].dtype == np.float32
    for name, fill in (("i", 0), ("b", False)):
        assert out[name].tolist() == [fill if v is None else v for v in t[name].to_pylist()]
    f = out["f"]
    assert [None if np.isnan(x) else x for x in f.tolist()] == t["f"].to_pylist()
    assert out["fsl"].shape == (n, 2)
    want = np.array([v or [np.nan, np.nan] for v in t["fsl"].to_pylist()], np.float32).reshape(n, 2)
    assert np.array_equal(out["fsl"], want, equal_nan=True)  # a null list of floats: NaN, like a null float
    assert out["st.x"].tolist() == [0 if v is None or v["x"] is None else v["x"] for v in t["st"].to_pylist()]


def test_padded_form_and_lengths(messy):
    out = to_numpy(messy, ragged="padded", pad_value=0)
    src = messy["l"].to_pylist()
    lengths = [len(v or []) for v in src]
    assert out["l.lengths"].tolist() == lengths
    assert out["l"].shape == (4, max(lengths))
    for row, v, n in zip(out["l"], src, lengths, strict=True):
        assert row[:n].tolist() == (v or []) and (row[n:] == 0).all()
    strings = [(v or "").encode() for v in messy["s"].to_pylist()]
    assert [bytes(r[:n]) for r, n in zip(out["s"], out["s.lengths"], strict=True)] == strings


def test_object_strings_on_request(messy):
    out = to_numpy(messy, strings="object")
    assert out["s"].dtype == object and out["s"].tolist() == messy["s"].to_pylist()
    assert out["bin"].tolist() == messy["bin"].to_pylist()


def test_chunked_table_and_empty_batch(messy):
    t = pa.concat_tables([messy.slice(0, 2), messy.slice(2)])
    assert t["s"].num_chunks == 2
    out = to_numpy(t)
    assert [r.tobytes() for r in rows(out["s"], out["s.offsets"])] == [
        (v or "").encode() for v in messy["s"].to_pylist()
    ]
    empty = to_numpy(messy.slice(0, 0))
    assert empty["l.offsets"].tolist() == [0] and len(empty["i"]) == 0


def test_pad_is_vectorised_scatter():
    out = pad(np.arange(6), np.array([3, 0, 2, 1]), pad_value=-1)
    assert out.tolist() == [[0, 1, 2], [-1, -1, -1], [3, 4, -1], [5, -1, -1]]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), max_size=30), inner=st.integers(0, 3), pad_value=st.integers(-5, 5))
def test_pad_puts_each_row_at_the_front_of_its_row(lengths, inner, pad_value):
    lengths = np.array(lengths, dtype=np.int64)
    shape = (int(lengths.sum()),) + ((inner,) if inner else ())
    values = np.arange(np.prod(shape), dtype=np.int32).reshape(shape) + 100
    out = pad(values, lengths, pad_value=pad_value)
    assert out.shape == (len(lengths), int(lengths.max()) if len(lengths) else 0) + shape[1:]
    start = 0
    for row, n in zip(out, lengths.tolist(), strict=True):
        assert np.array_equal(row[:n], values[start : start + n]) and (row[n:] == pad_value).all()
        start += n


def test_bad_options_and_types_name_the_culprit():
    with pytest.raises(ConfigError, match="ragged"):
        check_options("jagged", "offsets")
    with pytest.raises(ConfigError, match="strings"):
        check_options("offsets", "utf8")
    schema = pa.schema([("mapped", pa.map_(pa.string(), pa.int32())), ("ok", pa.int8())])
    with pytest.raises(ConfigError, match="'mapped'"):
        check_schema(schema, ["mapped"])
    check_schema(schema, ["ok"])


def test_arrays_are_writable_unless_views_are_asked_for(messy):
    out = to_numpy(messy.slice(1, 3))
    assert all(v.flags.writeable for v in out.values())
    frozen = pa.Array.from_buffers(pa.int64(), 5, [None, pa.py_buffer(np.arange(5).tobytes())])  # immutable
    table = pa.table({"x": frozen})
    assert not to_numpy(table, writable=False)["x"].flags.writeable  # a zero-copy view of read-only memory
    copied = to_numpy(table)["x"]
    assert copied.flags.writeable and copied.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("start,length", [(0, 5), (1, 4), (3, 2)])
def test_two_level_columns_equal_source_values(start, length):
    t = pa.table({
        "tokens": pa.array([["ab", "c"], None, [], ["가", None, "xyz"], ["q"]]),
        "nested": pa.array([[[1, 2], [3]], [[]], None, [[4, 5, 6]], [[7], [], [8]]], pa.list_(pa.list_(pa.int16()))),
    }).slice(start, length)
    out = to_numpy(t)
    for name in ("tokens", "nested"):
        values, offsets, item_offsets = out[name], out[name + ".offsets"], out[name + ".value_offsets"]
        got = [[values[item_offsets[j] : item_offsets[j + 1]] for j in range(offsets[i], offsets[i + 1])]
               for i in range(len(offsets) - 1)]
        src = t[name].to_pylist()
        if name == "tokens":
            assert [[x.tobytes() for x in row] for row in got] == [
                [(s or "").encode() for s in row or []] for row in src]
        else:
            assert [[x.tolist() for x in row] for row in got] == [[x or [] for x in row or []] for row in src]
    padded = to_numpy(t, ragged="padded")
    src = t["nested"].to_pylist()
    for i, row in enumerate(src):
        row = row or []
        assert padded["nested.lengths"][i] == len(row)
        for j, item in enumerate(row):
            n = padded["nested.value_lengths"][i, j]
            assert padded["nested"][i, j, :n].tolist() == item
    objects = to_numpy(t, strings="object")["tokens"]
    assert [None if r is None else r.tolist() for r in objects] == t["tokens"].to_pylist()


def test_three_levels_are_refused():
    with pytest.raises(ConfigError, match="'deep'"):
        check_schema(pa.schema([("deep", pa.list_(pa.list_(pa.list_(pa.int8()))))]), ["deep"])
    check_schema(pa.schema([("tokens", pa.list_(pa.string()))]), ["tokens"])


def test_a_null_string_with_bytes_behind_it_converts_to_an_empty_value():
    """Arrow allows a null slot to span bytes (Parquet decoding never makes one); they must not leak in."""
    offsets = pa.py_buffer(np.array([0, 2, 4, 6], np.int32).tobytes())
    arr = pa.Array.from_buffers(pa.string(), 3, [pa.py_buffer(bytes([0b101])), offsets, pa.py_buffer(b"abXYcd")])
    for column in (arr, arr.cast(pa.string_view()), arr.slice(1)):
        out = to_numpy(pa.record_batch({"s": column}))
        want = [v or "" for v in column.to_pylist()]
        got = [bytes(out["s"][a:b]).decode() for a, b in zip(out["s.offsets"][:-1], out["s.offsets"][1:], strict=True)]
        assert got == want, (column.type, got)


@pytest.mark.parametrize("arr, dtype", [
    (pa.array([1, None, 3], pa.date32()), "datetime64[D]"),
    (pa.array([86_400_000, None, 0], pa.date64()), "datetime64[ms]"),
    (pa.array([1, None, 3], pa.timestamp("s", tz="Europe/Paris")), "datetime64[s]"),
    (pa.array([None, 5, 6], pa.timestamp("ns")), "datetime64[ns]"),
    (pa.array([1, None, 3], pa.time32("s")), "timedelta64[s]"),
    (pa.array([None, 1_000_000, 3], pa.time64("us")), "timedelta64[us]"),
    (pa.array([5, None, -2], pa.duration("ms")), "timedelta64[ms]"),
])
@pytest.mark.parametrize("start", [0, 1])
def test_temporal_columns_with_nulls_become_datetime64_or_timedelta64(arr, dtype, start):
    arr = arr.slice(start)
    out = to_numpy(pa.table({"t": arr}), masks=True)
    assert out["t"].dtype == np.dtype(dtype)
    storage = arr.view(pa.int32() if arr.type.bit_width == 32 else pa.int64()).to_pylist()
    assert out["t"].astype(np.int64).tolist() == [0 if v is None else v for v in storage]  # nulls: epoch, midnight
    assert out["t.valid"].tolist() == arr.is_valid().to_pylist()


@pytest.mark.parametrize("precision, scale", [(15, 2), (9, 0), (12, 12), (18, 5), (38, 10)])
def test_decimals_become_the_nearest_float64(precision, scale):
    rng = np.random.default_rng(precision)
    digits = min(precision, 17)
    values = [decimal.Decimal(int(x)).scaleb(-scale) for x in rng.integers(-(10**digits) + 1, 10**digits, 2000)]
    arr = pa.array([*values, None], pa.decimal128(precision, scale))
    got = to_numpy(pa.table({"d": arr.slice(1)}))["d"]
    expected = np.array([float(v) for v in values[1:]] + [np.nan])  # Python rounds a Decimal correctly
    if precision <= 15:
        assert np.array_equal(got, expected, equal_nan=True)
    else:  # Arrow's cast: within an ulp
        assert np.allclose(got, expected, rtol=2**-52, atol=0, equal_nan=True)


# Fixed-size lists with null entries, fixed-size lists of strings, lists of fixed-size binaries: read back through
# the reader (every pool; the identity transform makes the process pool ship the batches) and compared with the
# table written.

FSL_ROWS = 60
STORED = {  # temporal element types, written from (and compared with) their integer storage
    "ts": (pa.int64(), pa.timestamp("ms", tz="Asia/Seoul")),
    "date": (pa.int32(), pa.date32()),
    "tod32": (pa.int32(), pa.time32("ms")),
    "dur": (pa.int64(), pa.duration("s")),
    "tod": (pa.int64(), pa.time64("us")),
}


def _fsl_rows(value, k: int = 2, n: int = FSL_ROWS) -> list:
    """Every 4th row (from 1) a null list, every 5th (from 2) a null first element."""
    return [None if i % 4 == 1 else [None if (i % 5 == 2 and j == 0) else value(i, j) for j in range(k)]
            for i in range(n)]


def fsl_null_table() -> tuple[pa.Table, dict[str, list]]:
    """``fixed_size_list`` columns of every fixed-width kind with null lists and null elements, and the Python
    values each should read back as (a null list filled like a null element: NaN, 0, False, the epoch)."""
    cols, rows = {"id": pa.array(np.arange(FSL_ROWS))}, {}
    plain = {
        "f32": (pa.float32(), lambda i, j: i + j / 4),
        "f16": (pa.float16(), lambda i, j: np.float16(i + j / 2)),
        "i8": (pa.int8(), lambda i, j: i - j * 3),
        "u64": (pa.uint64(), lambda i, j: 2**63 + i + j),
        "bool": (pa.bool_(), lambda i, j: (i + j) % 3 == 0),
        "dec": (pa.decimal128(10, 2), lambda i, j: decimal.Decimal(i * 100 + j).scaleb(-2)),
    }
    for name, (typ, value) in plain.items():
        src = _fsl_rows(value)
        cols[name] = pa.array(src, pa.list_(typ, 2))
        rows[name] = src
    for name, (storage, typ) in STORED.items():
        scale = 1 if typ.bit_width == 32 else 1000
        src = _fsl_rows(lambda i, j, scale=scale: (i * 86_400 + j) * scale)
        cols[name] = pa.array(src, pa.list_(storage, 2)).cast(pa.list_(typ, 2))
        rows[name] = src
    nested = [None if i % 4 == 1 else [None if i % 6 == 0 else [None if i % 5 == 2 else i + 0.5, -1.0], [2.0, i]]
              for i in range(FSL_ROWS)]
    cols["nested"] = pa.array(nested, pa.list_(pa.list_(pa.float64(), 2), 2))
    rows["nested"] = nested
    return pa.table(cols), rows


def _filled(rows: list, fill, shape: tuple) -> list:
    """``rows`` with every null (a null list or element, at any depth) replaced by ``fill`` of its shape."""
    def fix(v, shape):
        if v is None:
            return np.full(shape, fill).tolist() if shape else fill
        return [fix(x, shape[1:]) for x in v] if shape else v
    return [fix(r, shape) for r in rows]


def check_fixed_size_lists(out: dict, table: pa.Table, rows: dict[str, list], ids: np.ndarray) -> None:
    for name, src in rows.items():
        src = [src[i] for i in ids]
        got, typ = out[name], table.schema.field(name).type
        shape = (2, 2) if name == "nested" else (2,)
        assert got.shape == (len(ids), *shape), name
        assert out[name + ".valid"].tolist() == [r is not None for r in src], name
        if name in STORED:
            assert got.dtype.kind in "mM", name
            assert got.astype(np.int64).tolist() == _filled(src, 0, shape), name
        elif name == "bool" or pat.is_integer(typ.value_type):
            assert got.tolist() == _filled(src, 0, shape), name
        else:  # floats, decimals (float64), nested floats: NaN for null lists and elements
            want = np.array(_filled(src, np.nan, shape), dtype=np.float64)
            assert np.array_equal(got.astype(np.float64), want, equal_nan=True), name
            kept = np.float64 if name in ("dec", "nested") else np.dtype(typ.value_type.to_pandas_dtype())
            assert got.dtype == kept, name


@pytest.mark.parametrize("start", [0, 1, 3])
def test_null_fixed_size_lists_are_filled_like_null_values(start):
    table, rows = fsl_null_table()
    out = to_numpy(table.slice(start), masks=True)
    check_fixed_size_lists(out, table, rows, np.arange(start, FSL_ROWS))


@pytest.fixture(scope="module")
def fsl_null_cache(tmp_path_factory) -> tuple[loader.Dataset, pa.Table, dict]:
    table, rows = fsl_null_table()
    return published_in_parts(tmp_path_factory, table, "fsl_nulls", 1_500), table, rows


def read_all(ds, **kwargs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All batches of one epoch, row-first arrays concatenated in id order (and the batches)."""
    with loader.make_reader(ds, batch_size=16, workers=2, transform=unchanged, **kwargs) as reader:
        batches = list(reader)
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(ds.num_rows))
    return batches, ids


@pytest.mark.parametrize("pool", POOLS)
def test_null_fixed_size_lists_of_every_type_read_back_filled(fsl_null_cache, pool):
    """A null ``fixed_size_list<timestamp|date|duration|time>`` used to crash the first batch (a float cast),
    and a null list of floats read as 0.0 where a null float reads as NaN."""
    ds, table, rows = fsl_null_cache
    batches, ids = read_all(ds, pool=pool, masks=True)
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    check_fixed_size_lists(out, table, rows, ids)


def string_table(n: int = FSL_ROWS) -> pa.Table:
    """Fixed-size lists of strings and binaries (plain, large, dictionary-encoded, fixed-size binary items) with
    null lists and null items."""
    words = ["", "가나", "ab", "x y", "zzz"]
    cats = pa.list_(pa.dictionary(pa.int32(), pa.string()), 2)
    return pa.table({
        "id": pa.array(np.arange(n)),
        "pair": pa.array(_fsl_rows(lambda i, j: words[(i + j) % 5] + str(i)), pa.list_(pa.string(), 2)),
        "blobs": pa.array(_fsl_rows(lambda i, j: bytes([i, j]) * (i % 3), k=3), pa.list_(pa.large_binary(), 3)),
        "cats": pa.array(_fsl_rows(lambda i, j: words[(i * j) % 5]), cats),
        "hashes": pa.array(_fsl_rows(lambda i, j: bytes([i, 7 + j])), pa.list_(pa.binary(2), 2)),
    })


def string_rows(b: dict, name: str, ragged: str, strings: str) -> list[list]:
    """A batch's fixed-size-list-of-strings column as Python lists of items (test side, row by row)."""
    if strings == "object":
        return b[name].tolist()
    if ragged == "offsets":
        values, offsets, items = b[name], b[name + ".offsets"], b[name + ".value_offsets"]
        return [[values[items[j] : items[j + 1]].tobytes() for j in range(offsets[i], offsets[i + 1])]
                for i in range(len(offsets) - 1)]
    padded, lengths, item_lengths = b[name], b[name + ".lengths"], b[name + ".value_lengths"]
    assert padded.dtype == np.uint8 and padded.ndim == 3
    return [[padded[i, j, : item_lengths[i, j]].tobytes() for j in range(lengths[i])] for i in range(len(lengths))]


def expected_strings(table: pa.Table, name: str, ids, strings: str) -> list[list]:
    """Object form: the source items (None for a null list's); bytes forms: UTF-8 bytes, nulls empty (fixed-size
    binaries: zero bytes, as a null ``binary(w)`` column reads)."""
    typ = table.schema.field(name).type
    k = typ.list_size
    null = b"\0" * typ.value_type.byte_width if pat.is_fixed_size_binary(typ.value_type) else b""
    out = []
    for row in table[name].take(pa.array(ids)).to_pylist():
        row = row if row is not None else [None] * k
        if strings == "object":
            out.append(row)
        else:
            out.append([null if x is None else x.encode() if isinstance(x, str) else x for x in row])
    return out


@pytest.mark.parametrize("start", [0, 1, 3])
@pytest.mark.parametrize("ragged, strings", [("offsets", "offsets"), ("padded", "offsets"), ("offsets", "object")])
def test_fixed_size_lists_of_strings_are_lists_of_k_strings(ragged, strings, start):
    table = string_table().slice(start)
    out = to_numpy(table, ragged=ragged, strings=strings, masks=True)
    ids = np.arange(start, FSL_ROWS)
    for name in ("pair", "blobs", "cats", "hashes"):
        k = table.schema.field(name).type.list_size
        assert string_rows(out, name, ragged, strings) == expected_strings(string_table(), name, ids, strings), name
        assert out[name + ".valid"].tolist() == table[name].is_valid().to_pylist()
        if strings == "object":
            assert out[name].dtype == object and out[name].shape == (len(ids), k)
        elif ragged == "offsets":
            assert out[name + ".offsets"].tolist() == list(range(0, k * len(ids) + 1, k))
        else:
            assert out[name + ".lengths"].tolist() == [k] * len(ids)


def test_strings_behind_a_null_fixed_size_list_do_not_leak():
    """Arrow allows a null list to cover non-null items (Parquet decoding never makes one): they read as nulls."""
    values = pa.array(["ab", None, "ef", "xy", "gh", "ij"])
    for typ, as_object in ((pa.string(), str), (pa.string_view(), str), (pa.large_binary(), str.encode)):
        arr = pa.FixedSizeListArray.from_arrays(values.cast(typ), 2, mask=pa.array([False, True, False]))
        for column, rows in ((arr, [0, 1, 2]), (arr.slice(1), [1, 2])):
            out = to_numpy(pa.table({"p": column}))
            want = [[b"ab", b""], [b"", b""], [b"gh", b"ij"]]
            assert string_rows(out, "p", "offsets", "offsets") == [want[i] for i in rows], typ
            objects = to_numpy(pa.table({"p": column}), strings="object")["p"].tolist()
            want = [[as_object("ab"), None], [None, None], [as_object("gh"), as_object("ij")]]
            assert objects == [want[i] for i in rows], typ


@pytest.fixture(scope="module")
def string_cache(tmp_path_factory) -> loader.Dataset:
    return published_in_parts(tmp_path_factory, string_table(), "fsl_strings", 1_500)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("ragged, strings, shuffle", [("offsets", "offsets", True), ("padded", "offsets", False),
                                                      ("offsets", "object", True)])
def test_fixed_size_lists_of_strings_read_back(string_cache, pool, ragged, strings, shuffle):
    """``fixed_size_list<string>`` used to read nulls as the string "0" and ignore ``strings="offsets"``."""
    table = string_table()
    batches, ids = read_all(string_cache, pool=pool, ragged=ragged, strings=strings, shuffle=shuffle)
    for name in ("pair", "blobs", "cats", "hashes"):
        got = [row for b in batches for row in string_rows(b, name, ragged, strings)]
        assert got == expected_strings(table, name, ids, strings), name


def test_fixed_size_lists_without_a_numpy_form_are_refused_up_front(tmp_path):
    """Fixed-size lists of lists, structs or fixed-size lists of strings used to pass the schema check and
    crash (or give per-row objects) later; ``make_reader`` refuses them, naming the column."""
    bad = {
        "of_lists": pa.list_(pa.list_(pa.int32()), 2),
        "of_structs": pa.list_(pa.struct([("x", pa.int32())]), 2),
        "of_string_pairs": pa.list_(pa.list_(pa.string(), 2), 2),
    }
    for name, typ in bad.items():
        with pytest.raises(ConfigError, match=f"'{name}'"):
            check_schema(pa.schema([(name, typ)]), [name])
    table = pa.table({"id": [0, 1], "of_structs": pa.array([[{"x": 1}, {"x": 2}], None], bad["of_structs"])})
    ds = loader.write_cache(table, tmp_path, "bad")
    with pytest.raises(ConfigError, match="'of_structs'"):
        loader.make_reader(ds)
    loader.make_reader(ds, columns=["id"]).close()


def list_table(n: int = FSL_ROWS) -> pa.Table:
    """Lists of fixed-size binaries (null and empty lists, null items) and of dictionary-encoded strings."""
    def rows(value):
        return [None if i % 7 == 3 else [None if j == 1 and i % 2 else value(i, j) for j in range(i % 4)]
                for i in range(n)]
    return pa.table({
        "id": pa.array(np.arange(n)),
        "hashes": pa.array(rows(lambda i, j: bytes([i, j, 9])), pa.list_(pa.binary(3))),
        "big_hashes": pa.array(rows(lambda i, j: bytes([j, i])), pa.large_list(pa.binary(2))),
        "toks": pa.array(rows(lambda i, j: f"w{(i + j) % 3}"), pa.list_(pa.dictionary(pa.int32(), pa.string()))),
    })


def object_lists(col: np.ndarray) -> list:
    assert col.dtype == object and col.ndim == 1
    return [None if r is None else r.tolist() for r in col]


@pytest.mark.parametrize("start", [0, 2])
def test_lists_of_any_string_items_have_the_object_form(start):
    """``list<fixed_size_binary>`` (and view items) used to raise ArrowNotImplementedError with
    ``strings="object"`` (the torch adapter's default ``strings="list"`` and tf's ``"string"`` too)."""
    table = list_table().slice(start)
    views = pa.array([["ab", None], None, [], ["c"]], pa.list_(pa.string())).slice(start // 2)
    table_views = pa.table({
        "sv": views.cast(pa.list_(pa.string_view())),
        "bv": views.cast(pa.list_(pa.binary())).cast(pa.list_(pa.binary_view())),
        "dict_fsb": pa.array([[b"ab", None], None, [], [b"cd"]],
                             pa.list_(pa.dictionary(pa.int8(), pa.binary(2)))).slice(start // 2),
    })
    for t in (table, table_views):
        out = to_numpy(t, strings="object")
        for name in t.column_names[1 if t is table else 0 :]:
            assert object_lists(out[name]) == t[name].to_pylist(), name


@pytest.fixture(scope="module")
def list_cache(tmp_path_factory) -> loader.Dataset:
    return published_in_parts(tmp_path_factory, list_table(), "fsb_lists", 1_000)


@pytest.mark.parametrize("pool", POOLS)
def test_lists_of_fixed_size_binaries_read_back_as_objects(list_cache, pool):
    table = list_table()
    batches, ids = read_all(list_cache, pool=pool, strings="object")
    for name in ("hashes", "big_hashes", "toks"):
        got = [row for b in batches for row in object_lists(b[name])]
        assert got == table[name].take(pa.array(ids)).to_pylist(), name
