"""Property tests of the pure epoch plan: partitions, permutations, equal batch counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader import plan as plan_module
from loader.plan import (
    MIN_MIX,
    balanced_bounds,
    batch_bounds,
    group_order,
    plan_epoch,
    sample_counts,
    sample_rows,
    shard_bounds,
    window_permutation,
    window_size_for,
)

sizes_st = st.lists(st.integers(0, 60), min_size=1, max_size=12).filter(lambda s: sum(s) > 0)


def rows_of(plan, sizes, seed) -> list[tuple[int, int]]:
    """The (group, row) pairs a plan yields, in stream order before the window shuffle."""
    out = []
    for w in plan.windows:
        for p in w.pieces:
            if plan.kept is None:
                rows = range(p.start, p.stop)
            else:
                rows = sample_rows(sizes[p.group], plan.kept[p.group], seed, plan.epoch, p.group)[p.start : p.stop]
            out.extend((p.group, int(r)) for r in rows)
    return out


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, world=st.integers(1, 8), batch=st.integers(1, 40), seed=st.integers(0, 2**32),
       epoch=st.integers(0, 5), window=st.integers(1, 5), shuffle=st.booleans(), drop_last=st.booleans(),
       max_piece=st.one_of(st.none(), st.integers(1, 30)), sample=st.one_of(st.none(), st.floats(0.05, 1.0)))
def test_ranks_partition_the_epoch_with_equal_batch_counts(sizes, world, batch, seed, epoch, window, shuffle,
                                                           drop_last, max_piece, sample):
    total = int(sample_counts(sizes, sample, seed, epoch).sum())
    if total // world == 0 or (drop_last and total // world < batch):
        return  # the reader refuses these (EmptyDatasetError); tested end to end
    plans = [plan_epoch(sizes, seed=seed, epoch=epoch, rank=r, world_size=world, batch_size=batch,
                        shuffle=shuffle, drop_last=drop_last, window=window, max_piece_rows=max_piece,
                        sample=sample) for r in range(world)]
    assert len({p.kept for p in plans}) == 1  # every rank agrees on the epoch's sample
    kept = plans[0].kept or tuple(sizes)
    seen = [rows_of(p, sizes, seed) for p in plans]
    everything = [x for rank_rows in seen for x in rank_rows]
    assert sorted(everything) == [(g, int(r)) for g, n in enumerate(sizes)
                                  for r in sample_rows(n, kept[g], seed, epoch, g)]
    assert len({p.num_batches for p in plans}) == 1  # the same number of batches on every rank
    assert len({len(s) for s in seen}) <= 2 and max(map(len, seen)) - min(map(len, seen)) <= 1
    for p, rank_rows in zip(plans, seen, strict=True):
        sizes_b = np.diff(p.batch_bounds)
        assert (sizes_b > 0).all()
        if drop_last:
            assert (sizes_b == batch).all()
        else:
            assert p.rows == len(rank_rows)  # every row of the rank in some batch
            assert (sizes_b[:-1] == batch).all() and sizes_b[-1] <= batch + 1
        for w in p.windows:
            assert 1 <= len(w.pieces) <= window
            if max_piece:
                assert all(piece.rows <= max_piece for piece in w.pieces)
        counts = [len(w.pieces) for w in p.windows]
        assert len(counts) == -(-sum(counts) // window)  # the fewest windows that hold the pieces
        assert max(counts, default=0) - min(counts, default=0) <= 1  # balanced: no short tail window
        starts: dict[int, list[int]] = {}
        for w in p.windows:
            for piece in w.pieces:
                starts.setdefault(piece.group, []).append(piece.start)
        assert all(v == sorted(v) for v in starts.values())  # every row group is read front to back


@settings(max_examples=200, deadline=None)
@given(sizes=sizes_st, frac=st.floats(0.01, 1.0), seed=st.integers(0, 2**32), epoch=st.integers(0, 50))
def test_sample_keeps_a_deterministic_subset_of_the_right_size(sizes, frac, seed, epoch):
    counts = sample_counts(sizes, frac, seed, epoch)
    assert counts.sum() == round(frac * sum(sizes)) or frac >= 1
    assert (counts <= np.asarray(sizes)).all() and (counts >= 0).all()
    assert (counts == sample_counts(sizes, frac, seed, epoch)).all()
    for g, (n, k) in enumerate(zip(sizes, counts, strict=True)):
        rows = sample_rows(n, int(k), seed, epoch, g)
        assert len(rows) == k and len(set(rows.tolist())) == k
        assert (np.diff(rows) > 0).all() and (rows < n).all() and (rows >= 0).all()


def test_sample_differs_between_epochs_and_seed_zero_works():
    sizes = [100] * 10
    a = rows_of(plan_epoch(sizes, seed=0, epoch=0, batch_size=10, sample=0.3), sizes, 0)
    b = rows_of(plan_epoch(sizes, seed=0, epoch=1, batch_size=10, sample=0.3), sizes, 0)
    assert len(a) == len(b) == 300
    assert set(a) != set(b)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 200), world=st.integers(1, 9))
def test_shard_bounds_are_balanced_and_cover(n, world):
    b = shard_bounds(n, world)
    assert b[0] == 0 and b[-1] == n
    d = np.diff(b)
    assert (d >= 0).all() and d.max() - d.min() <= 1


@settings(max_examples=100, deadline=None)
@given(num=st.integers(1, 50), seed=st.integers(0, 2**63), epoch=st.integers(0, 100), rows=st.integers(0, 300))
def test_orders_and_window_permutations_are_permutations(num, seed, epoch, rows):
    order = group_order(num, seed, epoch)
    assert sorted(order.tolist()) == list(range(num))
    assert (group_order(num, seed, epoch) == order).all()
    assert (group_order(num, seed, epoch, shuffle=False) == np.arange(num)).all()
    perm = window_permutation(rows, seed, epoch, 0, 1, 3)
    assert sorted(perm.tolist()) == list(range(rows))
    assert window_permutation(rows, seed, epoch, 0, 1, 3, shuffle=False) is None


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), most=st.integers(1, 70))
def test_balanced_bounds_cut_into_fewest_even_runs(n, most):
    bounds = balanced_bounds(n, most)
    runs = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n and (runs >= 0).all()
    assert len(runs) == max(1, -(-n // most)) and runs.max() <= most
    assert runs.max() - runs.min() <= 1 and list(runs) == sorted(runs, reverse=True)


@pytest.mark.parametrize("max_piece", [None, 4])
def test_the_last_window_mixes_as_many_row_groups_as_the_others(max_piece):
    # 21 row groups, windows of at most 10: 7 + 7 + 7 row groups, not 10 + 10 + 1 (sliced: runs of 7 groups)
    sizes = [10] * 21
    plan = plan_epoch(sizes, seed=3, epoch=0, batch_size=5, window=10, max_piece_rows=max_piece)
    groups = [len({piece.group for piece in w.pieces}) for w in plan.windows]
    assert min(groups) >= 7 and (max_piece or max(groups) == 7)
    assert sorted({piece.group for w in plan.windows for piece in w.pieces}) == list(range(21))


def test_epochs_give_different_orders():
    orders = {tuple(group_order(30, 0, e)) for e in range(5)}
    assert len(orders) == 5
    perms = {tuple(window_permutation(50, 0, e, 0, 1, 0)) for e in range(5)}
    assert len(perms) == 5


@pytest.mark.parametrize("max_piece", [None, 2])
def test_no_shuffle_keeps_source_order(max_piece):
    sizes = [5, 7, 3]
    plan = plan_epoch(sizes, seed=1, epoch=3, batch_size=4, shuffle=False, window=2, max_piece_rows=max_piece)
    assert rows_of(plan, sizes, 1) == [(g, r) for g, n in enumerate(sizes) for r in range(n)]


def test_extra_row_lands_in_last_batch():
    # 9 rows over 2 ranks, batch 2: rank 0 has 5 rows, rank 1 has 4; both yield 2 batches.
    assert batch_bounds(5, 2, 2, drop_last=False) == (0, 2, 5)
    plans = [plan_epoch([9], seed=0, epoch=0, rank=r, world_size=2, batch_size=2) for r in range(2)]
    assert [p.batch_bounds for p in plans] == [(0, 2, 5), (0, 2, 4)]
    plans = [plan_epoch([9], seed=0, epoch=0, rank=r, world_size=2, batch_size=2, drop_last=True) for r in range(2)]
    assert [p.batch_bounds for p in plans] == [(0, 2, 4), (0, 2, 4)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), most=st.integers(1, 70), least=st.integers(1, 70))
def test_balanced_bounds_keep_runs_of_at_least_least_items(n, most, least):
    runs = np.diff(balanced_bounds(n, most, least))
    assert sum(runs) == n and runs.max() - runs.min() <= 1
    if n >= least:
        assert runs.min() >= least
    if n // max(1, -(-n // most)) >= least:  # the fewest runs of at most ``most`` already hold ``least``
        assert runs.max() <= most


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(250, 400), min_size=8, max_size=40), max_rows=st.integers(25, 300),
       seed=st.integers(0, 3), world_size=st.integers(1, 3))
def test_interleaved_windows_hold_8_row_groups(sizes, max_rows, seed, world_size):
    # whatever the row groups' sizes and the slice length, every window of the streamed layout holds slices
    # of 8 or more row groups when the rank's share has 8 or more (a run's pieces are cut into k <= 16 slices
    # of ceil(rows / k) rows here: pieces of 241 rows or more get all k, so each takes part in every round)
    for rank in range(world_size):
        kw = {"seed": seed, "epoch": 0, "rank": rank, "world_size": world_size, "batch_size": 7, "window": 10}
        whole = [p for w in plan_epoch(sizes, max_piece_rows=None, **kw).windows for p in w.pieces]
        plan = plan_epoch(sizes, max_piece_rows=max_rows, **kw)
        assert all(p.rows <= max_rows for w in plan.windows for p in w.pieces)
        if len(whole) >= 8 and min(p.rows for p in whole) >= 241:
            assert min(len({p.group for p in w.pieces}) for w in plan.windows) >= 8


@pytest.mark.parametrize("groups", [8, 9, 11, 13, 14, 15, 16, 20, 21, 23, 28, 31, 211])
def test_streamed_block_sized_row_groups_mix_at_least_8_per_window(groups):
    # block-sized row groups (each far above a window's share of the budget): every window interleaves a
    # slice of 8 or more row groups, the epoch's last windows too
    window, piece = window_size_for(28_000, 128 << 20, shuffle_buffer=None, window_bytes=(256 << 20) // 6,
                                    num_groups=groups)
    assert piece is not None and window >= 8
    plan = plan_epoch([28_000] * groups, seed=0, epoch=0, batch_size=100, window=window, max_piece_rows=piece)
    assert min(len({p.group for p in w.pieces}) for w in plan.windows) >= 8


def test_window_size_follows_buffer_or_budget():
    assert window_size_for(100, 1000, shuffle_buffer=450, window_bytes=10**9, num_groups=50) == (5, None)
    assert window_size_for(100, 1000, shuffle_buffer=None, window_bytes=8000, num_groups=50) == (8, None)
    assert window_size_for(100, 1000, shuffle_buffer=None, window_bytes=8000, num_groups=3) == (3, None)
    # row groups bigger than a window: one 25-row slice of each of 4 row groups per window (100 kB)
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=10**5, num_groups=4) == (4, 25)
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=10**5, num_groups=50) == (10, 10)


def test_the_mixing_target_is_one_constant(monkeypatch):
    """``MIN_MIX`` (8 row groups per batch) is the default window and the row-group count from which
    ``window_size_for`` interleaves slices of ten row groups, and the reader passes it as ``min_mix``."""
    import inspect

    import loader.sizes

    assert MIN_MIX == 8
    assert inspect.signature(plan_epoch).parameters["window"].default == MIN_MIX
    assert loader.sizes.MIN_MIX == MIN_MIX
    # row groups bigger than the window: 6 row groups are fewer than MIN_MIX, so a window takes one slice of each
    args = dict(shuffle_buffer=None, window_bytes=10**5, num_groups=6)
    assert window_size_for(1000, 10**6, **args) == (6, 100 // 6)
    monkeypatch.setattr(plan_module, "MIN_MIX", 6)  # the threshold follows the constant, no other literal
    assert window_size_for(1000, 10**6, **args) == (10, 10)


def test_a_small_budget_interleaves_slices_to_keep_mixing_8_row_groups():
    # 5 whole row groups fit: with min_mix 8, slices of 10 row groups instead, within the same bytes
    window, piece = window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=5 * 10**6, num_groups=50,
                                    min_mix=8)
    assert (window, piece) == (10, 500)
    assert window * piece * (10**6 / 1000) <= 5 * 10**6
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=5 * 10**6, num_groups=50) == (5, None)
    # enough for 8 whole ones, or only 6 row groups in all, or a shuffle buffer asked for: whole row groups
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=8 * 10**6, num_groups=48,
                           min_mix=8) == (8, None)
    # ... but not when the balanced windows would hold fewer: 50 row groups in windows of at most 8 are
    # 8 + 7 * 6, and 11 in windows of at most 10 are 6 + 5
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=8 * 10**6, num_groups=50,
                           min_mix=8)[1] is not None
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=10 * 10**6, num_groups=11,
                           min_mix=8)[1] is not None
    assert window_size_for(1000, 10**6, shuffle_buffer=None, window_bytes=6 * 10**6, num_groups=6,
                           min_mix=8) == (6, None)
    assert window_size_for(1000, 10**6, shuffle_buffer=3000, window_bytes=5 * 10**6, num_groups=50,
                           min_mix=8) == (3, None)
