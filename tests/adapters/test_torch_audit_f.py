"""Audit F (DDP): a DataLoader whose workers' shards would be empty names the trainer's rank and the workers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import loader

torch = pytest.importorskip("torch")
from loader.torch import make_dataloader  # noqa: E402


@pytest.fixture(scope="module")
def fifty(tmp_path_factory) -> loader.Dataset:
    return loader.write_cache(pa.table({"id": np.arange(50)}), tmp_path_factory.mktemp("fifty"), "fifty")


def test_empty_worker_shards_name_the_rank_and_the_workers_not_a_rank_the_job_lacks(fifty):
    # 25 rows per rank hold a batch of 16; 12 or 13 per worker shard do not
    with pytest.raises(loader.EmptyDatasetError) as e:
        make_dataloader(fifty.url, batch_size=16, rank=1, world_size=2, drop_last=True, num_workers=2)
    text = str(e.value)
    assert text.startswith("rank 1 of 2 with num_workers=2: each DataLoader worker reads a shard of its own (4 in all)")
    assert "lower num_workers, or the dataset's batch_size, or set drop_last=False" in text
    # the ranks themselves are fine: without workers, or with drop_last=False, every row comes once across them
    for kwargs in ({"num_workers": 0, "drop_last": True}, {"num_workers": 2, "drop_last": False}):
        ids = np.concatenate([b["id"].numpy() for rank in (0, 1)
                              for b in make_dataloader(fifty.url, batch_size=16, rank=rank, world_size=2, **kwargs)])
        assert len(set(ids.tolist())) == len(ids) == (32 if kwargs["drop_last"] else 50)


def test_worker_shards_without_rows_say_so_too(fifty):
    with pytest.raises(loader.EmptyDatasetError, match=r"^rank 0 of 1 with num_workers=64: .*\(64 in all\).*"
                                                       r"lower num_workers$"):
        make_dataloader(fifty.url, batch_size=1, num_workers=64)
