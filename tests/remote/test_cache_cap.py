"""``max_cache_bytes`` holds under concurrent downloads (in-flight downloads count, over-cap is reported once),
after the remote prunes cached versions, and with the partial downloads of killed processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import numpy as np

import loader
import loader.cache as cache_mod
from loader.cache import FileCache
from loader.cache_disk import Evictor, _hidden
from loader.locks import Flock
from tests.conftest import make_table
from tests.remote.conftest import FAST_RETRY


def _disk_bytes(root) -> int:
    """Bytes of cached data files and downloads in progress (``.part``)."""
    total = 0
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") or name.endswith(".part"):
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except FileNotFoundError:
                    pass
    return total


def _fill(ds, root, n=None, start=0) -> list[str]:
    """Cache the first ``n`` files of ``ds`` (oldest first by access time, from second ``start``); their paths."""
    filler = FileCache(root, auto_prefetch=False)
    paths = []
    for i, f in enumerate(ds.files[:n]):
        filler.fetch(ds, f)
        paths.append(filler.local_path(ds, f))
        os.utime(paths[-1], ns=((start + i) * 10**9, os.stat(paths[-1]).st_mtime_ns))
    filler.close()
    return paths


def _data_bytes(root) -> int:
    """Bytes of complete cached data files."""
    return sum(os.path.getsize(os.path.join(d, n)) for d, dirs, names in os.walk(root) if os.sep + "." not in d
               for n in names if not n.startswith("."))


def _killed_download(final: str, data: bytes) -> None:
    """Leave what a downloader of ``final`` killed mid-way (SIGKILL) leaves: its lock file and ``data`` in its
    ``.part``, written by a real process that held the download lock."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); f = open(sys.argv[2], 'wb'); f.write(sys.stdin.buffer.read()); "
            "f.flush(); print('written', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, _hidden(final, "lock"), _hidden(final, "part")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(data)
    proc.stdin.close()
    assert proc.stdout.readline().strip() == b"written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_make_room_counts_downloads_in_flight_of_other_processes(server, tmp_path):
    ds = loader.write_cache(make_table(600, seed=11), server.url("/caches"), "capflight", row_group_bytes=2_000)
    size = max(f.size for f in ds.files)
    paths = _fill(ds, tmp_path, 4)
    cache = FileCache(tmp_path, auto_prefetch=False)
    # Another process downloads files[5]: holds its download lock, has a .want and a partial .part.
    busy = cache.local_path(ds, ds.files[5])
    with open(_hidden(busy, "want"), "w") as f:
        f.write(str(10 * size))
    with open(_hidden(busy, "part"), "wb") as f:
        f.write(b"x" * 100)
    cached = sum(os.path.getsize(p) for p in paths)
    cap = cached + 11 * size - 1  # all cached, the one in flight, the incoming: 1 byte short
    with Flock(_hidden(busy, "lock")):
        fits = Evictor(str(tmp_path), cap).make_room(size, datasets=[ds])
        assert not os.path.exists(paths[0])  # the least recently used made room for the incoming file
        assert all(os.path.exists(p) for p in paths[1:])
        assert fits
        assert os.path.getsize(_hidden(busy, "part")) == 100  # a live download's .part is never taken
    # Its downloader is gone (lock free): it counts at its current size only, the rest fits again.
    assert Evictor(str(tmp_path), cap).make_room(size, datasets=[ds])
    assert all(os.path.exists(p) for p in paths[1:])


def test_over_cap_warning_is_given_once_and_states_in_use_plus_incoming(server, tmp_path, caplog):
    ds = loader.write_cache(make_table(300, seed=12), server.url("/caches"), "capwarn", row_group_bytes=2_000)
    paths = _fill(ds, tmp_path, 3)
    held = sum(os.path.getsize(p) for p in paths)
    evictor = Evictor(str(tmp_path), held)
    with caplog.at_level(logging.INFO, logger="loader.cache"):
        for _ in range(5):
            assert not evictor.make_room(1000, pinned=lambda p: True, datasets=[ds])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{held} bytes of files in use" in warnings[0]
    assert f"+ 1000 incoming = {held + 1000} bytes > max_cache_bytes={held}" in warnings[0]


def test_concurrent_readers_keep_the_cache_within_its_cap(server, tmp_path, monkeypatch, caplog):
    table = make_table(3000, seed=13)
    ds = loader.write_cache(table, server.url("/caches"), "capreaders", row_group_bytes=2_500)
    biggest = max(f.size for f in ds.files)
    cap = 6 * biggest
    assert cap < ds.total_bytes // 2
    seen = []
    real = cache_mod.download

    def measured(*args, **kwargs):  # right after each download, before its rename: the peak of that moment
        got = real(*args, **kwargs)
        seen.append(_disk_bytes(tmp_path))
        return got

    monkeypatch.setattr(cache_mod, "download", measured)
    ids: list[list] = [[], [], []]
    errors = []

    def read(k):
        try:
            with loader.make_reader(server.url("/caches/capreaders"), columns=["id"], batch_size=100, workers=2,
                                    cache_dir=tmp_path, max_cache_bytes=cap,
                                    cache_options={"pin_files": 1, "io_threads": 4}) as reader:
                for batch in reader:
                    ids[k].append(np.asarray(batch["id"]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with caplog.at_level(logging.WARNING, logger="loader.cache"):
        threads = [threading.Thread(target=read, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for k in range(3):
        assert Counter(np.concatenate(ids[k]).tolist()) == Counter(table.column("id").to_pylist())
    assert len(seen) >= len(ds.files)
    over = [r.getMessage() for r in caplog.records if "max_cache_bytes" in r.getMessage()]
    # Within the cap, unless files in use force it over, which is reported (once per reader): then over by at
    # most the files fetched on demand at that moment (one per worker thread of each reader).
    assert max(seen) <= cap + (3 * 2 * biggest if over else 0), (max(seen), cap, biggest, over)
    assert len(over) <= 3


def test_a_trainer_that_skips_publishes_keeps_its_cache_within_the_cap(server, tmp_path, caplog):
    # It reads every third day; keep_versions=2 prunes the versions it cached in between from the remote.
    url, cap, versions = server.url("/caches/skipper"), None, []
    with caplog.at_level(logging.WARNING, logger="loader.cache"):
        for day in range(7):
            ds = loader.write_cache(make_table(600, seed=day), server.url("/caches"), "skipper",
                                    row_group_bytes=2_000, keep_versions=2, retry=FAST_RETRY)
            cap = cap or int(ds.total_bytes * 2.2)  # room for two versions
            if day % 3:
                continue
            versions.append(ds.version)
            with loader.make_reader(url, batch_size=100, cache_dir=tmp_path, max_cache_bytes=cap,
                                    retry=FAST_RETRY) as reader:
                assert sum(len(b["id"]) for b in reader) == 600
            assert _data_bytes(tmp_path) <= cap
    assert not os.path.exists(server.local(f"/caches/skipper/{versions[0]}"))  # pruned remotely
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"skipper/{versions[0]}, whose version has no remote copy" in m for m in messages), messages
    assert not any("exceeding the cap" in m for m in messages), messages
    FileCache(tmp_path, max_cache_bytes=cap // 3).trim()  # a later, smaller cap: only copies go as well
    assert 0 < _data_bytes(tmp_path) <= cap // 3


def test_files_of_pruned_versions_are_evicted_last_and_counted_in_use_only_when_held(server, tmp_path, caplog):
    old = loader.write_cache(make_table(400, seed=5), server.url("/caches"), "pruned", row_group_bytes=3_000)
    old_paths = _fill(old, tmp_path)  # used less recently than any file of the new version
    new = loader.write_cache(make_table(400, seed=6), server.url("/caches"), "pruned", row_group_bytes=3_000,
                             keep_versions=1)
    assert not os.path.exists(server.local(f"/caches/pruned/{old.version}"))
    new_paths = _fill(new, tmp_path, start=100)
    old_bytes = _data_bytes(tmp_path / "pruned" / old.version)
    new_bytes = _data_bytes(tmp_path / "pruned" / new.version)
    # One byte over: the least recently used file with a remote copy goes, not an older file without one.
    assert Evictor(str(tmp_path), old_bytes + new_bytes - 1).make_room(0, datasets=[new])
    assert [os.path.exists(p) for p in new_paths] == [False] + [True] * (len(new_paths) - 1)
    assert all(os.path.exists(p) for p in old_paths)
    # Room for less than the old version: every file with a remote copy goes first, then the least recently
    # used of the old version's, with a warning that names the version.
    with caplog.at_level(logging.INFO, logger="loader.cache"):
        assert Evictor(str(tmp_path), old_bytes - 1).make_room(0, datasets=[new])
    assert not any(os.path.exists(p) for p in new_paths)
    assert [os.path.exists(p) for p in old_paths] == [False] + [True] * (len(old_paths) - 1)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"pruned/{old.version}, whose version has no remote copy" in warned[0], warned
    # A reader still holds one of them: it stays, and the over-cap warning counts it alone as in use.
    reader = FileCache(tmp_path, auto_prefetch=False)
    reader.get(old, old.files[-1])
    held = old.files[-1].size
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loader.cache"):
        assert not Evictor(str(tmp_path), held).make_room(1000, datasets=[new])
    assert [os.path.exists(p) for p in old_paths] == [False] * (len(old_paths) - 1) + [True]
    over = [r.getMessage() for r in caplog.records if "max_cache_bytes" in r.getMessage()]
    assert f"cache {tmp_path}: {held} bytes of files in use + 0 bytes of downloads in flight + 1000 incoming" \
        in over[-1], over
    reader.close()


def test_the_partial_download_of_a_killed_process_is_not_in_flight_and_goes_first(server, tmp_path, caplog):
    ds = loader.write_cache(make_table(600, seed=14), server.url("/caches"), "killed", row_group_bytes=2_000)
    paths = _fill(ds, tmp_path, len(ds.files) - 1)
    last = ds.files[-1]
    final = FileCache(tmp_path).local_path(ds, last)
    remote = open(server.local(f"/caches/killed/{ds.version}/{last.path}"), "rb").read()
    half = last.size // 2
    _killed_download(final, remote[:half])
    cached = _data_bytes(tmp_path)
    # Counted as cached, not in flight: one byte over the cap, it is what goes (not the least recently used file).
    with caplog.at_level(logging.WARNING, logger="loader.cache"):
        assert Evictor(str(tmp_path), cached + half - 1).make_room(0, datasets=[ds])
    assert not os.path.exists(_hidden(final, "part"))
    assert all(os.path.exists(p) for p in paths)
    assert not caplog.records
    # Left alone while the cap allows: the next downloader resumes it, even with a cap that fits it alone.
    _killed_download(final, remote[:half])
    server.clear_log()
    resumer = FileCache(tmp_path, max_cache_bytes=cached + last.size, auto_prefetch=False)
    assert resumer.fetch(ds, last) == last.size - half
    assert open(final, "rb").read() == remote


def test_the_partial_download_of_a_pruned_version_is_removed(server, tmp_path, caplog):
    old = loader.write_cache(make_table(3000, seed=15), server.url("/caches"), "stalepart", row_group_bytes=10**6)
    big = max(old.files, key=lambda f: f.size)
    final = FileCache(tmp_path).local_path(old, big)
    part = open(server.local(f"/caches/stalepart/{old.version}/{big.path}"), "rb").read()[:-1]
    _killed_download(final, part)
    new = loader.write_cache(make_table(600, seed=16), server.url("/caches"), "stalepart", row_group_bytes=2_000,
                             keep_versions=1)
    cap = new.total_bytes + new.total_bytes // 2
    assert len(part) + new.total_bytes > cap  # kept, it would hold the cache over its cap for good
    with caplog.at_level(logging.WARNING, logger="loader.cache"):
        with loader.make_reader(server.url("/caches/stalepart"), batch_size=100, cache_dir=tmp_path,
                                max_cache_bytes=cap, retry=FAST_RETRY) as reader:
            assert sum(len(b["id"]) for b in reader) == 600
    assert not os.path.exists(_hidden(final, "part"))
    assert _data_bytes(tmp_path) == new.total_bytes
    assert not [r.getMessage() for r in caplog.records if "max_cache_bytes" in r.getMessage()]


def test_over_cap_warning_tells_files_in_use_from_files_it_cannot_remove(server, tmp_path, caplog):
    ds = loader.write_cache(make_table(300, seed=17), server.url("/caches"), "capstray", row_group_bytes=2_000)
    paths = _fill(ds, tmp_path, 2)
    (tmp_path / "notes.txt").write_bytes(b"n" * 500)  # not under <dataset>/<version>/: not the cache's to evict
    reader = FileCache(tmp_path, auto_prefetch=False)
    reader.get(ds, ds.files[1])
    held = ds.files[1].size
    with caplog.at_level(logging.WARNING, logger="loader.cache"):
        assert not Evictor(str(tmp_path), 100).make_room(10, datasets=[ds])
    assert not os.path.exists(paths[0]) and os.path.exists(paths[1]) and os.path.exists(tmp_path / "notes.txt")
    over = [r.getMessage() for r in caplog.records if "max_cache_bytes" in r.getMessage()]
    assert f"{held} bytes of files in use + 500 bytes of files it cannot remove + 0 bytes of downloads in flight " \
           f"+ 10 incoming = {held + 510} bytes > max_cache_bytes=100" in over[0], over
    reader.close()
