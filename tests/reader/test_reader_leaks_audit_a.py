"""Leak audit A: a reader whose transform refers back to the object holding it (``self.reader = make_reader(...,
transform=self.augment)``) stops when that object is dropped, and pool="process" names such a transform when it
cannot be pickled."""

from __future__ import annotations

import functools
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import loader
from loader import tasks
from loader.errors import ConfigError, LarderError
from tests.reader.conftest import descendants

pytestmark = pytest.mark.slow


def scaled(owner: Owner, batch: dict) -> dict:
    """The transform of a ``functools.partial`` over the owner (module level: process workers import it)."""
    return owner.augment(batch)


class Owner:
    """A data module holding its reader, whose transform refers back to it (``kind``: how)."""

    def __init__(self, ds, pool: str, kind: str, **kwargs):
        self.scale = 3
        if kind == "method":
            transform = self.augment
        elif kind == "partial":
            transform = functools.partial(scaled, self)
        elif kind == "lambda":
            transform = lambda batch: self.augment(batch)  # noqa: E731 - the pattern under test
        else:
            owner = self

            def transform(batch):
                return owner.augment(batch)

        self.reader = loader.make_reader(ds, batch_size=10, pool=pool, workers=2, num_epochs=None,
                                         transform=transform, **kwargs)

    def augment(self, batch: dict) -> dict:
        batch["scaled"] = batch["id"] * self.scale
        return batch

    def __getstate__(self) -> dict:
        """A process worker gets the owner without its reader (which cannot be pickled)."""
        return {"scale": self.scale}


def _wait_until(done, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done()


CASES = [(pool, kind) for pool in ("serial", "thread") for kind in ("method", "partial", "lambda", "closure")]
CASES += [("process", "method"), ("process", "partial")]  # lambdas and closures do not pickle


@pytest.mark.parametrize(("pool", "kind"), CASES)
def test_dropping_the_owner_stops_a_reader_whose_transform_refers_back(mixed_cache, request, pool, kind):
    if pool == "process":
        request.getfixturevalue("leak_probe")  # no worker process or segment left behind
    before = set(threading.enumerate())
    owner = Owner(mixed_cache, pool, kind)
    batches = [next(owner.reader) for _ in range(3)]
    assert all((b["scaled"] == b["id"] * 3).all() for b in batches)  # the transform ran, in the workers
    reader, key = weakref.ref(owner.reader), owner.reader._ctx.key
    started = {t for t in set(threading.enumerate()) - before if t.name.startswith("larder")}
    assert (len(started) >= 3) == (pool != "serial")  # the producer and two workers
    workers = set()
    if pool == "process":
        workers = {p.pid for p in owner.reader._pipeline._transform_pool.processes()}
        assert workers and workers <= descendants()
    del owner, batches  # without close()
    gc.collect()
    assert _wait_until(lambda: not any(t.is_alive() for t in started)), [t.name for t in started if t.is_alive()]
    assert reader() is None  # collected: its windows, queue and batches freed
    assert key not in tasks._CONTEXTS
    assert not workers & descendants()


def test_a_transform_referring_back_still_runs_after_restarts_and_the_reader_still_goes(mixed_cache):
    owner = Owner(mixed_cache, "thread", "method", seed=1)
    first = [next(owner.reader) for _ in range(3)]
    state = owner.reader.state_dict()
    more = [next(owner.reader)["scaled"].tolist() for _ in range(2)]
    owner.reader.load_state_dict(state)  # a new pipeline, same reader
    assert [next(owner.reader)["scaled"].tolist() for _ in range(2)] == more
    owner.reader.set_epoch(1)
    later = next(owner.reader)
    assert (later["scaled"] == later["id"] * 3).all()
    before_close = {t for t in threading.enumerate() if t.name.startswith("larder")}
    reader = weakref.ref(owner.reader)
    del owner, first, later
    gc.collect()
    assert _wait_until(lambda: not any(t.is_alive() for t in before_close))
    assert reader() is None


class MixOwner:
    """Holds a mix of two readers, one of whose transforms refers back to it."""

    def __init__(self, ds):
        own = loader.make_reader(ds, batch_size=10, pool="thread", workers=2, num_epochs=None,
                                 transform=self.augment)
        other = loader.make_reader(ds, batch_size=10, pool="thread", workers=2, num_epochs=None)
        self.mixed = loader.mix([own, other], weights=[1, 1], seed=0)

    def augment(self, batch: dict) -> dict:
        batch["mine"] = batch["id"] + 1
        return batch


def test_dropping_the_owner_of_a_mix_stops_its_readers(mixed_cache):
    before = set(threading.enumerate())
    owner = MixOwner(mixed_cache)
    drawn = [next(owner.mixed) for _ in range(8)]
    assert {"mine" in batch for batch in drawn} == {True, False}  # both sources drawn, one transformed
    assert all((batch["mine"] == batch["id"] + 1).all() for batch in drawn if "mine" in batch)
    started = {t for t in set(threading.enumerate()) - before if t.name.startswith("larder")}
    assert len(started) >= 6
    mixed = weakref.ref(owner.mixed)
    del owner, drawn
    gc.collect()
    assert _wait_until(lambda: not any(t.is_alive() for t in started))
    assert mixed() is None


class TorchOwner:
    """Holds a DataLoader whose reader's transform refers back to it (pool="process": the adapter keeps the reader
    of a finished pass, with its workers, for the next)."""

    def __init__(self, ds):
        import loader.torch

        self.loader = loader.torch.make_dataloader(ds.version_path, batch_size=100, transform=self.augment,
                                                   pool="process", workers=2)

    def augment(self, batch: dict) -> dict:
        batch["mine"] = batch["id"] * 2
        return batch

    def __getstate__(self) -> dict:
        return {}  # a process worker gets the owner without its loader


def test_dropping_the_owner_of_a_torch_loader_stops_its_kept_reader(mixed_cache, leak_probe):
    pytest.importorskip("torch")
    before, procs = set(threading.enumerate()), descendants()
    owner = TorchOwner(mixed_cache)
    got = list(owner.loader)  # a whole pass: its reader, with its workers, is kept for the next
    assert len(got) == 10 and all((b["mine"] == b["id"] * 2).all() for b in got)
    started = {t for t in set(threading.enumerate()) - before if t.name.startswith("larder")}
    workers = descendants() - procs
    assert started and workers
    del owner, got
    gc.collect()
    assert _wait_until(lambda: not any(t.is_alive() for t in started)), [t.name for t in started if t.is_alive()]
    assert _wait_until(lambda: not workers & descendants())


class HoldsReader:
    """``transform=self.augment`` with pool="process": pickling the transform drags in the reader."""

    def __init__(self, ds):
        self.reader = loader.make_reader(ds, batch_size=10, pool="process", workers=2, transform=self.augment)

    def augment(self, batch: dict) -> dict:
        return batch


def test_a_process_transform_that_drags_in_its_reader_is_a_named_config_error(mixed_cache, leak_probe):
    owner = HoldsReader(mixed_cache)  # accepted: the reader is not attached yet when make_reader checks
    with pytest.raises(ConfigError) as caught:
        next(owner.reader)
    error = caught.value
    assert isinstance(error, LarderError) and isinstance(error, ValueError)
    text = str(error)
    assert "'HoldsReader.augment'" in text and "pool='process'" in text
    assert "refers to a larder reader" in text and "self.reader = make_reader" in text
    assert isinstance(error.__cause__, TypeError)  # the pickling error, chained
    with pytest.raises(ConfigError):  # the reader stays failed
        next(owner.reader)
    owner.reader.close()


class HoldsLock:
    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, batch: dict) -> dict:
        return batch


def test_an_unpicklable_process_transform_without_a_reader_is_named_too(mixed_cache):
    with pytest.raises(ConfigError, match=r"'HoldsLock'.*cannot pickle.*cannot be sent to another process") as caught:
        loader.make_reader(mixed_cache, pool="process", transform=HoldsLock())
    assert isinstance(caught.value.__cause__, TypeError)


GC_ON_A_WORKER = textwrap.dedent("""
    import gc, os, sys, threading, time
    import loader
    from loader import tasks

    ARMED, CUE, DONE, ONCE = threading.Event(), threading.Event(), threading.Event(), threading.Lock()

    def collect_on_cue(batch):
        if not ARMED.is_set():  # the first batch (alone in its task): the consumer waits for it
            ARMED.set()
        elif ONCE.acquire(blocking=False) and CUE.wait(10):  # a later one, once the owner is dropped
            gc.collect()  # on this worker thread: collects the owner and its reader
            DONE.set()
        return batch

    class Owner:
        pass

    if __name__ == "__main__":
        gc.disable()  # collections only where this script asks for them
        owner = Owner()
        owner.reader = loader.make_reader(sys.argv[1], batch_size=10, pool="thread", workers=2, num_epochs=None,
                                          transform=collect_on_cue)
        owner.reader.owner = owner  # a cycle: only garbage collection frees them
        key = owner.reader._ctx.key
        next(owner.reader)
        del owner
        CUE.set()
        returned = DONE.wait(20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(t.name.startswith("larder") for t in threading.enumerate()):
            time.sleep(0.05)
        left = sorted(t.name for t in threading.enumerate() if t.name.startswith("larder"))
        print("returned", returned, "left", left, "registered", key in tasks._CONTEXTS, flush=True)
        os._exit(0)
""")


def test_a_reader_collected_on_its_own_worker_thread_closes_without_deadlock(tmp_path, mixed_cache):
    """Garbage collection runs on whichever thread allocates: one of the reader's own workers, which the close
    would wait for (through the producer) if it waited there."""
    script = tmp_path / "gc_on_worker.py"
    script.write_text(GC_ON_A_WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), mixed_cache.version_path], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.stdout.strip() == "returned True left [] registered False", proc.stdout + proc.stderr
