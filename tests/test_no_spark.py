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


def test_reading_does_not_import_pandas(tmp_path):
    """pyarrow's ``pa.array`` and ``Array.to_numpy`` import pandas on first use when it is installed (~0.3 s
    inside the first batch); the reader's conversions and gathers use neither. Every column kind the reader
    converts is read, in a fresh process, from a cache written here: ints, floats, bools with a null,
    strings, binary, lists of ints and of strings."""
    import numpy as np
    import pyarrow as pa

    import loader

    n = 600
    table = pa.table({
        "id": np.arange(n), "f": np.linspace(0, 1, n).astype(np.float32),
        "b": pa.array([i % 3 == 0 if i != 5 else None for i in range(n)]),
        "s": [str(i) for i in range(n)], "bin": [bytes([i % 256]) * (i % 7) for i in range(n)],
        "ids": [list(range(i % 4)) for i in range(n)], "words": [[str(i)] * (i % 3) for i in range(n)],
    })  # fmt: skip
    ds = loader.write_cache(table, str(tmp_path), "d", row_group_bytes=2000)
    code = f"""
import sys
import numpy as np
import loader
for pool in ("serial", "thread"):
    with loader.make_reader({ds.version_path!r}, batch_size=64, pool=pool, seed=0, masks=True) as reader:
        batches = list(reader)
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range({n})), "rows"
    got = dict(zip(ids.tolist(), np.concatenate([b["b"] for b in batches]).tolist()))
    valid = dict(zip(ids.tolist(), np.concatenate([b["b.valid"] for b in batches]).tolist()))
    assert all(got[i] == (i % 3 == 0) for i in range({n}) if i != 5) and not valid[5] and valid[6], "bools"
    assert sum(len(b["words"]) for b in batches) == sum(len(str(i)) * (i % 3) for i in range({n}))
print("pandas" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "False", "reading imported pandas"


def test_cli_head_of_no_rows_does_not_import_pandas(tmp_path):
    """``head -n 0`` reads an empty table; pyarrow's ``Schema.empty_table`` imports pandas to make
    one (+33 MiB, a quarter of a second), the CLI's own helper does not (nor do ``write_cache``'s type checks or
    the tf adapter's signature, which use the same helper)."""
    import pyarrow as pa

    import loader

    ds = loader.write_cache(pa.table({"id": list(range(10)), "s": [str(i) for i in range(10)]}), str(tmp_path), "d")
    code = f"""
import sys
from loader.cli import main
code = main(["head", {ds.version_path!r}, "-n", "0"])
print(code, "pandas" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False"], proc.stdout  # exit 0, no rows printed, no pandas
