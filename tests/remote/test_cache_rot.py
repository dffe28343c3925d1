"""A cached copy that turns out bad while being read is handled alike on every read path: whole row groups
checked against the manifest's chunk checksums, pages checked by their CRCs (a manifest without chunk
checksums), and slices of a row group streamed because it is larger than the memory budget's share. The
copy is dropped and the read repeated once from a fresh download; a fresh copy that fails too is a
CorruptFileError naming the remote file. A stream that already delivered rows restarts and skips them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
import loader.cache as cache_module
from tests.remote.conftest import data_opens
from tests.remote.test_cache_faults import _rot

ROWS = 3000
PATHS = {  # read path -> (dataset, memory budget): whole row groups below 256 MiB, streamed slices at 1 MB
    "chunk-checksums": ("rot", None),
    "page-crcs": ("rotpages", None),
    "stream": ("rot", 1_000_000),
}


@pytest.fixture(scope="module")
def rot_caches(server):
    """Files of one row group each, whose ``image`` chunk spans two pages (pyarrow starts a page after a
    write batch of 1024 rows fills 1 MiB); ``rotpages`` has no chunk checksums in its manifest (the page-CRC
    path)."""
    rng = np.random.default_rng(5)
    table = pa.table({"id": np.arange(ROWS), "image": pa.array([rng.bytes(1100) for _ in range(ROWS)], pa.binary())})
    out = {}
    for name in ("rot", "rotpages"):
        ds = loader.write_cache(table, server.url("/rotten"), name, row_group_bytes=1_600_000)
        assert all(len(f.row_groups) == 1 for f in ds.files) and len(ds.files) > 1
        out[name] = ds
    manifest = server.local(f"/rotten/rotpages/{out['rotpages'].version}/_manifest.json")
    with open(manifest) as f:
        doc = json.load(f)
    for f in doc["files"]:
        f["row_groups"] = [g[:3] for g in f["row_groups"]]
    with open(manifest, "w") as f:
        json.dump(doc, f)
    return out


def _late_page_offset(path: str) -> int:
    """A byte in the last data page of the ``image`` chunk (its first page decodes fine)."""
    chunk = pq.read_metadata(path).row_group(0).column(1)
    assert chunk.path_in_schema == "image" and chunk.total_compressed_size > (1 << 20)  # two pages at least
    return chunk.data_page_offset + chunk.total_compressed_size - 5000


def _ids(server, name: str, budget: int | None, cache_dir) -> Counter:
    """Every id a reader of the cache yields, in order of the files (row groups streamed with ``budget``)."""
    with loader.make_reader(server.url(f"/rotten/{name}"), batch_size=100, shuffle=False, pool="serial",
                            memory_budget=budget, cache_dir=cache_dir) as reader:
        assert (reader.max_piece_rows is not None) == (budget is not None)
        return Counter(int(i) for b in reader for i in b["id"])


def _rows_before_the_bad_page(path: str, chunk_rows: int) -> int:
    """Rows a stream of the file delivers before it reaches the bad page."""
    rows = 0
    with pq.ParquetFile(path, page_checksum_verification=True, pre_buffer=False) as pf:
        with pytest.raises(OSError):
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=["id", "image"]):
                rows += batch.num_rows
    return rows


@pytest.mark.parametrize("read_path", list(PATHS))
def test_rotten_cached_copy_is_fetched_again_once_on_every_read_path(server, rot_caches, tmp_path, read_path):
    name, budget = PATHS[read_path]
    ds = rot_caches[name]
    assert _ids(server, name, budget, tmp_path) == Counter(range(ROWS))  # fills the local cache
    victim = ds.files[0]
    local = str(tmp_path / name / ds.version / victim.path)
    _rot(local, _late_page_offset(local))  # same size and mtime: its verification marker still vouches for it
    if read_path == "stream":  # the stream delivers slices of the row group before it meets the bad page
        assert _rows_before_the_bad_page(local, 100) >= 500
    server.clear_log()
    assert _ids(server, name, budget, tmp_path) == Counter(range(ROWS))  # every row once: none lost or repeated
    assert data_opens(server) == Counter({victim.path: 1})
    server.clear_log()
    assert _ids(server, name, budget, tmp_path) == Counter(range(ROWS))  # the fresh copy stays
    assert data_opens(server) == Counter()


@pytest.mark.parametrize("read_path", list(PATHS))
def test_fresh_copy_failing_too_names_the_remote_file_on_every_read_path(server, rot_caches, tmp_path, monkeypatch,
                                                                         read_path):
    name, budget = PATHS[read_path]
    ds = rot_caches[name]
    victim = ds.files[0]
    real = cache_module.download

    def rotting_download(fs, path, dest, **kw):  # every copy of the victim rots right after it was verified
        got = real(fs, path, dest, **kw)
        if path.endswith(victim.path):
            _rot(dest, _late_page_offset(dest))
        return got

    monkeypatch.setattr(cache_module, "download", rotting_download)
    with pytest.raises(loader.CorruptFileError, match="fresh copy") as err:
        _ids(server, name, budget, tmp_path)
    assert err.value.path == ds.display(victim) and str(err.value).startswith(ds.display(victim))
    assert data_opens(server)[victim.path] == 2  # fetched again once, not more
