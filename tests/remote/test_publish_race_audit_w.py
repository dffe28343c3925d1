"""Audit W, remote storage (no locks): runs that publish at once never leave CURRENT on a deleted version nor move
it back; a run never prunes a version another run is still publishing; a failed or killed publish leaves no
never-live version counted toward keep_versions, nor a CURRENT temporary for ever."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader import claims
from tests.conftest import read_all
from tests.remote.conftest import FAST_RETRY

STOPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "publish_stopped_w.py")


def _ids(n: int, base: int) -> pa.Table:
    return pa.table({"id": np.arange(base, base + n, dtype=np.int64)})


def _publish(server, name: str, base: int, keep: int) -> loader.Dataset:
    return loader.write_cache(_ids(100, base), server.url("/race"), name, row_group_bytes=2_000, keep_versions=keep,
                              retry=FAST_RETRY)


def _versions(server, name: str) -> list[str]:
    return sorted(n for n in os.listdir(server.local(f"/race/{name}")) if n.startswith("v"))


def _current(server, name: str) -> str:
    with open(server.local(f"/race/{name}/CURRENT")) as f:
        return f.read().strip()


class _Run(threading.Thread):
    """A publish in a thread: its result (or error) in ``out``."""

    def __init__(self, server, name: str, base: int, keep: int):
        super().__init__()
        self.args, self.out = (server, name, base, keep), None

    def run(self) -> None:
        try:
            self.out = _publish(*self.args)
        except BaseException as e:  # travels to the test thread  # noqa: BLE001
            self.out = e


def _held(server, run: _Run, op: str, path: str) -> None:
    """Wait until ``run`` sent the request the server holds (logged as it arrives; the log cleared before)."""
    deadline = time.monotonic() + 60
    while server.count(op=op, path=path) < 1:
        assert run.is_alive() and time.monotonic() < deadline, run.out
        time.sleep(0.01)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_a_run_that_lost_the_race_neither_moves_current_back_nor_to_a_pruned_version(server, keep, caplog):
    name = f"lost{keep}"
    first = _publish(server, name, 0, keep)
    # Run A has renamed its version into place; the name node is slow to create its new CURRENT.
    server.slow_next(1, seconds=5.0, op="CREATE", path=f"/race/{name}/.CURRENT.")
    server.clear_log()
    slow = _Run(server, name, 1000, keep)
    with caplog.at_level(logging.WARNING, logger="loader.publish"):
        slow.start()
        _held(server, slow, "CREATE", f"/race/{name}/.CURRENT.")
        mine = [v for v in _versions(server, name) if v > first.version]
        assert len(mine) == 1  # A's version, renamed into place, not yet live
        fast = _publish(server, name, 2000, keep)  # run B names its version later, and makes it live first
        assert fast.version > mine[0] and _current(server, name) == fast.version
        assert mine[0] in _versions(server, name)  # B spared the version A is still publishing
        slow.join(60)
    assert isinstance(slow.out, loader.Dataset), slow.out  # A succeeded: its version is published, not live
    assert slow.out.version == mine[0]
    assert _current(server, name) == fast.version  # never moved back to A's older version, nor to a pruned one
    live = loader.open_dataset(server.url(f"/race/{name}"), retry=FAST_RETRY)
    assert live.version == fast.version and read_all(live).equals(_ids(100, 2000))
    assert f"{mine[0]} is published but not live: the newer {fast.version} went live" in caplog.text
    # A's version never went live: it counts for no keep_versions (the version live before B's is kept from 2
    # on, audit R3), and stays, still marked, until a publish after A is gone removes it
    assert _versions(server, name) == ([first.version] if keep >= 2 else []) + [mine[0], fast.version]
    assert os.path.exists(server.local(f"/race/{name}/{mine[0]}/{claims.PUBLISHING_NAME}"))
    assert not os.path.exists(server.local(f"/race/{name}/{fast.version}/{claims.PUBLISHING_NAME}"))
    after = _publish(server, name, 3000, keep)
    assert mine[0] not in _versions(server, name) and _current(server, name) == after.version
    assert _versions(server, name)[-min(keep, 2):] == [fast.version, after.version][-min(keep, 2):]


def test_current_moved_back_by_a_late_rename_is_moved_forward_again(server):
    name = "lateswap"
    first = _publish(server, name, 0, 3)
    # Run A checked CURRENT and sent the rename of its new CURRENT, which the name node applies late: after
    # run B published a newer version.
    server.slow_next(1, seconds=5.0, op="RENAME", path=f"/race/{name}/.CURRENT.")
    server.clear_log()
    slow = _Run(server, name, 1000, 3)
    slow.start()
    _held(server, slow, "RENAME", f"/race/{name}/.CURRENT.")
    fast = _publish(server, name, 2000, 3)
    slow.join(60)
    assert isinstance(slow.out, loader.Dataset), slow.out
    assert first.version < slow.out.version < fast.version
    assert _current(server, name) == fast.version
    live = loader.open_dataset(server.url(f"/race/{name}"), retry=FAST_RETRY)
    assert live.version == fast.version and read_all(live).equals(_ids(100, 2000))
    assert _versions(server, name) == [first.version, slow.out.version, fast.version]


def test_failed_current_switch_keeps_the_live_one_counted_and_the_next_run_removes_the_version(server):
    """A replace of CURRENT that failed may still land (a rename held up on the name node, audit R3): the failed
    run's version stays, marked as never live, and the next publish removes it; the version that was live
    stays counted."""
    name = "failswitch"
    _publish(server, name, 0, 2)
    live = _publish(server, name, 1000, 2)
    server.fail_always(status=503, op="RENAME", path=f"/race/{name}/.CURRENT.")
    with pytest.raises(loader.PublishError, match=f"previous version stays live .CURRENT names {live.version}"):
        _publish(server, name, 2000, 2)
    server.clear_faults()
    failed = _versions(server, name)[-1]
    assert failed > live.version and _current(server, name) == live.version
    assert os.path.exists(server.local(f"/race/{name}/{failed}/{claims.PUBLISHING_NAME}"))  # never live
    assert loader.open_dataset(server.url(f"/race/{name}"), retry=FAST_RETRY).version == live.version
    after = _publish(server, name, 3000, 2)
    assert _versions(server, name) == [live.version, after.version]  # the version that was live is kept


def test_publisher_killed_at_the_current_switch_is_cleaned_up_by_the_next_run(server):
    name = "d"  # the name STOPPED publishes
    root = server.url("/killed")
    loader.write_cache(_ids(50, 0), root, name, keep_versions=2, retry=FAST_RETRY)
    live = loader.write_cache(_ids(50, 500), root, name, keep_versions=2, retry=FAST_RETRY)
    child = subprocess.Popen([sys.executable, STOPPED, root], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "switching"  # its version renamed, its new CURRENT written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    d = server.local(f"/killed/{name}")
    temporaries = [n for n in os.listdir(d) if n.startswith(".CURRENT.")]
    assert len(temporaries) == 1 and len([n for n in os.listdir(d) if n.startswith("v")]) == 3, os.listdir(d)
    assert loader.open_dataset(server.url(f"/killed/{name}"), retry=FAST_RETRY).version == live.version
    old = time.time() - claims.PENDING_STALE_AFTER_S - 60
    os.utime(os.path.join(d, temporaries[0]), (old, old))  # as old as no live run's temporary ever is

    after = loader.write_cache(_ids(50, 2000), root, name, keep_versions=2, retry=FAST_RETRY)
    assert not [n for n in os.listdir(d) if n.startswith((".CURRENT.", "_staging"))], os.listdir(d)
    assert sorted(n for n in os.listdir(d) if n.startswith("v")) == [live.version, after.version]
    assert loader.open_dataset(server.url(f"/killed/{name}"), retry=FAST_RETRY).version == after.version
