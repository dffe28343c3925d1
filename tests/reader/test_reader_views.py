"""String / binary view columns (plain and nested) through every read path: equal to pyarrow's own reading."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader import fs as lfs
from loader.publish import begin_staging
from tests.reader.conftest import POOLS, unchanged

ROWS = 240


def view_table(n: int = ROWS, start: int = 0) -> pa.Table:
    """Rows ``start..start+n`` of every view case: string_view, binary_view (nulls too), list<string_view>,
    fixed_size_list<binary_view, 2>, struct<string_view> with null structs, list_view<string_view>; strings long
    enough to live in the views' data buffers (over 12 bytes) and short ones (inlined)."""
    def text(i: int) -> str | None:
        return None if i % 7 == 3 else f"s{i}" + "가" * (i % 9)

    ids = range(start, start + n)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "sv": pa.array([text(i) for i in ids], pa.string_view()),
        "bv": pa.array([None if i % 5 == 1 else bytes([i % 256]) * (i % 17) for i in ids], pa.binary_view()),
        "list_sv": pa.array([None if i % 6 == 2 else [text(i), None, text(i + 1)][: i % 4] for i in ids],
                            pa.list_(pa.string_view())),
        "fsl_bv": pa.array([None if i % 4 == 0 else [b"x" * (i % 15), None if i % 3 else b"y"] for i in ids],
                           pa.list_(pa.binary_view(), 2)),
        "struct_sv": pa.StructArray.from_arrays([pa.array([text(i) for i in ids], pa.string_view())], ["v"],
                                                mask=pa.array([i % 3 == 0 for i in ids], pa.bool_())),
        "lv_sv": pa.array([None if i % 5 == 0 else [text(i)] * (i % 3) for i in ids], pa.list_view(pa.string_view())),
    })


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory) -> loader.Dataset:
    """The view table in 6 row groups of 40 rows, two per file (the shuffled reads gather across them); each
    row group written from its own table (pyarrow cannot write a slice of a struct of views)."""
    root = tmp_path_factory.mktemp("views")
    fs, root_path = lfs.resolve(str(root))
    with begin_staging(fs, root_path, "views") as staging:
        fs.create_dir(staging.path, recursive=True)
        for f in range(3):
            path = lfs.join(staging.path, f"part-{f:05d}.parquet")
            with pq.ParquetWriter(path, view_table(0).schema, filesystem=fs, write_page_checksum=True) as w:
                for g in range(2):
                    w.write_table(view_table(40, 80 * f + 40 * g))
        version = staging.commit(source={"kind": "test"}, created_by={"job": "tests"})
    return loader.open_dataset(root / "views" / version)


def expected_rows(ds: loader.Dataset) -> dict[str, list]:
    """Each column's rows as pyarrow reads the cache's files, in id order."""
    table = pa.concat_tables(pq.read_table(ds.file_path(f)) for f in ds.files)
    assert table.schema.field("sv").type == pa.string_view()  # the files hold views
    assert table["id"].to_pylist() == list(range(ROWS))  # written in order (no take: views have no kernel)
    return {name: table[name].to_pylist() for name in table.column_names}


def _raw(v) -> bytes:
    return b"" if v is None else v.encode() if isinstance(v, str) else v


def offsets_rows(batch: dict, name: str, two_levels: bool) -> list:
    """Per-row bytes (or lists of bytes) from the offsets form."""
    values, offsets = batch[name], batch[name + ".offsets"]
    if not two_levels:
        return [values[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    items = batch[name + ".value_offsets"]
    strings = [values[items[j]:items[j + 1]].tobytes() for j in range(len(items) - 1)]
    return [strings[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def check_batches(batches: list[dict], want: dict[str, list], strings: str) -> None:
    """The batches hold each expected row once (by id), in the form ``strings`` asks for."""
    ids = np.concatenate([b["id"] for b in batches])
    order = np.argsort(ids, kind="stable")
    got_ids = ids[order].tolist()
    assert len(set(got_ids)) == len(got_ids)
    cols: dict[str, list] = {}
    for b in batches:
        for name, two in (("sv", False), ("bv", False), ("list_sv", True), ("fsl_bv", True), ("struct_sv.v", False),
                          ("lv_sv", True)):
            if strings == "object":
                rows = [list(v) if isinstance(v, np.ndarray) else v for v in b[name].tolist()]
            else:
                rows = offsets_rows(b, name, two)
            cols.setdefault(name, []).extend(rows)
    for name, rows in cols.items():
        cols[name] = [rows[i] for i in order]
    expect = {
        "sv": [want["sv"][i] for i in got_ids],
        "bv": [want["bv"][i] for i in got_ids],
        "list_sv": [want["list_sv"][i] for i in got_ids],
        # a null fixed-size list: k null items (empty strings; None in the object form)
        "fsl_bv": [want["fsl_bv"][i] or [None, None] for i in got_ids],
        "struct_sv.v": [None if want["struct_sv"][i] is None else want["struct_sv"][i]["v"] for i in got_ids],
        "lv_sv": [want["lv_sv"][i] for i in got_ids],
    }
    if strings == "object":
        expect["list_sv"] = [None if v is None else v for v in expect["list_sv"]]
        expect["fsl_bv"] = [[None, None] if v is None else v for v in expect["fsl_bv"]]
        for name in ("list_sv", "lv_sv"):
            cols[name] = [None if v is None else list(v) for v in cols[name]]
        cols["fsl_bv"] = [list(v) for v in cols["fsl_bv"]]
    else:
        expect = {k: [[_raw(x) for x in v] if isinstance(v, list) else [] if k in ("list_sv", "lv_sv") and v is None
                      else _raw(v) for v in rows] for k, rows in expect.items()}
    for name in expect:
        assert cols[name] == expect[name], name


MODES = {
    "unshuffled": dict(shuffle=False),
    "shuffled": dict(shuffle=True),
    "sample": dict(shuffle=True, sample=0.5),
    "streamed": dict(shuffle=True, memory_budget=6_000),
    "decoded": dict(shuffle=True, decoded_cache_dir=None),  # a directory per test
}


@pytest.mark.filterwarnings("ignore:batch_size=.*memory_budget:UserWarning")  # the streamed mode's tiny budget
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("pool", POOLS)
def test_view_columns_read_on_every_path(views_cache, pool, mode, tmp_path):
    want = expected_rows(views_cache)
    kwargs = dict(MODES[mode])
    if mode == "decoded":
        kwargs["decoded_cache_dir"] = tmp_path / "decoded"
    transform = unchanged if pool == "process" else None  # the process pool starts only with a transform
    for epoch in range(2 if mode == "decoded" else 1):  # the second pass maps the decoded files
        with loader.make_reader(views_cache, batch_size=32, pool=pool, workers=2, transform=transform,
                                num_epochs=epoch + 1, **kwargs) as r:
            assert r._ctx.stream == (mode == "streamed")
            r.set_epoch(epoch)
            batches = list(r)
        check_batches(batches, want, "offsets")
        if mode == "sample":
            assert 0 < sum(len(b["id"]) for b in batches) < ROWS
        else:
            assert sum(len(b["id"]) for b in batches) == ROWS
    if mode == "decoded":
        assert list((tmp_path / "decoded").rglob("*.arrow"))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("pool", POOLS)
def test_view_columns_in_the_object_and_padded_forms(views_cache, pool, shuffle):
    want = expected_rows(views_cache)
    transform = unchanged if pool == "process" else None
    with loader.make_reader(views_cache, batch_size=50, pool=pool, shuffle=shuffle, strings="object",
                            transform=transform) as r:
        check_batches(list(r), want, "object")
    with loader.make_reader(views_cache, batch_size=50, pool=pool, shuffle=shuffle, ragged="padded",
                            columns=["id", "sv"], transform=transform) as r:
        for b in r:
            rows = [bytes(b["sv"][i, : b["sv.lengths"][i]]) for i in range(len(b["id"]))]
            assert rows == [_raw(want["sv"][i]) for i in b["id"]]


@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_large_view_columns_gathered_from_the_pieces(tmp_path, pool):
    """Over 1 MiB of string views in a window: the shuffled window keeps them as views of the pieces' buffers."""
    n = 4_000
    rng = np.random.default_rng(3)
    texts = [f"{i:06d}" + rng.bytes(150 + i % 100).hex() for i in range(n)]
    ds = loader.write_cache(pa.table({"id": pa.array(range(n), pa.int64()), "sv": pa.array(texts, pa.string_view())}),
                            tmp_path, "big", row_group_bytes=150_000)
    assert ds.num_row_groups >= 4
    with loader.make_reader(ds, batch_size=500, pool=pool, shuffle=True) as r:
        batches = list(r)
    assert sorted(np.concatenate([b["id"] for b in batches]).tolist()) == list(range(n))
    for b in batches:
        assert offsets_rows(b, "sv", False) == [texts[i].encode() for i in b["id"]]


def test_to_numpy_takes_views_of_null_structs():
    """The converter alone (no reader): a struct of a string view with null structs."""
    t = view_table(12).select(["id", "struct_sv"])
    out = loader.convert.to_numpy(t)
    want = [b"" if s is None or s["v"] is None else s["v"].encode() for s in t["struct_sv"].to_pylist()]
    assert offsets_rows(out, "struct_sv.v", False) == want
