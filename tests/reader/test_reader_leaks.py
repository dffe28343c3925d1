"""Every worker stops and every shared-memory segment goes: after close, an error, GC and Ctrl-C."""

from __future__ import annotations

import gc
import glob
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import loader
from loader.errors import TransformError, WorkerError
from tests.reader.conftest import descendants, unchanged


def explode_late(batch, rng):
    """Fails on the batch holding row 700 (somewhere mid-epoch)."""
    if 700 in batch["id"]:
        raise RuntimeError("late failure")
    return batch


def noise(batch, rng):
    batch["noise"] = rng.random(len(batch["id"]))
    return batch


def _workers(reader) -> set[int]:
    return {p.pid for p in reader._pipeline._transform_pool.processes()}


pytestmark = pytest.mark.slow


def test_close_mid_epoch_stops_workers(mixed_cache, leak_probe):
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="process", workers=2, transform=noise)
    next(reader)
    workers = _workers(reader)
    assert workers and workers <= descendants()
    reader.close()
    assert not workers & descendants()


def test_exception_mid_iteration_stops_workers(mixed_cache, leak_probe):
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="process", workers=2, transform=explode_late,
                                seed=1)
    got = 0
    with pytest.raises(TransformError, match="late failure"):
        for _ in reader:
            got += 1
    assert got > 0 and reader._pipeline is None  # failed mid-epoch, and the reader closed itself


def die_on_row_500(batch, rng):
    """A worker that dies outright (a crash in native code, the OOM killer) on the batch holding row 500."""
    if 500 in batch["id"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return batch


def test_a_worker_that_dies_is_an_error_and_leaves_nothing_behind(mixed_cache, leak_probe):
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="process", workers=2, transform=die_on_row_500,
                                seed=3)
    got = 0
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="worker process of the process pool died"):
        for _ in reader:
            got += 1
    assert got < 100 and time.monotonic() - t0 < 60  # failed where the worker died, without hanging
    with pytest.raises(WorkerError):  # the reader stays failed
        next(reader)


def test_garbage_collection_stops_workers(mixed_cache, leak_probe):
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="process", workers=2, num_epochs=None,
                                transform=noise)
    next(reader)
    workers = _workers(reader)
    assert workers
    del reader
    gc.collect()
    assert not workers & descendants()


def test_thread_pool_threads_end_after_gc(mixed_cache):
    before = set(threading.enumerate())
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="thread", workers=3, num_epochs=None)
    next(reader)
    started = set(threading.enumerate()) - before
    assert len(started) >= 2  # the producer and the workers
    del reader
    gc.collect()
    assert not any(t.is_alive() for t in started)


SCRIPT = textwrap.dedent("""
    import faulthandler, glob, os, signal, sys, time
    import loader

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's timeout asks for every thread's stack
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even when the test run itself ignores SIGINT (a
    # background job of a non-interactive shell does, and a child inherits an ignored signal).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def slow(batch):
        time.sleep(0.02)
        return batch

    if __name__ == "__main__":
        reader = loader.make_reader(sys.argv[1], batch_size=10, pool="process", workers=2, transform=slow,
                                    num_epochs=None)
        try:
            with reader:
                next(reader)
                pool = reader._pipeline._transform_pool
                pids, prefix = [p.pid for p in pool.processes()], pool.segment_prefix
                print("ready", *pids, prefix, flush=True)
                for _ in reader:
                    pass
        except KeyboardInterrupt:
            alive = [p for p in pids if os.path.exists(f"/proc/{p}")
                     and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
            print("interrupted", len(pids), alive, glob.glob(f"/dev/shm/{prefix}*"), flush=True)
""")



def _start_trainer(tmp_path, cache) -> subprocess.Popen:
    """Run :data:`SCRIPT` on ``cache`` in its own session; it prints ``ready <worker pids> <prefix>``."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(script), cache.version_path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def test_ctrl_c_stops_workers_and_frees_segments(tmp_path, mixed_cache):
    proc = _start_trainer(tmp_path, mixed_cache)
    try:
        assert proc.stdout.readline().split()[0] == "ready"
        os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground group gets it
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it hangs: every thread's stack, from faulthandler
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"the trainer did not stop within 60 s of Ctrl-C; its threads:\n{err}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert out.strip() == "interrupted 2 [] []", err
    assert "Traceback" not in err  # workers ignore SIGINT instead of printing tracebacks


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_end_when_the_trainer_is_killed(tmp_path, mixed_cache):
    # SIGKILL (or the OOM killer) runs no cleanup in the trainer: the workers notice it is gone and exit, and
    # with them the shared-memory segments go (Python's resource tracker removes what they registered)
    proc = _start_trainer(tmp_path, mixed_cache)
    try:
        _, *pids, prefix = proc.stdout.readline().split()
        workers = [int(p) for p in pids]
        assert len(workers) == 2 and all(_running(p) for p in workers)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (any(_running(p) for p in workers) or glob.glob(f"/dev/shm/{prefix}*")):
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)]
        assert not glob.glob(f"/dev/shm/{prefix}*")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()


def slow_copy(batch):
    time.sleep(0.01)
    return batch


@pytest.mark.parametrize("pool", ["serial", "thread", "process"])
def test_loop_interrupted_by_ctrl_c_continues_where_it_stopped(mixed_cache, pool):
    """A notebook's loop stopped by Ctrl-C and run again yields the rest of the epoch, not an early end."""
    with loader.make_reader(mixed_cache, batch_size=10, seed=3, pool="serial") as ref:
        expected = [b["id"].tolist() for b in ref]
    reader = loader.make_reader(mixed_cache, batch_size=10, seed=3, pool=pool, workers=2, transform=slow_copy)
    got = []

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            for b in reader:
                if not got:  # the pools are up (process workers take a while to start)
                    signal.setitimer(signal.ITIMER_REAL, 0.1)
                got.append(b["id"].tolist())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert 0 < len(got) < len(expected)  # stopped mid-epoch
    with reader:
        got += [b["id"].tolist() for b in reader]
    assert got == expected


@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_ctrl_c_after_a_batch_left_the_pipeline_does_not_lose_it(mixed_cache, pool, monkeypatch):
    from loader.pipeline import ReaderStats

    with loader.make_reader(mixed_cache, batch_size=50, seed=2, pool="serial") as ref:
        expected = [b["id"].tolist() for b in ref]
    real, calls = ReaderStats.add_mixed, []

    def add_mixed_interrupted_once(self, distinct):
        calls.append(distinct)
        if len(calls) == 3:  # the third batch is out of the pipeline, not yet delivered
            raise KeyboardInterrupt
        real(self, distinct)

    monkeypatch.setattr(ReaderStats, "add_mixed", add_mixed_interrupted_once)
    got = []
    with loader.make_reader(mixed_cache, batch_size=50, seed=2, pool=pool, workers=2) as reader:
        with pytest.raises(KeyboardInterrupt):
            for b in reader:
                got.append(b["id"].tolist())
        got += [b["id"].tolist() for b in reader]
    assert got == expected


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_second_ctrl_c_while_closing_leaves_no_worker(mixed_cache, pool, monkeypatch, leak_probe):
    from loader.pipeline import Pipeline

    reader = loader.make_reader(mixed_cache, batch_size=10, pool=pool, workers=2, num_epochs=None,
                                transform=unchanged if pool == "process" else None)
    next(reader)
    real_join, interrupted = threading.Thread.join, []

    def next_interrupted(self):
        raise KeyboardInterrupt  # the first Ctrl-C, waiting for a batch

    def join_interrupted_once(self, timeout=None):
        if self.name.startswith("larder") and not interrupted:  # a worker or the producer
            interrupted.append(1)
            raise KeyboardInterrupt  # the second, while the interrupted pipeline closes
        return real_join(self, timeout)

    with monkeypatch.context() as m:
        m.setattr(Pipeline, "next", next_interrupted)
        m.setattr(threading.Thread, "join", join_interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            next(reader)
    assert interrupted
    reader.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(t.name.startswith("larder") and t.is_alive()
                                              for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("larder") and t.is_alive()]


CALLS: list = []


def slow_recorded(batch):
    CALLS.append(len(batch["id"]))
    time.sleep(0.2)
    return batch


def test_a_slow_transform_runs_one_batch_per_task_and_close_drops_queued_ones(mixed_cache):
    from loader.pipeline import ReaderStats, Setup, _task_size

    setup = Setup(key="k", plan=None, seed=0, shuffle=True, num_epochs=1, pieces_ahead=1, batches_ahead=4,
                  prefetch=32, batches_per_task=8, has_transform=True)
    stats = ReaderStats()
    assert _task_size(setup, stats) == 1  # not measured yet
    stats.transform_seconds, stats._transformed = 0.4, 2  # 0.2 s a batch
    assert _task_size(setup, stats) == 1
    stats.transform_seconds = 0.0002  # 0.1 ms a batch
    assert _task_size(setup, stats) == 8
    CALLS.clear()
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="thread", workers=2, transform=slow_recorded,
                                num_epochs=None)
    next(reader), next(reader)
    reader.close()
    assert len(CALLS) <= 2 + 2 * 2  # the delivered ones, and at most a batch per worker in flight per wait
