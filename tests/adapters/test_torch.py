"""The PyTorch adapter, run for real with DataLoader workers."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import loader  # noqa: E402
from loader.errors import ConfigError, StateError  # noqa: E402
from loader.torch import STATE_KEY, LarderDataLoader, LarderIterableDataset, make_dataloader  # noqa: E402
from tests.adapters.conftest import config_error  # noqa: E402

# A worker that hangs fails the test instead of hanging CI.
TIMEOUT = 120
# The test process has threads (TensorFlow, Spark, readers) that make fork unsafe: workers come from a forkserver.
# (No forkserver preload: the server is shared with the reader's process pools, which must not get torch.)
WORKERS = {"timeout": TIMEOUT, "multiprocessing_context": "forkserver"}


def ids_of(batches) -> np.ndarray:
    return np.concatenate([b["id"].numpy() for b in batches])


def reader_epoch(url, epoch: int, num_workers: int = 0, **kwargs) -> list[list[int]]:
    """Ids per batch of ``epoch`` as a DataLoader delivers them: the plain readers of the worker shards
    (``make_reader``'s own epoch ``epoch``), taken round-robin from worker 0 as long as each has batches."""
    k = max(1, num_workers)
    shards = []
    for w in range(k):
        with loader.make_reader(url, rank=w, world_size=k, num_epochs=epoch + 1, **kwargs) as reader:
            shards.append([b["id"].tolist() for i, b in enumerate(reader) if i >= epoch * reader.batches_per_epoch])
    return [shard[i] for i in range(max(map(len, shards))) for shard in shards if i < len(shard)]


def id_lists(batches) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def check_rows(batch: dict, table) -> None:
    """Every tensor of ``batch`` equals the table's rows named by ``batch['id']``."""
    ids = batch["id"].numpy()
    rows = table.take(ids)
    np.testing.assert_array_equal(batch["x"].numpy(), rows["x"].to_numpy())
    np.testing.assert_array_equal(batch["label"].numpy(), rows["label"].to_numpy())
    assert batch["title"] == rows["title"].to_pylist()
    assert batch["image"] == rows["image"].to_pylist()
    lengths = batch["ids.lengths"].numpy()
    padded = batch["ids"].numpy()
    expected = rows["ids"].to_pylist()
    assert lengths.tolist() == [len(v) for v in expected]
    assert padded.shape == (len(ids), max(lengths))
    mask = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    np.testing.assert_array_equal(padded[mask], np.concatenate([np.asarray(v, np.int32) for v in expected]))
    assert (padded[~mask] == -1).all()
    assert batch["tokens"] == rows["tokens"].to_pylist()  # a list of str per row (None where null)
    check_nested(batch, "nested", rows["nested"].to_pylist(), pad_value=-1)


def check_nested(batch: dict, col: str, expected: list, pad_value) -> None:
    """A padded two-level column: ``(n, most items, longest item)`` with lengths and value_lengths."""
    values, lengths, item_lengths = (batch[col].numpy(), batch[col + ".lengths"].numpy(),
                                     batch[col + ".value_lengths"].numpy())
    assert values.ndim == 3 and lengths.tolist() == [len(r or []) for r in expected]
    for i, row in enumerate(expected):
        row = row or []
        assert [values[i, j, : item_lengths[i, j]].tolist() for j in range(lengths[i])] == row
        assert (values[i, lengths[i]:] == pad_value).all() and (item_lengths[i, lengths[i]:] == 0).all()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_row_once_and_values_match(adapter_data, num_workers):
    table, ds = adapter_data
    dl = make_dataloader(ds.version_path, batch_size=32, num_workers=num_workers, seed=5, pad_value=-1,
                         **(WORKERS if num_workers else {}))
    batches = list(dl)
    assert len(dl) == len(batches)
    ids = ids_of(batches)
    assert sorted(ids.tolist()) == list(range(table.num_rows))
    assert isinstance(batches[0]["id"], torch.Tensor) and batches[0]["id"].dtype == torch.int64
    assert batches[0]["ids"].dtype == torch.int32 and batches[0]["ids"].ndim == 2
    for b in batches:
        check_rows(b, table)


def test_workers_compose_with_ranks(adapter_data):
    """2 trainers × 2 DataLoader workers: four disjoint shards that cover the dataset, equal batch counts."""
    table, ds = adapter_data
    per_rank = []
    for rank in range(2):
        dl = make_dataloader(ds.version_path, batch_size=25, num_workers=2, rank=rank, world_size=2, seed=9,
                             **WORKERS)
        batches = list(dl)
        per_rank.append((len(batches), set(ids_of(batches).tolist())))
    assert per_rank[0][0] == per_rank[1][0]
    assert not per_rank[0][1] & per_rank[1][1]
    assert per_rank[0][1] | per_rank[1][1] == set(range(table.num_rows))
    assert sum(len(s) for _, s in per_rank) == table.num_rows


def test_set_epoch_reorders_deterministically(adapter_data):
    _, ds = adapter_data
    dl = make_dataloader(ds.version_path, batch_size=40, seed=1)
    orders = []
    for epoch in (0, 1, 0):
        dl.set_epoch(epoch)
        orders.append(ids_of(list(dl)).tolist())
    assert orders[0] == orders[2]
    assert orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])
    # epoch e of the adapter is epoch e of the plain reader
    with loader.make_reader(ds.version_path, batch_size=40, seed=1, num_epochs=2) as reader:
        plain = np.concatenate([b["id"] for b in reader]).tolist()
    assert plain == orders[0] + orders[1]


def test_resume_with_workers_keeps_the_order(adapter_data):
    """Stopped after 5 batches (worker 1 is due next, and has one batch more left than worker 0), the resumed
    pass yields exactly the batches the uninterrupted run yields next, in its order (``reader_epoch``, checked
    against uninterrupted passes in ``test_persistent_workers_read_the_epoch_asked_for``), and the pass after it
    is the uninterrupted run's next epoch."""
    table, ds = adapter_data
    kwargs = dict(batch_size=30, seed=4, columns=["id"])
    epochs = [reader_epoch(ds.version_path, e, 2, **kwargs) for e in (0, 1)]
    assert epochs[0] != epochs[1]
    dl = make_dataloader(ds.version_path, num_workers=2, **kwargs, **WORKERS)
    it = iter(dl)
    head = [next(it)["id"].tolist() for _ in range(5)]
    state = dl.state_dict()
    del it
    resumed = make_dataloader(ds.version_path, num_workers=2, **kwargs, **WORKERS)
    resumed.load_state_dict(state)
    tail = id_lists(resumed)
    assert head + tail == epochs[0]
    assert sum(len(b) for b in head + tail) == table.num_rows
    assert id_lists(resumed) == epochs[1]  # no rotation left over: the next pass is the next epoch, in order


def test_state_after_the_last_batch_resumes_at_the_next_epoch(adapter_data):
    _, ds = adapter_data
    dl = make_dataloader(ds.version_path, batch_size=100, seed=6, columns=["id"])
    for _ in dl:
        state = dl.state_dict()  # taken after the last batch, before the pass ends
    assert dl.state_dict() == {**state, "epoch": 1, "readers": {}}
    resumed = make_dataloader(ds.version_path, batch_size=100, seed=6, columns=["id"])
    resumed.load_state_dict(state)
    assert id_lists(resumed) == reader_epoch(ds.version_path, 1, batch_size=100, seed=6, columns=["id"])


def test_persistent_workers_read_the_epoch_asked_for(adapter_data):
    """Persistent workers keep their dataset copy: each pass must still read its own epoch, not epoch 0's
    order again; ``set_epoch`` out of sequence and ``load_state_dict`` restart them, and the workers that ran
    a resumed (rotated) pass read the next epoch unrotated."""
    _, ds = adapter_data
    kwargs = dict(batch_size=40, seed=7, columns=["id"])
    epochs = {e: reader_epoch(ds.version_path, e, 2, **kwargs) for e in (0, 1, 2)}
    dl = LarderDataLoader(LarderIterableDataset(ds.version_path, **kwargs), num_workers=2, persistent_workers=True,
                          **WORKERS)
    orders, states = [], []
    for epoch in (0, 1, None, 0):  # None: no set_epoch, the pass after the previous one
        if epoch is not None:
            dl.set_epoch(epoch)
        orders.append([])
        for b in dl:
            orders[-1].append(b["id"].tolist())
            states.append(dl.state_dict())
    assert orders == [epochs[0], epochs[1], epochs[2], epochs[0]]
    dl.load_state_dict(states[len(epochs[0]) + 2])  # after 3 batches of epoch 1: worker 1 is due next
    assert id_lists(dl) == epochs[1][3:]
    assert id_lists(dl) == epochs[2]


def test_plain_dataloader_with_persistent_workers_advances_the_epoch(adapter_data):
    _, ds = adapter_data
    kwargs = dict(batch_size=40, seed=7, columns=["id"])
    dataset = LarderIterableDataset(ds.version_path, **kwargs)
    dl = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True, **WORKERS)
    assert [id_lists(dl), id_lists(dl)] == [reader_epoch(ds.version_path, e, 2, **kwargs) for e in (0, 1)]


def test_resume_in_process_is_exact(adapter_data):
    _, ds = adapter_data
    full = [b["id"].tolist() for b in make_dataloader(ds.version_path, batch_size=50, seed=2, epoch=1)]
    dl = make_dataloader(ds.version_path, batch_size=50, seed=2, epoch=1)
    it = iter(dl)
    head = [next(it)["id"].tolist() for _ in range(4)]
    assert dl.dataset.state_dict()["readers"][0]["batch"] == 4
    state = dl.state_dict()
    resumed = make_dataloader(ds.version_path, batch_size=50, seed=2)
    resumed.load_state_dict(state)
    assert head + [b["id"].tolist() for b in resumed] == full


def test_offsets_and_string_tensors(adapter_data):
    table, ds = adapter_data
    dl = make_dataloader(
        ds.version_path, batch_size=64, ragged="offsets", strings="tensor", columns=["id", "title", "ids"]
    )
    b = next(iter(dl))
    rows = table.take(b["id"].numpy())
    offsets = b["title.offsets"].numpy()
    data = b["title"].numpy().tobytes()
    titles = [data[offsets[i] : offsets[i + 1]].decode() for i in range(len(offsets) - 1)]
    assert titles == [t or "" for t in rows["title"].to_pylist()]
    assert b["ids"].ndim == 1 and b["ids.offsets"].shape[0] == len(b["id"]) + 1
    assert set(b) == {"id", "title", "title.offsets", "ids", "ids.offsets"}


def test_lists_of_strings_as_padded_bytes(adapter_data):
    table, ds = adapter_data
    dl = make_dataloader(ds.version_path, batch_size=64, strings="tensor", columns=["id", "tokens"])
    for b in dl:
        expected = [[t.encode() for t in row or []] for row in table.take(b["id"].numpy())["tokens"].to_pylist()]
        values, lengths = b["tokens"].numpy(), b["tokens.lengths"].numpy()
        item_lengths = b["tokens.value_lengths"].numpy()
        got = [[values[i, j, : item_lengths[i, j]].tobytes() for j in range(lengths[i])] for i in range(len(lengths))]
        assert got == expected


def test_pin_memory_without_an_accelerator_warns_and_still_reads(adapter_data):
    table, ds = adapter_data
    if torch.accelerator.is_available():
        pytest.skip("an accelerator is present: pinning really happens")
    with pytest.warns(UserWarning, match="pin_memory"):
        dl = make_dataloader(ds.version_path, batch_size=200, pin_memory=True, columns=["id"])
    assert sorted(ids_of(list(dl)).tolist()) == list(range(table.num_rows))


def test_plain_dataloader_over_the_dataset(adapter_data):
    """The IterableDataset also works with an ordinary DataLoader (batch_size=None)."""
    table, ds = adapter_data
    dataset = LarderIterableDataset(ds.version_path, batch_size=100, columns=["id", "ids"])
    ids = np.concatenate([b["id"].numpy() for b in torch.utils.data.DataLoader(dataset, batch_size=None)])
    assert sorted(ids.tolist()) == list(range(table.num_rows))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ragged": "jagged"}, "ragged"),
        ({"strings": "utf8"}, "strings"),
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank 2"),
        ({"rank": 1}, "rank and world_size"),
        ({"num_epochs": 3}, "num_epochs"),
        ({"epoch": -1}, "epoch"),
    ],
)
def test_bad_arguments_are_named(adapter_data, kwargs, match):
    _, ds = adapter_data
    with pytest.raises(ConfigError, match=match):
        make_dataloader(ds.version_path, **kwargs)


@pytest.mark.parametrize("name", ["batch_size", "epoch", "rank", "world_size"])
@pytest.mark.parametrize("bad", [True, np.bool_(False), -1, 2.0, "1"], ids=repr)
def test_integer_arguments_are_checked_as_the_reader_checks_them(adapter_data, name, bad):
    """The adapter refuses what ``make_reader`` / ``Reader.set_epoch`` refuse, with the same message."""
    _, ds = adapter_data
    kwargs = {"rank": 0, "world_size": 1, name: bad}
    if name == "epoch":
        with loader.make_reader(ds.version_path, columns=["id"]) as reader:
            expected = config_error(lambda: reader.set_epoch(bad))
    else:
        expected = config_error(lambda: loader.make_reader(ds.version_path, columns=["id"], **kwargs))
    assert expected is not None and expected.startswith(name + " ")
    assert config_error(lambda: LarderIterableDataset(ds.version_path, columns=["id"], **kwargs)) == expected


def test_numpy_integer_arguments_are_accepted_as_by_the_reader(adapter_data):
    _, ds = adapter_data
    kwargs = dict(columns=["id"], seed=3)
    expected = reader_epoch(ds.version_path, 1, batch_size=50, **kwargs)
    data = LarderIterableDataset(ds.version_path, batch_size=np.int64(50), epoch=np.int32(1),
                                 rank=np.int64(0), world_size=np.uint8(1), **kwargs)
    assert id_lists(data) == expected
    assert type(data.batch_size) is int and type(data.epoch) is int


def test_bad_column_raises_when_the_loader_is_made(adapter_data):
    """Checked up front (the worker's reader would find it only at its first batch)."""
    _, ds = adapter_data
    with pytest.raises(loader.ColumnNotFoundError, match="colour"):
        make_dataloader(ds.version_path, num_workers=1, columns=["id", "colour"], **WORKERS)


def boom(batch):
    raise ValueError("bad pixel in this batch")


def test_transform_error_from_a_worker_keeps_type_and_traceback(adapter_data):
    _, ds = adapter_data
    dl = make_dataloader(ds.version_path, num_workers=1, columns=["id"], transform=boom, **WORKERS)
    with pytest.raises(loader.TransformError, match="bad pixel in this batch") as info:
        next(iter(dl))
    assert "in DataLoader worker process 0" in str(info.value)
    assert 'raise ValueError("bad pixel in this batch")' in str(info.value)


def test_state_from_another_layout_or_version_is_refused(adapter_data, tmp_path):
    table, ds = adapter_data
    dl = make_dataloader(ds.version_path, batch_size=30, num_workers=2, **WORKERS)
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    del it
    with pytest.raises(StateError, match="num_workers"):
        make_dataloader(ds.version_path, batch_size=30, num_workers=1).load_state_dict(state)
    other = loader.write_cache(table.slice(0, 300), tmp_path, "adapt", row_group_bytes=4_000)
    moved = make_dataloader(other.version_path, batch_size=30, num_workers=2, **WORKERS)
    with pytest.raises(StateError, match="version"):  # checked on load, not halfway through a pass
        moved.load_state_dict(state)
    # nothing lost: the original cache still reads in full
    assert sorted(ids_of(list(make_dataloader(ds.version_path, batch_size=30))).tolist()) == list(
        range(table.num_rows)
    )


def test_more_shards_than_row_groups(adapter_data, tmp_path):
    """2 trainers × 2 workers = 4 shards over one row group: still every row once, equal batches per rank."""
    table, _ = adapter_data
    small = loader.write_cache(table.slice(0, 40), tmp_path, "small", row_group_bytes=1 << 20)
    assert small.num_row_groups == 1
    counts, seen = [], []
    for rank in range(2):
        dl = make_dataloader(small.version_path, batch_size=4, num_workers=2, rank=rank, world_size=2, **WORKERS)
        batches = list(dl)
        counts.append(len(batches))
        seen += ids_of(batches).tolist()
    assert counts[0] == counts[1]
    assert sorted(seen) == list(range(40))


def to_xy(batch):  # a user collate_fn returning a tuple (module level: it pickles for the forkserver workers)
    assert STATE_KEY not in batch and isinstance(batch["id"], torch.Tensor), {k: type(v) for k, v in batch.items()}
    return batch["id"], batch["label"]


def seen_types(batch):
    return {k: type(v).__name__ for k, v in batch.items()}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_collate_fn_gets_tensors_and_may_return_anything(adapter_data, num_workers):
    """A user collate_fn sees the batch the loader yields without one (tensors, strings as lists, no internal
    key) and its result comes out as is; the state still resumes exactly, in the uninterrupted order."""
    table, ds = adapter_data
    kwargs = dict(batch_size=30, seed=4, columns=["id", "title", "ids", "label"])

    def loader_with(**kw):
        return LarderDataLoader(LarderIterableDataset(ds.version_path, **kwargs), num_workers=num_workers,
                                **kw, **(WORKERS if num_workers else {}))

    plain = next(iter(loader_with()))
    assert next(iter(loader_with(collate_fn=seen_types))) == seen_types(plain) == {
        "id": "Tensor", "title": "list", "ids": "Tensor", "ids.lengths": "Tensor", "label": "Tensor"}
    full = list(loader_with(collate_fn=to_xy))
    assert all(isinstance(b, tuple) and len(b) == 2 for b in full)
    assert sorted(torch.cat([x for x, _ in full]).tolist()) == list(range(table.num_rows))
    assert all(torch.equal(y, x % 5) for x, y in full)
    expected = reader_epoch(ds.version_path, 0, num_workers, batch_size=30, seed=4, columns=["id"])
    assert [x.tolist() for x, _ in full] == expected
    dl = loader_with(collate_fn=to_xy)
    it = iter(dl)
    head = [next(it)[0].tolist() for _ in range(5)]
    state = json.loads(json.dumps(dl.state_dict()))
    del it
    resumed = loader_with(collate_fn=to_xy)
    resumed.load_state_dict(state)
    assert head + [x.tolist() for x, _ in resumed] == expected
    assert [x.tolist() for x, _ in resumed] == reader_epoch(ds.version_path, 1, num_workers, batch_size=30, seed=4,
                                                            columns=["id"])


def test_make_dataloader_passes_collate_fn(adapter_data):
    table, ds = adapter_data
    batches = list(make_dataloader(ds.version_path, batch_size=100, columns=["id", "label"], collate_fn=to_xy))
    assert sorted(torch.cat([x for x, _ in batches]).tolist()) == list(range(table.num_rows))


def test_collate_fn_must_be_callable(adapter_data):
    _, ds = adapter_data
    with pytest.raises(ConfigError, match="collate_fn"):
        make_dataloader(ds.version_path, collate_fn="id")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_pass_and_worker_reads_the_version_opened(republished, num_workers):
    """A version published during or between passes is not read: the dataset follows CURRENT once, and
    workers that start after the publish read the same version as the others (no epoch of two halves)."""
    url, publish = republished
    loader_ = make_dataloader(url, batch_size=100, columns=["id", "tag"], seed=2, num_workers=num_workers,
                              **(WORKERS if num_workers else {}))
    for epoch in range(2):
        ids, tags = [], set()
        for i, b in enumerate(loader_):
            ids += b["id"].tolist()
            tags |= set(b["tag"].tolist())
            if i == 0:
                publish(2 * epoch + 2)  # mid-pass, before later batches (and, at epoch 0, workers) start
        assert sorted(ids) == list(range(1200)) and tags == {1}
    fresh = make_dataloader(url, batch_size=100, columns=["tag"])
    assert {t for b in fresh for t in b["tag"].tolist()} == {4}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_max_decoded_bytes_caps_the_directory_over_epochs(adapter_data, tmp_path, num_workers):
    """A new reader every pass (and one per worker) must not each add the cap: it bounds the directory."""
    import os

    table, ds = adapter_data

    def on_disk(path) -> list[int]:
        return [os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names]

    list(make_dataloader(ds.version_path, batch_size=32, decoded_cache_dir=tmp_path / "full"))
    sizes = sorted(on_disk(tmp_path / "full"))
    assert len(sizes) == ds.num_row_groups
    cap = sum(sizes[:3]) + 3 * 4096  # about 3 of the row groups
    # Concurrent writers (the workers) may each overshoot by the file they are writing when the other counts.
    slack = 0 if num_workers == 0 else 2 * num_workers * sizes[-1]
    version_dir = tmp_path / "capped" / ds.name / ds.version
    dl = make_dataloader(ds.version_path, batch_size=32, num_workers=num_workers, pad_value=-1,
                         decoded_cache_dir=tmp_path / "capped", max_decoded_bytes=cap,
                         **(WORKERS if num_workers else {}))
    for epoch in range(4):
        batches = list(dl)
        assert sorted(ids_of(batches).tolist()) == list(range(table.num_rows))
        for b in batches:
            check_rows(b, table)
        assert 0 < sum(on_disk(version_dir)) <= cap + slack, f"after epoch {epoch}"


def test_pin_walks_nested_batches_and_pins_what_can_be_pinned():
    """``pin`` (used with ``pin_memory=True``) recurses into dicts, lists and namedtuples and calls each leaf's
    ``pin_memory()``; leaves without one are returned as they are."""
    from collections import namedtuple

    from loader.torch import pin

    class Leaf:
        def __init__(self, v):
            self.v, self.pinned = v, False

        def pin_memory(self):
            out = Leaf(self.v)
            out.pinned = True
            return out

    Pair = namedtuple("Pair", "a b")
    out = pin({"x": Leaf(1), "y": [Leaf(2), (Leaf(3), "s")], "z": Pair(Leaf(4), 5), "t": int})
    assert out["x"].pinned and out["x"].v == 1
    assert out["y"][0].pinned and out["y"][1][0].pinned and out["y"][1][1] == "s"
    assert isinstance(out["z"], Pair) and out["z"].a.pinned and out["z"].b == 5
    assert out["t"] is int
