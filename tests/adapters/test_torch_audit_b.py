"""The torch adapter, audit B: the DataLoader's memory budget across workers, strict resume states, and the reader's
arguments checked when the dataset or loader is made (not at the first batch, in a worker)."""

from __future__ import annotations

import json
import threading
import warnings

import pytest

torch = pytest.importorskip("torch")

from loader.errors import ColumnNotFoundError, ConfigError, EmptyDatasetError, StateError  # noqa: E402
from loader.torch import MIN_WORKER_BUDGET, LarderIterableDataset, make_dataloader  # noqa: E402
from tests.adapters.test_torch import WORKERS, id_lists, reader_epoch  # noqa: E402

KW = dict(batch_size=50, seed=2, columns=["id"])
MiB = 1 << 20


def budget_warnings(**kwargs) -> tuple[int, list[str]]:
    """``(each worker's memory_budget, messages of the warnings about it)`` of ``make_dataloader(**kwargs)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dl = make_dataloader(**kwargs)
    return dl.dataset.reader_kwargs["memory_budget"], [str(w.message) for w in caught if "memory_budget" in
                                                        str(w.message)]


@pytest.mark.parametrize("num_workers, per_worker", [(2, 128 * MiB), (4, 64 * MiB)])
def test_the_default_budget_is_split_between_up_to_four_workers_silently(adapter_data, num_workers, per_worker):
    _, ds = adapter_data
    budget, said = budget_warnings(url=ds.version_path, num_workers=num_workers, **KW)
    assert (budget, said) == (per_worker, [])


@pytest.mark.parametrize("num_workers", [8, 16])
def test_more_workers_than_the_floor_allows_warn_of_the_total(adapter_data, num_workers):
    """Each worker's reader keeps the 64 MiB floor; the total past the default 256 MiB is said, with the way out."""
    _, ds = adapter_data
    budget, said = budget_warnings(url=ds.version_path, num_workers=num_workers, **KW)
    assert budget == MIN_WORKER_BUDGET == 64 * MiB
    assert len(said) == 1
    total = "512.0 MiB" if num_workers == 8 else "1.0 GiB"
    assert f"num_workers={num_workers}" in said[0] and f"{total} in all" in said[0]
    assert "more than the default 256.0 MiB" in said[0] and "pass memory_budget=" in said[0]


def test_a_given_budget_is_each_workers_without_a_warning(adapter_data):
    _, ds = adapter_data
    budget, said = budget_warnings(url=ds.version_path, num_workers=8, memory_budget=16 * MiB, **KW)
    assert (budget, said) == (16 * MiB, [])


def good_state() -> dict:
    return {"epoch": 1, "rank": 0, "world_size": 1, "num_workers": 0, "readers": {}}


BAD_STATES = [
    ("epoch", 1.7), ("epoch", True), ("epoch", -1), ("epoch", "1"), ("epoch", None),
    ("rank", 0.5), ("rank", False), ("world_size", 1.0), ("world_size", 0),
    ("readers", []), ("readers", None), ("readers", {"x": {}}), ("readers", {"-1": {}}), ("readers", {True: {}}),
    ("readers", {"0": 5}),
]


@pytest.mark.parametrize("key, bad", BAD_STATES, ids=repr)
@pytest.mark.parametrize("target", ["dataset", "loader"])
def test_malformed_states_are_refused_naming_the_key(adapter_data, target, key, bad):
    """As the reader's own state check: no int() coercion (1.7 -> 1, True -> 1, 0.5 -> 0), a StateError (not a
    ConfigError) for a negative epoch; nothing is changed by a refused state."""
    _, ds = adapter_data
    state = {**good_state(), key: bad}
    obj = LarderIterableDataset(ds.version_path, **KW) if target == "dataset" else make_dataloader(ds.version_path,
                                                                                                    **KW)
    with pytest.raises(StateError, match=repr(key)):
        obj.load_state_dict(state)
    dataset = obj if target == "dataset" else obj.dataset
    assert (dataset.epoch, dataset._resume) == (0, None)
    assert id_lists(obj) == reader_epoch(ds.version_path, 0, **KW)


@pytest.mark.parametrize("bad", [0.0, True, -1, "0", None])
def test_malformed_num_workers_of_a_loader_state_is_refused(adapter_data, bad):
    _, ds = adapter_data
    with pytest.raises(StateError, match="'num_workers'"):
        make_dataloader(ds.version_path, **KW).load_state_dict({**good_state(), "num_workers": bad})


@pytest.mark.parametrize("bad", [[], "state", 3])
def test_a_state_that_is_no_dict_is_refused(adapter_data, bad):
    _, ds = adapter_data
    for obj in (LarderIterableDataset(ds.version_path, **KW), make_dataloader(ds.version_path, **KW)):
        with pytest.raises(StateError, match="dict"):
            obj.load_state_dict(bad)


def test_a_malformed_reader_state_in_a_loader_state_is_refused_and_forgotten(adapter_data):
    _, ds = adapter_data
    dl = make_dataloader(ds.version_path, **KW)
    reader_state = {"epoch": 0.5, "batch": 1}
    with pytest.raises(StateError, match="'epoch'"):
        dl.load_state_dict({**good_state(), "epoch": 0, "readers": {"0": reader_state}})
    assert dl.dataset._resume is None
    assert id_lists(dl) == reader_epoch(ds.version_path, 0, **KW)


def test_good_states_still_resume_after_a_json_round_trip(adapter_data):
    """The strict checks keep what state_dict() writes: shard keys become strings in JSON."""
    _, ds = adapter_data
    dl = make_dataloader(ds.version_path, **KW)
    it = iter(dl)
    next(it)
    state = json.loads(json.dumps(dl.state_dict()))
    rest = [b["id"].tolist() for b in it]
    resumed = make_dataloader(ds.version_path, **KW)
    resumed.load_state_dict(state)
    assert id_lists(resumed) == rest


READER_ARGUMENTS = [
    ({"columns": ["nope"]}, ColumnNotFoundError, "nope"),
    ({"sample": 5}, ConfigError, "sample"),
    ({"pool": "x"}, ConfigError, "pool"),
    ({"shuffle": "yes"}, ConfigError, "shuffle"),
    ({"memory_budget": -1}, ConfigError, "memory_budget"),
    ({"drop_last": True, "batch_size": 1000}, EmptyDatasetError, "batch_size"),
]


@pytest.mark.parametrize("kwargs, error, match", READER_ARGUMENTS, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize("num_workers", [None, 0, 2])
def test_reader_arguments_are_checked_when_made(adapter_data, kwargs, error, match, num_workers):
    """Not at the first batch (with workers: inside a worker); the check starts no thread."""
    _, ds = adapter_data
    kwargs = {"seed": 1, **kwargs}
    before = set(threading.enumerate())
    with pytest.raises(error, match=match):
        if num_workers is None:
            LarderIterableDataset(ds.version_path, **kwargs)
        else:
            make_dataloader(ds.version_path, num_workers=num_workers, **kwargs, **WORKERS)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


def test_worker_shards_without_a_batch_are_refused_when_the_loader_is_made(adapter_data):
    """730 rows, drop_last, batches of 300: one reader (or two workers' shards of 365) has a batch, three workers'
    shards of 243 have none: refused by make_dataloader, not by the workers at the first batch."""
    _, ds = adapter_data
    kwargs = dict(batch_size=300, drop_last=True, columns=["id"])
    assert len(make_dataloader(ds.version_path, num_workers=2, **kwargs, **WORKERS)) == 2
    with pytest.raises(EmptyDatasetError, match="batch_size 300"):
        make_dataloader(ds.version_path, num_workers=3, **kwargs, **WORKERS)


def test_a_checked_dataset_reads_its_epochs_as_the_reader_does(adapter_data):
    """The check moves nothing: the passes are epochs 1 and 2 (from ``epoch=1``), in the reader's order."""
    _, ds = adapter_data
    data = LarderIterableDataset(ds.version_path, sample=0.5, epoch=1, **KW)
    assert [id_lists(data), id_lists(data)] == [reader_epoch(ds.version_path, e, sample=0.5, **KW) for e in (1, 2)]
