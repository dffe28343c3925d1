"""Audit A, local side: reading a row group does not re-read its file's footer (an epoch's cost no longer grows
with the row groups per file), while every copy of a file is still checked against the manifest before it is
read: a replaced or rewritten file is caught by the same dataset object that checked it before."""

from __future__ import annotations

import os
import pickle
import shutil
import threading

import numpy as np
import pytest

import loader
from loader.footers import PARSED_PER_FOOTER_BYTE, VerifiedFooters
from tests.reader.conftest import publish_groups

GROUPS = 200


def bytes_read() -> int:
    """Bytes this process has read with read()/pread() so far (``rchar``)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> loader.Dataset:
    """One file of 200 row groups of 3 rows: its footer, which lists them all, is
    nearly half of its bytes."""
    ds = publish_groups(tmp_path_factory.mktemp("audit_a"), "one", [3] * GROUPS, groups_per_file=GROUPS)
    assert len(ds.files) == 1 and ds.files[0].footer_size > ds.files[0].size // 4
    return ds


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_an_epoch_reads_a_file_about_once_not_its_footer_once_per_row_group(one_file, pool):
    def epoch(ds):
        with loader.make_reader(ds, batch_size=60, pool=pool, workers=2, seed=4) as reader:
            return np.concatenate([b["id"] for b in reader])

    epoch(loader.open_dataset(one_file.version_path))  # imports and first-use setup, on another dataset object
    ds = loader.open_dataset(one_file.version_path)
    before = bytes_read()
    ids = epoch(ds)
    read = bytes_read() - before
    assert np.array_equal(np.sort(ids), np.arange(3 * GROUPS))  # exactly once
    info = ds.files[0]
    # Before: the footer (and the 8 bytes after it) once per row group, 200 times the footer's bytes.
    assert read < 3 * info.size, (read, info.size, info.footer_size)


def _bad_footer_copy(path: str, tmp) -> str:
    """A copy of the data file at ``path`` with one byte of its footer changed (same size)."""
    bad = os.path.join(tmp, "bad.parquet")
    shutil.copyfile(path, bad)
    size = os.path.getsize(bad)
    with open(bad, "r+b") as f:
        f.seek(size - 100)
        byte = f.read(1)
        f.seek(size - 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    return bad


@pytest.mark.parametrize("read", ["chunks", "pages"])
def test_a_replaced_file_is_checked_again_by_the_dataset_that_checked_it(one_file, tmp_path, read):
    root = tmp_path / "copy"
    shutil.copytree(one_file.version_path, root)
    ds = loader.open_dataset(root)
    info = ds.files[0]

    def read_group(i):
        if read == "chunks":  # checked against the manifest's chunk checksums
            return ds.read_row_group(info, i)
        with ds.open_file(info) as pf:  # pages checked by their CRCs
            return ds.read_row_group(info, i, pf=pf)

    assert read_group(0).num_rows == 3  # its footer checked once, then kept
    path = ds.file_path(info)
    os.replace(_bad_footer_copy(path, tmp_path), path)  # another file now: checked again before it is read
    with pytest.raises(loader.CorruptFileError, match="footer fails its checksum") as err:
        read_group(1)
    assert err.value.path == path


def test_a_file_rewritten_in_place_is_checked_again(one_file, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(one_file.version_path, root)
    ds = loader.open_dataset(root)
    info = ds.files[0]
    path = ds.file_path(info)
    assert ds.read_row_group(info, 0).num_rows == 3
    mtime = os.stat(path).st_mtime_ns
    with open(_bad_footer_copy(path, tmp_path), "rb") as src, open(path, "r+b") as dst:  # same inode
        dst.write(src.read())
    os.utime(path, ns=(mtime, mtime + 1_000_000))  # a write in the same clock tick may keep the mtime: not here
    with pytest.raises(loader.CorruptFileError, match="footer fails its checksum"):
        ds.read_row_group(info, 1)


def test_a_fifo_in_place_of_a_data_file_is_refused_without_blocking(one_file, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(one_file.version_path, root)
    ds = loader.open_dataset(root)
    info = ds.files[0]
    assert ds.read_row_group(info, 0).num_rows == 3
    path = ds.file_path(info)
    os.remove(path)
    os.mkfifo(path)
    done = threading.Event()

    def unblock():  # an open of the FIFO blocks until a writer comes: fail the test instead of hanging it
        if not done.wait(10):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()
    try:
        with pytest.raises(loader.CorruptFileError, match="is a FIFO, not a regular file"):
            ds.read_row_group(info, 1)
    finally:
        done.set()


def test_kept_footers_are_bounded_and_keep_the_latest():
    footers = VerifiedFooters(max_bytes=10 * PARSED_PER_FOOTER_BYTE)
    meta = object()  # stands for a parsed footer
    for i in range(5):
        footers.add(f"f{i}", ("local", f"/x/f{i}", 1), meta, footer_size=4)
    assert len(footers) == 2 and footers.bytes <= footers.max_bytes  # the least recently used went first
    assert footers.get("f4", ("local", "/x/f4", 1)) is meta and footers.get("f0", ("local", "/x/f0", 1)) is None
    assert footers.get("f4", ("local", "/x/f4", 2)) is None  # another copy is checked before use
    footers.add("huge", ("local", "/x/huge", 1), meta, footer_size=1000)  # over the cap alone: kept, being in use
    assert len(footers) == 1 and footers.get("huge", ("local", "/x/huge", 1)) is meta
    footers.forget("huge")
    assert footers.get("huge", ("local", "/x/huge", 1)) is None and footers.parsed("huge") is meta
    footers.clear()
    assert len(footers) == 0 and footers.bytes == 0


def test_a_pickled_dataset_checks_its_files_afresh(one_file):
    ds = loader.open_dataset(one_file.version_path)
    assert ds.read_row_group(ds.files[0], 0).num_rows == 3
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy._footers) == 0 and len(ds._footers) == 1
    assert copy.read_row_group(copy.files[0], 5).to_pydict()["id"] == [15, 16, 17]
