"""loader.torch's padded collate (its default for lists) with an outlier row: warned once, naming the column."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

import loader  # noqa: E402
from loader.torch import make_dataloader  # noqa: E402


def padding_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if 'ragged="padded"' in str(w.message)]


def test_padded_collate_of_an_outlier_row_warns_once(tmp_path):
    """2,000 rows of 3 ids and one of 80,000: the batch of 100 rows holding it becomes a 100 x 80,000 int64 tensor
    (61 MiB for 0.6 MiB of values), with a warning naming the column and the remedies; once per column."""
    lengths = np.full(2000, 3)
    lengths[777] = 80_000
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.arange(offsets[-1], dtype=np.int64)))
    ds = loader.write_cache(pa.table({"id": np.arange(2000), "torch_outlier_ids": column}), tmp_path, "outlier",
                            row_group_bytes=64 << 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two passes: two epochs
            widths = [b["torch_outlier_ids"].shape[1] for b in make_dataloader(ds.version_path, batch_size=100)]
            assert max(widths) == 80_000
    said = padding_warnings(caught)
    assert len(said) == 1, said
    assert "'torch_outlier_ids'" in said[0] and "a row of 80000 values" in said[0]
    assert "a batch of 100 rows pads to 61.0 MiB" in said[0]
    assert 'ragged="offsets"' in said[0] and "transform" in said[0]


def test_padded_collate_of_ordinary_lists_does_not_warn(adapter_data):
    """Id lists, token lists and lists of lists of the adapter data, in one batch of all 730 rows: no warning."""
    _, ds = adapter_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (batch,) = list(make_dataloader(ds.version_path, batch_size=1000, strings="tensor"))
    assert batch["ids"].ndim == 2 and batch["tokens"].ndim == 3 and batch["nested"].ndim == 3
    assert padding_warnings(caught) == []
