"""Corruption audit V: damage that Parquet's own checks let through is refused, never read as wrong rows."""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader.errors import CorruptFileError
from tests.conftest import make_table
from tests.reader.conftest import POOLS

SOURCE = make_table(1000)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> loader.Dataset:
    """1,000 rows in 10 files of 2 row groups (~50 rows each), with chunk checksums."""
    return loader.write_cache(SOURCE, tmp_path_factory.mktemp("audit_v") / "cache", "ds",
                              row_group_bytes=2_500, row_groups_per_file=2)


@pytest.fixture
def copy(tmp_path, pristine) -> loader.Dataset:
    """A private copy of the pristine version (to damage)."""
    shutil.copytree(pristine.version_path, tmp_path / "v")
    return loader.open_dataset(str(tmp_path / "v"))


def flip_page_type(ds: loader.Dataset, file: int, row_group: int, column: str) -> None:
    """Make the first data page of a column chunk of unknown type (DATA_PAGE 0 -> -1: pyarrow skips it).

    The page header is Thrift compact: byte 0 is field 1's header (i32), byte 1 the zigzag varint of the type.
    Neither the page CRC nor the footer covers it; only the manifest's chunk checksums do.
    """
    path = ds.file_path(ds.files[file])
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    at = chunk.data_page_offset + 1
    with open(path, "r+b") as f:
        f.seek(at)
        assert f.read(1) == b"\x00"  # DATA_PAGE
        f.seek(at)
        f.write(b"\x01")


def drop_chunk_checksums(ds: loader.Dataset) -> None:
    """Rewrite the manifest in the older format, without column-chunk checksums (reads rely on page CRCs)."""
    path = os.path.join(ds.version_path, "_manifest.json")
    with open(path) as f:
        doc = json.load(f)
    for f in doc["files"]:
        for g in f["row_groups"]:
            del g[3:]
    with open(path, "w") as f:
        json.dump(doc, f)


def read_all(ds, pool: str, **kwargs) -> list[dict]:
    with loader.make_reader(ds.version_path, pool=pool, workers=2, batch_size=16, seed=3, with_row_ids=True,
                            **kwargs) as r:
        return list(r)


def assert_rows_right(batches: list[dict], ds: loader.Dataset) -> None:
    starts = np.cumsum([0, *ds.row_group_sizes()])
    for b in batches:
        assert np.array_equal(b["id"], starts[b["_row_group"]] + b["_row"])


@pytest.mark.parametrize("pool", POOLS)
def test_a_page_of_unknown_type_in_a_streamed_row_group_is_refused(copy, pool):
    flip_page_type(copy, 0, 1, "x")
    reader = loader.make_reader(copy.version_path, pool=pool, columns=["id", "x"], memory_budget=20_000, batch_size=16)
    assert reader.max_piece_rows is not None  # streamed slices
    reader.close()
    with pytest.raises(CorruptFileError, match=r"part-00000\.parquet: row group 1 .*rows.* manifest says \d+") as e:
        read_all(copy, pool, columns=["id", "x"], memory_budget=20_000)
    assert e.value.path.endswith("part-00000.parquet")


@pytest.mark.parametrize("memory_budget", [None, 20_000])
@pytest.mark.parametrize("pool", POOLS)
def test_a_skipped_page_of_a_single_column_without_chunk_checksums_is_refused(copy, pool, memory_budget):
    drop_chunk_checksums(copy)
    flip_page_type(copy, 0, 1, "x")
    with pytest.raises(CorruptFileError, match=r"part-00000\.parquet: row group 1 .*rows.* manifest says \d+"):
        read_all(copy, pool, columns=["x"], memory_budget=memory_budget)


@pytest.mark.parametrize("memory_budget", [None, 20_000])
def test_undamaged_reads_still_give_every_row_once(pristine, memory_budget):
    batches = read_all(pristine, "thread", columns=["id", "x"], memory_budget=memory_budget)
    assert_rows_right(batches, pristine)
    ids = np.sort(np.concatenate([b["id"] for b in batches]))
    assert np.array_equal(ids, np.arange(1000))


@pytest.mark.parametrize("pool", POOLS)
def test_swapped_decoded_cache_files_are_rejected_and_decoded_again(pristine, tmp_path, pool):
    kw = dict(columns=["id", "x"], decoded_cache_dir=str(tmp_path / "decoded"))
    read_all(pristine, pool, **kw)  # fills the decoded cache
    files = sorted(glob.glob(str(tmp_path / "decoded" / "**" / "*.arrow"), recursive=True))
    assert len(files) == pristine.num_row_groups
    a, b = files[0], files[-1]  # part-00000.parquet.rg0 <-> part-00009.parquet.rg1: each passes its own CRC
    os.rename(a, a + ".tmp")
    os.rename(b, a)
    os.rename(a + ".tmp", b)
    with loader.make_reader(pristine.version_path, pool=pool, workers=2, batch_size=16, seed=3, with_row_ids=True,
                            **kw) as reader:
        batches = list(reader)
        cache = reader._ctx.decoded
    if pool != "process":  # the others are still used; the two swapped ones are rejected and decoded again
        assert (cache.hits, cache.rejected, cache.misses) == (pristine.num_row_groups - 2, 2, 2)
    assert_rows_right(batches, pristine)
    assert np.array_equal(np.sort(np.concatenate([b["id"] for b in batches])), np.arange(1000))
    x = np.concatenate([b["x"] for b in batches])
    assert np.array_equal(x, SOURCE["x"].to_numpy()[np.concatenate([b["id"] for b in batches])])


def add_ghost_column(ds: loader.Dataset) -> None:
    """Make the manifest list a column 'ghost' that no data file holds."""
    path = os.path.join(ds.version_path, "_manifest.json")
    with open(path) as f:
        doc = json.load(f)
    schema = ds.schema.append(pa.field("ghost", pa.int64()))
    doc["schema"]["arrow_ipc_base64"] = base64.b64encode(schema.serialize().to_pybytes()).decode()
    doc["schema"]["fields"].append({"name": "ghost", "type": "int64", "nullable": True})
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("columns", [["ghost"], ["id", "ghost"], None])
@pytest.mark.parametrize("memory_budget", [None, 20_000])
@pytest.mark.parametrize("pool", POOLS)
def test_a_manifest_column_no_file_holds_is_refused(copy, pool, memory_budget, columns):
    add_ghost_column(copy)
    with pytest.raises(CorruptFileError, match=r"part-\d+\.parquet: column 'ghost' .*not in the file"):
        read_all(copy, pool, columns=columns, memory_budget=memory_budget)


def zero_rows_for_file(ds: loader.Dataset, file: int) -> None:
    """Make the manifest say a data file (which holds rows) holds none."""
    path = os.path.join(ds.version_path, "_manifest.json")
    with open(path) as f:
        doc = json.load(f)
    for g in doc["files"][file]["row_groups"]:
        g[0] = 0
    doc["files"][file]["num_rows"] = 0
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("pool", POOLS)
def test_a_file_the_manifest_says_is_empty_but_holds_rows_is_refused(copy, pool):
    zero_rows_for_file(copy, 3)
    with pytest.raises(CorruptFileError, match=r"part-00003\.parquet: row groups \[\d+, \d+\] disagree with the "
                                               r"manifest's \[0, 0\]"):
        read_all(copy, pool, columns=["id"])


def test_a_file_of_no_rows_in_file_and_manifest_reads(tmp_path):
    """A truly empty file (no row group) agrees with its manifest: checked, and the others read in full."""
    from loader import fs as lfs
    from loader.publish import begin_staging

    fs, root = lfs.resolve(str(tmp_path))
    with begin_staging(fs, root, "z") as staging:
        fs.create_dir(staging.path, recursive=True)
        for i, part in enumerate([SOURCE.slice(0, 60), SOURCE.slice(0, 0), SOURCE.slice(60, 40)]):
            with pq.ParquetWriter(lfs.join(staging.path, f"part-{i:05d}.parquet"), SOURCE.schema,
                                  write_page_checksum=True) as w:
                if part.num_rows:
                    w.write_table(part)
        version = staging.commit(source={"kind": "test"}, created_by={"job": "tests"})
    ds = loader.open_dataset(str(tmp_path / "z" / version))
    assert ds.files[1].num_rows == 0 and ds.files[1].row_groups == ()
    batches = read_all(ds, "thread", columns=["id"])
    assert np.array_equal(np.sort(np.concatenate([b["id"] for b in batches])), np.arange(100))


READ_IN_CHILD = """
import sys, loader
try:
    for _ in loader.make_reader(sys.argv[1], pool=sys.argv[2], workers=2, batch_size=50):
        pass
    print("no error")
except loader.LarderError as e:
    print(type(e).__name__, e)
"""


@pytest.mark.parametrize("pool", POOLS)
def test_a_fifo_in_place_of_a_data_file_is_refused_not_waited_on(copy, pool):
    target = copy.file_path(copy.files[2])
    os.remove(target)
    os.mkfifo(target)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # in a child: before the fix, open() blocks forever, where no signal reaches it
    proc = subprocess.run([sys.executable, "-c", READ_IN_CHILD, copy.version_path, pool], capture_output=True,
                          text=True, cwd=repo, env={**os.environ, "PYTHONPATH": repo}, timeout=60)
    assert proc.stdout.startswith(f"CorruptFileError {target}: data file listed in the manifest is a FIFO, not a "
                                  "regular file"), proc.stdout + proc.stderr
