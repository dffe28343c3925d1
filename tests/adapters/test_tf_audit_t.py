"""The TensorFlow adapter, audit T: sharded datasets under tf.distribute (auto-shard off, and a real
MultiWorkerMirroredStrategy of two workers on 127.0.0.1), and the process pool kept across iterations."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")

import loader  # noqa: E402
from loader.tf import make_dataset  # noqa: E402
from tests.adapters.audit_t_transforms import worker_pid  # noqa: E402
from tests.adapters.test_tf import id_lists, reader_epochs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POLICY = tf.data.experimental.AutoShardPolicy


def test_sharded_dataset_turns_tf_auto_shard_off(adapter_data):
    """A dataset larder shards (world_size > 1) must not be sharded again by tf.distribute; an unsharded one keeps
    TensorFlow's default, so that tf.distribute still splits it between workers."""
    _, ds = adapter_data
    for rank in (0, 1):
        data = make_dataset(ds.version_path, rank=rank, world_size=2, columns=["id"])
        assert data.options().experimental_distribute.auto_shard_policy == POLICY.OFF
        data.set_epoch(1)  # still the adapter's dataset
    assert make_dataset(ds.version_path, columns=["id"]).options().experimental_distribute.auto_shard_policy \
        == POLICY.AUTO
    with pytest.raises(loader.ConfigError, match="world_size"):
        make_dataset(ds.version_path, columns=["id"], world_size=0, output_signature={})


WORKER = """
import json, os, sys
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in json.loads(sys.argv[2])]},
                                      "task": {"type": "worker", "index": int(sys.argv[1])}})
import tensorflow as tf
from loader.tf import make_dataset
strategy = tf.distribute.MultiWorkerMirroredStrategy()
rank = int(sys.argv[1])
data = make_dataset(sys.argv[3], rank=rank, world_size=2, batch_size=32, columns=["id"], seed=0)
ids = []
for batch in strategy.experimental_distribute_dataset(data):
    for t in strategy.experimental_local_results(batch["id"]):
        ids += t.numpy().tolist()
print(json.dumps(ids))
"""


def test_multi_worker_mirrored_strategy_reads_each_shard_whole(adapter_data):
    """Two MultiWorkerMirroredStrategy workers with rank/world_size: each trains on its whole larder shard (with
    TensorFlow's default auto-shard policy each got half of it: half of every epoch dropped)."""
    table, ds = adapter_data
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), json.dumps(ports), ds.version_path], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for rank in (0, 1):
        with loader.make_reader(ds.version_path, rank=rank, world_size=2, batch_size=32, columns=["id"]) as r:
            shard = [i for b in r for i in b["id"].tolist()]
        assert got[rank] == shard
    assert sorted(got[0] + got[1]) == list(range(table.num_rows))


def test_process_pool_reader_is_kept_across_iterations(adapter_data):
    """pool="process": iterations that follow each other reuse one reader and its worker processes, and read the
    same batches as the thread pool; set_epoch out of sequence starts a new one; close() stops it."""
    _, ds = adapter_data
    kwargs = dict(batch_size=100, columns=["id"], seed=8, transform=worker_pid, workers=2)
    epochs = reader_epochs(ds.version_path, 3, **kwargs)
    data = make_dataset(ds.version_path, pool="process", **kwargs)
    passes, pids = [], []
    for _ in range(3):
        batches = list(data)
        passes.append(id_lists(batches))
        pids.append({p for b in batches for p in b["pid"].numpy().tolist()})
    assert passes == epochs
    assert len(set().union(*pids)) <= 2 and os.getpid() not in pids[0]  # one pool of 2 workers (else 3 pools)
    data.set_epoch(1)
    batches = list(data)
    assert id_lists(batches) == epochs[1]
    data.close()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in {p for b in batches for p in b["pid"].numpy().tolist()})


def test_a_dropped_process_pool_dataset_stops_its_kept_reader(adapter_data):
    """TF keeps every ``from_generator`` generator in a global registry: the kept reader must not hang on it. A
    dataset read to its end and dropped without ``close()`` stops its workers and frees its shared memory."""
    import gc
    import glob
    import time

    _, ds = adapter_data
    before = set(glob.glob("/dev/shm/lrd*"))
    pids: set[int] = set()
    for _ in range(2):
        data = make_dataset(ds.version_path, pool="process", batch_size=100, columns=["id"], seed=3,
                            transform=worker_pid, workers=2)
        pids |= {p for b in data for p in b["pid"].numpy().tolist()}  # read to its end: its reader is kept
        del data
        gc.collect()
    assert pids and os.getpid() not in pids
    deadline = time.monotonic() + 10  # the workers stop and the segments go as the pools close, off this thread

    def done() -> bool:
        return not any(os.path.exists(f"/proc/{p}") for p in pids) and set(glob.glob("/dev/shm/lrd*")) <= before

    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert set(glob.glob("/dev/shm/lrd*")) <= before
