"""make_reader end to end on real Parquet caches: exactly once, determinism, values, mixing, resume."""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loader
from tests.conftest import make_table
from tests.reader.conftest import POOLS, ids_of, publish_groups

SOURCE = make_table(1000)  # the data of the mixed_cache fixture


def add_noise(batch, rng):
    """A seeded augmentation (module level, so the process pool can import it)."""
    batch["noise"] = rng.random(len(batch["id"]))
    return batch


def scale_x(batch):
    """A one-argument transform."""
    batch["x"] = batch["x"] * 10
    return batch


def read_all(reader) -> list[dict]:
    with reader:
        return list(reader)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x)
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("pool", POOLS)
def test_one_epoch_yields_every_row_once_with_source_values(mixed_cache, pool):
    batches = read_all(loader.make_reader(mixed_cache, batch_size=64, pool=pool, workers=2, with_row_ids=True))
    ids = ids_of(batches)
    assert sorted(ids.tolist()) == list(range(1000))
    assert [len(b["id"]) for b in batches] == [64] * 15 + [40]
    assert all(v.flags.writeable for b in batches for v in b.values())  # the same in every pool
    titles, images, tokens = SOURCE["title"].to_pylist(), SOURCE["image"].to_pylist(), SOURCE["ids"].to_pylist()
    xs = SOURCE["x"].to_numpy()
    for b in batches:
        off, ioff, toff = b["title.offsets"], b["image.offsets"], b["ids.offsets"]
        for i, row in enumerate(b["id"]):
            assert b["title"][off[i] : off[i + 1]].tobytes().decode() == titles[row]
            assert b["image"][ioff[i] : ioff[i + 1]].tobytes() == images[row]
            assert b["ids"][toff[i] : toff[i + 1]].tolist() == tokens[row]
        assert np.array_equal(b["x"], xs[b["id"]])
        assert b["ids"].dtype == np.int32 and b["title"].dtype == np.uint8


def test_padded_and_object_forms_through_the_reader(mixed_cache):
    batches = read_all(loader.make_reader(mixed_cache, columns=["id", "ids", "title"], batch_size=100,
                                          ragged="padded", strings="object", seed=3))
    tokens, titles = SOURCE["ids"].to_pylist(), SOURCE["title"].to_pylist()
    for b in batches:
        assert b["title"].dtype == object and b["title"].tolist() == [titles[i] for i in b["id"]]
        for row, n, i in zip(b["ids"], b["ids.lengths"], b["id"], strict=True):
            assert row[:n].tolist() == tokens[i] and not row[n:].any()
        assert set(b) == {"id", "ids", "ids.lengths", "title"}


def test_same_batches_whatever_the_pool_or_worker_count(mixed_cache):
    def run(pool, workers):
        return read_all(loader.make_reader(mixed_cache, batch_size=50, seed=11, pool=pool, workers=workers,
                                           transform=add_noise, shuffle_buffer=150))
    reference = run("serial", 1)
    for pool, workers in [("thread", 1), ("thread", 2), ("thread", 3), ("process", 2)]:
        assert same_batches(run(pool, workers), reference), (pool, workers)


def test_epochs_and_seeds_change_the_order_and_seed_zero_is_a_seed(mixed_cache):
    batches = read_all(loader.make_reader(mixed_cache, batch_size=100, num_epochs=2, seed=0))
    first, second = ids_of(batches[:10]), ids_of(batches[10:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(1000))
    assert not np.array_equal(first, second)
    again = ids_of(read_all(loader.make_reader(mixed_cache, batch_size=100, seed=0)))
    other = ids_of(read_all(loader.make_reader(mixed_cache, batch_size=100, seed=1)))
    assert np.array_equal(again, first) and not np.array_equal(other, first)


@pytest.mark.parametrize("budget", [None, 12_000])  # whole row groups, or streamed slices of them
def test_no_shuffle_reads_in_source_order(mixed_cache, budget):
    reader = loader.make_reader(mixed_cache, batch_size=128, shuffle=False, pool="thread", memory_budget=budget)
    assert (reader.max_piece_rows is None) == (budget is None)
    assert ids_of(read_all(reader)).tolist() == list(range(1000))


@pytest.mark.parametrize("pool", POOLS)
def test_every_batch_of_the_epoch_mixes_row_groups_the_tail_too(tmp_path, pool):
    # 21 row groups of 40 rows, shuffle buffer of 10 row groups: the windows are 7 + 7 + 7 row groups, so
    # the epoch's last batches mix as many row groups as its first (not one row group left alone at the end)
    ds = publish_groups(tmp_path, "tail", [40] * 21)
    reader = loader.make_reader(ds, batch_size=40, shuffle_buffer=400, with_row_ids=True, pool=pool, seed=5)
    batches = read_all(reader)
    assert reader.window == 10
    distinct = [len(np.unique(b["_row_group"])) for b in batches]
    assert len(batches) == 21 and min(distinct[-3:]) >= 5 and min(distinct) >= 5
    assert sorted(ids_of(batches).tolist()) == list(range(840))


def test_batches_mix_many_row_groups_and_stats_are_kept(mixed_cache):
    reader = loader.make_reader(mixed_cache, batch_size=64, with_row_ids=True, workers=2)
    batches = read_all(reader)
    distinct = [len(np.unique(b["_row_group"])) for b in batches]
    assert min(distinct) >= 8
    stats = reader.stats
    assert stats.mixed_min == min(distinct) and stats.mixed_max == max(distinct)
    assert stats.mixed_row_groups_per_batch == pytest.approx(np.mean(distinct))
    assert stats.batches == len(batches) and stats.rows == 1000 and stats.pieces == mixed_cache.num_row_groups
    assert stats.read_seconds > 0 and stats.first_batch_seconds is not None
    # a small shuffle buffer mixes fewer row groups (windows of 2 row groups here)
    narrow = loader.make_reader(mixed_cache, batch_size=64, shuffle_buffer=100)
    read_all(narrow)
    assert narrow.window == 2 and narrow.stats.mixed_max <= 4


def test_print_stats_lists_the_figures(mixed_cache, capsys):
    with loader.make_reader(mixed_cache, batch_size=500, transform=scale_x) as r:
        batches = list(r)
        r.print_stats()
    out = capsys.readouterr().out
    for name in ("consumer_wait_seconds", "read_seconds", "transform_seconds", "mixed_row_groups_per_batch"):
        assert name in out
    xs = SOURCE["x"].to_numpy()
    assert all(np.allclose(b["x"], xs[b["id"]] * 10) for b in batches)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("sample", [None, 0.6])
def test_huge_row_groups_are_streamed_in_slices_exactly_once(uneven_cache, pool, sample):
    # a budget far below one row group: windows interleave slices of several streamed row groups
    reader = loader.make_reader(uneven_cache, batch_size=16, memory_budget=12_000, with_row_ids=True, pool=pool,
                                workers=2, sample=sample, seed=3)
    assert reader.max_piece_rows is not None and reader.window > 1
    batches = read_all(reader)
    pairs = sorted(zip(np.concatenate([b["_row_group"] for b in batches]).tolist(),
                       np.concatenate([b["_row"] for b in batches]).tolist(), strict=True))
    sizes = uneven_cache.row_group_sizes()
    if sample is None:
        assert pairs == [(g, r) for g, n in enumerate(sizes) for r in range(n)]
        assert sorted(ids_of(batches).tolist()) == list(range(sum(sizes)))
    else:
        assert len(pairs) == len(set(pairs)) == round(0.6 * sum(sizes))
    if pool == "serial":  # each row group decoded once, front to back, across its slices
        assert reader.stats.decoded_rows <= sum(sizes)
    assert max(len(np.unique(b["_row_group"])) for b in batches) > 1


def test_sample_takes_a_different_subset_each_epoch(mixed_cache):
    batches = read_all(loader.make_reader(mixed_cache, batch_size=50, sample=0.25, num_epochs=2))
    first, second = ids_of(batches[:5]), ids_of(batches[5:])
    assert len(first) == len(second) == 250
    assert len(set(first.tolist())) == 250 and len(set(second.tolist())) == 250
    assert set(first.tolist()) != set(second.tolist())


def test_forever_and_len(mixed_cache):
    reader = loader.make_reader(mixed_cache, batch_size=300, num_epochs=None)
    with reader:
        batches = list(itertools.islice(reader, 9))
    assert [len(b["id"]) for b in batches] == [300, 300, 300, 100] * 2 + [300]
    with pytest.raises(TypeError):
        len(reader)
    assert len(loader.make_reader(mixed_cache, batch_size=300, num_epochs=2)) == 8


def test_reader_starts_no_thread_before_iterating_and_opens_urls(mixed_cache):
    before = set(threading.enumerate())
    reader = loader.make_reader(mixed_cache.url, batch_size=999, workers=3)
    assert set(threading.enumerate()) - before == set()
    assert reader.dataset.version == mixed_cache.version
    assert f"demo@{mixed_cache.version} rank 0/1 2 batches of 999/epoch, next epoch 0 batch 0" in repr(reader)
    with reader:
        assert len(next(reader)["id"]) == 999
        started = set(threading.enumerate()) - before
        assert started
    assert not any(t.is_alive() for t in started)


# --- ranks ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.integers(0, 4), world=st.integers(1, 8), batch=st.integers(1, 20), seed=st.integers(0, 2**31),
       drop_last=st.booleans(), pool=st.sampled_from(["serial", "thread"]), shuffle=st.booleans())
def test_ranks_are_disjoint_cover_the_epoch_and_get_equal_batch_counts(shape_caches, shape, world, batch, seed,
                                                                        drop_last, pool, shuffle):
    ds = shape_caches[shape]
    n = ds.num_rows
    if n // world == 0 or (drop_last and n // world < batch):
        with pytest.raises(loader.EmptyDatasetError, match="rank"):
            loader.make_reader(ds, batch_size=batch, world_size=world, drop_last=drop_last)
        return
    per_rank = [read_all(loader.make_reader(ds, batch_size=batch, seed=seed, rank=r, world_size=world, pool=pool,
                                            drop_last=drop_last, shuffle=shuffle, workers=2))
                for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    ids = [ids_of(b).tolist() for b in per_rank]
    flat = [i for rank_ids in ids for i in rank_ids]
    assert len(flat) == len(set(flat))  # disjoint, no duplicates
    if drop_last:
        assert all(len(x["id"]) == batch for b in per_rank for x in b)
    else:
        assert sorted(flat) == list(range(n))


# --- resume -------------------------------------------------------------------------------------------


def _resume_check(ds, pool, k, **kw):
    full = read_all(loader.make_reader(ds, pool=pool, **kw))
    first = loader.make_reader(ds, pool=pool, **kw)
    with first:
        head = list(itertools.islice(first, k))
        state = json.loads(json.dumps(first.state_dict()))
    second = loader.make_reader(ds, pool=pool, **kw)
    second.load_state_dict(state)
    tail = read_all(second)
    assert same_batches(head + tail, full)
    return state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 16), batch=st.integers(3, 40), seed=st.integers(0, 1000),
       pool=st.sampled_from(["serial", "thread"]), buffer=st.sampled_from([None, 60]), world=st.integers(1, 3),
       rank=st.integers(0, 2), sample=st.sampled_from([None, 0.7]), budget=st.sampled_from([None, 12_000]))
def test_resume_yields_exactly_the_remaining_batches(uneven_cache, k, batch, seed, pool, buffer, world, rank, sample,
                                                     budget):
    kw = dict(batch_size=batch, seed=seed, num_epochs=2, transform=add_noise, shuffle_buffer=buffer,
              with_row_ids=True, workers=2, rank=rank % world, world_size=world, sample=sample,
              memory_budget=budget)
    _resume_check(uneven_cache, pool, k, **kw)


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_with_the_process_pool(mixed_cache):
    state = _resume_check(mixed_cache, "process", 11, batch_size=100, seed=4, num_epochs=2, transform=add_noise,
                          workers=2)
    assert (state["epoch"], state["batch"]) == (1, 1)
    assert len(json.dumps(state)) < 1000  # a small state


def test_resume_after_the_last_batch_of_an_epoch(mixed_cache):
    state = _resume_check(mixed_cache, "thread", 4, batch_size=250, seed=9, num_epochs=3, sample=0.8)
    assert (state["epoch"], state["batch"]) == (1, 0)


@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_reads_lazily_a_bounded_number_of_row_groups_ahead(mixed_cache, pool):
    reader = loader.make_reader(mixed_cache, batch_size=10, shuffle_buffer=100, pool=pool, workers=2, prefetch=2)
    with reader:
        next(reader)
        assert reader.window == 2
        # the first window, plus at most one window of reads in flight and the prefetch of ready batches
        assert reader.stats.pieces <= 3 * reader.window < mixed_cache.num_row_groups
    assert reader.stats.pieces < mixed_cache.num_row_groups


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from([1, 2, 4]), world=st.integers(2, 5), batch=st.integers(1, 9), seed=st.integers(0, 99))
def test_ranks_with_the_process_pool_property(shape_caches, shape, world, batch, seed):
    ds = shape_caches[shape]
    per_rank = [read_all(loader.make_reader(ds, batch_size=batch, seed=seed, rank=r, world_size=world,
                                            pool="process", workers=2, transform=add_noise)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    assert sorted(ids_of([x for b in per_rank for x in b]).tolist()) == list(range(ds.num_rows))


def keep(batch, rng):
    """An identity transform: the forms it returns must pass the length checks."""
    return batch


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_token_lists_round_trip_through_the_reader(tmp_path, pool):
    rng = np.random.default_rng(0)
    words = np.array(["a", "bb", "가나", "", "xyz"])
    tokens = [list(words[rng.integers(0, 5, rng.integers(0, 4))]) for _ in range(300)]
    table = pa.table({"id": np.arange(300), "tokens": pa.array(tokens, pa.list_(pa.string()))})
    ds = loader.write_cache(table, tmp_path, "tok", row_group_bytes=600)
    assert ds.num_row_groups >= 3
    batches = read_all(loader.make_reader(ds, batch_size=32, pool=pool, workers=2, transform=keep))
    seen = {}
    for b in batches:
        v, off, item = b["tokens"], b["tokens.offsets"], b["tokens.value_offsets"]
        for i, row in enumerate(b["id"]):
            seen[int(row)] = [v[item[j] : item[j + 1]].tobytes().decode() for j in range(off[i], off[i + 1])]
    assert seen == {i: list(t) for i, t in enumerate(tokens)}


def test_load_state_mid_iteration_jumps_to_the_state(mixed_cache):
    full = read_all(loader.make_reader(mixed_cache, batch_size=70, seed=8, num_epochs=2))
    with loader.make_reader(mixed_cache, batch_size=70, seed=8, num_epochs=2) as other:
        for _ in range(20):
            next(other)
        state = other.state_dict()
    with loader.make_reader(mixed_cache, batch_size=70, seed=8, num_epochs=2, workers=2) as reader:
        for _ in range(3):
            next(reader)
        reader.load_state_dict(state)  # restarts the pipeline at epoch 1, batch 5
        assert (reader.epoch, state["batch"]) == (1, 5)
        assert same_batches(list(reader), full[20:])


def test_set_epoch_starts_that_epoch(mixed_cache):
    full = read_all(loader.make_reader(mixed_cache, batch_size=300, seed=2, num_epochs=3))
    with loader.make_reader(mixed_cache, batch_size=300, seed=2, num_epochs=3) as reader:
        next(reader)
        reader.set_epoch(2)
        assert same_batches(list(reader), full[8:])
    with pytest.raises(loader.ConfigError, match="epoch"):
        reader.set_epoch(-1)


def test_set_epoch_past_num_epochs_is_refused_not_an_empty_loop(mixed_cache):
    """The usual ``for e in ...: reader.set_epoch(e)`` loop with the default num_epochs=1 would train on
    nothing from epoch 1 on: refused, naming the epochs the reader reads; the reader stays where it was."""
    full = read_all(loader.make_reader(mixed_cache, batch_size=300, seed=2, num_epochs=2))
    with loader.make_reader(mixed_cache, batch_size=300, seed=2, num_epochs=2) as reader:
        with pytest.raises(loader.ConfigError, match=r"epoch 2 is past this reader's epochs 0\.\.1 \(num_epochs=2"):
            reader.set_epoch(2)
        assert same_batches(list(reader), full)
    with loader.make_reader(mixed_cache, batch_size=300, seed=2, num_epochs=None) as reader:
        reader.set_epoch(5)  # endless: any epoch
        assert reader.epoch == 5


@pytest.mark.parametrize("pool", POOLS)
def test_a_small_budget_still_mixes_8_row_groups_per_batch(mixed_cache, pool):
    # 20 row groups of ~2.5 kB decoded: a 60 kB budget leaves a window 10 kB, 4 whole row groups; the reader
    # interleaves slices of 10 instead, and every row still comes once
    budget = 60_000
    whole = (budget // 6) // (sum(g.uncompressed_bytes for f in mixed_cache.files for g in f.row_groups)
                              / mixed_cache.num_row_groups)
    assert whole < 8
    reader = loader.make_reader(mixed_cache, batch_size=50, memory_budget=budget, with_row_ids=True, pool=pool)
    batches = read_all(reader)
    assert reader.max_piece_rows is not None and reader.window == 10
    assert min(len(np.unique(b["_row_group"])) for b in batches) >= 8
    assert sorted(ids_of(batches).tolist()) == list(range(1000))
    unshuffled = loader.make_reader(mixed_cache, batch_size=50, memory_budget=budget, shuffle=False)
    assert unshuffled.max_piece_rows is None  # no shuffle: nothing to mix, whole row groups
    unshuffled.close()
