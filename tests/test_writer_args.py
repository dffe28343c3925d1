"""``write_cache``'s arguments: a ConfigError naming the argument given, before anything is written."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.errors import ConfigError


def _table() -> pa.Table:
    return pa.table({"id": np.arange(100, dtype=np.int64), "s": [f"row{i}" for i in range(100)]})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"compression": "nope"}, r"compression must be one of .*zstd.* got 'nope'"),
    ({"compression": None}, r"compression must be one of .* got None"),
    ({"shuffle": True, "seed": -1}, r"seed must be an integer >= 0, got -1"),
    ({"shuffle": True, "seed": 1.5}, r"seed must be an integer >= 0, got 1.5"),
    ({"block_size": 0}, r"block_size must be an integer >= 1, got 0"),
    ({"block_size": -5, "row_group_bytes": 4096}, r"block_size must be an integer >= 1, got -5"),
    ({"row_group_bytes": 0}, r"row_group_bytes must be positive, got 0"),
])
def test_a_bad_argument_is_named_and_nothing_is_written(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        loader.write_cache(_table(), tmp_path, "d", **kwargs)
    assert not os.path.exists(tmp_path / "d") or os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("compression", ["ZSTD", "uncompressed", "none", "snappy", "gzip"])
def test_every_codec_name_is_accepted_in_any_case(tmp_path, compression):
    ds = loader.write_cache(_table(), tmp_path, "d", compression=compression, shuffle=True, seed=np.int64(4))
    with loader.make_reader(ds, shuffle=False) as r:
        assert sorted(np.concatenate([b["id"] for b in r]).tolist()) == list(range(100))
