"""loader.mix: weighted, deterministic, resumable draws from several caches."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import loader
from loader.errors import ConfigError, StateError


def sources(mixed_cache, uneven_cache, **kw):
    return [loader.make_reader(mixed_cache, batch_size=40, seed=1, **kw),
            loader.make_reader(uneven_cache, batch_size=40, seed=2, **kw)]


def test_stop_all_yields_every_batch_of_every_source_once(mixed_cache, uneven_cache):
    with loader.mix(sources(mixed_cache, uneven_cache), weights=[3, 1], seed=0, stop="all", with_source=True) as m:
        batches = list(m)
    by_source = [[b for b in batches if b["_source"][0] == i] for i in range(2)]
    assert sorted(np.concatenate([b["id"] for b in by_source[0]]).tolist()) == list(range(1000))
    assert sorted(np.concatenate([b["id"] for b in by_source[1]]).tolist()) == list(range(uneven_cache.num_rows))
    assert m.counts == [len(by_source[0]), len(by_source[1])] == [r.batches_per_epoch for r in m.readers]


def test_weights_set_the_proportions(mixed_cache, uneven_cache):
    with loader.mix(sources(mixed_cache, uneven_cache, num_epochs=None), weights=[3, 1], seed=5,
                    with_source=True) as m:
        drawn = np.array([b["_source"][0] for b in itertools.islice(m, 400)])
    assert 0.68 < (drawn == 0).mean() < 0.82


def test_stop_first_ends_when_a_drawn_source_runs_out(mixed_cache, uneven_cache):
    with loader.mix(sources(mixed_cache, uneven_cache), weights=[1, 1], seed=3) as m:
        batches = list(m)
    assert len(batches) < sum(r.batches_per_epoch for r in m.readers)
    assert any(n == r.batches_per_epoch for n, r in zip(m.counts, m.readers, strict=True))  # one ran out


def test_draws_are_deterministic_per_seed(mixed_cache, uneven_cache):
    def run(seed):
        with loader.mix(sources(mixed_cache, uneven_cache), seed=seed, stop="all", with_source=True) as m:
            return [int(b["_source"][0]) for b in m]
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_resume_a_mix(mixed_cache, uneven_cache):
    kw = dict(weights=[2, 1], seed=7, stop="all", with_source=True)
    with loader.mix(sources(mixed_cache, uneven_cache), **kw) as m:
        full = list(m)
    with loader.mix(sources(mixed_cache, uneven_cache), **kw) as m:
        head = list(itertools.islice(m, 13))
        state = json.loads(json.dumps(m.state_dict()))
    with loader.mix(sources(mixed_cache, uneven_cache), **kw) as m:
        m.load_state_dict(state)
        tail = list(m)
    assert len(head) + len(tail) == len(full)
    for a, b in zip(head + tail, full, strict=True):
        assert np.array_equal(a["id"], b["id"]) and np.array_equal(a["_source"], b["_source"])
    with pytest.raises(StateError, match="'weights'"):
        loader.mix(sources(mixed_cache, uneven_cache), weights=[1, 1], seed=7, stop="all").load_state_dict(state)


def test_urls_are_opened_and_closed_by_the_mix(mixed_cache, uneven_cache):
    m = loader.mix([mixed_cache.version_path, uneven_cache.version_path], batch_size=100, workers=1)
    next(m)
    assert all(r.batch_size == 100 for r in m.readers)
    m.close()
    assert all(r._pipeline is None for r in m.readers)


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": [1]}, "1 weights for 2 sources"),
    ({"weights": [1, -1]}, "non-negative"),
    ({"weights": [0, 0]}, "not all zero"),
    ({"weights": [1, float("nan")]}, "finite"),
    ({"stop": "never"}, "stop must be one of"),
    ({"seed": -3}, "seed"),
])
def test_bad_mix_arguments(mixed_cache, uneven_cache, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        loader.mix(sources(mixed_cache, uneven_cache), **kwargs)


def test_mix_needs_sources():
    with pytest.raises(ConfigError, match="at least one source"):
        loader.mix([])
    with pytest.raises(ConfigError, match="must be a reader or a URL"):
        loader.mix([42])


def test_zero_weight_source_is_never_drawn(mixed_cache, uneven_cache):
    with loader.mix(sources(mixed_cache, uneven_cache), weights=[0, 1], stop="all", with_source=True) as m:
        batches = list(m)
    assert m.counts == [0, m.readers[1].batches_per_epoch] and all(b["_source"][0] == 1 for b in batches)


def test_huge_weights_do_not_overflow(mixed_cache, uneven_cache):
    m = loader.mix(sources(mixed_cache, uneven_cache), weights=[1e308, 1e308])
    with m:
        assert m.weights == [0.5, 0.5]
        assert sum(1 for _ in itertools.islice(m, 10)) == 10


def test_urls_get_the_mix_seed_plus_their_index(mixed_cache):
    def first_ids(**kw):
        with loader.mix([mixed_cache, mixed_cache], batch_size=40, with_source=True, **kw) as m:
            got = {}
            for b in m:
                got.setdefault(int(b["_source"][0]), b["id"].tolist())
                if len(got) == 2:
                    return got
    a = first_ids(seed=0)
    assert a[0] != a[1]  # the same dataset twice: two streams
    b = first_ids(seed=5)
    assert b[0] != a[0] and b[1] != a[1]  # the seed reaches the readers
    with loader.make_reader(mixed_cache, batch_size=40, seed=6) as r:
        assert next(r)["id"].tolist() == b[1]  # source 1 of seed 5: seed 6


def _keep_even_ids(batch):  # a transform that keeps fewer rows than were planned
    keep = batch["id"] % 2 == 0
    return {"id": batch["id"][keep], "label": batch["label"][keep]}


@pytest.mark.parametrize(("kw", "rows"), [
    (dict(columns=["title", "label"]), lambda b: len(b["label"])),  # flat string bytes come first
    (dict(columns=["ids", "id"]), lambda b: len(b["id"])),  # flat list values come first
    (dict(columns=["title", "ids"]), lambda b: len(b["ids.offsets"]) - 1),  # only ragged columns
    (dict(columns=["title", "ids"], ragged="padded"), lambda b: len(b["ids.lengths"])),
    (dict(columns=["title", "ids"], strings="object", masks=True, with_row_ids=True), lambda b: len(b["_row"])),
    (dict(columns=["id", "label"], transform=_keep_even_ids), lambda b: len(b["id"])),
])
def test_source_has_one_entry_per_row(mixed_cache, uneven_cache, kw, rows):
    with loader.mix(sources(mixed_cache, uneven_cache, **kw), stop="all", with_source=True) as m:
        batches = list(m)
    assert len(batches) == sum(m.counts) > 0
    for b in batches:
        assert b["_source"].dtype == np.int32 and b["_source"].shape == (rows(b),)
        assert len(set(b["_source"].tolist())) == 1
    got = [sum(len(b["_source"]) for b in batches if b["_source"][0] == i) for i in range(2)]
    if "transform" in kw:  # fewer rows than planned: the batch's own count, not the plan's
        assert got == [(mixed_cache.num_rows + 1) // 2, (uneven_cache.num_rows + 1) // 2]
    else:
        assert got == [mixed_cache.num_rows, uneven_cache.num_rows]


def test_batch_rows_counts_rows_in_every_form():
    from loader.mix import batch_rows

    offsets = np.array([0, 3, 3, 7], dtype=np.int64)
    assert batch_rows({"t": np.zeros(7, np.uint8), "t.offsets": offsets}) == 3
    assert batch_rows({"t": np.zeros(7, np.uint8), "t.offsets": offsets, "x": np.zeros(3)}) == 3
    assert batch_rows({"tok": np.zeros(9, np.uint8), "tok.offsets": offsets,
                       "tok.value_offsets": np.arange(8, dtype=np.int64)}) == 3
    assert batch_rows({"p": np.zeros((3, 5)), "p.lengths": np.zeros(3)}) == 3
    assert batch_rows({"s.offsets": np.zeros(4)}) == 4  # a struct field named "offsets" is row-first
    assert batch_rows({}) == 0
