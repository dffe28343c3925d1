"""Claims on remote storage, where liveness comes from the owner file's host and pid: a live run of
another user is alive (``os.kill(pid, 0)`` answers EPERM), a dead run is stale."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from loader import claims
from loader import fs as lfs
from loader.manifest import STAGING_PREFIX

NOBODY = 65534


def _stage(server, name: str, pid: int, **more) -> tuple:
    """A remote dataset directory holding one run's staging directory and owner file naming ``pid``."""
    fs, dataset_dir = lfs.resolve(server.url(f"/claims/{name}"))
    stage = lfs.join(dataset_dir, f"{STAGING_PREFIX}20260101T000000Z-{name}")
    fs.create_dir(stage, recursive=True)
    owner = {"host": socket.gethostname(), "pid": pid, "started": time.time(), **more}
    lfs.write_bytes(fs, stage + claims.OWNER_SUFFIX, json.dumps(owner).encode())
    return fs, dataset_dir, stage


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _other_users_live_pid() -> int | None:
    """A live process owned by another user than this one (None if this user can see none)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != os.geteuid():
                    return int(name)
            except FileNotFoundError:
                continue
    return None


def _clean_as_another_user(fs, dataset_dir: str) -> list[str]:
    """``clean_stale_staging`` run by a process of another user than this test process: a child forked and
    switched to ``nobody`` (this process must be root to do that). Returns what it removed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            removed = claims.clean_stale_staging(fs, dataset_dir)
            os.write(write, json.dumps(removed).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the cleaner running as another user failed"
    return json.loads(out)


def test_dead_run_on_this_host_is_stale(server):
    fs, dataset_dir, stage = _stage(server, "dead", _dead_pid())
    assert not claims.owner_alive(fs, stage + claims.OWNER_SUFFIX)
    assert claims.clean_stale_staging(fs, dataset_dir) == [stage.rsplit("/", 1)[-1]]
    assert not lfs.exists(fs, stage) and not lfs.exists(fs, stage + claims.OWNER_SUFFIX)


def test_live_run_of_another_user_is_not_stale(server):
    if os.geteuid() == 0:  # the run is this (root) process; the cleaner a process of user nobody
        fs, dataset_dir, stage = _stage(server, "other", os.getpid())
        assert claims.owner_alive(fs, stage + claims.OWNER_SUFFIX) and lfs.listdir(fs, dataset_dir)  # imports done
        removed = _clean_as_another_user(fs, dataset_dir)
    else:  # the run is a live process of another user (init, usually root's); the cleaner this process
        pid = _other_users_live_pid()
        if pid is None:
            pytest.skip("no process of another user is visible")
        fs, dataset_dir, stage = _stage(server, "other", pid)
        assert claims.owner_alive(fs, stage + claims.OWNER_SUFFIX)
        removed = claims.clean_stale_staging(fs, dataset_dir)
    assert removed == []
    assert lfs.exists(fs, stage) and lfs.exists(fs, stage + claims.OWNER_SUFFIX)


def test_a_live_pid_of_another_process_life_is_stale(server):
    """A killed run's pid taken again by a later process (a container restarted under the same host name)
    does not keep the run's staging alive; the run's own process does."""
    me = claims.process_life(os.getpid())
    assert me is not None and me != claims.process_life(1)  # pid 1 started long before this test
    fs, dataset_dir, stage = _stage(server, "reused", os.getpid(), life=me.rsplit(":", 1)[0] + ":1")
    assert not claims.owner_alive(fs, stage + claims.OWNER_SUFFIX)
    assert claims.clean_stale_staging(fs, dataset_dir) == [stage.rsplit("/", 1)[-1]]
    fs, dataset_dir, stage = _stage(server, "same", os.getpid(), life=me)
    assert claims.owner_alive(fs, stage + claims.OWNER_SUFFIX)
    assert claims.clean_stale_staging(fs, dataset_dir) == []
    assert lfs.exists(fs, stage)


def test_a_remote_claim_records_its_process_life(server):
    fs, path = lfs.resolve(server.url("/claims/recorded/_staging-x"))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    assert claims.claim(fs, path) == (True, None)
    owner = json.loads(lfs.read_bytes(fs, path + claims.OWNER_SUFFIX))
    assert owner["pid"] == os.getpid() and owner["life"] == claims.process_life(os.getpid())
    assert claims.owner_alive(fs, path + claims.OWNER_SUFFIX)
