"""Streamed row groups: readers in one process keep their own streams (none evicts another's)."""

from __future__ import annotations

import numpy as np
import pytest

import loader
from loader import streams
from tests.reader.conftest import publish_groups

GROUPS, GROUP_ROWS = 15, 20_000  # one interleaved run of 15 row groups: the longest the plan makes
BUDGET = 1 << 20  # a window's share (~170 KiB) is smaller than a row group (~320 KiB decoded): streamed
COLUMNS = ["id", "x"]

pytestmark = pytest.mark.filterwarnings("ignore:memory_budget=.*is small:UserWarning")


@pytest.fixture(scope="module")
def streamed_cache(tmp_path_factory) -> loader.Dataset:
    """15 row groups of 20,000 rows (ids 0..N-1), whose ``id`` and ``x`` are read in slices at ``BUDGET``."""
    return publish_groups(tmp_path_factory.mktemp("streamed"), "streamed", [GROUP_ROWS] * GROUPS, groups_per_file=5)


def _reader(ds, seed: int) -> loader.Reader:
    r = loader.make_reader(ds, columns=COLUMNS, batch_size=1000, seed=seed, pool="thread", workers=2,
                           memory_budget=BUDGET)
    assert r.max_piece_rows is not None and r.window == 10  # streamed, ten slices a window
    return r


def _interleaved(readers) -> list[list[np.ndarray]]:
    """Every batch's ids of each reader, drawing one batch from each reader in turn until all are done."""
    got = [[] for _ in readers]
    live = list(range(len(readers)))
    while live:
        for i in list(live):
            try:
                got[i].append(next(readers[i])["id"])
            except StopIteration:
                live.remove(i)
    return got


def test_one_streamed_reader_decodes_each_row_once(streamed_cache):
    with _reader(streamed_cache, 0) as r:
        ids = np.concatenate([b["id"] for b in r])
    assert np.array_equal(np.sort(ids), np.arange(streamed_cache.num_rows))
    assert r.stats.decoded_rows == r.stats.rows == streamed_cache.num_rows


def test_two_streamed_readers_at_once_keep_their_own_streams(streamed_cache):
    readers = [_reader(streamed_cache, 0), _reader(streamed_cache, 1)]
    try:
        got = _interleaved(readers)
    finally:
        for r in readers:
            r.close()
    for r, batches in zip(readers, got, strict=True):
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(streamed_cache.num_rows))
        # Each row group decoded once, front to back (evicted streams re-decoded them from row 0: x12).
        assert r.stats.decoded_rows == r.stats.rows == streamed_cache.num_rows


def test_a_mix_of_two_streamed_urls_decodes_each_row_once(streamed_cache):
    with loader.mix([streamed_cache, streamed_cache], stop="all", columns=COLUMNS, batch_size=1000, workers=2,
                    memory_budget=2 * BUDGET) as m:
        assert all(r.max_piece_rows is not None for r in m.readers)
        rows = sum(len(b["id"]) for b in m)
    assert rows == 2 * streamed_cache.num_rows
    assert [r.stats.decoded_rows for r in m.readers] == [streamed_cache.num_rows] * 2


def test_closing_one_reader_closes_its_streams_only(streamed_cache):
    a, b = _reader(streamed_cache, 0), _reader(streamed_cache, 1)
    with b:
        with a:
            for _ in range(30):  # both mid-epoch, their streams open
                next(a)
                next(b)
            key_a, key_b = a._ctx.key, b._ctx.key
            assert streams._idle.get(key_a) and streams._idle.get(key_b)
        assert key_a not in streams._idle  # closed with its reader
        rest = sum(len(batch["id"]) for batch in b)
    assert rest == streamed_cache.num_rows - 30 * 1000
    assert b.stats.decoded_rows == b.stats.rows == streamed_cache.num_rows
