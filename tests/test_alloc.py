"""``import loader`` sets pyarrow's allocator to reset freed memory instead of decommitting it (loader/_alloc.py),
only when it still can (pyarrow not loaded yet) and never over the user's own value."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "MIMALLOC_PURGE_DECOMMITS"


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": ROOT, **env}, check=True)


def test_set_when_loader_comes_first():
    out = _run(f"import os, loader, pyarrow; print(loader._alloc.APPLIED, os.environ.get({KEY!r}))")
    assert out.stdout.split() == ["True", "0"]


def test_the_users_value_is_kept():
    out = _run(f"import os, loader; print(os.environ.get({KEY!r}))", **{KEY: "1"})
    assert out.stdout.split() == ["1"]


def test_not_set_when_pyarrow_came_first():
    out = _run(f"import os, pyarrow, loader; print(loader._alloc.APPLIED, os.environ.get({KEY!r}))")
    assert out.stdout.split() == ["False", "None"]


@pytest.mark.skipif(pa.default_memory_pool().backend_name != "mimalloc", reason="pyarrow built without mimalloc")
def test_mimalloc_takes_the_setting():
    """mimalloc itself reports the option it runs with (MIMALLOC_VERBOSE prints them as it starts)."""
    code = "import loader, pyarrow as pa; pa.allocate_buffer(1 << 20)"
    assert "option 'purge_decommits': 0" in _run(code, MIMALLOC_VERBOSE="1").stderr
    late = "import pyarrow as pa, loader; pa.allocate_buffer(1 << 20)"
    assert "option 'purge_decommits': 1" in _run(late, MIMALLOC_VERBOSE="1").stderr
