"""Arrow -> numpy forms: compared with pyarrow's own Python values, row by row, in the tests only."""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.convert import check_options, check_schema, pad, to_numpy
from loader.errors import ConfigError


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
    assert out["fsl"].tolist() == [v or [0.0, 0.0] for v in t["fsl"].to_pylist()]
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
