"""loader.mix at its end: the readers it opened stop, the readers passed in are left to their owner."""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pytest

import loader
from tests.reader.conftest import descendants, segments, unchanged


def _larder_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("larder-")}


def _drain_first_stop(m: loader.MixedReader) -> list[dict]:
    """Every batch of a ``stop="first"`` mix of two sources, checking that it ended with one source still
    part-way through its epoch (its pool started, batches left)."""
    batches = list(m)
    left = [r.batches_per_epoch - n for r, n in zip(m.readers, m.counts, strict=True)]
    assert batches and 0 in left and any(n > 0 and k > 0 for n, k in zip(m.counts, left, strict=True))
    return batches


def test_an_exhausted_mix_stops_the_thread_pools_it_opened(mixed_cache, uneven_cache):
    before = _larder_threads()
    with loader.mix([mixed_cache, uneven_cache], seed=3, batch_size=40, workers=2) as m:
        _drain_first_stop(m)
        assert _larder_threads() - before == set()  # nothing still reads ahead for a mix that has ended
        assert all(r._pipeline is None for r in m.readers)


@pytest.mark.slow
def test_an_exhausted_mix_stops_the_worker_processes_it_opened(mixed_cache, uneven_cache, leak_probe):
    procs, shm = descendants(), segments()
    with loader.mix([mixed_cache, uneven_cache], seed=3, batch_size=40, pool="process", workers=1,
                    transform=unchanged) as m:
        _drain_first_stop(m)
        assert descendants() - procs == set() and segments() - shm == set()


def test_an_exhausted_mix_resumes_from_a_state(mixed_cache, uneven_cache):
    kw = dict(weights=[2, 1], seed=7, stop="all", with_source=True, batch_size=40, workers=2)
    m = loader.mix([mixed_cache, uneven_cache], **kw)
    head = list(itertools.islice(m, 9))
    state = json.loads(json.dumps(m.state_dict()))
    tail = list(m)
    end = json.loads(json.dumps(m.state_dict()))
    assert end["done"] and all(r._pipeline is None for r in m.readers)
    m.load_state_dict(state)  # the sources it closed at its end start again where the state says
    again = list(m)
    assert len(again) == len(tail) > 0
    for a, b in zip(again, tail, strict=True):
        assert np.array_equal(a["id"], b["id"]) and np.array_equal(a["_source"], b["_source"])
    ids = [np.concatenate([b["id"] for b in head + tail if b["_source"][0] == i]) for i in range(2)]
    assert [sorted(x.tolist()) for x in ids] == [list(range(mixed_cache.num_rows)), list(range(uneven_cache.num_rows))]
    with loader.mix([mixed_cache, uneven_cache], **kw) as fresh:
        fresh.load_state_dict(end)
        assert list(fresh) == []


def test_readers_passed_in_are_left_to_their_owner(mixed_cache, uneven_cache):
    readers = [loader.make_reader(mixed_cache, batch_size=40, seed=1, workers=2),
               loader.make_reader(uneven_cache, batch_size=40, seed=2, workers=2)]
    with readers[0], readers[1]:
        m = loader.mix(readers, seed=3)
        _drain_first_stop(m)
        m.close()
        # The source that did not run out still gives the rest of its epoch to whoever made it.
        for r, n in zip(readers, m.counts, strict=True):
            assert sum(1 for _ in r) == r.batches_per_epoch - n
