"""Process-pool audit: arrays come back as they were returned (subclass, dtype, fields), and a close interrupted by
a second Ctrl-C is finished by the next close (or garbage collection), leaving no worker or segment behind."""

from __future__ import annotations

import gc
import glob
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import loader
from loader import shm
from loader.process_pool import ProcessPool, _ProcessHandle
from tests.reader.conftest import POOLS, descendants, segments


def exotic(batch: dict) -> dict:
    """Arrays that are not plain ndarrays of a plain dtype (module level: process workers import it)."""
    ids = batch["id"]
    x = ids.astype(np.float64)
    x[::3] = np.nan
    masked = np.ma.masked_invalid(x)
    masked.fill_value = -7.5
    rec = np.zeros(len(ids), dtype=[("a", "<i4"), ("b", ">f8"), ("c", "U3")])
    rec["a"], rec["b"], rec["c"] = ids, ids * 0.5, [str(i % 1000) for i in ids.tolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = np.asmatrix(np.stack([ids, ids * 2], axis=1))
    return {
        "id": ids,
        "masked": masked,
        "rec": rec,
        "recarray": rec.view(np.recarray),
        "masked_rec": np.ma.array(rec, mask=[(i % 2 == 0, False, i % 5 == 0) for i in range(len(ids))]),
        "matrix": matrix,
        "big": ids.astype(">i8"),
        "when": ids.astype("datetime64[s]"),
        "meta": np.asarray(x, dtype=np.dtype(np.float64, metadata={"unit": "m"})),
        "obj": np.array([str(i) for i in ids.tolist()], dtype=object),
    }


def _assert_same(got, want, key: str) -> None:
    assert type(got) is type(want), key
    assert got.dtype == want.dtype and got.dtype.descr == want.dtype.descr, key
    assert got.dtype.metadata == want.dtype.metadata, key
    assert got.shape == want.shape, key
    if isinstance(want, np.ma.MaskedArray):
        assert np.array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want)), key
        assert got.fill_value == want.fill_value, key
        assert got.data.tobytes() == want.data.tobytes(), key
    elif want.dtype.hasobject:
        assert got.tolist() == want.tolist(), key
    else:
        assert got.tobytes() == want.tobytes(), key


@pytest.mark.parametrize("pool", POOLS)
def test_a_transform_returns_subclasses_and_structured_dtypes_unchanged_in_every_pool(mixed_cache, pool):
    with loader.make_reader(mixed_cache, batch_size=20, pool=pool, workers=2, transform=exotic,
                            num_epochs=1) as reader:
        batches = [next(reader) for _ in range(3)]
    for batch in batches:
        want = exotic({"id": batch["id"].copy()})
        assert list(batch) == list(want)
        for key in want:
            _assert_same(batch[key], want[key], key)
        assert batch["masked"].mean() == want["masked"].mean()  # the mask is honoured, not NaN
        assert batch["rec"]["a"].tolist() == batch["id"].tolist()


def test_user_dtypes_metadata_and_0d_arrays_cross_shared_memory_exactly():
    arrays = {
        "rec": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i2"), ("b", ">f4")]),
        "padded": np.zeros(3, dtype=np.dtype({"names": ["a"], "formats": ["<i4"], "offsets": [4], "itemsize": 12})),
        "meta": np.zeros(4, dtype=np.dtype("<u2", metadata={"k": 1})),
        "scalar": np.array(3.25),
        "plain": np.arange(6, dtype=">u4").reshape(2, 3),
    }
    try:
        import ml_dtypes
    except ImportError:
        pass
    else:
        arrays["bf16"] = np.arange(5, dtype=np.float32).astype(ml_dtypes.bfloat16)
    names: list[str] = []
    got = shm.decode(shm.encode(arrays, "lrdtest", names), unlink=True)
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)
    for key, want in arrays.items():
        _assert_same(got[key], want, key)
    assert not got["plain"].dtype.hasobject and shm.encode({"x": np.zeros(3)}, "lrdtest", names).specs[0][1] == "<f8"
    shm.decode(shm.encode({"x": np.zeros(3)}, "lrdtest", names), unlink=True)


def echo(arrays: dict) -> dict:
    """Returns its argument arrays unchanged, plus what the worker saw of the structured one."""
    return {**arrays, "a_sum": np.array([int(arrays["rec"]["a"].sum())])}


def test_structured_and_masked_arguments_reach_the_worker_and_come_back_whole():
    rec = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")])
    masked = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False], fill_value=9.0)
    with ProcessPool(1) as pool:
        got = pool.submit(echo, {"rec": rec, "masked": masked}).result()
    _assert_same(got["rec"], rec, "rec")
    _assert_same(got["masked"], masked, "masked")
    assert got["a_sum"].tolist() == [4]


def keep_all(batch: dict) -> dict:
    """Returns its arrays unchanged, plus a new copy of one (which has to travel back)."""
    return {**batch, "copy": batch["rec"].copy()}


@pytest.mark.parametrize("pagemap", [True, False], ids=["mapped-args", "copied-args"])
def test_structured_arguments_returned_unchanged_are_left_out_of_the_result(monkeypatch, pagemap):
    from loader import procworker

    monkeypatch.setattr(procworker, "_pagemap", pagemap and procworker._pagemap_readable())
    monkeypatch.setattr(procworker, "_worker_prefix", "lrdtest")
    rec = np.array([(1, 2.5), (3, np.nan)], dtype=[("a", "<i4"), ("b", ">f8")])
    sent = {"rec": rec[:1].copy(), "nan": rec, "plain": np.arange(4.0)}
    names: list[str] = []
    reply = procworker.process_call(keep_all, shm.encode((sent,), "lrdtest", names))
    got = shm.decode(reply.value, unlink=True, args=(sent,))
    for name in names:
        shm.unlink_quietly(name)
    assert got["rec"] is sent["rec"] and got["plain"] is sent["plain"]  # not sent back: the sender has them
    for key in sent:
        _assert_same(got[key], sent[key], key)
    _assert_same(got["copy"], sent["rec"], "copy")


def busy(marker_dir: str, seconds: float, arrays: dict) -> dict:
    """Marks that it started, then sleeps (a worker busy with a task while its pool closes)."""
    open(os.path.join(marker_dir, f"{os.getpid()}"), "w").close()
    time.sleep(seconds)
    return {"x": np.zeros(10)}


def _busy_pool(tmp_path, workers: int = 2, join_timeout: float = 60.0) -> tuple[ProcessPool, list]:
    pool = ProcessPool(workers, join_timeout=join_timeout)
    handles = [pool.submit(busy, str(tmp_path), 60.0, {"arg": np.ones(1000)}) for _ in range(workers)]
    deadline = time.monotonic() + 30
    while len(os.listdir(tmp_path)) < workers and time.monotonic() < deadline:  # every worker inside its task
        time.sleep(0.05)
    assert len(os.listdir(tmp_path)) == workers
    return pool, handles


def _left(pool: ProcessPool) -> list[str]:
    return glob.glob(f"/dev/shm/{pool.segment_prefix}_*")


def test_a_second_ctrl_c_while_close_joins_busy_workers_is_finished_by_the_next_close(tmp_path, leak_probe):
    before = descendants()
    pool, handles = _busy_pool(tmp_path)
    workers = descendants() - before
    assert len(workers) == 2 and _left(pool)
    main = threading.main_thread().ident
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT))  # close is joining by then
    try:
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            pool.close()  # waits up to join_timeout (60 s) for the busy workers: interrupted after 1 s
        assert time.monotonic() - t0 < 30
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert descendants() & workers  # interrupted while the workers still ran
    t0 = time.monotonic()
    pool.close()  # finishes the interrupted close: workers terminated at once, segments removed
    assert time.monotonic() - t0 < 10
    assert not descendants() & workers
    assert _left(pool) == []
    del handles


@pytest.mark.parametrize("where", ["join", "terminate", "discard"])
def test_a_close_interrupted_anywhere_is_finished_by_the_next_close(tmp_path, monkeypatch, leak_probe, where):
    import multiprocessing.process

    before = descendants()
    pool, handles = _busy_pool(tmp_path, join_timeout=0.2)
    workers = descendants() - before
    cls, name = {"join": (multiprocessing.process.BaseProcess, "join"),
                 "terminate": (multiprocessing.process.BaseProcess, "terminate"),
                 "discard": (_ProcessHandle, "discard")}[where]
    real, interrupted = getattr(cls, name), []

    def interrupted_once(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(cls, name, interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            pool.close()
    assert interrupted
    pool.close()
    assert not descendants() & workers
    assert _left(pool) == []
    del handles


def test_an_interrupted_close_is_finished_when_the_pool_is_garbage_collected(tmp_path, monkeypatch, leak_probe):
    import multiprocessing.process

    before = descendants()
    pool, handles = _busy_pool(tmp_path)
    workers, prefix = descendants() - before, pool.segment_prefix
    real, interrupted = multiprocessing.process.BaseProcess.join, []

    def join_interrupted_once(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(multiprocessing.process.BaseProcess, "join", join_interrupted_once)
        try:
            pool.close()
        except KeyboardInterrupt:
            pass
    assert interrupted and descendants() & workers
    gc.disable()  # freed as soon as dropped, not at some later garbage collection: nothing holds it in a cycle
    try:
        del pool, handles  # dropped without another close (a reader drops its interrupted pipeline)
        assert not descendants() & workers
        assert glob.glob(f"/dev/shm/{prefix}_*") == [] and not {s for s in segments() if s.startswith(prefix)}
    finally:
        gc.enable()


def slow(batch: dict) -> dict:
    time.sleep(2.0)
    return batch


def test_a_reader_interrupted_twice_leaves_no_worker_or_segment_once_closed(mixed_cache, monkeypatch, leak_probe):
    import multiprocessing.process

    from loader.pipeline import Pipeline

    before, before_shm = descendants(), segments()
    reader = loader.make_reader(mixed_cache, batch_size=10, pool="process", workers=2, transform=slow, num_epochs=1)
    next(reader)
    workers = descendants() - before
    real_join, interrupted = multiprocessing.process.BaseProcess.join, []

    def next_interrupted(self):
        raise KeyboardInterrupt  # the first Ctrl-C, waiting for a batch

    def join_interrupted_once(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt  # the second, while the pool waits for its busy workers
        return real_join(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Pipeline, "next", next_interrupted)
        m.setattr(multiprocessing.process.BaseProcess, "join", join_interrupted_once)
        try:
            next(reader)
        except KeyboardInterrupt:
            pass
    assert interrupted and workers
    reader.close()
    assert not descendants() & workers
    assert segments() - before_shm == set()
