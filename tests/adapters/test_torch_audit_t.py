"""The torch adapter, audit T: end-of-epoch states, states of other ranks, the process pool across passes, and one
version for every rank (``pin_version_across_ranks``, run with two gloo processes on 127.0.0.1)."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import socket

import pytest

torch = pytest.importorskip("torch")

import loader  # noqa: E402
import loader.torch  # noqa: E402
from loader.errors import StateError  # noqa: E402
from loader.torch import LarderIterableDataset, make_dataloader  # noqa: E402
from tests.adapters.audit_t_transforms import worker_pid  # noqa: E402
from tests.adapters.conftest import tagged_table  # noqa: E402
from tests.adapters.test_torch import WORKERS, id_lists, reader_epoch  # noqa: E402

KW = dict(batch_size=30, seed=4, columns=["id"])


def plain_loader(ds):
    return torch.utils.data.DataLoader(ds, batch_size=None)


def end_states(url, num_workers: int) -> dict:
    """The reader state of every worker shard after the last batch of epoch 0 (``epoch`` 1, ``batch`` 0)."""
    k = max(1, num_workers)
    states = {}
    for w in range(k):
        with loader.make_reader(url, rank=w, world_size=k, **KW) as reader:
            for _ in reader:
                pass
            states[w] = reader.state_dict()
    assert {(s["epoch"], s["batch"]) for s in states.values()} == {(1, 0)}
    return states


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_at_the_last_batch_then_set_epoch_reads_the_next_epoch(adapter_data, num_workers):
    """The DistributedSampler-style loop (load_state_dict, then set_epoch(state's epoch) before each pass) after a
    checkpoint at the last batch of epoch 0: no pass re-reads epoch 0, and the loop's epochs are the passes'."""
    _, ds = adapter_data
    epochs = [reader_epoch(ds.version_path, e, num_workers, **KW) for e in (0, 1, 2)]
    workers = WORKERS if num_workers else {}
    dl = make_dataloader(ds.version_path, num_workers=num_workers, **KW, **workers)
    seen = []
    for b in dl:
        seen.append(b["id"].tolist())
        state = json.loads(json.dumps(dl.state_dict()))
    assert seen == epochs[0]
    resumed = make_dataloader(ds.version_path, num_workers=num_workers, **KW, **workers)
    resumed.load_state_dict(state)
    passes = []
    for epoch in range(state["epoch"], state["epoch"] + 2):
        resumed.set_epoch(epoch)
        passes.append(id_lists(resumed))
    assert passes == epochs[1:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_of_shards_at_their_end_resumes_at_the_next_epoch(adapter_data, num_workers):
    """A state saying epoch 0 whose every shard is past its last batch (as states taken at the last batch were
    written before): set_epoch(0) keeps it, and the pass is epoch 1, not epoch 0 again nor an empty pass."""
    _, ds = adapter_data
    readers = end_states(ds.version_path, num_workers)
    state = {"epoch": 0, "rank": 0, "world_size": 1, "num_workers": num_workers, "readers": readers}
    dl = make_dataloader(ds.version_path, num_workers=num_workers, **KW, **(WORKERS if num_workers else {}))
    dl.load_state_dict(state)
    assert dl.state_dict() == state  # nothing moved before the pass
    dl.set_epoch(0)
    assert id_lists(dl) == reader_epoch(ds.version_path, 1, num_workers, **KW)
    assert id_lists(dl) == reader_epoch(ds.version_path, 2, num_workers, **KW)


def test_dataset_state_at_the_last_batch_is_never_an_empty_pass(adapter_data):
    """LarderIterableDataset's own state (num_workers=0), taken at the last batch, and the same state as earlier
    versions wrote it (epoch 0, reader past its end): the next pass is epoch 1, then epoch 2."""
    _, ds = adapter_data
    expected = [reader_epoch(ds.version_path, e, **KW) for e in (1, 2)]
    data = LarderIterableDataset(ds.version_path, **KW)
    for _ in plain_loader(data):
        state = data.state_dict()
    for loaded in (state, {"epoch": 0, "readers": end_states(ds.version_path, 0)}):
        resumed = LarderIterableDataset(ds.version_path, **KW)
        resumed.load_state_dict(json.loads(json.dumps(loaded)))
        resumed.set_epoch(loaded["epoch"])
        assert [id_lists(plain_loader(resumed)), id_lists(plain_loader(resumed))] == expected
    # The next epoch's start, and the windows the run planned with (audit D: a resumed run keeps them).
    assert state == {"epoch": 1, "rank": 0, "world_size": 1, "readers": {}, "layout": list(data.layout(1))}


def mid_epoch_state(url, rank: int, world_size: int, steps: int = 5) -> dict:
    data = LarderIterableDataset(url, rank=rank, world_size=world_size, **KW)
    it = iter(plain_loader(data))
    for _ in range(steps):
        next(it)
    return data.state_dict()


def test_dataset_state_of_another_rank_is_refused_on_load(adapter_data):
    """A state taken on rank 0 of 2 loaded on rank 1 (or with another world size) would restart that rank's epoch
    while rank 0 resumes mid-epoch (unequal batch counts: a DDP hang): refused, naming the layouts."""
    _, ds = adapter_data
    state = mid_epoch_state(ds.version_path, 0, 2)
    assert (state["rank"], state["world_size"]) == (0, 2)
    def fresh(rank, world):
        return LarderIterableDataset(ds.version_path, rank=rank, world_size=world, **KW)

    for rank, world in ((1, 2), (0, 1), (0, 3)):
        other = fresh(rank, world)
        with pytest.raises(StateError, match=rf"rank/world_size \(0, 2\).*\({rank}, {world}\)"):
            other.load_state_dict(state)
        assert id_lists(plain_loader(other)) == id_lists(plain_loader(fresh(rank, world)))  # nothing left behind
    same = fresh(0, 2)
    same.load_state_dict(state)
    assert id_lists(plain_loader(same)) == id_lists(plain_loader(fresh(0, 2)))[5:]


def test_dataset_state_without_its_layout_is_checked_before_any_batch(adapter_data):
    """A state without rank/world_size (as earlier versions wrote it) from rank 0, loaded on rank 1: the pass
    raises before its first batch instead of silently restarting rank 1's epoch."""
    _, ds = adapter_data
    state = mid_epoch_state(ds.version_path, 0, 2)
    old = {"epoch": state["epoch"], "readers": state["readers"]}
    other = LarderIterableDataset(ds.version_path, rank=1, world_size=2, **KW)
    other.load_state_dict(old)
    got = []
    with pytest.raises(StateError, match=r"shards \[0\].*shards \[1\]"):
        for b in plain_loader(other):
            got.append(b)
    assert got == []
    other = LarderIterableDataset(ds.version_path, rank=1, world_size=2, **KW)
    other.load_state_dict(old)  # a plain DataLoader's workers check it too (shards 2 and 3 here)
    with pytest.raises(StateError, match=r"shards \[0\].*shards \[2, 3\]"):
        next(iter(torch.utils.data.DataLoader(other, batch_size=None, num_workers=2, **WORKERS)))


def test_process_pool_is_kept_across_passes(adapter_data):
    """pool="process": the passes that follow each other reuse one reader and its worker processes (each of
    which starts by importing the training script's imports, seconds with torch), with the same batches as the
    thread pool's; a pass out of sequence starts a new one; the dataset still pickles (DataLoader workers)."""
    _, ds = adapter_data
    kwargs = dict(KW, columns=["id"], transform=worker_pid, workers=2)
    expected = [id_lists(LarderIterableDataset(ds.version_path, epoch=e, **kwargs)) for e in (0, 1, 2)]
    data = LarderIterableDataset(ds.version_path, pool="process", **kwargs)
    passes, pids = [], []
    for _ in range(3):
        batches = list(plain_loader(data))
        passes.append(id_lists(batches))
        pids.append({p for b in batches for p in b["pid"].tolist()})
    assert passes == expected
    assert len(set().union(*pids)) <= 2 and os.getpid() not in pids[0]  # one pool of 2 workers (else 3 pools)
    pickle.dumps(data)
    data.set_epoch(1)  # out of sequence: a new reader
    assert id_lists(plain_loader(data)) == expected[1]
    it = iter(plain_loader(data))
    next(it)
    del it  # an unfinished pass is not kept: the next pass reads epoch 3 from its start
    batches = list(plain_loader(data))
    assert id_lists(batches) == id_lists(LarderIterableDataset(ds.version_path, epoch=3, **kwargs))
    data.close()  # the kept reader's workers stop
    assert not any(os.path.exists(f"/proc/{pid}") for pid in {p for b in batches for p in b["pid"].tolist()})


def _pin_on_rank(rank: int, port: int, roots: list[str], out: str) -> None:
    """One trainer of two: its working directory holds its own ``d`` (another CURRENT: what a rank sees when the job
    publishes between the ranks' reads); both open ``"d"`` with ``pin_version_across_ranks``."""
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.chdir(roots[rank])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        try:
            loader.torch.pin_version_across_ranks("missing")  # rank 0's error reaches rank 1, which does not wait
        except loader.LarderError as e:
            error = f"{type(e).__name__}: {e}"
        url = loader.torch.pin_version_across_ranks("d")
        dl = make_dataloader(url, batch_size=100, columns=["id", "tag"])
        tags, steps = set(), 0
        for b in dl:
            tags |= set(b["tag"].tolist())
            steps += 1
            dist.all_reduce(torch.ones(1))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"url": url, "steps": steps, "tags": sorted(tags), "error": error}, f)
    finally:
        dist.destroy_process_group()


def test_pin_version_across_ranks_gives_every_rank_rank_0s_version(tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    loader.write_cache(tagged_table(1, rows=1200), roots[0], "d", row_group_bytes=2_000)
    loader.write_cache(tagged_table(2, rows=900), roots[1], "d", row_group_bytes=2_000)
    version = loader.pin_version(os.path.join(roots[0], "d"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_pin_on_rank, args=(port, roots, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    errors = [g.pop("error") for g in got]
    assert got[0] == got[1] == {"url": version, "steps": 6, "tags": [1]}  # 1200 rows, 2 ranks, batches of 100
    assert errors[0].startswith("DatasetNotFoundError: ") and "missing" in errors[0]
    assert errors[1] == f"LarderError: rank 0 could not pin the version: {errors[0]}"


def test_pin_version_across_ranks_without_a_process_group_is_pin_version(republished):
    url, publish = republished
    assert not torch.distributed.is_initialized()
    pinned = loader.torch.pin_version_across_ranks(url)
    assert pinned == loader.pin_version(url)
    publish(2)
    assert loader.torch.pin_version_across_ranks(url) != pinned == loader.pin_version(pinned)


def test_process_pool_in_a_plain_dataloader_worker_reads_with_threads(adapter_data):
    """A DataLoader worker is daemonic and may not start processes: ``pool="process"`` there reads with the thread
    pool in the worker (as make_dataloader does) instead of failing with multiprocessing's AssertionError."""
    table, ds = adapter_data
    data = LarderIterableDataset(ds.version_path, batch_size=100, columns=["id"], seed=2, transform=worker_pid,
                                 workers=2, pool="process")
    batches = list(torch.utils.data.DataLoader(data, batch_size=None, num_workers=1))
    ids = sorted(i for b in batches for i in b["id"].tolist())
    assert ids == list(range(table.num_rows))
    pids = {p for b in batches for p in b["pid"].tolist()}
    assert len(pids) == 1 and os.getpid() not in pids  # the transform ran in the DataLoader worker itself
