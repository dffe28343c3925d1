"""Audit B: ``head -n`` larger than any table, and ``inspect`` / ``loader.summary`` on a manifest whose vocabulary
is malformed (one typed error line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

import loader
from loader import manifest as mf
from tests.cli.test_cli import REPO, one_error_line, run


def test_head_with_n_past_int64_shows_every_row(tmp_path):
    ds = loader.write_cache(pa.table({"x": [1, 2, 3]}), tmp_path, "headn")
    proc = run("head", ds.version_path, "-n", str(2**63), "--json")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["x"] for line in proc.stdout.splitlines()] == [1, 2, 3]


def test_first_rows_takes_a_huge_n_across_row_groups(tmp_path):
    from loader.cli import first_rows

    ds = loader.write_cache(pa.table({"x": list(range(300))}), tmp_path, "d", row_group_bytes=200)
    assert ds.num_row_groups > 1
    assert first_rows(ds, 2**200, None).column("x").to_pylist() == list(range(300))


@pytest.fixture
def bad_vocabulary(tmp_path) -> tuple[str, str]:
    """A dataset whose manifest's vocabulary of ``label`` is the number 5; returns (dataset dir, manifest path)."""
    ds = loader.write_cache(pa.table({"label": [0, 1]}), tmp_path, "vocab", vocabularies={"label": ["a", "b"]})
    path = os.path.join(ds.version_path, mf.MANIFEST_NAME)
    with open(path) as f:
        doc = json.load(f)
    doc["vocabularies"]["label"] = 5
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(tmp_path / "vocab"), path


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_inspect_names_the_manifest_and_column_of_a_malformed_vocabulary(bad_vocabulary, json_flag):
    url, path = bad_vocabulary
    proc = run("inspect", url, *json_flag)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert path in line and "the vocabulary of column 'label' is a int, not a list" in line


def test_summary_names_the_manifest_and_column_of_a_malformed_vocabulary(bad_vocabulary):
    url, path = bad_vocabulary
    proc = subprocess.run([sys.executable, "-m", "loader.summary", url], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert path in line and "the vocabulary of column 'label' is a int, not a list" in line
