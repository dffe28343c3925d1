"""Opening a remote dataset asks the storage each thing once: the requests ``open_dataset`` sends."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

import loader
from tests.remote.conftest import FAST_RETRY


def _asked(server) -> Counter:
    """Requests per (node, op, path)."""
    return Counter((r.node, r.op, r.path) for r in server.log)


@pytest.mark.parametrize("kind", ["dataset", "version"])
def test_opening_a_dataset_sends_each_request_once(server, remote_cache, kind):
    path = "/caches/demo" if kind == "dataset" else f"/caches/demo/{remote_cache.version}"
    server.clear_log()
    ds = loader.open_dataset(server.url(path))
    assert ds.version == remote_cache.version
    asked = _asked(server)
    assert asked and max(asked.values()) == 1, asked
    assert server.count(node="datanode", path=".parquet") == 0  # no data file is touched


@pytest.mark.parametrize("kind, match", [
    ("missing", "does not exist"),
    ("no dataset", "neither a dataset"),
    ("data file", "is a file"),
])
def test_opening_what_is_no_dataset_asks_for_its_status_once(server, remote_cache, kind, match):
    path = {"missing": "/caches/nothing-here", "no dataset": "/caches",
            "data file": f"/caches/demo/{remote_cache.version}/{remote_cache.files[0].path}"}[kind]
    server.clear_log()
    with pytest.raises(loader.DatasetNotFoundError, match=match) as info:
        loader.open_dataset(server.url(path), retry=FAST_RETRY)
    if kind == "no dataset":  # advice without a listing (local directories name their newest version)
        assert "open a version directly, or write a version's name into" in str(info.value)
    asked = _asked(server)
    assert asked[("namenode", "GETFILESTATUS", path)] == 1, asked
    # CURRENT is read again a few times when missing (a swap may be in flight); everything else once
    assert max(n for (_, op, p), n in asked.items() if not p.endswith("/CURRENT")) == 1, asked


def test_pin_version_names_the_version_in_the_url(server, remote_cache, tmp_path):
    """A remote dataset URL narrowed to its version keeps scheme and address (a webhdfs:// URL holds no options:
    they are refused, see test_remote_audit_m); a later publish does not move it. A version URL, or a local
    dataset, pins the same way."""
    pinned = loader.pin_version(server.url("/caches/demo"))
    assert pinned == server.url(f"/caches/demo/{remote_cache.version}")
    assert loader.pin_version(pinned) == pinned
    table = loader.open_dataset(pinned)
    assert table.version == remote_cache.version
    local = loader.write_cache(pa.table({"x": [1, 2]}), tmp_path, "d")
    assert loader.pin_version(str(tmp_path / "d")) == local.version_path
