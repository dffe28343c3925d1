"""The local disk cache of a remote cache: once per epoch, shared by processes, verified, evicted safely."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections import Counter

import numpy as np
import pytest

import loader
from loader.cache import FileCache, attach_cache
from loader.cache_disk import Evictor
from loader.manifest import crc32_hex
from tests.conftest import make_table, read_all
from tests.remote.conftest import FAST_RETRY, data_opens

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cached_bytes(root) -> int:
    """Bytes of cached data files; a file evicted between the listing and its stat counts as gone."""
    total = 0
    for p in root.rglob("part-*.parquet"):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total




def test_epoch_one_reads_each_file_once_and_epoch_two_reads_none(server, remote_cache, remote_table, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path, retry=FAST_RETRY)
    assert read_all(ds).equals(remote_table)
    assert data_opens(server) == Counter({f.path: 1 for f in ds.files})
    for f in ds.files:  # keyed by dataset version
        assert os.path.getsize(tmp_path / "demo" / ds.version / f.path) == f.size
    server.clear_log()
    again = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)  # a new process would do this
    assert read_all(again).equals(remote_table)
    assert data_opens(server) == Counter()
    assert server.count(node="datanode", path=".parquet") == 0


def test_files_are_downloaded_ahead_in_the_given_order(server, remote_cache, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"))
    cache = attach_cache(ds, tmp_path, io_threads=1)
    order = list(reversed(ds.files))
    server.clear_log()
    ds.prefetch(order)
    cache.wait()
    assert cache.fetched_files == len(ds.files)
    fetched = [r.path.rsplit("/", 1)[-1] for r in server.log if r.node == "datanode" and r.path.endswith(".parquet")]
    assert fetched == [f.path for f in order]
    server.clear_log()
    read_all(ds)
    assert data_opens(server) == Counter()
    cache.close()


def test_capped_cache_over_two_epochs_yields_every_row_and_evicts(server, remote_cache, remote_table, tmp_path):
    biggest = max(f.size for f in remote_cache.files)
    cap = 2 * biggest
    # At most: the cap, the 4 files pinned as in use (FileCache.pin_files) and cap/2 fetched ahead (+1 in flight).
    bound = cap + (4 + 2) * biggest
    assert bound < remote_cache.total_bytes  # so keeping every file would break it
    ids = []
    with loader.make_reader(server.url("/caches/demo"), columns=["id"], batch_size=50, num_epochs=2, workers=2,
                            cache_dir=tmp_path, max_cache_bytes=cap) as reader:
        for batch in reader:
            ids.append(np.asarray(batch["id"]))
            assert _cached_bytes(tmp_path) <= bound
    assert Counter(np.concatenate(ids).tolist()) == Counter({i: 2 for i in remote_table.column("id").to_pylist()})
    assert sum(data_opens(server).values()) > len(remote_cache.files)  # evicted files came back in epoch 2


def test_corrupt_or_truncated_cached_file_is_fetched_again(server, remote_cache, remote_table, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)
    read_all(ds)
    bad, short = ds.files[0], ds.files[1]
    path = ds.file_cache.local_path(ds, bad)
    with open(path, "r+b") as f:  # same size, one flipped byte in the middle
        f.seek(bad.size // 2)
        byte = f.read(1)
        f.seek(bad.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with open(ds.file_cache.local_path(ds, short), "r+b") as f:
        f.truncate(short.size - 10)
    server.clear_log()
    fresh = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)
    assert read_all(fresh).equals(remote_table)
    assert data_opens(server) == Counter({bad.path: 1, short.path: 1})


def test_remote_file_not_matching_manifest_is_reported_and_not_cached(server, remote_table, tmp_path):
    ds = loader.write_cache(remote_table, server.url("/caches"), "tampered", row_group_bytes=3_000)
    victim = ds.files[0]
    local = server.local(f"/caches/tampered/{ds.version}/{victim.path}")
    with open(local, "r+b") as f:
        f.seek(10)
        f.write(b"\0\0\0\0")
    cached = loader.open_dataset(server.url("/caches/tampered"), cache_dir=tmp_path, retry=FAST_RETRY)
    with pytest.raises(loader.CorruptFileError, match="checksum") as err:
        cached.open_file(victim)
    assert cached.display(victim) in str(err.value)
    leftovers = [p.name for p in (tmp_path / "tampered" / ds.version).iterdir() if victim.path in p.name]
    assert victim.path not in leftovers and f".{victim.path}.part" not in leftovers
    cached.file_cache.close()


_CHILD = textwrap.dedent(
    """
    import sys
    import loader
    ds = loader.open_dataset(sys.argv[1], cache_dir=sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    rows = sum(ds.read_row_group(f, i, ["id"]).column("id").to_numpy().sum()
               for f in ds.files for i in range(len(f.row_groups)))
    print(rows)
    """
)


def test_two_processes_share_one_cache_without_double_downloads(server, remote_cache, remote_table, tmp_path):
    server.latency = 0.02  # widen the window in which both want the same file
    env = {**os.environ, "PYTHONPATH": REPO}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, server.url("/caches/demo"), str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    expected = str(int(remote_table.column("id").to_numpy().sum()))
    assert [o.strip() for o, _ in outs] == [expected, expected]
    assert data_opens(server) == Counter({f.path: 1 for f in remote_cache.files})


def test_lock_of_a_killed_process_does_not_block_and_partial_download_resumes(server, remote_cache, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"))
    info = max(ds.files, key=lambda f: f.size)
    cache = FileCache(tmp_path, auto_prefetch=False)
    target = cache.local_path(ds, info)
    os.makedirs(os.path.dirname(target))
    lock = os.path.join(os.path.dirname(target), f".{info.path}.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,os,time; fd=os.open({lock!r}, os.O_RDWR|os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock, mid-download
    holder.wait()
    half = info.size // 2
    remote_bytes = open(server.local(f"/caches/demo/{ds.version}/{info.path}"), "rb").read()
    with open(os.path.join(os.path.dirname(target), f".{info.path}.part"), "wb") as f:
        f.write(remote_bytes[:half])  # what the dead process had downloaded
    server.clear_log()
    assert cache.fetch(ds, info) == info.size - half
    assert open(target, "rb").read() == remote_bytes
    assert sum(r.body_bytes for r in server.log if r.node == "datanode") == info.size - half


def test_eviction_keeps_files_in_use_and_takes_files_without_remote_copy_last(server, tmp_path):
    table = make_table(400, seed=5)
    old = loader.write_cache(table, server.url("/caches"), "evict", row_group_bytes=3_000)
    keep_all = FileCache(tmp_path)
    for f in old.files:
        keep_all.fetch(old, f)
    new = loader.write_cache(make_table(400, seed=6), server.url("/caches"), "evict", row_group_bytes=3_000,
                             keep_versions=1)  # the old version is gone from HDFS now
    assert not os.path.exists(server.local(f"/caches/evict/{old.version}"))
    sizes = [f.size for f in new.files]
    cap = sum(sorted(sizes)[-3:])  # room for about three new files
    user = FileCache(tmp_path, max_cache_bytes=cap, pin_files=1, auto_prefetch=False)
    in_use = new.files[0]
    user.get(new, in_use)  # held (shared flock) by this "reader"
    old_left = sum(os.path.exists(keep_all.local_path(old, f)) for f in old.files)
    assert 0 < old_left < len(old.files)  # only copies, least recently used: evicted last, but the cap wins
    other = FileCache(tmp_path, max_cache_bytes=cap, auto_prefetch=False)  # another process on the node
    for f in new.files[1:]:
        other.fetch(new, f)
    cached_new = [f for f in new.files if os.path.exists(other.local_path(new, f))]
    assert in_use in cached_new
    assert len(cached_new) < len(new.files)  # something was evicted
    assert _cached_bytes(tmp_path) <= cap  # the in-use file and the other version's copies included
    assert new.files[-1] in cached_new  # the newest survives, the least recently used went first
    user.close()


def test_evictor_is_driven_by_its_own_interface_alone(server, remote_cache, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"))
    filler = FileCache(tmp_path, auto_prefetch=False)  # fills the cache, then is gone
    paths = [filler.local_path(ds, f) for f in ds.files]
    for i, f in enumerate(ds.files):
        filler.fetch(ds, f)
        os.utime(paths[i], ns=(i * 10**9, os.stat(paths[i]).st_mtime_ns))  # files[0] least recently used
    filler.close()
    cap = ds.files[0].size + sum(f.size for f in ds.files[-3:])  # the pinned file and the three most recent
    evictor = Evictor(str(tmp_path), cap)  # no FileCache behind it: its arguments are all it knows
    server.clear_log()
    evictor.make_room(0, pinned=lambda path: path == paths[0], datasets=[ds])
    left = [i for i, p in enumerate(paths) if os.path.exists(p)]
    assert left == [0, *range(len(paths) - 3, len(paths))]  # the least recently used went, but the pinned one
    # Asked once whether the version still exists remotely (then remembered), with the dataset's filesystem.
    assert server.count(op="GETFILESTATUS", path=f"/caches/demo/{ds.version}/_manifest.json") == 1
    Evictor(str(tmp_path), 1).trim()  # the URL in the cache alone: everything not in use goes
    assert not any(os.path.exists(p) for p in paths)


def test_any_fsspec_filesystem_goes_through_the_same_cache(tmp_path):
    pytest.importorskip("fsspec")
    table = make_table(300, seed=12)
    loader.write_cache(table, "memory://larder-test/caches", "mem", row_group_bytes=4_000)
    cached = loader.open_dataset("memory://larder-test/caches/mem", cache_dir=tmp_path)
    assert cached.file_cache is not None
    assert read_all(cached).equals(table)
    for f in cached.files:
        assert (tmp_path / "mem" / cached.version / f.path).stat().st_size == f.size


def test_a_download_in_progress_is_never_visible_under_the_final_name(server, remote_cache, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"))
    payload = np.random.default_rng(0).bytes(3 << 20)  # several download chunks
    with open(server.local(f"/caches/demo/{ds.version}/big.bin"), "wb") as f:
        f.write(payload)
    info = dataclasses.replace(ds.files[0], path="big.bin", size=len(payload), checksum=crc32_hex(zlib.crc32(payload)))
    cache = FileCache(tmp_path, auto_prefetch=False)
    final = cache.local_path(ds, info)
    part = os.path.join(os.path.dirname(final), ".big.bin.part")
    server.bandwidth, server._link.burst = len(payload) * 2, 0  # about half a second
    try:
        done = threading.Event()
        fetcher = threading.Thread(target=lambda: (cache.fetch(ds, info), done.set()))
        fetcher.start()
        seen_partial = False
        while not done.is_set():
            if os.path.exists(final):
                assert os.path.getsize(final) == info.size  # a final name only ever holds the whole file
            elif os.path.exists(part) and 0 < os.path.getsize(part) < info.size:
                seen_partial = True
            time.sleep(0.005)
        fetcher.join()
    finally:
        server._link.burst = 256 << 10
    assert seen_partial and open(final, "rb").read() == payload and not os.path.exists(part)
