"""The torch adapter with ``drop_last=True``: every DataLoader worker is a rank and drops its own remainder."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

import loader  # noqa: E402
from loader.torch import make_dataloader  # noqa: E402

WORKERS = {"timeout": 120, "multiprocessing_context": "forkserver"}  # as tests/adapters/test_torch.py


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize(("num_workers", "rows"), [(0, 320), (3, 288)])
def test_drop_last_drops_each_workers_remainder(tmp_path, num_workers, rows):
    """320 rows, world_size=2, batch_size=16: without workers each rank reads 160 rows, 10 full batches (all 320
    per epoch); with 3 workers per rank the 6 shards hold 53 or 54 rows, 3 full batches each (288 per epoch)."""
    ds = loader.write_cache(pa.table({"id": np.arange(320, dtype=np.int64)}), tmp_path, "d", row_group_bytes=256)
    ids = []
    for rank in range(2):
        dl = make_dataloader(ds.version_path, batch_size=16, rank=rank, world_size=2, drop_last=True, seed=1,
                             num_workers=num_workers, **(WORKERS if num_workers else {}))
        batches = list(dl)
        assert {len(b["id"]) for b in batches} == {16}
        ids.extend(b["id"].tolist() for b in batches)
    flat = np.concatenate(ids)
    assert len(flat) == rows and len(np.unique(flat)) == rows  # disjoint shards: no row twice
