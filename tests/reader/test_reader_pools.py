"""The three pools: lazy start, ordered results, exceptions with their traceback, shared-memory transport."""

from __future__ import annotations

import gc
import glob
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pyarrow as pa
import pytest

from loader.errors import ConfigError, WorkerError
from loader.pools import make_pool
from loader.process_pool import ProcessPool
from tests.reader.conftest import POOLS, descendants, segments


def add_column(table: pa.Table, k: int) -> pa.Table:
    return table.append_column("k", pa.array(np.full(table.num_rows, k)))


def to_arrays(batch: pa.RecordBatch) -> tuple[dict, str]:
    x = batch.column(0).to_numpy()
    return {"x": x * 2, "grid": np.arange(len(x) * 6, dtype=np.float32).reshape(len(x), 2, 3),
            "names": np.array([f"n{v}" for v in x], dtype=object)}, "meta"


_stash: list = []


def stash_and_report(batch: pa.RecordBatch) -> tuple[int, int]:
    """Keep every argument (as a transform that mixes with earlier batches would) and report the value range
    of the previous one: it must not change when the consumer reuses the segment it came in."""
    _stash.append(batch.column(0).to_numpy())
    prev = _stash[-2] if len(_stash) > 1 else _stash[-1]
    return int(prev.min()), int(prev.max())


def value_range(batch: pa.RecordBatch) -> tuple[int, int]:
    x = batch.column(0).to_numpy()
    return int(x.min()), int(x.max())


def fail_deep(n: int) -> None:
    raise ValueError(f"worker says no to {n}")


class Unpicklable(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.handle = threading.Lock()


def fail_unpicklable() -> None:
    raise Unpicklable("holds a lock")


@pytest.mark.parametrize("kind", POOLS)
def test_results_come_back_in_order_with_arrow_and_numpy_payloads(kind):
    table = pa.table({"x": np.arange(100)})
    with make_pool(kind, 2) as pool:
        handles = [pool.submit(add_column, table.slice(i * 10, 10), i) for i in range(10)]
        outs = [h.result() for h in handles]
        arrays, tag = pool.submit(to_arrays, table.to_batches()[0]).result()
    assert [t["k"][0].as_py() for t in outs] == list(range(10))
    assert [t["x"].to_pylist() for t in outs] == [list(range(i * 10, i * 10 + 10)) for i in range(10)]
    assert tag == "meta"
    assert arrays["x"].tolist() == (np.arange(100) * 2).tolist()
    assert arrays["grid"].shape == (100, 2, 3) and arrays["grid"][99, 1, 2] == 599
    assert arrays["names"][7] == "n7"
    arrays["x"][0] = -1  # batches handed to the trainer are writable


@pytest.mark.parametrize("kind", POOLS)
def test_worker_exception_keeps_type_and_traceback(kind):
    with make_pool(kind, 2) as pool:
        handle = pool.submit(fail_deep, 7)
        with pytest.raises(ValueError, match="worker says no to 7") as info:
            handle.result()
    text = "".join(str(x) for x in info.traceback) + repr(info.value.__cause__)
    assert "fail_deep" in text  # the worker's frame is visible (traceback object or remote text)


def test_unpicklable_worker_exception_becomes_worker_error_with_text():
    with ProcessPool(1) as pool:
        with pytest.raises(WorkerError, match="Unpicklable: holds a lock") as info:
            pool.submit(fail_unpicklable).result()
    assert "fail_unpicklable" in str(info.value)


@pytest.mark.parametrize("kind", POOLS)
def test_constructors_start_nothing(kind):
    threads, procs = set(threading.enumerate()), descendants()
    pool = make_pool(kind, 3)
    assert set(threading.enumerate()) - threads == set()
    assert descendants() - procs == set()
    pool.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_closed_pool_takes_no_more_work(kind):
    pool = make_pool(kind, 1)
    pool.submit(fail_deep, 1).cancel()
    pool.close()
    with pytest.raises(RuntimeError, match="closed pool"):
        pool.submit(fail_deep, 2)


def test_bad_pool_arguments():
    with pytest.raises(ConfigError, match="pool must be one of"):
        make_pool("gpu", 1)
    with pytest.raises(ConfigError, match="workers"):
        make_pool("thread", 0)


def test_process_pool_close_frees_workers_and_segments_even_with_unread_results():
    ProcessPool(1).close()  # closing a pool that never started is a no-op
    before_shm = segments()
    pool = ProcessPool(2)
    big = pa.table({"x": np.arange(200_000)})
    handles = [pool.submit(add_column, big, i) for i in range(6)]
    handles[0].result()
    workers = {p.pid for p in pool.processes()}
    assert workers and workers <= descendants()
    pool.close()  # five results were never read: their segments must go too
    assert not workers & descendants()
    assert segments() - before_shm == set()
    del handles
    gc.collect()


def test_process_pool_reuses_argument_segments_and_workers_keep_what_they_received():
    before_shm = segments()
    with ProcessPool(1) as pool:
        first = pool.submit(value_range, pa.record_batch({"x": np.full(50_000, 0)})).result()
        kept = segments() - before_shm  # the argument segment, kept for the next task
        results = [pool.submit(value_range, pa.record_batch({"x": np.full(50_000, k)})).result()
                   for k in range(1, 20)]
        assert len(kept) == 1 and segments() - before_shm == kept  # one segment, rewritten 19 times
        assert first == (0, 0) and results == [(k, k) for k in range(1, 20)]
        # A task that keeps its arguments (mixing with earlier batches): the segments it keeps are never
        # rewritten, so what it kept stays intact.
        results = [pool.submit(stash_and_report, pa.record_batch({"x": np.full(50_000, k)})).result()
                   for k in range(20)]
    assert results == [(0, 0)] + [(k - 1, k - 1) for k in range(1, 20)]
    assert segments() - before_shm == set()


def test_process_pool_keeps_no_more_spare_argument_bytes_than_its_cap(monkeypatch):
    from loader import process_pool as pools

    monkeypatch.setattr(pools, "_MAX_SPARE_BYTES", 300_000)
    before_shm = segments()
    with ProcessPool(1) as pool:
        pool.submit(value_range, pa.record_batch({"x": np.full(10_000, 1)})).result()  # 80 kB: kept
        assert len(segments() - before_shm) == 1
        pool.submit(value_range, pa.record_batch({"x": np.full(100_000, 2)})).result()  # 800 kB: released
        assert len(segments() - before_shm) == 1
    assert segments() - before_shm == set()


def test_a_script_without_a_main_guard_gets_an_error_that_says_so(tmp_path, mixed_cache):
    script = tmp_path / "train.py"  # the reader is started at import time: the workers re-import this file
    script.write_text(
        "import loader\n"
        "def same(batch):\n"
        "    return batch\n"
        f"for batch in loader.make_reader({mixed_cache.version_path!r}, pool='process', batch_size=100,\n"
        "                                 transform=same):\n"
        "    pass\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": os.getcwd()})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "WorkerError" in err and "if __name__ == '__main__':" in err
    assert not glob.glob(f"/dev/shm/lrd{proc.pid:x}x*")  # its segments are gone with it


def test_thread_pool_runs_urgent_tasks_first_and_cancels_queued_ones_on_close():
    pool = make_pool("thread", 1)
    gate, order = threading.Event(), []
    blocker = pool.submit(gate.wait, 5)  # occupies the only worker while the others queue up
    queued = [pool.submit(order.append, f"read {i}") for i in range(3)]
    urgent = [pool.submit(order.append, f"batch {i}", urgent=True) for i in range(2)]
    gate.set()
    assert blocker.result() is True
    for h in urgent + queued:
        h.result()
    assert order == ["batch 0", "batch 1", "read 0", "read 1", "read 2"]  # urgent first, each class in order
    gate.clear()
    pool.submit(gate.wait, 5)
    left = pool.submit(order.append, "never")
    threading.Timer(0.2, gate.set).start()
    pool.close()
    with pytest.raises(CancelledError):  # queued when the pool closed: cancelled, never run
        left.result()
    assert "never" not in order
    assert not [t for t in threading.enumerate() if t.name.startswith("larder-worker")]
    with pytest.raises(RuntimeError, match="closed pool"):
        pool.submit(order.append, "late")


def test_handles_say_when_their_result_is_ready():
    for kind in ("thread", "process"):
        with make_pool(kind, 1) as pool:
            gate = pool.submit(time.sleep, 0.3)
            assert not gate.done()
            gate.result()
            assert gate.done()
    with make_pool("serial", 1) as pool:
        assert not pool.submit(int, 3).done()  # lazy: it runs when its result is asked for


def keep_and_add(batch: dict) -> dict:
    """Returns its batch with one column added (the others unchanged)."""
    batch["twice"] = batch["x"] * 2
    return batch


def scale_in_place(batch: dict) -> dict:
    batch["x"] *= 3
    return batch


def test_process_pool_sends_back_only_what_the_task_changed():
    x = np.arange(200_000, dtype=np.int64)
    with ProcessPool(1) as pool:
        sent = {"x": x, "y": np.ones(5)}
        got = pool.submit(keep_and_add, sent).result()
        assert got["x"] is x and got["y"] is sent["y"]  # unchanged: the consumer's own arrays, no copy back
        assert np.array_equal(got["twice"], x * 2)
        got = pool.submit(scale_in_place, {"x": x}).result()
        assert got["x"] is not x and np.array_equal(got["x"], x * 3)  # changed in place: sent back
        assert np.array_equal(x, np.arange(200_000))  # the worker changed its own copy


def record_pid(batch: dict) -> dict:
    batch["pid"] = np.full(len(batch["id"]), os.getpid())
    return batch


def test_process_pool_runs_transforms_in_processes_and_reads_in_threads(mixed_cache):
    import loader

    before = descendants()
    with loader.make_reader(mixed_cache, batch_size=50, pool="process", workers=2, num_epochs=1) as r:
        ids = [b["id"] for b in r]
        assert descendants() == before  # no transform: nothing for worker processes to do, none started
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(1000))
    with loader.make_reader(mixed_cache, batch_size=50, pool="process", workers=2, num_epochs=1,
                            transform=record_pid) as r:
        batches = [next(r)]
        workers = {p.pid for p in r._pipeline._transform_pool.processes()}
        batches += list(r)
    pids = set(np.concatenate([b["pid"] for b in batches]).tolist())
    assert os.getpid() not in pids and pids <= workers
    assert np.array_equal(np.sort(np.concatenate([b["id"] for b in batches])), np.arange(1000))


def keys_seen(batch: dict) -> dict:
    """Records the key order the transform got, and adds an object column."""
    batch["seen"] = np.array(["|".join(batch)] * len(batch["id"]), dtype=object)
    return batch


@pytest.mark.parametrize("transform", [None, keys_seen])
def test_batch_keys_keep_their_order_in_every_pool(mixed_cache, transform):
    import loader

    kw = dict(batch_size=50, workers=2, num_epochs=1, strings="object", masks=True, transform=transform,
              columns=["id", "title", "ids", "image", "x"])
    keys, seen = {}, {}
    for kind in POOLS:
        with loader.make_reader(mixed_cache, pool=kind, **kw) as r:
            batches = list(r)
        keys[kind] = {tuple(b) for b in batches}
        seen[kind] = {s for b in batches for s in b["seen"]} if transform else set()
        assert np.array_equal(np.sort(np.concatenate([b["id"] for b in batches])), np.arange(1000))
    assert len(keys["serial"]) == 1 and keys["thread"] == keys["process"] == keys["serial"], keys
    order = next(iter(keys["serial"]))
    assert order[:11] == ("id.valid", "id", "title.valid", "title", "ids.valid", "ids", "ids.offsets", "image.valid",
                          "image", "x.valid", "x")
    if transform:
        assert order[-1] == "seen" and seen["thread"] == seen["process"] == seen["serial"] == {"|".join(order[:-1])}


def noise_positional(batch: dict, rng) -> dict:
    batch["noise"] = rng.random(len(batch["id"]))
    return batch


def noise_keyword_only(batch: dict, *, rng) -> dict:
    batch["noise"] = rng.random(len(batch["id"]))
    return batch


def noise_keyword_only_default(batch: dict, eps: float = 0.0, *, rng=None) -> dict:
    batch["noise"] = rng.random(len(batch["id"])) + eps
    return batch


def noise_args_and_keyword(batch: dict, *args, rng) -> dict:
    assert args == ()
    batch["noise"] = rng.random(len(batch["id"]))
    return batch


def keyword_only_option(batch: dict, *, scale=2) -> dict:  # no rng: called with the batch alone
    batch["noise"] = np.full(len(batch["id"]), float(scale))
    return batch


def test_keyword_only_rng_is_given_the_rng_in_every_pool(mixed_cache):
    """A transform's ``rng`` may be keyword-only: it gets the same RNG as a positional one, in every pool."""
    import loader
    from loader.tasks import takes_rng

    def run(transform, pool):
        with loader.make_reader(mixed_cache, batch_size=64, seed=3, num_epochs=2, pool=pool, workers=2,
                                columns=["id"], transform=transform) as r:
            return [(b["id"].tolist(), b["noise"].tolist()) for b in r]

    expected = run(noise_positional, "serial")
    assert len({tuple(n) for _, n in expected}) == len(expected)  # a different draw per batch
    for transform in (noise_keyword_only, noise_keyword_only_default, noise_args_and_keyword):
        assert takes_rng(transform)
        for pool in POOLS:
            assert run(transform, pool) == expected, (transform.__name__, pool)
    assert not takes_rng(keyword_only_option)
    assert all(n == [2.0] * len(n) for _, n in run(keyword_only_option, "process"))


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_killed_worker_is_named_with_its_signal_and_no_main_guard_hint():
    import signal

    pool = ProcessPool(2)
    try:
        assert pool.submit(nap, 0.0).result() == 0.0  # the pool started fine
        handles = [pool.submit(nap, 0.5) for _ in range(4)]
        time.sleep(0.2)
        victim = pool.processes()[0].pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerError) as err:
            for h in handles:
                h.result()
    finally:
        pool.close()
    text = str(err.value)
    assert f"worker pid {victim} killed by signal 9 (SIGKILL)" in text
    assert "__main__" not in text
