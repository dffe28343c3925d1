"""loader/_alloc.py: importing loader before pyarrow turns off mimalloc's transparent huge pages, never
overriding the user's setting, and says when it came too late."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**clean, "PYTHONPATH": REPO, **env}, check=True, timeout=120)


PROBE = ("import os, loader, pyarrow as pa; b = pa.allocate_buffer(1 << 20); "
         "print(os.environ.get('MIMALLOC_ALLOW_THP'), loader._alloc.APPLIED, pa.default_memory_pool().backend_name)")


def test_loader_first_turns_off_mimalloc_huge_pages():
    out = _run(PROBE, MIMALLOC_VERBOSE="1")
    value, applied, backend = out.stdout.split()
    assert (value, applied) == ("0", "True")
    if backend == "mimalloc":  # mimalloc itself read the option when pyarrow loaded
        assert "option 'allow_thp': 0" in out.stderr


def test_the_users_setting_wins():
    out = _run(PROBE, MIMALLOC_VERBOSE="1", MIMALLOC_ALLOW_THP="1")
    value, applied, backend = out.stdout.split()
    assert (value, applied) == ("1", "True")
    if backend == "mimalloc":
        assert "option 'allow_thp': 1" in out.stderr


def test_pyarrow_first_leaves_the_environment_alone():
    out = _run("import pyarrow, os, loader; print(os.environ.get('MIMALLOC_ALLOW_THP'), loader._alloc.APPLIED)")
    assert out.stdout.split() == ["None", "False"]
