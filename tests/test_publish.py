"""Publishing: atomic versions, CURRENT swap, pruning, dead staging cleanup, nothing lost on failure."""

from __future__ import annotations

import decimal
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import loader
from loader import claims, locks, publish
from tests.conftest import read_all


def test_write_cache_round_trip_and_row_group_target(tmp_path, table):
    ds = loader.write_cache(table, tmp_path, "demo", row_group_bytes=4_000)
    assert read_all(ds).equals(table)
    sizes = [g.compressed_bytes for f in ds.files for g in f.row_groups]
    assert max(sizes[:-1]) <= 4_000 * 1.1  # the estimate is corrected from each written file
    assert np.median(sizes[:-1]) >= 4_000 * 0.8
    assert ds.manifest.row_group_target == 4_000


def test_write_cache_from_parquet_path_and_stream(tmp_path, table):
    pq.write_table(table, tmp_path / "src.parquet")
    a = loader.write_cache(str(tmp_path / "src.parquet"), tmp_path / "out", "a")
    b = loader.write_cache(table.to_reader(max_chunksize=77), tmp_path / "out", "b", row_groups_per_file=3,
                           row_group_bytes=3_000)
    assert read_all(a).equals(table) and read_all(b).equals(table)
    assert a.source["kind"] == "parquet" and max(len(f.row_groups) for f in b.files) == 3


def test_keep_versions_prunes_old_ones(tmp_path, table):
    names = [loader.write_cache(table.slice(0, 10 + i), tmp_path, "d", keep_versions=2).version for i in range(4)]
    fs = pafs.LocalFileSystem()
    assert publish.list_versions(fs, str(tmp_path / "d")) == names[-2:]
    assert loader.open_dataset(tmp_path / "d").num_rows == 13


def test_empty_data_publishes_nothing(tmp_path, table):
    first = loader.write_cache(table, tmp_path, "d")
    with pytest.raises(loader.EmptyDatasetError, match="no rows"):
        loader.write_cache(table.slice(0, 0), tmp_path, "d")
    assert loader.open_dataset(tmp_path / "d").version == first.version
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]


def test_failure_mid_write_keeps_previous_version(tmp_path, table):
    first = loader.write_cache(table, tmp_path, "d")

    def exploding():
        yield from table.slice(0, 500).to_batches(max_chunksize=100)
        raise RuntimeError("source died")

    broken = pa.RecordBatchReader.from_batches(table.schema, exploding())
    with pytest.raises(RuntimeError, match="source died"):
        loader.write_cache(broken, tmp_path, "d", row_group_bytes=2_000)
    ds = loader.open_dataset(tmp_path / "d")
    assert ds.version == first.version and read_all(ds).equals(table)
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]


def test_killed_run_leaves_previous_live_and_next_run_cleans(tmp_path, table):
    first = loader.write_cache(table, tmp_path, "d")
    code = f"""
import os, pyarrow.fs as pafs, pyarrow as pa, pyarrow.parquet as pq
from loader import publish
s = publish.begin_staging(pafs.LocalFileSystem(), {str(tmp_path)!r}, "d")
os.makedirs(s.path)
pq.write_table(pa.table({{"id": [1, 2]}}), s.path + "/part-00000.parquet")
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == -9
    assert [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]  # debris of the dead run
    assert loader.open_dataset(tmp_path / "d").version == first.version
    second = loader.write_cache(table.slice(0, 5), tmp_path, "d")
    assert not [n for n in os.listdir(tmp_path / "d") if n.startswith("_staging")]
    assert loader.open_dataset(tmp_path / "d").version == second.version


def test_live_staging_of_another_run_is_not_cleaned(tmp_path, table):
    fs = pafs.LocalFileSystem()
    running = publish.begin_staging(fs, str(tmp_path), "d")
    os.makedirs(running.path)
    loader.write_cache(table, tmp_path, "d")  # a concurrent run cleans only dead runs
    assert os.path.isdir(running.path)
    running.abort()
    assert not os.path.exists(running.path)


def test_destination_not_writable(tmp_path, table):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the root should be")
    with pytest.raises(loader.PublishError, match="cannot write"):
        loader.write_cache(table, blocker, "d")


def test_bad_dataset_names_and_arguments(tmp_path, table):
    with pytest.raises(loader.PublishError, match="plain directory name"):
        loader.write_cache(table, tmp_path, "../escape")
    with pytest.raises(loader.ConfigError, match="fill"):
        loader.write_cache(table, tmp_path, "d", fill=1.5)
    with pytest.raises(loader.ConfigError, match="pyarrow Table"):
        loader.write_cache([1, 2, 3], tmp_path, "d")


# --- concurrent runs: claiming a staging directory while another run cleans (owner-file race) ---


class _FcntlWithCleaner:
    """A stand-in for :mod:`fcntl`: before the first lock a run takes, another run acts in that window.

    ``action`` is what the other run does (e.g. clean stale staging); flock calls made by the action
    itself go straight to the real fcntl.
    """

    def __init__(self, action):
        import fcntl

        self._real = fcntl
        self._action = action
        self._done = False
        for name in ("LOCK_EX", "LOCK_NB", "LOCK_SH", "LOCK_UN"):
            setattr(self, name, getattr(fcntl, name))

    def flock(self, fd: int, op: int) -> None:
        if not self._done:
            self._done = True
            self._action()
        self._real.flock(fd, op)


def _begin_with(monkeypatch, fs, root: str, action) -> publish.Staging:
    with monkeypatch.context() as m:
        m.setattr(locks, "fcntl", _FcntlWithCleaner(action))  # every flock larder takes goes through loader.locks
        return publish.begin_staging(fs, root, "d")


def test_cleaner_between_creating_and_locking_the_owner_file_spares_the_claim(tmp_path, monkeypatch):
    fs = pafs.LocalFileSystem()
    dataset_dir = str(tmp_path / "d")
    os.makedirs(dataset_dir)
    running = _begin_with(monkeypatch, fs, str(tmp_path), lambda: claims.clean_stale_staging(fs, dataset_dir))
    owner = running.path + claims.OWNER_SUFFIX
    assert os.path.exists(owner) and claims.owner_alive(fs, owner)  # not deleted, and locked by the run
    os.makedirs(running.path)
    assert claims.clean_stale_staging(fs, dataset_dir) == []
    assert os.path.isdir(running.path)
    running.abort()
    assert not [n for n in os.listdir(dataset_dir) if n.startswith("_staging")]


def test_cleaner_probing_the_owner_lock_at_that_instant_does_not_break_the_claim(tmp_path, monkeypatch):
    import fcntl
    import threading

    fs = pafs.LocalFileSystem()
    dataset_dir = str(tmp_path / "d")
    os.makedirs(dataset_dir)
    probes = []

    def probe_everything():  # a cleaner's probe lock, held for a moment on every staging file
        for name in os.listdir(dataset_dir):
            fd = os.open(os.path.join(dataset_dir, name), os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            probes.append(fd)
        threading.Timer(0.2, lambda: [os.close(fd) for fd in probes]).start()

    running = _begin_with(monkeypatch, fs, str(tmp_path), probe_everything)
    assert probes  # the probe did hold the run's file while it locked it
    assert claims.owner_alive(fs, running.path + claims.OWNER_SUFFIX)
    running.abort()


def test_pending_owner_file_is_kept_while_young_and_cleaned_when_stale(tmp_path):
    fs = pafs.LocalFileSystem()
    dataset_dir = tmp_path / "d"
    dataset_dir.mkdir()
    pending = dataset_dir / f"{publish.STAGING_PREFIX}20260101T000000Z-0000abcd{claims.PENDING_SUFFIX}"
    pending.write_bytes(b"")
    claims.clean_stale_staging(fs, str(dataset_dir))
    assert pending.exists()  # a run may be about to lock it
    old = pending.stat().st_mtime - claims.PENDING_STALE_AFTER_S - 1
    os.utime(pending, (old, old))
    claims.clean_stale_staging(fs, str(dataset_dir))
    assert not pending.exists()


# --- the one flock helper every claim and cache lock goes through (loader.locks) ---


def test_flock_helper_sees_another_process_lock_until_that_process_dies(tmp_path):
    path = str(tmp_path / "f.lock")
    assert not locks.held_elsewhere(path)  # missing: nobody holds it
    code = (f"import fcntl, os, sys; fd = os.open({path!r}, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_SH); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert locks.held_elsewhere(path)
        with locks.Flock(path, blocking=False) as held:
            assert held is None  # exclusive: refused while a shared lock is held
        with locks.Flock(path, exclusive=False, blocking=False) as held:
            assert held is not None  # shared locks coexist
    finally:
        holder.kill()
        holder.wait()
    assert not locks.held_elsewhere(path)  # a lock dies with its process
    with locks.Flock(path, blocking=False, create=False) as held:
        assert held is not None and locks.held_elsewhere(path)  # two descriptors conflict even in one process
    assert not locks.held_elsewhere(path)


class _FailingFcntl:
    """``fcntl`` whose flock always fails (a filesystem without locks)."""

    LOCK_EX, LOCK_SH, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_SH, fcntl.LOCK_NB

    @staticmethod
    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")


@pytest.mark.parametrize("no_locks", [None, _FailingFcntl()], ids=["no fcntl", "flock fails"])
def test_without_working_flock_nothing_leaks_claims_count_as_held_and_publishing_goes_on(tmp_path, monkeypatch,
                                                                                           no_locks):
    monkeypatch.setattr(locks, "fcntl", no_locks)
    path = str(tmp_path / "f.lock")
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="[Nn]o locks|not available"):
        with locks.Flock(path):
            pass
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the descriptor it opened is closed again
    assert locks.held_elsewhere(path)  # cannot tell: a cleaner keeps the claim
    with claims.publish_lock(pafs.LocalFileSystem(), str(tmp_path)):  # unserialised, as on remote storage
        pass
    assert len(os.listdir("/proc/self/fd")) == open_fds


# --- concurrent runs: same version name, pruning, the returned dataset ---


def _stage_one_file(fs, root: str, ids: list[int]) -> publish.Staging:
    staging = publish.begin_staging(fs, root, "d")
    os.makedirs(staging.path)
    pq.write_table(pa.table({"id": ids}), os.path.join(staging.path, "part-00000.parquet"))
    return staging


def test_two_runs_publishing_the_same_name_both_succeed(tmp_path, monkeypatch):
    fs = pafs.LocalFileSystem()
    frozen = types.SimpleNamespace(time=lambda: 1_800_000_000.0, sleep=lambda s: None)
    monkeypatch.setattr(publish, "time", frozen)  # both runs in the same second, with the same data
    first = _stage_one_file(fs, str(tmp_path), [1, 2]).commit(fingerprint="abcd1234")
    second_run = _stage_one_file(fs, str(tmp_path), [1, 2])
    real_list = publish.list_versions
    calls = []

    def listed_before_the_first_run_renamed(fs_, dataset_dir):
        calls.append(dataset_dir)
        return [] if len(calls) == 1 else real_list(fs_, dataset_dir)

    monkeypatch.setattr(publish, "list_versions", listed_before_the_first_run_renamed)
    second = second_run.commit(fingerprint="abcd1234")
    assert first == "v20270115T080000Z-abcd1234" and second == "v20270115T080001Z-abcd1234"
    ds = loader.open_dataset(tmp_path / "d")
    assert ds.version == second == second_run.manifest.version
    assert publish.read_manifest(fs, str(tmp_path / "d" / first)).version == first


def test_prune_spares_versions_newer_than_the_live_one(tmp_path, table):
    names = [loader.write_cache(table.slice(0, 10 + i), tmp_path, "d", keep_versions=9).version for i in range(4)]
    (tmp_path / "d" / "CURRENT").write_text(names[1] + "\n")  # names[2:] renamed, not yet live (no locks)
    assert publish.prune_versions(pafs.LocalFileSystem(), str(tmp_path / "d"), keep=1) == [names[0]]
    assert sorted(os.listdir(tmp_path / "d")) == ["CURRENT", *names[1:]]


def test_write_cache_returns_its_version_even_if_another_run_pruned_it(tmp_path, table, monkeypatch):
    real_commit = publish.Staging.commit

    def commit_then_pruned(self, **kwargs):
        version = real_commit(self, **kwargs)
        shutil.rmtree(os.path.join(self.dataset_dir, version))  # a concurrent run with keep_versions=1
        return version

    monkeypatch.setattr(publish.Staging, "commit", commit_then_pruned)
    ds = loader.write_cache(table, tmp_path, "d")
    assert ds.num_rows == table.num_rows and ds.version.startswith("v")
    assert ds.version_path == str(tmp_path / "d" / ds.version)


def test_write_cache_returns_the_manifest_a_reader_sees(tmp_path, table):
    ds = loader.write_cache(table, tmp_path, "d", row_group_bytes=4_000)
    again = loader.open_dataset(tmp_path / "d")
    assert ds.manifest == again.manifest and ds.version_path == again.version_path and ds.url == again.version_path


# --- what the manifest says about the files ---


def test_manifest_schema_is_the_schema_parquet_stores(tmp_path):
    n = 3000
    days = np.arange(n, dtype=np.int64) * 86_400_000
    src = pa.table({
        "ts": pa.array(np.arange(n), pa.timestamp("s")),
        "ts_utc": pa.array(np.arange(n), pa.timestamp("s", tz="UTC")),
        "t": pa.array(np.arange(n, dtype=np.int32), pa.time32("s")),
        "day": pa.array(days, pa.date64()),
        "stamps": pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.timestamp("s"))),
        "id": np.arange(n),
    })  # fmt: skip
    ds = loader.write_cache(src, tmp_path, "d", row_group_bytes=4_000)
    assert len(ds.files) > 1
    for f in ds.files:
        assert pq.read_schema(os.path.join(ds.version_path, f.path)) == ds.schema
    assert loader.open_dataset(tmp_path / "d").schema == ds.schema
    assert ds.schema.field("ts").type == pa.timestamp("ms") and ds.schema.field("day").type == pa.date32()
    assert read_all(ds).equals(src.cast(ds.schema))  # the same instants, in the stored units


# --- columns a cache cannot hold ---


@pytest.mark.parametrize(
    ("column", "match"),
    [
        (pa.UnionArray.from_sparse(pa.array([0, 0], pa.int8()), [pa.array([1, 2])]), r"column 'bad'.*union"),
        (pa.nulls(2), r"column 'bad'.*null"),
        (pa.array([{"x": None}, {"x": None}], pa.struct([("x", pa.null())])), r"column 'bad\.x'.*null"),
        (pa.array([(1, 2, 3), (4, 5, 6)], pa.month_day_nano_interval()), r"column 'bad'.*month_day_nano"),
        (pa.array([decimal.Decimal("1E+2"), None], pa.decimal128(20, -2)), r"column 'bad'.*decimal128\(20, -2\)"),
    ],
)
def test_unsupported_column_types_are_refused_up_front(tmp_path, column, match):
    data = pa.table({"id": [1, 2], "bad": column})
    with pytest.raises(loader.ConfigError, match=match):
        loader.write_cache(data, tmp_path, "d")
    assert not (tmp_path / "d").exists()  # nothing claimed, nothing published


# --- CURRENT ---


def test_current_that_is_not_utf8_is_a_typed_error_naming_it(tmp_path, table):
    loader.write_cache(table, tmp_path, "d")
    (tmp_path / "d" / "CURRENT").write_bytes(b"\xffv1")
    with pytest.raises(loader.DatasetNotFoundError, match=r"CURRENT.*not UTF-8") as info:
        publish.current_version(pafs.LocalFileSystem(), str(tmp_path / "d"))
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    with pytest.raises(loader.DatasetNotFoundError):
        loader.open_dataset(tmp_path / "d")


def test_half_written_owner_file_on_lockless_storage_counts_as_alive_until_stale(tmp_path):
    fs = pafs.SubTreeFileSystem("/", pafs.LocalFileSystem())  # not a LocalFileSystem: no locks, like HDFS
    dataset_dir = tmp_path / "d"
    (dataset_dir / "_staging-20260101T000000Z-0000abcd").mkdir(parents=True)
    owner = dataset_dir / f"_staging-20260101T000000Z-0000abcd{claims.OWNER_SUFFIX}"
    owner.write_bytes(b'{"host": "h')  # its run is still writing it
    assert claims.clean_stale_staging(fs, str(dataset_dir)) == []
    assert owner.exists() and (dataset_dir / "_staging-20260101T000000Z-0000abcd").is_dir()
    old = owner.stat().st_mtime - claims.PENDING_STALE_AFTER_S - 1
    os.utime(owner, (old, old))
    assert claims.clean_stale_staging(fs, str(dataset_dir)) == ["_staging-20260101T000000Z-0000abcd"]
    assert os.listdir(dataset_dir) == []
