"""Audit G, local disk: a failure inside ``with begin_staging(...)`` (the Spark job's write and checks) is the error
raised, even when removing the staging directory afterwards fails too; the failed clean-up is noted on it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import loader
from loader import fs as lfs
from loader.errors import SourceError
from loader.publish import begin_staging


def test_a_failed_clean_up_is_noted_on_the_error_of_the_run_never_raised_in_its_place(tmp_path):
    live = loader.write_cache(pa.table({"id": [1, 2, 3]}), tmp_path, "ds")
    fs = pafs.LocalFileSystem()
    with pytest.raises(SourceError, match="ORIGINAL") as info:
        with begin_staging(fs, str(tmp_path), "ds") as staging:
            # A file where the staging directory should be: removing it as a directory fails (NotADirectory).
            lfs.write_bytes(fs, staging.path, b"not a directory")
            raise SourceError("ORIGINAL: source db.t changed while the job ran")
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith(f"cleaning up the staging directory {staging.path} failed too")
    assert staging.finished  # the claim is given up all the same
    assert loader.open_dataset(tmp_path / "ds").version == live.version


def test_a_clean_exit_without_commit_still_removes_the_staging_directory(tmp_path):
    fs = pafs.LocalFileSystem()
    with begin_staging(fs, str(tmp_path), "ds") as staging:
        fs.create_dir(staging.path)
        lfs.write_bytes(fs, lfs.join(staging.path, "part-00000.parquet"), b"x")
    assert not (tmp_path / "ds" / staging.name).exists() and staging.finished
