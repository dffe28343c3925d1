"""Publishing to HDFS (through WebHDFS): atomic, never half visible, a failed or killed run loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import loader
from tests.conftest import make_table, read_all
from tests.remote.conftest import FAST_RETRY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _names(server, dataset: str) -> list[str]:
    return sorted(os.listdir(server.local(f"/pub/{dataset}")))


@pytest.mark.parametrize("fault", ["_staging", "CURRENT"])
def test_failed_publish_keeps_previous_version_live(server, fault):
    old_table, new_table = make_table(300, seed=1), make_table(300, seed=2)
    old = loader.write_cache(old_table, server.url("/pub"), f"fail{fault}", row_group_bytes=4_000)
    server.fail_always(status=503, op="RENAME", path=fault)  # the version rename, or the CURRENT swap
    with pytest.raises(loader.PublishError, match="previous version stays live"):
        loader.write_cache(new_table, server.url("/pub"), f"fail{fault}", row_group_bytes=4_000,
                           retry=FAST_RETRY)
    server.clear_faults()
    live = loader.open_dataset(server.url(f"/pub/fail{fault}"))
    assert live.version == old.version
    assert read_all(live).equals(old_table)
    assert not [n for n in _names(server, f"fail{fault}") if n.startswith("_staging")]


def test_readers_never_see_a_half_published_version(server):
    tables = [make_table(300, seed=s) for s in (10, 11, 12)]
    loader.write_cache(tables[0], server.url("/pub"), "race", row_group_bytes=4_000)
    server.latency = 0.002
    errors: list[BaseException] = []

    def publish():
        try:
            for t in tables[1:]:
                loader.write_cache(t, server.url("/pub"), "race", row_group_bytes=4_000, keep_versions=5)
        except BaseException as e:  # travels to the test thread
            errors.append(e)

    writer = threading.Thread(target=publish)
    writer.start()
    seen = set()
    while writer.is_alive() or not seen:
        ds = loader.open_dataset(server.url("/pub/race"))
        got = read_all(ds, ["id", "x"])
        matches = [i for i, t in enumerate(tables) if got.equals(t.select(["id", "x"]))]
        assert matches, f"version {ds.version} read back rows of no published table"
        seen.add(matches[0])
    writer.join()
    assert not errors
    assert read_all(loader.open_dataset(server.url("/pub/race"))).equals(tables[2])


_KILLED = textwrap.dedent(
    """
    import sys
    import loader
    from tests.conftest import make_table, read_all
    print("start", flush=True)
    loader.write_cache(make_table(3000, seed=9), sys.argv[1], "killed", row_group_bytes=2_000)
    """
)


def test_killed_publish_leaves_previous_live_and_is_cleaned_next_time(server):
    old_table = make_table(200, seed=8)
    old = loader.write_cache(old_table, server.url("/pub"), "killed", row_group_bytes=4_000)
    server.clear_log()
    server.latency = 0.01  # the killed run makes many requests: it dies mid-upload
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, server.url("/pub")], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    deadline = time.monotonic() + 60
    while server.count(op="CREATE", path="/pub/killed/_staging") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    server.latency = 0.0
    assert [n for n in _names(server, "killed") if n.startswith("_staging")]  # it really died mid-way
    live = loader.open_dataset(server.url("/pub/killed"))
    assert live.version == old.version and read_all(live).equals(old_table)
    new = loader.write_cache(make_table(100, seed=7), server.url("/pub"), "killed", row_group_bytes=4_000)
    assert not [n for n in _names(server, "killed") if n.startswith("_staging")]
    assert loader.open_dataset(server.url("/pub/killed")).version == new.version
