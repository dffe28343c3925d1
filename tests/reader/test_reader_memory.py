"""The memory budget bounds the finished batches too: the ready queue and the finishing lookahead are sized
from it and the estimated bytes of a batch (not from ``workers``), and a batch larger than its share warns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import loader
from loader.plan import batch_depths
from loader.reader import DEFAULT_MEMORY_BUDGET
from tests.conftest import make_table

MiB = 1 << 20
X = make_table(1000)["x"].to_numpy()  # mixed_cache's column x, by id


def test_small_batches_keep_the_usual_depths():
    d = batch_depths(DEFAULT_MEMORY_BUDGET, 100 * 4300, workers=8, pool="thread")  # the bench's batches
    assert (d.prefetch, d.batches_per_task, d.batches_ahead, d.over_budget) == (32, 8, 16, False)
    assert batch_depths(DEFAULT_MEMORY_BUDGET, 100 * 4300, workers=1, pool="serial").batches_ahead == 1


@pytest.mark.parametrize("budget", [64 * MiB, DEFAULT_MEMORY_BUDGET])
@pytest.mark.parametrize("workers", [2, 8, 32])
def test_big_batches_keep_one_ahead_whatever_the_workers(budget, workers):
    d = batch_depths(budget, 10_000 * 4300, workers=workers, pool="thread")  # 41 MiB batches
    assert (d.prefetch, d.batches_per_task, d.batches_ahead) == (1, 1, 1)
    assert d.over_budget and d.peak_batches == 4


@pytest.mark.parametrize("batch_mib", [0.1, 1, 3, 5, 9, 20])
@pytest.mark.parametrize("workers", [1, 2, 8, 32])
@pytest.mark.parametrize("pool", ["thread", "process"])
def test_finished_batches_stay_within_their_share(batch_mib, workers, pool):
    budget = DEFAULT_MEMORY_BUDGET
    d = batch_depths(budget, batch_mib * MiB, workers=workers, pool=pool)
    assert not d.over_budget and d.prefetch >= 1 and d.batches_ahead >= 1
    assert d.prefetch * d.batch_bytes <= budget / 8
    assert d.batches_ahead * d.batches_per_task * d.batch_bytes <= budget / 4
    assert d.batches_ahead <= max(4, 2 * workers)
    # the lookahead does not grow with the workers once the budget binds
    assert d.peak_batches == batch_depths(budget, batch_mib * MiB, workers=max(workers, 64), pool=pool).peak_batches \
        or d.batches_ahead == max(4, 2 * workers)


def test_an_explicit_prefetch_is_kept():
    d = batch_depths(64 * MiB, 10 * MiB, workers=8, pool="thread", prefetch=6)
    assert d.prefetch == 6 and d.batches_per_task == 1 and d.batches_ahead == 1


@pytest.mark.parametrize("pool", ["thread", "process", "serial"])
@pytest.mark.parametrize("workers", [2, 8])
def test_big_batches_on_a_small_budget_warn_and_read_every_row(mixed_cache, pool, workers):
    """1,000 rows of ~63 bytes, batches of 300 (~19 KB) on a 64 KB budget: one batch is over the queue's 8 KB."""
    message = r"batch_size=300 makes batches of about 1[0-9].[0-9] KiB .*memory_budget=65536"
    with pytest.warns(UserWarning, match=message) as caught:
        reader = loader.make_reader(mixed_cache, batch_size=300, memory_budget=64 << 10, pool=pool, workers=workers,
                                    seed=3, num_epochs=2, with_row_ids=True)
    assert caught[0].filename == __file__  # points at the caller
    with reader:
        assert reader.prefetch == 1 and reader._setup.batches_ahead == 1 and reader._setup.batches_per_task == 1
        batches = [{k: v.copy() for k, v in b.items()} for b in reader]
    assert [len(b["id"]) for b in batches] == [300, 300, 300, 100] * 2
    for epoch in (batches[:4], batches[4:]):
        ids = np.concatenate([b["id"] for b in epoch])
        assert sorted(ids.tolist()) == list(range(1000))
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in epoch]), X[ids])
        np.testing.assert_array_equal(np.concatenate([b["_row"] for b in epoch]) >= 0, True)

def test_batches_within_the_budget_do_not_warn(mixed_cache):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with loader.make_reader(mixed_cache, batch_size=100, pool="thread", workers=2) as reader:
            assert sum(len(b["id"]) for b in reader) == 1000
