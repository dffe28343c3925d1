"""File entries computed on the executors equal the ones the driver computes from the same files."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from etl.checksums import file_infos_on_executors
from loader.manifest import file_info_from_parquet

pytestmark = pytest.mark.slow


def test_executor_entries_match_driver_entries(spark, tmp_path):
    out = tmp_path / "staged"
    spark.range(0, 3000).selectExpr("id", "repeat(cast(id as string), 20) as s", "array(id, id + 1) as l") \
        .repartition(3).write.parquet(str(out))
    for name in os.listdir(out):
        if name.endswith(".parquet"):
            os.rename(out / name, out / f"part-{name[5:10]}.parquet")
    pq.write_table(pa.table({"x": [1]}), out / "_ignored.txt")  # not *.parquet: not an entry
    got = file_infos_on_executors(spark, "file:" + str(out), pafs.LocalFileSystem(), str(out))
    fs = pafs.LocalFileSystem()
    names = sorted(n for n in os.listdir(out) if n.endswith(".parquet"))
    want = [file_info_from_parquet(fs, str(out / n), n) for n in names]
    assert got == want
    assert sum(f.num_rows for f in got) == 3000
    assert all(g.column_checksums for f in got for g in f.row_groups)
