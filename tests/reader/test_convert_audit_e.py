"""Decimals become the nearest float64 whatever their declared precision: every value whose unscaled integer fits
in 2**53 (all values of up to 15 digits) with a scale from -22 to 22, compared with Python's correctly rounded
``float(Decimal(str))``; other values (more digits, or a scale beyond 22) go through Arrow's cast, within 2 ulps."""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.convert import to_numpy


def _values(rng: np.random.Generator, n: int, digits: int, scale: int) -> list[decimal.Decimal | None]:
    """``n`` random decimals of 1 to ``digits`` digits at ``scale`` (negatives, zeros and nulls among them), made
    from their strings."""
    out: list[decimal.Decimal | None] = []
    for _ in range(n):
        width = int(rng.integers(1, digits + 1))
        unscaled = int(rng.integers(0, 10**width)) * (-1 if rng.random() < 0.5 else 1)
        out.append(decimal.Decimal(f"{unscaled}E{-scale}"))
    out[::97] = [None] * len(out[::97])
    out[5::89] = [decimal.Decimal(f"0E{-scale}")] * len(out[5::89])
    return out


def _nearest(values: list[decimal.Decimal | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(decimal.Decimal(str(v))) for v in values])


@pytest.mark.parametrize("typ", [pa.decimal128(16, 2), pa.decimal128(18, 2), pa.decimal128(38, 10),
                                 pa.decimal128(38, 0), pa.decimal128(38, 22), pa.decimal128(20, -3),
                                 pa.decimal64(18, 6), pa.decimal256(76, 15), pa.decimal128(15, 2)],
                         ids=str)
def test_values_of_up_to_15_digits_are_the_nearest_float64_at_any_precision(typ):
    rng = np.random.default_rng(typ.precision * 100 + typ.scale)
    values = _values(rng, 20000, 15, typ.scale)
    arr = pa.array(values, typ)
    got = to_numpy(pa.table({"d": arr.slice(3)}), masks=True)
    np.testing.assert_array_equal(got["d"], _nearest(values[3:]), err_msg=str(typ))
    assert got["d.valid"].tolist() == [v is not None for v in values[3:]]


def test_the_example_values_of_the_report():
    table = pa.table({"a": pa.array([decimal.Decimal("861507509.93")], pa.decimal128(18, 2)),
                      "b": pa.array([decimal.Decimal("9286.96")], pa.decimal128(38, 10))})
    out = to_numpy(table)
    assert out["a"].tolist() == [861507509.93] and out["b"].tolist() == [9286.96]


@pytest.mark.parametrize("typ", [pa.decimal128(38, 10), pa.decimal128(38, 30), pa.decimal256(60, 5)], ids=str)
def test_longer_values_are_within_2_ulps_and_do_not_disturb_the_short_ones(typ):
    rng = np.random.default_rng(typ.scale)
    short = _values(rng, 5000, 15, typ.scale)
    long = [decimal.Decimal(f"{int(rng.integers(10**17, 10**18)) * 10**10 + i}E{-typ.scale}") for i in range(500)]
    values = short + long
    got = to_numpy(pa.table({"d": pa.array(values, typ)}))["d"]
    expected = _nearest(values)
    if typ.scale <= 22:  # the short values: exact, though the long ones beside them went through Arrow's cast
        np.testing.assert_array_equal(got[: len(short)], expected[: len(short)])
    valid = ~np.isnan(expected)
    assert (np.isnan(got) == ~valid).all()
    assert np.abs(got[valid].view(np.int64) - expected[valid].view(np.int64)).max() <= 2  # same signs: ulps apart


def test_a_read_decimal_column_is_the_nearest_float64(tmp_path):
    values = _values(np.random.default_rng(7), 3000, 15, 10)
    ds = loader.write_cache(pa.table({"d": pa.array(values, pa.decimal128(38, 10))}), tmp_path, "dec")
    with loader.make_reader(ds, batch_size=len(values), shuffle=False) as r:
        b = next(iter(r))
    np.testing.assert_array_equal(b["d"], _nearest(values))


def test_empty_and_all_null_decimal_columns():
    for typ in (pa.decimal128(38, 10), pa.decimal256(40, 30), pa.decimal32(5, 2)):
        assert to_numpy(pa.table({"d": pa.nulls(0, typ)}))["d"].dtype == np.float64
        assert np.isnan(to_numpy(pa.table({"d": pa.nulls(3, typ)}))["d"]).all()
