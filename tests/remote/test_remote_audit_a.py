"""Audit A, remote side: a row group's read does not re-read its file's footer (requests per row group do not grow
with the row groups of its file), and closed datasets and readers keep no HTTP connection open."""

from __future__ import annotations

import gc
import os
from collections import Counter

import numpy as np
import pytest

import loader
from tests.conftest import make_table
from tests.remote.conftest import FAST_RETRY, data_opens

GROUPS_PER_FILE = 40


@pytest.fixture(scope="module")
def many_groups(server) -> loader.Dataset:
    """A remote cache of 2 files of many small row groups (40 and 27; a footer lists all of its file's)."""
    ds = loader.write_cache(make_table(800), server.url("/audit_a"), "many", row_group_bytes=1000,
                            row_groups_per_file=GROUPS_PER_FILE, retry=FAST_RETRY)
    assert len(ds.files) == 2 and min(len(f.row_groups) for f in ds.files) >= 20
    return ds


def footer_reads(server, ds: loader.Dataset) -> Counter:
    """Data-node OPENs per data file that read its footer (or its last 8 bytes, which say the footer's length)."""
    sizes = {f.path: (f.size, f.footer_size) for f in ds.files}
    out = Counter()
    for r in server.log:
        name = r.path.rsplit("/", 1)[-1]
        if r.node == "datanode" and r.op == "OPEN" and name in sizes:
            size, footer = sizes[name]
            if int(r.params.get("offset", 0)) >= size - footer:
                out[name] += 1
    return out


def client_sockets(server) -> int:
    """Sockets of this process connected to the test server's nodes (client ends; the server runs in this
    process too, its ends are not counted), whatever their TCP state: each holds a file descriptor. Garbage is
    collected first: only the connections of objects still referenced count."""
    gc.collect()
    ports = {s.server_address[1] for s in [server.namenode, server.datanode, *server.standbys]}
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in ports and fields[9] in inodes:
                count += 1
    return count


@pytest.fixture(autouse=True)
def _linux_only():
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc")


def test_an_epoch_reads_each_remote_footer_once_not_once_per_row_group(server, many_groups):
    with loader.make_reader(server.url("/audit_a/many"), batch_size=50, pool="thread", workers=2, seed=1,
                            retry=FAST_RETRY) as reader:
        server.clear_log()
        ids = np.concatenate([b["id"] for b in reader])
        reads = footer_reads(server, many_groups)
    assert np.array_equal(np.sort(ids), np.arange(800))  # exactly once
    assert sum(data_opens(server).values()) >= many_groups.num_row_groups  # every row group was read remotely
    # The reader's constructor read a footer already (its size sample): at most its 2 reads per file more.
    assert all(n <= 2 for n in reads.values()), reads


def test_a_replaced_remote_file_of_another_size_is_caught_after_its_footer_was_checked(server, tmp_path):
    ds0 = loader.write_cache(make_table(200), server.url("/audit_a"), "replaced", row_group_bytes=400,
                             row_groups_per_file=50, retry=FAST_RETRY)
    ds = loader.open_dataset(server.url(f"/audit_a/replaced/{ds0.version}"), retry=FAST_RETRY)
    info = ds.files[0]
    assert ds.read_row_group(info, 0).num_rows == info.row_groups[0].num_rows  # footer checked and kept
    local = server.local(f"/audit_a/replaced/{ds0.version}/{info.path}")
    with open(local, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(loader.CorruptFileError, match="the manifest says") as err:
        ds.read_row_group(info, 1)
    assert err.value.path == ds.display(info)


def _read_some(ds: loader.Dataset) -> int:
    return sum(ds.read_row_group(f, i).num_rows for f in ds.files for i in range(len(f.row_groups)))


@pytest.mark.parametrize("cached", [False, True], ids=["remote", "cache_dir"])
def test_closed_dataset_keeps_no_connection_open_and_reads_again(server, remote_cache, tmp_path, cached):
    kw = {"cache_dir": tmp_path / "fc"} if cached else {}
    before = client_sockets(server)
    ds = loader.open_dataset(server.url("/caches/demo"), retry=FAST_RETRY, **kw)
    assert _read_some(ds) == 600
    assert client_sockets(server) > before  # kept open for the next request while the dataset is in use
    ds.close()
    assert client_sockets(server) == before
    assert _read_some(ds) == 600  # still usable: a later read opens what it needs again
    ds.close()
    ds.close()  # idempotent
    assert client_sockets(server) == before


@pytest.mark.parametrize("cached", [False, True], ids=["remote", "cache_dir"])
def test_closed_readers_keep_no_connection_open(server, remote_cache, tmp_path, cached):
    """Needs ``Reader.close`` to close the dataset the reader opened (``Dataset.close``)."""
    kw = {"cache_dir": tmp_path / "fc"} if cached else {}
    before = client_sockets(server)
    closed = []
    for seed in range(3):
        reader = loader.make_reader(server.url("/caches/demo"), batch_size=64, pool="thread", workers=2,
                                    seed=seed, retry=FAST_RETRY, **kw)
        assert sum(len(b["id"]) for b in reader) == 600  # a whole epoch: the reader closes itself at its end
        reader.close()
        closed.append(reader)  # kept referenced: closing, not garbage collection, must release them
    assert client_sockets(server) == before


def test_reader_restarted_after_closing_its_dataset_reads_again(server, remote_cache, tmp_path):
    reader = loader.make_reader(server.url("/caches/demo"), batch_size=64, seed=3, num_epochs=1,
                                cache_dir=tmp_path / "fc", retry=FAST_RETRY)
    start = reader.state_dict()
    first = np.concatenate([b["id"] for b in reader])  # the epoch's end closes the reader (and its dataset)
    reader.load_state_dict(start)
    again = np.concatenate([b["id"] for b in reader])
    assert np.array_equal(first, again) and np.array_equal(np.sort(first), np.arange(600))
    reader.close()
