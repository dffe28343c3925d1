"""Audit W, local disk: a publisher killed between renaming its version into place and switching CURRENT leaves a
never-live version and a CURRENT temporary; the next publish removes both and keeps the version that was live.
An open racing a publish that prunes the version CURRENT named follows CURRENT to the new version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import loader
from loader import claims
from loader import fs as lfs
from tests.conftest import read_all

STOPPED = str(Path(__file__).with_name("publish_stopped_w.py"))  # a publisher that stops at its CURRENT switch


def _ids(n: int, base: int) -> pa.Table:
    return pa.table({"id": np.arange(base, base + n, dtype=np.int64)})


def _versions(dataset_dir) -> list[str]:
    return sorted(n for n in os.listdir(dataset_dir) if n.startswith("v"))


def _kill_while_switching(root: str) -> None:
    """Run :data:`STOPPED` publishing dataset ``d`` into ``root`` and SIGKILL it at its CURRENT switch."""
    child = subprocess.Popen([sys.executable, STOPPED, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "switching", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
        child.stderr.close()


def test_publisher_killed_at_the_current_switch_leaves_debris_the_next_publish_removes(tmp_path):
    root, d = str(tmp_path), tmp_path / "d"
    loader.write_cache(_ids(50, 0), root, "d", keep_versions=2)
    live = loader.write_cache(_ids(50, 500), root, "d", keep_versions=2)
    _kill_while_switching(root)

    orphans = [v for v in _versions(d) if v > live.version]
    temporaries = [n for n in os.listdir(d) if n.startswith(".CURRENT.")]
    assert len(orphans) == 1 and len(temporaries) == 1, os.listdir(d)  # what the killed run left
    opened = loader.open_dataset(d)
    assert opened.version == live.version and read_all(opened).equals(read_all(live))

    # Its temporary CURRENT is older than a live run ever keeps one; another run's is being written right now.
    stale = d / temporaries[0]
    old = time.time() - claims.PENDING_STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    fresh = d / f".CURRENT.{uuid.uuid4().hex[:8]}.tmp"
    fresh.write_text("v20990101T000000Z-00000000\n")

    after = loader.write_cache(_ids(50, 2000), root, "d", keep_versions=2)
    assert not stale.exists() and fresh.exists()
    assert not [n for n in os.listdir(d) if n.startswith("_staging")]
    # The never-live version neither counts toward keep_versions nor stays: the version that was live does.
    assert _versions(d) == [live.version, after.version]
    assert (d / "CURRENT").read_text().strip() == after.version
    assert read_all(loader.open_dataset(d)).column("id").to_pylist() == list(range(2000, 2050))


def test_prune_counts_only_versions_that_were_live(tmp_path):
    root, d = str(tmp_path), tmp_path / "d"
    first = loader.write_cache(_ids(10, 0), root, "d", keep_versions=3)
    _kill_while_switching(root)  # a never-live version between two live ones
    second = loader.write_cache(_ids(10, 100), root, "d", keep_versions=3)
    third = loader.write_cache(_ids(10, 200), root, "d", keep_versions=3)
    assert _versions(d) == [first.version, second.version, third.version]
    assert loader.open_dataset(d).version == third.version


# --- open_dataset while a publish moves CURRENT on and prunes the version it named ---


class _PublishOnFirstManifestRead(pafs.FileSystemHandler):
    """Local files, but the first read of a manifest under ``dataset_dir`` is preceded by a whole publish
    (``keep_versions=1``): the version whose CURRENT the reader just read is pruned before its manifest is read."""

    def __init__(self, dataset_dir: str, publish):
        self.local, self.dataset_dir, self.publish, self.published = pafs.LocalFileSystem(), dataset_dir, publish, 0

    def _before_read(self, path: str) -> None:
        if path.startswith(self.dataset_dir + "/v") and path.endswith("/_manifest.json") and not self.published:
            self.published += 1
            self.publish()

    def get_type_name(self):
        return "racing"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not here")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        self._before_read(path)
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        self._before_read(path)
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.local.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)


def _racing_url(tmp_path, publish) -> tuple[str, _PublishOnFirstManifestRead]:
    """A URL of ``tmp_path/d`` through :class:`_PublishOnFirstManifestRead` (a scheme of its own)."""
    handler = _PublishOnFirstManifestRead(str(tmp_path / "d"), publish)
    scheme = f"racing{uuid.uuid4().hex[:8]}"
    lfs.register_scheme(scheme, lambda url, **_: (pafs.PyFileSystem(handler), url.split("://", 1)[1]))
    return f"{scheme}://{tmp_path / 'd'}", handler


def test_open_follows_current_when_a_publish_pruned_the_version_it_named(tmp_path):
    loader.write_cache(_ids(20, 0), tmp_path, "d", keep_versions=1)
    newer = []
    url, handler = _racing_url(
        tmp_path, lambda: newer.append(loader.write_cache(_ids(30, 700), tmp_path, "d", keep_versions=1)))
    ds = loader.open_dataset(url)
    assert handler.published == 1 and len(_versions(tmp_path / "d")) == 1  # the version first named is gone
    assert ds.version == newer[0].version and ds.num_rows == 30
    assert read_all(ds).column("id").to_pylist() == list(range(700, 730))


def test_open_still_names_the_missing_manifest_when_current_did_not_move(tmp_path):
    first = loader.write_cache(_ids(20, 0), tmp_path, "d", keep_versions=1)
    (tmp_path / "d" / first.version / "_manifest.json").unlink()
    with pytest.raises(loader.DatasetNotFoundError, match=f"CURRENT of .* names '{first.version}', but .*"
                                                          f"{first.version}/_manifest.json is missing"):
        loader.open_dataset(tmp_path / "d")
