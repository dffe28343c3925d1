"""``python -m loader verify`` on a manifest that promises a column its files do not hold (audit V)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa

from tests.cli.test_cli import bad_lines, edit_manifest, one_error_line, run


def test_verify_names_a_manifest_column_missing_from_the_files(cache):
    schema = cache.schema.append(pa.field("ghost", pa.int64()))

    def add_ghost(doc: dict) -> None:
        doc["schema"]["arrow_ipc_base64"] = base64.b64encode(schema.serialize().to_pybytes()).decode()
        doc["schema"]["fields"].append({"name": "ghost", "type": "int64", "nullable": True})

    edit_manifest(cache, add_ghost)
    proc = run("verify", Path(cache.version_path).parent)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    bad = bad_lines(proc)
    assert sorted(bad) == sorted(cache.file_path(f) for f in cache.files)  # every file, nothing else
    assert all(reason.startswith("column 'ghost' of the manifest is not in the file") for reason in bad.values())
    assert cache.file_path(cache.files[0]) in one_error_line(proc)
    proc = run("verify", cache.version_path, "--json")
    assert proc.returncode == 1
    assert len(json.loads(proc.stdout)["bad"]) == len(cache.files)
