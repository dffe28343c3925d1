"""Manifest / CURRENT audit V: unusual pointers and manifest values are typed errors naming the file or key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import loader
from loader.errors import DatasetNotFoundError, ManifestError
from loader.manifest import MAX_GROUP_ROWS
from tests.conftest import make_table

REPO = Path(__file__).resolve().parents[1]

OPEN = "import sys, loader\ntry:\n    loader.open_dataset(sys.argv[1])\nexcept loader.LarderError as e:\n" \
       "    print(type(e).__name__, e)\n"


@pytest.fixture
def published(tmp_path) -> tuple[str, str]:
    """A published dataset: ``(dataset directory, version name)``."""
    ds = loader.write_cache(make_table(50), tmp_path, "ds")
    return str(tmp_path / "ds"), ds.version


def _set_current(dataset_dir: str, make) -> str:
    current = os.path.join(dataset_dir, "CURRENT")
    os.remove(current)
    make(current)
    return current


@pytest.mark.parametrize("make, match", [
    (os.mkdir, r"CURRENT is a directory, not a regular file"),
    (lambda p: os.symlink("CURRENT", p), r"CURRENT cannot be read \(.*Too many levels of symbolic links"),
    (lambda p: Path(p).write_text("v" * 5000), r"CURRENT names 'vvvv.*'\.\.\. \(5000 characters\), which is not a "
                                               r"version"),
], ids=["directory", "symlink-loop", "overlong-name"])
def test_an_unusual_current_is_a_typed_error_naming_it(published, make, match):
    dataset_dir, _ = published
    _set_current(dataset_dir, make)
    with pytest.raises(DatasetNotFoundError, match=match):
        loader.open_dataset(dataset_dir)


def test_a_current_with_a_nul_byte_is_a_typed_error_also_in_the_cli(published):
    dataset_dir, version = published
    _set_current(dataset_dir, lambda p: Path(p).write_text(version + "\0"))
    with pytest.raises(DatasetNotFoundError, match=r"CURRENT names '.*\\x00', which is not a version"):
        loader.open_dataset(dataset_dir)
    proc = subprocess.run([sys.executable, "-m", "loader", "inspect", dataset_dir], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "larder: error: " in proc.stderr and "CURRENT names" in proc.stderr


def test_a_manifest_that_is_a_directory_is_a_typed_error_naming_it(published):
    dataset_dir, version = published
    manifest = os.path.join(dataset_dir, version, "_manifest.json")
    os.remove(manifest)
    os.mkdir(manifest)
    for url in (dataset_dir, os.path.join(dataset_dir, version)):  # through CURRENT, and the version itself
        with pytest.raises(DatasetNotFoundError, match=r"_manifest\.json is a directory, not a regular file"):
            loader.open_dataset(url)


@pytest.mark.parametrize("what", ["current", "manifest"])
def test_a_fifo_in_place_of_current_or_the_manifest_is_refused_not_waited_on(published, what):
    dataset_dir, version = published
    target = os.path.join(dataset_dir, "CURRENT") if what == "current" else \
        os.path.join(dataset_dir, version, "_manifest.json")
    os.remove(target)
    os.mkfifo(target)
    # in a child: before the fix, open() blocks forever, where no signal reaches it
    proc = subprocess.run([sys.executable, "-c", OPEN, dataset_dir], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.stdout.startswith("DatasetNotFoundError ")
    assert f"{os.path.basename(target)} is a FIFO, not a regular file" in proc.stdout


def test_a_missing_current_still_says_nothing_is_published(published):
    dataset_dir, _ = published
    live = open(os.path.join(dataset_dir, "CURRENT")).read().strip()
    os.remove(os.path.join(dataset_dir, "CURRENT"))
    with pytest.raises(DatasetNotFoundError, match=r"neither a dataset \(no CURRENT\) nor a version") as info:
        loader.open_dataset(dataset_dir)
    # the versions that lost their pointer are named, with the way back (here: the one that was live)
    assert f"the newest '{live}'" in str(info.value) and "1 complete version(s)" in str(info.value)
    with open(os.path.join(dataset_dir, "CURRENT"), "w") as f:
        f.write(live)
    assert loader.open_dataset(dataset_dir).version == live  # the advice works
    os.remove(os.path.join(dataset_dir, "CURRENT"))
    os.remove(os.path.join(dataset_dir, live, "_manifest.json"))  # an incomplete version is not offered
    with pytest.raises(DatasetNotFoundError, match=r"nor a version \(no _manifest.json\)$"):
        loader.open_dataset(dataset_dir)
    shutil.rmtree(dataset_dir)
    with pytest.raises(DatasetNotFoundError, match=r"ds does not exist"):
        loader.open_dataset(dataset_dir)


def _edit_manifest(dataset_dir: str, version: str, edit) -> None:
    path = os.path.join(dataset_dir, version, "_manifest.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(edit(text))


def _edit_group(index: int, value):
    def edit(text: str) -> str:
        doc = json.loads(text)
        old = doc["files"][0]["row_groups"][0][index]
        doc["files"][0]["row_groups"][0][index] = value
        if index == 0 and isinstance(value, int):
            doc["files"][0]["num_rows"] += value - old  # consistent otherwise: only the bound refuses it
        return json.dumps(doc)
    return edit


@pytest.mark.parametrize("edit, match", [
    (lambda t: "[" * 100_000 + "]" * 100_000, r"_manifest\.json: JSON nested too deeply"),
    (lambda t: t.rstrip()[:-1] + ', "deep": ' + "[" * 50_000 + "]" * 50_000 + "}", r"nested too deeply"),
    (_edit_group(1, float("inf")), r"files\[0\] row_groups\[0\]\[1\] \(compressed bytes\) is inf"),
    (_edit_group(0, float("nan")), r"files\[0\] row_groups\[0\]\[0\] \(rows\) is nan"),
    (_edit_group(0, 2**70), r"files\[0\] row_groups\[0\]\[0\] \(rows\) is 1180591620717411303424: expected an "
                            r"integer in \[0, 2147483648\)"),
    (_edit_group(0, 2**62), r"files\[0\] row_groups\[0\]\[0\] \(rows\) is 4611686018427387904"),
    (_edit_group(0, -1), r"files\[0\] row_groups\[0\]\[0\] \(rows\) is -1"),
    (_edit_group(2, True), r"files\[0\] row_groups\[0\]\[2\] \(uncompressed bytes\) is True"),
], ids=["nested", "nested-extra", "inf", "nan", "2**70", "2**62", "negative", "bool"])
def test_manifest_values_out_of_range_are_refused_at_open_naming_the_key(published, edit, match):
    dataset_dir, version = published
    _edit_manifest(dataset_dir, version, edit)
    with pytest.raises(ManifestError, match=match):
        loader.open_dataset(dataset_dir)


def test_a_row_group_just_under_the_bound_is_accepted(published):
    dataset_dir, version = published
    _edit_manifest(dataset_dir, version, _edit_group(0, MAX_GROUP_ROWS - 1))
    ds = loader.open_dataset(dataset_dir)
    assert ds.files[0].row_groups[0].num_rows == MAX_GROUP_ROWS - 1
