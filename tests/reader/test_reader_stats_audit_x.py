"""Reader statistics count what the consumer got (audit X)."""

from __future__ import annotations

import numpy as np
import pytest

import loader
from tests.reader.conftest import POOLS


def keep_half(batch):
    return {k: v[: len(v) // 2] for k, v in batch.items()}


@pytest.mark.parametrize("pool", POOLS)
def test_stats_rows_are_the_rows_handed_over_not_the_planned_ones(mixed_cache, pool):
    with loader.make_reader(mixed_cache, columns=["id", "x"], batch_size=64, pool=pool, workers=2,
                            transform=keep_half) as reader:
        got = sum(len(b["id"]) for b in reader)
    assert reader.stats.rows == got
    assert got < mixed_cache.num_rows  # the transform dropped rows
    with loader.make_reader(mixed_cache, columns=["id"], batch_size=64, pool=pool, workers=2) as reader:
        ids = np.concatenate([b["id"] for b in reader])
    assert reader.stats.rows == len(ids) == mixed_cache.num_rows


@pytest.mark.parametrize("pool", POOLS)
def test_a_state_planned_with_other_windows_resumes_exactly(mixed_cache, pool):
    """A state saved by a reader with another memory budget (or by an earlier larder whose size estimate gave
    other windows, audit R) resumes with the windows it was planned with: the same batches as its own run."""
    def run(budget, state=None, n=None):
        with loader.make_reader(mixed_cache, batch_size=32, seed=4, num_epochs=2, memory_budget=budget, pool=pool,
                                workers=2) as r:
            if state is not None:
                r.load_state_dict(state)
            out = []
            for b in r:
                out.append(b["id"].copy())
                if n is not None and len(out) == n:
                    return out, r.state_dict(), (r.window, r.max_piece_rows)
            return out, None, (r.window, r.max_piece_rows)

    big, small = 64 << 20, 4 << 10
    whole, _, layout_big = run(big)
    head, state, _ = run(big, n=11)
    _, _, layout_small = run(small, n=1)
    assert layout_small != layout_big  # the budgets plan other windows
    rest, _, layout = run(small, state)
    assert layout == layout_big  # adopted from the state
    assert [x.tolist() for x in head + rest] == [x.tolist() for x in whole]
    bad = dict(state, config=dict(state["config"], window=0, max_piece_rows=layout_small[1]))  # no reader plans 0
    with pytest.raises(loader.StateError, match="config.window"):
        loader.make_reader(mixed_cache, batch_size=32, seed=4, memory_budget=small).load_state_dict(bad)
