"""A reader made on a version that a later publish prunes (``keep_versions``) says the version was removed and which
one is live (``VersionRemovedError``, a ``FileNotFoundError``), locally and on WebHDFS, with and without a local
cache; a file missing from a version still there (live, or older and kept) is still a ``CorruptFileError``."""

from __future__ import annotations

import os
import pickle

import pyarrow as pa
import pytest

import loader
from loader.errors import VersionRemovedError
from tests.reader.conftest import POOLS
from tests.remote.conftest import FAST_RETRY
from tests.remote.webhdfs_server import WebHdfs

TABLE = pa.table({"x": list(range(200))})


def _read(reader) -> int:
    with reader:
        return sum(len(b["x"]) for b in reader)


def _republish(root: str, name: str, times: int, keep: int, **options) -> str:
    """Publish ``times`` more versions keeping ``keep``; the live version's name."""
    for _ in range(times):
        ds = loader.write_cache(TABLE, root, name, keep_versions=keep, row_group_bytes=500, **options)
    return ds.version


def _check_removed(error: VersionRemovedError, old: str, live: str, where: str) -> None:
    assert isinstance(error, loader.DatasetNotFoundError) and isinstance(error, FileNotFoundError)
    assert isinstance(error, loader.LarderError) and not isinstance(error, loader.CorruptFileError)
    assert (error.version, error.live) == (old, live)
    text = str(error)
    assert text.startswith(f"{where}/{old}/part-") and error.path in text
    assert f"version {old!r}" in text and "removed by a newer publish" in text and f"{live!r} is live now" in text


@pytest.mark.parametrize("pool", POOLS)
def test_a_reader_on_a_pruned_version_says_it_was_removed_and_which_is_live(tmp_path, pool):
    old = loader.write_cache(TABLE, tmp_path, "ds", row_group_bytes=500).version
    reader = loader.make_reader(tmp_path / "ds", batch_size=10, pool=pool, workers=2)  # pinned to ``old``
    live = _republish(str(tmp_path), "ds", 3, keep=2)
    assert not (tmp_path / "ds" / old).exists()
    with pytest.raises(VersionRemovedError) as err:
        _read(reader)
    _check_removed(err.value, old, live, str(tmp_path / "ds"))
    again = pickle.loads(pickle.dumps(err.value))  # crosses a process pool whole
    assert (str(again), again.path, again.version, again.live) == (str(err.value), err.value.path, old, live)
    assert _read(loader.make_reader(tmp_path / "ds", batch_size=10, pool=pool)) == len(TABLE)  # a new reader reads


def test_a_file_missing_from_the_live_version_is_still_a_corrupt_file(tmp_path):
    ds = loader.write_cache(TABLE, tmp_path, "ds", row_group_bytes=500)
    reader = loader.make_reader(tmp_path / "ds", batch_size=10)
    os.remove(ds.file_path(ds.files[-1]))
    with pytest.raises(loader.CorruptFileError, match="data file listed in the manifest is missing") as err:
        _read(reader)
    assert not isinstance(err.value, VersionRemovedError) and err.value.path == ds.display(ds.files[-1])


def test_a_file_missing_from_an_older_version_still_kept_is_still_a_corrupt_file(tmp_path):
    ds = loader.write_cache(TABLE, tmp_path, "ds", row_group_bytes=500)
    reader = loader.make_reader(tmp_path / "ds", batch_size=10)
    _republish(str(tmp_path), "ds", 1, keep=3)  # ``ds`` stays, no longer live
    os.remove(ds.file_path(ds.files[-1]))
    with pytest.raises(loader.CorruptFileError, match="data file listed in the manifest is missing"):
        _read(reader)


@pytest.fixture(scope="module")
def hdfs(tmp_path_factory):
    with WebHdfs(str(tmp_path_factory.mktemp("hdfs-pruned"))) as srv:
        yield srv


@pytest.mark.parametrize("cached", [False, True])
def test_a_reader_on_a_version_pruned_on_webhdfs_says_it_was_removed(hdfs, tmp_path, cached):
    name = f"pruned{int(cached)}"
    old = loader.write_cache(TABLE, hdfs.url("/caches"), name, row_group_bytes=500, retry=FAST_RETRY).version
    reader = loader.make_reader(hdfs.url(f"/caches/{name}"), batch_size=10, retry=FAST_RETRY,
                                cache_dir=tmp_path / "c" if cached else None)
    live = _republish(hdfs.url("/caches"), name, 2, keep=1, retry=FAST_RETRY)
    assert not os.path.exists(hdfs.local(f"/caches/{name}/{old}"))
    with pytest.raises(VersionRemovedError) as err:
        _read(reader)
    _check_removed(err.value, old, live, hdfs.url(f"/caches/{name}"))
