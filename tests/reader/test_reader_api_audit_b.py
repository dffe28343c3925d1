"""Audit B (the public API against its documentation): a dataset column named like a row-id column, and a
state whose epoch is past the reader's ``num_epochs``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.errors import ConfigError, StateError


@pytest.fixture
def row_named_cache(tmp_path) -> loader.Dataset:
    n = 50
    table = pa.table({"id": pa.array(range(n), pa.int64()), "_row": pa.array([10 * i for i in range(n)], pa.int64())})
    return loader.write_cache(table, str(tmp_path), "rows", row_group_bytes=200)


@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_a_column_named_row_is_read_without_row_ids(row_named_cache, pool):
    """Only the row ids the reader adds (``with_row_ids=True``) take the names ``_row`` / ``_row_group``: without
    them a dataset's own ``_row`` column is an ordinary column, read with its values."""
    with loader.make_reader(row_named_cache.version_path, batch_size=7, pool=pool, seed=1) as reader:
        batches = list(reader)
    ids = np.concatenate([b["id"] for b in batches])
    rows = np.concatenate([b["_row"] for b in batches])
    assert sorted(ids.tolist()) == list(range(50))
    assert (rows == 10 * ids).all()  # the file's values, not positions in row groups


def test_a_column_named_row_clashes_with_the_row_ids_asked_for(row_named_cache):
    with pytest.raises(ConfigError, match=r"\['_row'\] clash with the reader's row-id columns \(with_row_ids=True\)"):
        loader.make_reader(row_named_cache.version_path, batch_size=7, with_row_ids=True)
    with loader.make_reader(row_named_cache.version_path, batch_size=7, with_row_ids=True, columns=["id"]) as reader:
        batch = next(iter(reader))
    assert set(batch) == {"id", "_row_group", "_row"}


def test_a_state_past_num_epochs_is_refused_as_set_epoch_is(row_named_cache):
    """A state at epoch 4 loaded into a reader of 2 epochs would yield nothing, silently; ``set_epoch(4)`` refuses,
    and so does ``load_state_dict``. A state taken after the last batch of the last epoch (``epoch == num_epochs``,
    batch 0) still loads: the run is over, nothing more comes."""
    url = row_named_cache.version_path
    with loader.make_reader(url, batch_size=7, num_epochs=None, seed=3) as endless:
        for _ in range(2 * 8 + 1):  # 50 rows in batches of 7: 8 batches an epoch
            next(endless)
        beyond = endless.state_dict()  # epoch 2, batch 1
        for _ in range(2 * 8 - 1):
            next(endless)
        past = endless.state_dict()
    assert (past["epoch"], past["batch"], beyond["epoch"], beyond["batch"]) == (4, 0, 2, 1)
    with loader.make_reader(url, batch_size=7, num_epochs=2, seed=3) as reader:
        with pytest.raises(StateError, match=r"state key 'epoch' is 4, past this reader's epochs 0\.\.1"):
            reader.load_state_dict(past)
        with pytest.raises(StateError, match=r"state key 'epoch' is 2, past this reader's epochs 0\.\.1"):
            reader.load_state_dict(beyond)
        assert len(list(reader)) == 16  # refused: the reader reads its own two epochs as before
        end = reader.state_dict()
    assert (end["epoch"], end["batch"]) == (2, 0)  # after an epoch's last batch: the next epoch
    with loader.make_reader(url, batch_size=7, num_epochs=2, seed=3) as again:
        again.load_state_dict(end)
        assert list(again) == []


@pytest.mark.parametrize("url", [b"/tmp/x", 5, None, "", "   ", ["a"]])
def test_a_url_that_is_no_path_is_a_config_error_naming_it(row_named_cache, url, tmp_path, monkeypatch):
    """A bytes, int, None or list URL gave a bare ``TypeError`` (for bytes, a misleading one); an empty string
    (an unset environment variable, say) silently read the dataset in the current directory."""
    monkeypatch.chdir(row_named_cache.version_path)  # "" opened this version before
    for opener in (loader.open_dataset, loader.make_reader):
        with pytest.raises(ConfigError, match=r"url must be a dataset or version path or URL .* got "):
            opener(url)


def test_a_pathlike_url_still_opens(row_named_cache):
    import pathlib

    assert loader.open_dataset(pathlib.Path(row_named_cache.version_path)).num_rows == 50
