"""``python -m loader head`` prints every value as stored: temporals beyond Python's datetime, nanoseconds, strings
that look like nulls or numbers or hold newlines, bytes that are not UTF-8."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

import loader
from tests.cli.test_cli import one_error_line, run


def _head(ds, *args: str) -> list[str]:
    proc = run("head", ds.version_path, "-n", "9", *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.splitlines()


def _ints(values: list, t: pa.DataType) -> pa.Array:
    return pa.array(values, pa.int32() if t.bit_width == 32 else pa.int64()).cast(t)


TEMPORALS = [  # type, stored integers, their text
    (pa.duration("s"), [2**62, 5, None], ["4611686018427387904 seconds", "5 seconds", None]),
    (pa.duration("ms"), [-(2**62), -(2**63)], ["-4611686018427387904 milliseconds", "-9223372036854775808 ms"]),
    (pa.duration("ns"), [1], ["1 nanoseconds"]),
    (pa.timestamp("us"), [2**62, 5], ["148108-07-06T14:00:27.387904", "1970-01-01T00:00:00.000005"]),
    (pa.timestamp("ms", tz="UTC"), [2**62, -1], ["146140482-04-24T15:36:27.904Z", "1969-12-31T23:59:59.999Z"]),
    (pa.timestamp("ns", tz="Asia/Seoul"), [1_700_000_000_123_456_789], ["2023-11-14T22:13:20.123456789Z"]),
    (pa.timestamp("us"), [-(2**63)], ["-9223372036854775808 us"]),  # numpy's NaT: the integer with its unit
    (pa.date32(), [2**30, -(2**31), 5], ["2941775-04-07", "-5877641-06-23", "1970-01-06"]),
    (pa.time64("ns"), [1_994_262_222, 86_399_999_999_999], ["00:00:01.994262222", "23:59:59.999999999"]),
    (pa.time64("us"), [5], ["00:00:00.000005"]),
    (pa.time32("ms"), [3_723_004], ["01:02:03.004"]),
    (pa.time32("ms"), [-1], ["-1 ms"]),  # outside a day: the integer with its unit
]


@pytest.mark.parametrize("t,stored,shown", TEMPORALS, ids=[str(t[0]) for t in TEMPORALS])
def test_temporals_are_printed_in_full(tmp_path, t, stored, shown):
    ds = loader.write_cache(pa.table({"v": _ints(stored, t)}), tmp_path, "t")
    assert ds.schema.field("v").type == t
    lines = _head(ds)
    assert lines == [ln for i, s in enumerate(shown) for ln in (f"[{i}]", f"  v: {'null' if s is None else s}")]
    rows = [json.loads(line) for line in _head(ds, "--json")]
    assert rows == [{"v": s} for s in shown]


def test_strings_are_quoted_so_nothing_passes_for_a_null_a_number_or_a_line(tmp_path):
    values = ["null", None, "NaN", "a\n  id: 999", '"quoted" \\ x', "12", "상품 " + "가" * 70]
    ds = loader.write_cache(pa.table({"id": pa.array(range(len(values))), "s": pa.array(values),
                                      "f": pa.array([float("nan"), None, 1.5, None, None, 12.0, None])}), tmp_path, "s")
    lines = _head(ds)
    assert len(lines) == 4 * len(values)  # no value spans two lines
    shown = [ln[len("  s: "):] for ln in lines if ln.startswith("  s: ")]
    assert shown[:6] == ['"null"', "null", '"NaN"', '"a\\n  id: 999"', '"\\"quoted\\" \\\\ x"', '"12"']
    assert shown[6] == json.dumps(values[6][:60], ensure_ascii=False) + "... (73 chars)"
    assert [ln[len("  f: "):] for ln in lines if ln.startswith("  f: ")][:3] == ["NaN", "null", "1.5"]
    rows = [json.loads(line) for line in _head(ds, "--json")]
    assert [r["s"] for r in rows[:6]] == values[:6]
    assert rows[6]["s"] == values[6][:60] + "... (73 chars)"
    assert [r["f"] for r in rows[:3]] == ["NaN", None, 1.5]


def test_bytes_that_are_not_utf8_are_escaped(tmp_path):
    s = pa.array([b"ok", b"\xff\xfe bad", b"caf\xc3", b"back\\xff"], pa.binary()).view(pa.string())
    nested = pa.ListArray.from_arrays(pa.array([0, 1, 2, 3, 4], pa.int32()), s)
    ds = loader.write_cache(pa.table({"s": s, "ls": nested, "st": pa.StructArray.from_arrays([s], ["v"]),
                                      "sv": s.view(pa.binary()).cast(pa.binary_view()).view(pa.string_view())}),
                              tmp_path, "u")
    lines = _head(ds)
    want = ['"ok"', '"\\xff\\xfe bad"', '"caf\\xc3"', '"back\\\\xff"']  # a real backslash doubled: told apart
    assert [ln[len("  s: "):] for ln in lines if ln.startswith("  s: ")] == want
    assert [ln[len("  sv: "):] for ln in lines if ln.startswith("  sv: ")] == want
    assert [ln[len("  ls: "):] for ln in lines if ln.startswith("  ls: ")] == [f"[{w}]" for w in want]
    assert [ln[len("  st: "):] for ln in lines if ln.startswith("  st: ")] == [f'{{"v": {w}}}' for w in want]
    rows = [json.loads(line) for line in _head(ds, "--json")]
    assert [r["s"] for r in rows] == ["ok", "\\xff\\xfe bad", "caf\\xc3", "back\\xff"]  # backslashreplace
    assert [r["st"] for r in rows] == [{"v": r["s"]} for r in rows]


def test_nested_values_maps_and_decimals(tmp_path):
    import decimal

    table = pa.table({
        "m": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int32())),
        "fl": pa.array([[pa.scalar(1, pa.int64()).as_py(), 2], None], pa.list_(pa.int64(), 2)),
        "lt": pa.array([[1, None], []], pa.list_(pa.time64("ns"))),
        "d": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
    })
    ds = loader.write_cache(table, tmp_path, "n")
    assert _head(ds) == ["[0]", '  m: [{"key": "k", "value": 1}]', "  fl: [1, 2]",
                         "  lt: [00:00:00.000000001, null]", "  d: 1.50",
                         "[1]", "  m: null", "  fl: null", "  lt: []", "  d: null"]
    assert [json.loads(line) for line in _head(ds, "--json")][0] == {
        "m": [{"key": "k", "value": 1}], "fl": [1, 2], "lt": ["00:00:00.000000001", None], "d": "1.50"}


def test_a_missing_column_is_still_one_error_line(tmp_path):
    ds = loader.write_cache(pa.table({"a": [1]}), tmp_path, "e")
    proc = run("head", ds.version_path, "--columns", "nope")
    assert proc.returncode == 1 and "'nope'" in one_error_line(proc)
