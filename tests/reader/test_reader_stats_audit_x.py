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
