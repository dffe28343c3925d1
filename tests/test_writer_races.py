"""Concurrent runs on one dataset, in real processes: claims survive cleaners, every publish succeeds.

Each test races for a bounded time (a few seconds); the deterministic interleavings are in
``tests/test_publish.py``.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

import loader
from loader import claims as claims_mod
from loader import publish

RACE_SECONDS = 2.0


def _clean_until(dataset_dir: str, ready, stop) -> None:
    """A concurrent run's cleaner, looping (a spawned process)."""
    fs = pafs.LocalFileSystem()
    ready.set()
    while not stop.is_set():
        try:
            claims_mod.clean_stale_staging(fs, dataset_dir)
        except OSError:
            pass  # the claims are under test, not this loop


def _claim_and_release(root: str, seconds: float) -> tuple[int, collections.Counter]:
    """Claim and give up staging directories for ``seconds``; count claims and what went wrong."""
    fs = pafs.LocalFileSystem()
    claims, problems = 0, collections.Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            staging = publish.begin_staging(fs, root, "d")
        except Exception as e:  # noqa: BLE001 - every failure is a finding here
            problems[f"{type(e).__name__}: {e}"[:100]] += 1
            continue
        claims += 1
        if not claims_mod.owner_alive(fs, staging.path + claims_mod.OWNER_SUFFIX):
            problems["claimed, but the owner file is gone or unlocked"] += 1
        staging.abort()
    return claims, problems


def test_claims_survive_a_concurrent_cleaner(tmp_path):
    dataset_dir = tmp_path / "d"
    dataset_dir.mkdir()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    cleaner = ctx.Process(target=_clean_until, args=(str(dataset_dir), ready, stop))
    cleaner.start()
    try:
        assert ready.wait(60)
        claims, problems = _claim_and_release(str(tmp_path), RACE_SECONDS)
    finally:
        stop.set()
        cleaner.join(30)
    assert not problems, f"{sum(problems.values())} of {claims + sum(problems.values())} claims failed: {problems}"
    assert claims > 50
    assert not [n for n in os.listdir(dataset_dir) if n.startswith("_staging")]


def _publish_repeatedly(root: str, runs: int, queue) -> None:
    """Publish the same data ``runs`` times with keep_versions=2 (a spawned process)."""
    problems = collections.Counter()
    data = pa.table({"id": np.arange(50)})  # the same data everywhere: the same version names
    for _ in range(runs):
        try:
            ds = loader.write_cache(data, root, "d", keep_versions=2)
            if ds.num_rows != 50:
                problems[f"returned {ds.num_rows} rows"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is a finding here
            problems[f"{type(e).__name__}: {e}"[:100]] += 1
    queue.put(problems)


def test_concurrent_write_caches_all_succeed(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    writers = [ctx.Process(target=_publish_repeatedly, args=(str(tmp_path), 8, queue)) for _ in range(4)]
    for w in writers:
        w.start()
    problems = collections.Counter()
    for _ in writers:
        problems.update(queue.get(timeout=120))
    for w in writers:
        w.join(30)
    assert not problems, problems
    ds = loader.open_dataset(tmp_path / "d")
    assert ds.num_rows == 50
    names = sorted(os.listdir(tmp_path / "d"))
    assert names[0] == "CURRENT" and ds.version == names[-1] and len(names) == 3  # the two newest versions
