"""The torch adapter resumes a whole run with the windows its state was planned with (audit D): a run resumed with
another ``memory_budget`` (which plans other windows) yields the batches of the uninterrupted run in every pass and
every worker shard, also from a state taken at an epoch boundary (no reader state in it)."""

from __future__ import annotations

import json
import warnings

import pytest

torch = pytest.importorskip("torch")

import loader  # noqa: E402
from loader.torch import LarderIterableDataset, make_dataloader  # noqa: E402
from tests.adapters.test_torch import WORKERS, id_lists  # noqa: E402

KW = dict(batch_size=30, seed=2, columns=["id"])
SAVED, RESUMED = 20_000, 1 << 20  # memory budgets planning other windows (slices of a few rows, whole row groups)
PASSES = 2  # the resumed pass and the next one (which the adapter planned with the resuming run's windows)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small budget warns of its streams
        yield


def layout(dl) -> tuple:
    ds = dl.dataset
    k = max(1, dl.num_workers)
    reader = ds.make_reader(ds.rank * k, ds.world_size * k)
    try:
        return reader.window, reader.max_piece_rows
    finally:
        reader.close()


def loader_of(url, budget, num_workers, persistent=False):
    extra = dict(WORKERS, persistent_workers=persistent) if num_workers else {}
    return make_dataloader(url, memory_budget=budget, num_workers=num_workers, **KW, **extra)


@pytest.mark.parametrize("num_workers, taken, persistent", [
    (0, 5, False), (0, 25, False), (0, 30, False), (2, 1, False), (2, 26, True),
], ids=lambda v: repr(v))
def test_a_resumed_run_keeps_the_saved_windows_in_every_pass_and_shard(adapter_data, num_workers, taken,
                                                                       persistent):
    """``taken`` batches into the saved run (an epoch has 25 without workers, 26 with two): mid-epoch (with two
    workers, only shard 0 has a state), and at the epoch boundary (the state holds no reader state)."""
    _, ds = adapter_data
    url = ds.version_path
    saved = loader_of(url, SAVED, num_workers)
    other = loader_of(url, RESUMED, num_workers)
    assert layout(saved) != layout(other)
    whole = [id_lists(saved) for _ in range(PASSES)]
    if not num_workers:  # (slow with workers; the same rows of other windows)
        assert [id_lists(other) for _ in range(PASSES)] != whole  # the windows change the batches

    run = loader_of(url, SAVED, num_workers)
    head, it = [], iter(run)
    while len(head) < taken:
        try:
            head.append(next(it)["id"].tolist())
        except StopIteration:
            it = iter(run)
    state = json.loads(json.dumps(run.state_dict()))
    head_passes = state["epoch"]  # passes begun in the head (the last one maybe unfinished)
    del it
    resumed = loader_of(url, RESUMED, num_workers, persistent)
    if persistent:
        # The state as earlier versions wrote it at the end of a pass (epoch 0, every shard's reader past its end):
        # its pass is epoch 1, which the persistent workers, having read epoch 0 with their own windows, would read.
        state = {**state, "epoch": 0, "readers": {str(r): s for r, s in run._states.items()}}
        del state["layout"]
        id_lists(resumed)
    resumed.load_state_dict(state)
    rest = [id_lists(resumed) for _ in range(PASSES - head_passes)]
    assert head + [b for p in rest for b in p] == [b for p in whole for b in p]
    if taken % len(whole[0]) == 0 and not persistent:  # at a boundary: no reader state, the windows beside them
        assert state["readers"] == {} and state["layout"] == list(layout(saved))


def test_a_dataset_state_at_an_epoch_boundary_keeps_the_saved_windows(adapter_data):
    """LarderIterableDataset's own state (no workers), taken after the last batch of a pass."""
    _, ds = adapter_data
    url = ds.version_path

    def passes(data, n):
        return [id_lists(torch.utils.data.DataLoader(data, batch_size=None)) for _ in range(n)]

    saved = LarderIterableDataset(url, memory_budget=SAVED, **KW)
    whole = passes(saved, 3)
    run = LarderIterableDataset(url, memory_budget=SAVED, **KW)
    for _ in torch.utils.data.DataLoader(run, batch_size=None):
        state = json.loads(json.dumps(run.state_dict()))
    assert state["epoch"] == 1 and state["readers"] == {}
    resumed = LarderIterableDataset(url, memory_budget=RESUMED, **KW)
    assert passes(LarderIterableDataset(url, memory_budget=RESUMED, **KW), 3) != whole
    resumed.load_state_dict(state)
    assert passes(resumed, 2) == whole[1:]


def test_a_loader_refuses_a_reader_state_of_an_earlier_larder(adapter_data):
    """A loader state nesting a reader state of format 1 (no plan rules recorded) is refused when loaded, naming
    why; the loader is left as it was, and set_epoch of the state's epoch reads that epoch again."""
    _, ds = adapter_data
    url = ds.version_path
    whole = [id_lists(loader_of(url, SAVED, 0))]
    run = loader_of(url, SAVED, 0)
    it = iter(run)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(run.state_dict()))
    del it
    old = {k: v for k, v in state["readers"]["0"].items() if k != "plan"}
    state["readers"]["0"] = {**old, "format": 1}
    resumed = loader_of(url, RESUMED, 0)
    with pytest.raises(loader.StateError, match=r"'format' is 1.*earlier larder.*set_epoch\(0\)"):
        resumed.load_state_dict(state)
    assert resumed.state_dict()["readers"] == {} and resumed.dataset._layout is None
    resumed = loader_of(url, SAVED, 0)
    with pytest.raises(loader.StateError, match="'format' is 1"):
        resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])
    assert [id_lists(resumed)] == whole


@pytest.mark.parametrize("bad", [[0, None], [3, 0], [3], [True, None], "3,None", [2.0, 5]], ids=repr)
def test_a_malformed_layout_is_refused_naming_the_key(adapter_data, bad):
    _, ds = adapter_data
    dl = loader_of(ds.version_path, SAVED, 0)
    state = {"epoch": 1, "rank": 0, "world_size": 1, "num_workers": 0, "readers": {}, "layout": bad}
    with pytest.raises(loader.StateError, match="'layout'"):
        dl.load_state_dict(state)
    assert dl.dataset._layout is None and dl.state_dict()["epoch"] == 0
