"""``loader`` is the trainer side: it must import and read with pyspark (and py4j) absent."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pyspark", "py4j", "torch", "tensorflow", "hdfs", "yaml", "zlib_ng"}:
            raise ImportError(f"blocked for this test: {name}")
sys.meta_path.insert(0, Block())
"""


def test_loader_imports_and_reads_without_pyspark(tmp_path):
    code = _BLOCKER + f"""
try:
    import pyspark
except ImportError:
    pass
else:
    raise SystemExit("the blocker did not block pyspark")
import numpy as np, pyarrow as pa
import loader
ds = loader.write_cache(pa.table({{"id": np.arange(500), "s": [str(i) for i in range(500)]}}),
                        {str(tmp_path)!r}, "d", row_group_bytes=500)
seen = []
for pool in ("serial", "thread"):
    with loader.make_reader(ds.version_path, batch_size=64, pool=pool, seed=0) as reader:
        ids = np.concatenate([b["id"] for b in reader])
    seen.append(sorted(ids.tolist()))
assert seen[0] == seen[1] == list(range(500)), seen
bad = sorted(m for m in sys.modules if m.split(".")[0] in {{"pyspark", "py4j", "torch", "tensorflow"}})
assert not bad, bad
from loader import crc
assert crc.IMPLEMENTATION == "zlib", crc.IMPLEMENTATION  # the stdlib fallback did the checking
print("ok", ds.num_row_groups)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups = int(proc.stdout.split()[-1])
    assert groups > 1  # the read really crossed several row groups
