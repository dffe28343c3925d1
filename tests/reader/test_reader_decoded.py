"""The local cache of decoded row groups: later readers map instead of decoding, batches are identical,
and a corrupt, truncated or unwritable cache never yields wrong rows."""

from __future__ import annotations

import glob
import os
import threading

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.decoded import MAGIC, DecodedCache
from tests.reader.conftest import POOLS


def _batches(ds, **kw):
    with loader.make_reader(ds, batch_size=64, seed=5, num_epochs=2, **kw) as reader:
        out = [{k: v.copy() for k, v in b.items()} for b in reader]
        return out, reader._ctx.decoded


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("pool", POOLS)
def test_second_reader_maps_what_the_first_decoded(mixed_cache, tmp_path, pool):
    reference, _ = _batches(mixed_cache, pool="serial")
    first, cache = _batches(mixed_cache, pool=pool, decoded_cache_dir=tmp_path)
    _same(first, reference)
    files = glob.glob(str(tmp_path / "demo" / mixed_cache.version / "*" / "*.arrow"))
    assert len(files) == mixed_cache.num_row_groups  # every row group cached once, all selected columns
    second, cache = _batches(mixed_cache, pool=pool, decoded_cache_dir=tmp_path)
    _same(second, reference)
    if pool != "process":  # process workers count in their own processes
        assert cache.hits >= mixed_cache.num_row_groups and cache.misses == 0
    raw = open(files[0], "rb").read()
    assert raw[-16:-12] == MAGIC
    table = pa.ipc.open_file(pa.py_buffer(raw[:-16])).read_all()  # plain Arrow IPC under the trailer
    assert table.num_rows > 0


def test_column_selections_get_their_own_files(mixed_cache, tmp_path):
    _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path, columns=["id"])
    _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path, columns=["id", "x"])
    keys = os.listdir(tmp_path / "demo" / mixed_cache.version)
    assert len(keys) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage-trailer"])
def test_damaged_cache_files_are_rejected_and_decoded_again(mixed_cache, tmp_path, damage):
    reference, _ = _batches(mixed_cache, pool="serial")
    _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path)
    files = sorted(glob.glob(str(tmp_path / "demo" / mixed_cache.version / "*" / "*.arrow")))
    for path in files[:3]:
        data = bytearray(open(path, "rb").read())
        if damage == "flip":
            data[len(data) // 2] ^= 0x40
        elif damage == "truncate":
            data = data[: len(data) - 100]
        elif damage == "empty":
            data = b""
        else:
            data[-16:-12] = b"XXXX"
        open(path, "wb").write(bytes(data))
    got, cache = _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path)
    _same(got, reference)  # never wrong rows
    assert cache.rejected == 3 and cache.misses == 3
    again, cache = _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path)
    assert cache.rejected == 0 and cache.misses == 0  # the rejected files were written again, whole
    _same(again, reference)


def test_cap_and_unwritable_directory(mixed_cache, tmp_path):
    _, cache = _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path / "none", max_decoded_bytes=0)
    assert cache.added == 0 and not glob.glob(str(tmp_path / "none" / "**" / "*.arrow"), recursive=True)
    _, cache = _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path / "capped", max_decoded_bytes=1)
    assert not glob.glob(str(tmp_path / "capped" / "**" / "*.arrow"), recursive=True)  # no file fits in 1 byte
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    reference, _ = _batches(mixed_cache, pool="serial")
    got, cache = _batches(mixed_cache, pool="serial", decoded_cache_dir=blocker / "sub")
    _same(got, reference)  # an unusable directory only costs the speed-up
    assert cache.added == 0
    with pytest.raises(loader.ConfigError, match="max_decoded_bytes"):
        loader.make_reader(mixed_cache, decoded_cache_dir=tmp_path, max_decoded_bytes=-1)


def test_cache_paths_follow_dataset_version_and_selection(tmp_path):
    schema = pa.schema([pa.field("a", pa.int64())])
    c = DecodedCache.for_dataset(tmp_path, "shop", "v1", schema)
    assert c.path("part-00000.parquet", 3).startswith(str(tmp_path / "shop" / "v1"))
    assert c.path("part-00000.parquet", 3).endswith("part-00000.parquet.rg3.arrow")
    other = DecodedCache.for_dataset(tmp_path, "shop", "v1", pa.schema([pa.field("a", pa.int32())]))
    assert other.root != c.root


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_the_cap_holds_with_concurrent_workers(mixed_cache, tmp_path, pool):
    _, full = _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path / "full")
    sizes = sorted(os.path.getsize(f) for f in glob.glob(str(tmp_path / "full" / "**" / "*.arrow"), recursive=True))
    cap = sum(sizes[:3]) + 3 * 4096  # room for about 3 row groups
    for trial in range(3):  # the decoding threads race for the last bytes
        capped = tmp_path / f"capped{trial}"
        _, cache = _batches(mixed_cache, pool=pool, workers=2, decoded_cache_dir=capped, max_decoded_bytes=cap)
        stored = sum(os.path.getsize(f) for f in glob.glob(str(capped / "**" / "*.arrow"), recursive=True))
        assert 0 < stored <= cap and cache.added == stored


def test_partial_files_of_dead_writers_are_removed(mixed_cache, tmp_path):
    import subprocess
    import sys

    cache = DecodedCache.for_dataset(tmp_path, mixed_cache.name, mixed_cache.version, mixed_cache.schema)
    os.makedirs(cache.root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = os.path.join(cache.root, f"part-00000.parquet.rg0.arrow.{dead.stdout.strip()}-abcd1234.part")
    mine = os.path.join(cache.root, f"part-00001.parquet.rg0.arrow.{os.getpid()}-abcd1234.part")  # being written
    old = os.path.join(cache.root, "part-00002.parquet.rg0.arrow.abcd1234.part")  # an older name, an hour old
    for path in (gone, mine, old):
        open(path, "wb").close()
    os.utime(old, (0, 0))
    DecodedCache.for_dataset(tmp_path, mixed_cache.name, mixed_cache.version, mixed_cache.schema)
    assert sorted(os.listdir(cache.root)) == [os.path.basename(mine)]


def _on_disk(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)


def _cap_of_three(mixed_cache, tmp_path):
    """A cap with room for about 3 of mixed_cache's 20 cached row groups, and the largest file's size."""
    _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path / "full")
    sizes = sorted(os.path.getsize(f) for f in glob.glob(str(tmp_path / "full" / "**" / "*.arrow"), recursive=True))
    return sum(sizes[:3]) + 3 * 4096, sizes[-1]


@pytest.mark.parametrize("pool", POOLS)
def test_the_cap_bounds_the_directory_across_readers_in_sequence(mixed_cache, tmp_path, pool):
    """A restarted job, or the torch adapter's new reader every pass: the cap is on the directory, not on
    what one reader adds (each column selection counts against it too)."""
    cap, _ = _cap_of_three(mixed_cache, tmp_path)
    capped = tmp_path / "capped"
    version_dir = capped / "demo" / mixed_cache.version
    reference, _ = _batches(mixed_cache, pool="serial")
    for i, columns in enumerate([None, None, ["id", "x"], None, ["id"]]):
        got, _ = _batches(mixed_cache, pool=pool, workers=2, decoded_cache_dir=capped, max_decoded_bytes=cap,
                          columns=columns)
        if columns is None:
            _same(got, reference)
        assert 0 < _on_disk(version_dir) <= cap, f"after reader {i + 1}"


def test_concurrent_caches_see_each_others_files(mixed_cache, tmp_path, monkeypatch):
    """Two processes' caches made at the same time (both count an empty directory): each counts the directory
    again before storing, so the second stores nothing once the first filled the cap."""
    import loader.decoded as decoded

    monkeypatch.setattr(decoded, "RECOUNT_RATIO", 0)  # count before every store, however fast the last count
    cap, _ = _cap_of_three(mixed_cache, tmp_path)
    schema = mixed_cache.schema
    a = DecodedCache.for_dataset(tmp_path / "shared", "demo", mixed_cache.version, schema, cap)
    b = DecodedCache.for_dataset(tmp_path / "shared", "demo", mixed_cache.version, schema, cap)
    table = pa.table({"v": np.arange(400, dtype=np.int64)})  # ~3.2 KB + framing per file
    for k in range(30):
        a.get("part-a.parquet", k, lambda: table)
    assert 0 < a.added <= cap and a.held == _on_disk(tmp_path / "shared")
    for k in range(30):
        b.get("part-b.parquet", k, lambda: table)
    assert b.added == 0 and _on_disk(tmp_path / "shared") <= cap
    os.unlink(a.path("part-a.parquet", 0))  # room again: seen at the next count
    b.get("part-b.parquet", 99, lambda: table)
    assert b.added > 0 and _on_disk(tmp_path / "shared") <= cap


def test_a_fifo_in_the_cache_is_rejected_not_opened(mixed_cache, tmp_path):
    """A FIFO where a decoded file belongs would block the reader's open forever: it is removed and the row
    group decoded again. (A guard thread opens the FIFO for writing after 20 s, so a regression fails the
    test instead of hanging the suite.)"""
    reference, _ = _batches(mixed_cache, pool="serial")
    _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path)
    path = sorted(glob.glob(str(tmp_path / "demo" / mixed_cache.version / "*" / "*.arrow")))[0]
    os.unlink(path)
    os.mkfifo(path)
    blocked = []
    done = threading.Event()

    def guard():
        if not done.wait(20):
            blocked.append(True)
            with open(path, "wb"):  # releases a reader blocked in open(); it then reads nothing
                pass

    threading.Thread(target=guard, daemon=True).start()
    try:
        got, cache = _batches(mixed_cache, pool="serial", decoded_cache_dir=tmp_path)
    finally:
        done.set()
    assert not blocked, "the reader blocked opening a FIFO in the decoded cache"
    _same(got, reference)
    assert cache.rejected == 1 and cache.misses == 1
    assert os.path.isfile(path)  # written again as a regular decoded file
