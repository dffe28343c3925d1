"""The memory budget against what row groups decode to (audit Y): dictionary-encoded columns, one row group far
larger than the rest, rows larger than a window's share, and wide tables' stream buffers.

Peaks are Arrow's (``pyarrow.default_memory_pool().max_memory()``) in a fresh interpreter per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader.encoding import Encoding
from loader.sizes import decoded_scale, leaf_count
from loader.streams import STREAM_BUFFER, stream_buffer_for

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, warnings
import loader, pyarrow as pa
url, kw = sys.argv[1], json.loads(sys.argv[2])
ids = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with loader.make_reader(url, **kw) as r:
        for b in r:
            ids.append(b["id"].copy())
import numpy as np
ids = np.concatenate(ids)
print(json.dumps({"peak": pa.default_memory_pool().max_memory(), "rows": len(ids), "distinct": len(np.unique(ids))}))
"""


def _peak(url: str, **kw) -> dict:
    """Read one epoch of ``url`` in a fresh interpreter: Arrow's peak bytes, rows read, distinct ids."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(url), json.dumps(kw)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def categorical(tmp_path_factory):
    """200,000 rows of a categorical string column (50 distinct values of 200 bytes), dictionary-encoded: the
    manifest's bytes are the dictionary indices, ~40 MiB decoded."""
    rng = np.random.default_rng(0)
    values = np.array([f"{i:03d}" + "x" * 197 for i in range(50)], dtype=object)
    n = 200_000
    table = pa.table({"id": np.arange(n), "category": pa.array(values[rng.integers(0, 50, n)], pa.string())})
    return loader.write_cache(table, tmp_path_factory.mktemp("cat"), "cat", row_group_bytes=64 << 10,
                              encoding=Encoding("zstd", dictionary=("category",)))


def test_the_decoded_size_is_measured_not_taken_from_the_dictionary_encoded_bytes(categorical):
    info = categorical.files[0]
    group = info.row_groups[0]
    decoded = pq.ParquetFile(categorical.file_path(info)).read_row_group(0).nbytes
    truth = decoded / group.uncompressed_bytes
    assert truth > 10  # what the manifest's bytes miss
    assert decoded_scale(categorical, ["id", "category"]) == pytest.approx(truth, rel=0.25)
    # a selection of the small column decodes to a fraction of the manifest's bytes
    only_id = pq.ParquetFile(categorical.file_path(info)).read_row_group(0, columns=["id"]).nbytes
    assert decoded_scale(categorical, ["id"]) == pytest.approx(only_id / group.uncompressed_bytes, rel=0.25)


def test_dictionary_columns_stay_within_the_budget(categorical):
    budget = 8 * MiB
    got = _peak(categorical.version_path, batch_size=256, memory_budget=budget, seed=1)
    assert got["rows"] == got["distinct"] == categorical.num_rows
    assert got["peak"] <= 2 * budget, got  # before: windows of whole row groups sized from the indices, ~5x


def test_a_row_group_larger_than_a_window_is_streamed_though_the_mean_fits(tmp_path):
    """80 row groups of ~256 KiB of incompressible rows, then one of 40 MiB that compresses to almost nothing
    (the compressed-size target puts it in one row group): the mean fits a window, the big one does not."""
    rng = np.random.default_rng(0)
    width = 1000

    def batch(start: int, k: int, raw: np.ndarray) -> pa.RecordBatch:
        offsets = pa.py_buffer(np.arange(0, k * width + 1, width, dtype=np.int32))
        blob = pa.BinaryArray.from_buffers(pa.binary(), k, [None, offsets, pa.py_buffer(raw)])
        return pa.record_batch({"id": pa.array(np.arange(start, start + k)), "blob": blob})

    def batches():
        for i in range(0, 20_000, 2000):
            yield batch(i, 2000, rng.integers(0, 256, 2000 * width, dtype=np.uint8))
        for i in range(20_000, 60_000, 10_000):
            yield batch(i, 10_000, np.zeros(10_000 * width, dtype=np.uint8))

    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    ds = loader.write_cache(pa.RecordBatchReader.from_batches(schema, batches()), tmp_path, "skew",
                            row_group_bytes=256 << 10, encoding=Encoding("zstd", dictionary=()))
    sizes = sorted(g.uncompressed_bytes for f in ds.files for g in f.row_groups)
    budget = 12 * MiB
    assert sizes[-1] > 2 * budget and sum(sizes) / len(sizes) < budget / 6  # the shape this test is about
    reader = loader.make_reader(ds, batch_size=256, memory_budget=budget)
    assert reader.max_piece_rows is not None  # streamed in slices
    reader.close()
    got = _peak(ds.version_path, batch_size=256, memory_budget=budget)
    assert got["rows"] == got["distinct"] == ds.num_rows
    assert got["peak"] <= 2 * budget, got  # before: the 40 MiB row group read whole


def test_rows_larger_than_a_tenth_of_a_window_make_fewer_slices_and_say_so(tmp_path):
    """40 rows of 1 MiB on a 15 MiB budget (a window's share: 2.5 MiB, two rows)."""
    blobs = pa.array([bytes([i]) * MiB for i in range(40)], pa.binary())
    ds = loader.write_cache(pa.table({"id": np.arange(40), "blob": blobs}), tmp_path, "big",
                            row_group_bytes=4 * MiB, encoding=Encoding("none", dictionary=()))
    with pytest.warns(UserWarning, match=r"rows of about 1\.0 MiB .* holds only 2: batches mix at most 2 row groups"):
        reader = loader.make_reader(ds, batch_size=1, memory_budget=15 * MiB)
    with reader:
        assert reader.window == 2 and reader.max_piece_rows == 1
        ids = np.concatenate([b["id"] for b in reader])
    assert sorted(ids.tolist()) == list(range(40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unshuffled: nothing to mix, nothing to say
        loader.make_reader(ds, batch_size=1, memory_budget=15 * MiB, shuffle=False).close()


def test_wide_tables_get_smaller_stream_buffers_and_a_warning(tmp_path):
    columns = {f"c{i:03d}": np.arange(i, i + 20_000, dtype=np.int64) for i in range(120)}
    ds = loader.write_cache(pa.table({"id": np.arange(20_000), **columns}), tmp_path, "wide",
                            row_group_bytes=2 * MiB, encoding=Encoding("none", dictionary=()))
    assert ds.num_row_groups >= 8
    with pytest.warns(UserWarning, match=r"each stream holds a read buffer and a page for each of its 121 Parquet "
                                         r"columns, about .* raise memory_budget"):
        reader = loader.make_reader(ds, batch_size=100, memory_budget=8 * MiB)
    with reader:
        assert reader.max_piece_rows is not None
        assert reader._ctx.stream_buffer == 16 << 10  # not 256 KiB per column per stream
        assert sum(len(b["id"]) for b in reader) == ds.num_rows
    # a narrow table keeps the full buffer; a wide one is cut to a quarter of the window's share, not below 16 KiB
    assert stream_buffer_for(40 * MiB, 10, 3) == STREAM_BUFFER
    assert stream_buffer_for(400 * MiB, 10, 240) == 400 * MiB // (4 * 10 * 240)
    assert stream_buffer_for(MiB, 10, 240) == 16 << 10


def test_leaf_count_follows_parquet_columns():
    schema = pa.schema([("a", pa.int64()), ("l", pa.list_(pa.string())), ("s", pa.struct([("x", pa.int8()),
                        ("y", pa.list_(pa.float32()))])), ("m", pa.map_(pa.string(), pa.int32()))])
    assert leaf_count(schema) == 6


def test_first_rows_unlike_the_rest_do_not_shrink_the_estimate(tmp_path):
    """A binary column null in its first 1,500 rows (audit R): the sample alone would take 4 MiB row groups
    for a few KiB; the selected columns' share of the footer's bytes bounds the ratio from below."""
    n = 6000
    blob = [None if i < 1500 else bytes([i % 251]) * 4000 for i in range(n)]
    ds = loader.write_cache(pa.table({"id": np.arange(n), "blob": pa.array(blob, pa.binary())}), tmp_path, "nulls",
                            row_group_bytes=4 * MiB, encoding=Encoding("none", dictionary=()))
    assert ds.files[0].row_groups[0].num_rows > 1500
    assert decoded_scale(ds, ["id", "blob"]) > 0.5
    with loader.make_reader(ds, batch_size=100, memory_budget=12 * MiB) as reader:
        assert reader.max_piece_rows is not None  # 4 MiB row groups do not fit whole in a 2 MiB share
        assert sorted(np.concatenate([b["id"] for b in reader]).tolist()) == list(range(n))


def test_a_decoded_cache_keeps_whole_row_groups_and_says_when_it_cannot(tmp_path):
    """With decoded_cache_dir, one large row group among small ones is still read whole (the cache holds whole
    row groups only, audit R); row groups all larger than a window's share are streamed, and the reader says
    the cache goes unused."""
    width = 1000
    rng = np.random.default_rng(0)

    def batch(start: int, k: int, raw: np.ndarray) -> pa.RecordBatch:
        offsets = pa.py_buffer(np.arange(0, k * width + 1, width, dtype=np.int32))
        blob = pa.BinaryArray.from_buffers(pa.binary(), k, [None, offsets, pa.py_buffer(raw)])
        return pa.record_batch({"id": pa.array(np.arange(start, start + k)), "blob": blob})

    def batches():  # 40 row groups of ~200 KB incompressible rows, then one of ~10 MB that compresses away
        for i in range(0, 8000, 1000):
            yield batch(i, 1000, rng.integers(0, 256, 1000 * width, dtype=np.uint8))
        yield batch(8000, 10_000, np.zeros(10_000 * width, dtype=np.uint8))

    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    ds = loader.write_cache(pa.RecordBatchReader.from_batches(schema, batches()), tmp_path, "skewdec",
                            row_group_bytes=200_000, encoding=Encoding("zstd", dictionary=()))
    largest = max(g.uncompressed_bytes for f in ds.files for g in f.row_groups)
    budget = 24 * MiB
    assert largest > budget // 6  # larger than a window's share
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with loader.make_reader(ds, batch_size=100, memory_budget=budget, decoded_cache_dir=tmp_path / "dec") as r:
            assert r.max_piece_rows is None
            assert sorted(np.concatenate([b["id"] for b in r]).tolist()) == list(range(ds.num_rows))
    assert len(list((tmp_path / "dec").rglob("*.arrow"))) == ds.num_row_groups  # every row group cached
    with pytest.warns(UserWarning, match=r"decoded_cache_dir, which keeps whole row groups, is not used"):
        loader.make_reader(ds, batch_size=10, memory_budget=600_000, decoded_cache_dir=tmp_path / "dec2").close()
