"""Audit G, WebHDFS: the storage going away during a run (its server killed) leaves the run's own error as the
error raised; the clean-up that then fails too is noted on it, never raised in its place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import loader
from loader import fs as lfs
from loader.errors import SourceError
from loader.publish import begin_staging
from tests.remote.conftest import FAST_RETRY

_REPO = str(Path(__file__).resolve().parents[2])
# The test server in a process of its own, so that it can be killed outright (a stopped in-process server still
# answers on the connections it has open).
_SERVE = """
import sys, time
from tests.remote.webhdfs_server import WebHdfs
srv = WebHdfs(sys.argv[1], block_size=1 << 20).start()
print(srv.url("/caches"), flush=True)
time.sleep(600)
"""


def test_the_error_of_the_run_survives_the_storage_going_away(tmp_path):
    srv = subprocess.Popen([sys.executable, "-c", _SERVE, str(tmp_path / "hdfs")], cwd=_REPO, stdout=subprocess.PIPE,
                           text=True)
    try:
        url = srv.stdout.readline().strip()
        assert url.startswith("webhdfs://127.0.0.1:"), url
        loader.write_cache(pa.table({"id": [1, 2, 3]}), url, "ds", retry=FAST_RETRY)
        fs, root = lfs.resolve(url, retry=FAST_RETRY)
        with pytest.raises(SourceError, match="ORIGINAL") as info:
            with begin_staging(fs, root, "ds") as staging:
                lfs.write_bytes(fs, lfs.join(staging.path, "part-00000.parquet"), b"x")
                srv.kill()  # the destination goes away while the job runs...
                srv.wait(30)
                raise SourceError("ORIGINAL: source db.t changed while the job ran")
    finally:
        srv.kill()
        srv.wait(30)
        srv.stdout.close()
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1, notes
    assert f"cleaning up the staging directory {url}/ds/{staging.name} failed too, the next run removes it: " \
        "RemoteError: " in notes[0]
    assert staging.finished
