"""Fixtures for the remote tests: one WebHDFS server per session (faults and log reset per test),
one with a delegation token, and a small cache published to it with ``write_cache``."""

from __future__ import annotations

import traceback
from collections import Counter

import pytest

import loader
from loader.remote import RetryPolicy
from tests.conftest import make_table
from tests.remote.webhdfs_server import WebHdfs

TOKEN = "s3cr3t-T0KEN-a1b2c3"
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A WebHDFS name node + data node on 127.0.0.1 (plus one standby name node for HA tests)."""
    with WebHdfs(str(tmp_path_factory.mktemp("hdfs")), block_size=1 << 20, standby_namenodes=1) as srv:
        yield srv


@pytest.fixture(scope="session")
def token_server(tmp_path_factory):
    """A server that requires ``delegation=TOKEN`` on every request."""
    with WebHdfs(str(tmp_path_factory.mktemp("hdfs-token")), token=TOKEN) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset_server(request):
    """Every test starts with no faults, an empty log and full speed."""
    for name in ("server", "token_server"):
        if name in request.fixturenames:
            srv = request.getfixturevalue(name)
            srv.clear_faults()
            srv.clear_log()
            srv.bandwidth = None
            srv.latency = 0.0
            srv.errors.clear()
    yield
    for name in ("server", "token_server"):
        if name in request.fixturenames:  # a request the server failed on, other than a client hanging up
            errors = request.getfixturevalue(name).errors
            text = "".join(line for e in errors for line in traceback.format_exception(e))
            assert not errors, f"the WebHDFS test server failed on a request:\n{text}"


@pytest.fixture(scope="session")
def remote_table():
    """The rows published in :func:`remote_cache`."""
    return make_table(600, seed=3)


@pytest.fixture(scope="session")
def remote_cache(server, remote_table) -> loader.Dataset:
    """A cache of 600 rows in ~10 files published to ``webhdfs://.../caches/demo``."""
    return loader.write_cache(remote_table, server.url("/caches"), "demo", row_group_bytes=2_000,
                              retry=FAST_RETRY)




def data_opens(server) -> Counter:
    """Data-node OPENs per data file name (what really moved file bytes)."""
    return Counter(r.path.rsplit("/", 1)[-1] for r in server.log
                   if r.node == "datanode" and r.op == "OPEN" and r.path.endswith(".parquet"))
