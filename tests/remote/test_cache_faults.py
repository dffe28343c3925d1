"""The local file cache under faults: failed prefetches, rotten copies, eviction races, a full disk, truncated
remote files, and eviction of old versions when the URL needs options."""

from __future__ import annotations

import errno
import glob
import os
from collections import Counter

import pytest

import loader
import loader.cache as cache_module
from loader.cache import CacheError, FileCache
from tests.conftest import make_table, read_all
from tests.remote.conftest import FAST_RETRY, TOKEN, data_opens


def _rot(path: str, offset: int) -> None:
    """Flip one byte, keeping size and mtime (bit rot, or a restore that keeps timestamps)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_failed_prefetch_is_forgotten_and_fetched_again(server, remote_cache, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"))
    cache = FileCache(tmp_path, io_threads=1, auto_prefetch=False, retry=FAST_RETRY)
    ds.file_cache = cache
    victim = ds.files[0]
    server.fail_always(status=503, op="OPEN", node="datanode", path=victim.path)
    ds.prefetch([victim])
    with pytest.raises(loader.RemoteError):
        cache.wait()
    server.clear_faults()  # the outage is over
    fs, path = cache.get(ds, victim)
    assert os.path.getsize(path) == victim.size
    assert ds.read_row_group(victim, 0).num_rows == victim.row_groups[0].num_rows
    cache.close()


def test_rotten_cached_copy_with_same_size_and_mtime_is_fetched_again(server, remote_cache, remote_table, tmp_path):
    ds = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)
    read_all(ds)
    victim = ds.files[0]
    _rot(ds.file_cache.local_path(ds, victim), 100)  # a data page: the marker still vouches for the copy
    server.clear_log()
    fresh = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)
    assert read_all(fresh).equals(remote_table)
    assert data_opens(server) == Counter({victim.path: 1})
    server.clear_log()
    again = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)
    assert read_all(again).equals(remote_table) and data_opens(server) == Counter()


def test_copy_failing_again_after_a_fresh_fetch_names_the_remote_file(server, remote_cache, tmp_path, monkeypatch):
    real = cache_module.download

    def rotting_download(fs, path, dest, **kw):  # every fresh copy rots right after it was verified
        got = real(fs, path, dest, **kw)
        _rot(dest, 100)
        return got

    monkeypatch.setattr(cache_module, "download", rotting_download)
    ds = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path, cache_options={"auto_prefetch": False})
    victim = ds.files[0]
    server.clear_log()
    with pytest.raises(loader.CorruptFileError, match="fresh copy") as err:
        ds.read_row_group(victim, 0)
    assert err.value.path == ds.display(victim) and ds.display(victim) in str(err.value)
    assert data_opens(server) == Counter({victim.path: 2})  # fetched again once, not more


def test_sync_rechecks_cached_copies(server, remote_cache, tmp_path):
    from loader.sync import sync

    sync(server.url("/caches/demo"), tmp_path, progress=False)
    victim = remote_cache.files[1]
    _rot(str(tmp_path / "demo" / remote_cache.version / victim.path), 100)
    assert sync(server.url("/caches/demo"), tmp_path, progress=False, verify=False).fetched_files == 0
    assert sync(server.url("/caches/demo"), tmp_path, progress=False).fetched_files == 1
    assert sync(server.url("/caches/demo"), tmp_path, progress=False).fetched_files == 0


class _EvictingOs:
    """``os`` for loader.cache, where another process evicts every file the moment it gets its final name."""

    def __init__(self, evictor: FileCache):
        self.evictor = evictor

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        os.replace(src, dst)
        if dst.endswith(".parquet"):
            self.evictor.trim()


def test_file_evicted_by_another_process_right_after_its_download_is_never_an_error(server, remote_cache, tmp_path,
                                                                                     monkeypatch):
    ds = loader.open_dataset(server.url("/caches/demo"))
    other = FileCache(tmp_path, max_cache_bytes=1, auto_prefetch=False)  # another process, evicting all it can
    monkeypatch.setattr(cache_module, "os", _EvictingOs(other))
    cache = FileCache(tmp_path, auto_prefetch=False, pin_files=1)
    for info in ds.files[:3]:
        fs, path = cache.get(ds, info)
        assert os.path.getsize(path) == info.size  # protected until handed out, and held while in use
        assert cache.fetch(ds, info) == 0
    cache.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_cache_dir_is_a_typed_error_and_leaves_no_part_file(server, remote_cache, tmp_path,
                                                                              monkeypatch, code):
    def failing_download(fs, path, dest, **kw):
        with open(dest, "wb") as f:
            f.write(b"half a file")
        raise OSError(code, os.strerror(code), dest)

    monkeypatch.setattr(cache_module, "download", failing_download)
    ds = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path, cache_options={"auto_prefetch": False})
    victim = ds.files[0]
    with pytest.raises(CacheError) as err:
        ds.read_row_group(victim, 0)
    assert isinstance(err.value, loader.LarderError) and isinstance(err.value, OSError)
    assert err.value.errno == code
    assert str(tmp_path) in str(err.value) and victim.path in str(err.value)
    assert not glob.glob(str(tmp_path / "**" / ".*.part"), recursive=True)


def test_truncated_remote_file_is_corrupt_at_once_not_retried(server, remote_table, tmp_path):
    ds = loader.write_cache(remote_table, server.url("/caches"), "truncated", row_group_bytes=3_000)
    victim = ds.files[0]
    local = server.local(f"/caches/truncated/{ds.version}/{victim.path}")
    with open(local, "r+b") as f:
        f.truncate(victim.size - 100)
    server.clear_log()
    cached = loader.open_dataset(server.url("/caches/truncated"), cache_dir=tmp_path, retry=FAST_RETRY,
                                 cache_options={"auto_prefetch": False})
    with pytest.raises(loader.CorruptFileError, match="truncated") as err:
        cached.read_row_group(victim, 0)
    assert err.value.path == cached.display(victim)
    assert data_opens(server) == Counter({victim.path: 1})  # a complete transfer of a short file: no retry


def test_old_versions_are_evicted_when_the_url_needs_a_token(token_server, tmp_path):
    root, url = token_server.url("/caches"), token_server.url("/caches/tok")
    first = None
    for day in range(3):
        ds = loader.write_cache(make_table(1000, seed=day), root, "tok", row_group_bytes=2_000, token=TOKEN)
        first = first or ds.version
        cap = ds.total_bytes + ds.total_bytes // 4
        with loader.make_reader(url, cache_dir=tmp_path, max_cache_bytes=cap, batch_size=100, token=TOKEN,
                                retry=FAST_RETRY) as reader:
            assert sum(len(b["id"]) for b in reader) == 1000
        token_server.clear_log()
    oldest = sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "tok" / first / "part-*")))
    total = sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "tok" / "v*" / "part-*")))
    assert oldest < ds.total_bytes // 2  # the first day's files went (the remote still has them), but those
    # an earlier reader still pins (a reader does not close its dataset's cache)
    assert total < 2 * cap  # soft cap: files in use (pinned, or fetched ahead) may exceed it; 3 versions did
