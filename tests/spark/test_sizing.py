"""Row groups just under the block size, on two row widths, at a 4 MiB block (small to keep CI fast).

Narrow rows (~30 compressed bytes) and wide skewed rows (32 B .. 1.3 KB of random bytes, growing with the
key): every row group must be at most the block, and the median at least 0.93 of it. Rows bigger than a
block are warned about, not fatal.
"""

from __future__ import annotations

import statistics

import pytest

import loader
from etl.config import from_dict
from etl.job import run

pytestmark = pytest.mark.slow
BLOCK = 4 << 20


def path_conf(source: str, root, name: str, block: str = "4MiB", **output) -> object:
    return from_dict(
        {
            "name": name,
            "source": {"path": source, "format": "parquet"},
            "output": {"root": str(root), "block_size": block, **output},
            "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
        }
    )


@pytest.fixture(scope="module")
def sources(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("sizing-src")
    narrow = spark.range(0, 700_000, 1, 4).selectExpr(
        "id", "substr(sha2(cast(id AS string), 256), 1, 24) AS s", "cast(id % 1000 AS int) AS k"
    )
    n_wide = 28_000
    wide = spark.range(0, n_wide, 1, 4).selectExpr(
        "id",
        f"unhex(array_join(transform(sequence(0, cast(id * 40 DIV {n_wide} AS int)), "
        "j -> sha2(concat_ws('-', cast(id AS string), cast(j AS string)), 256)), '')) AS payload",
    )
    narrow.write.parquet(str(base / "narrow"))
    wide.write.parquet(str(base / "wide"))
    return {"narrow": (str(base / "narrow"), 700_000), "wide": (str(base / "wide"), n_wide)}


@pytest.mark.parametrize("writer", ["arrow", "spark"])
@pytest.mark.parametrize("kind", ["narrow", "wide"])
def test_row_groups_just_under_the_block(spark, sources, tmp_path, kind, writer):
    path, rows = sources[kind]
    messages: list[str] = []
    result = run(path_conf(path, tmp_path, kind, writer=writer), spark, log=messages.append)
    ds = loader.open_dataset(tmp_path / kind)
    sizes = [g.compressed_bytes for f in ds.files for g in f.row_groups]
    fills = [s / BLOCK for s in sizes]
    assert ds.num_rows == rows == result.rows
    assert len(sizes) >= 4, messages
    assert max(sizes) <= BLOCK, (fills, messages)
    assert statistics.median(fills) >= 0.93, (fills, messages)
    per_file = sorted(f.num_rows for f in ds.files)
    assert len(set(per_file[1:])) == 1 and per_file[0] <= per_file[1]  # n-1 equal files and one remainder
    assert ds.manifest.block_size == BLOCK and ds.manifest.row_group_target == int(0.95 * BLOCK)
    assert ds.manifest.extra["fill"]["median"] == pytest.approx(statistics.median(fills), abs=1e-3)


def test_underestimate_ends_with_every_group_under_the_block(spark, sources, tmp_path):
    """Unshuffled, key-ordered rows growing with the key: the later files are wider than the sample's
    average and do not fit the block. Either the job rewrites at the worst file's bytes per row, or it
    keeps the files cut into row groups under the block when a rewrite would fill less (logged); every
    row group ends up under the block."""
    path, rows = sources["wide"]
    said: list[str] = []
    for writer in ("arrow", "spark"):
        result = run(path_conf(path, tmp_path, f"wide_{writer}", shuffle=False, writer=writer), spark, log=said.append)
        ds = loader.open_dataset(tmp_path / f"wide_{writer}")
        attempts = [a for a in ds.manifest.extra["sizing"]["attempts"] if "attempt" in a]
        assert attempts[0]["files_too_big"] > 0 and ds.num_rows == rows == result.rows
        assert max(g.compressed_bytes for f in ds.files for g in f.row_groups) <= BLOCK, (writer, said)
        if attempts[-1]["files_too_big"]:  # kept: cut into several groups, never written over the block
            assert attempts[-1]["groups_over_block"] == 0 and any("kept" in m for m in said), said
        else:
            assert all(len(f.row_groups) == 1 for f in ds.files)


def test_too_big_counts_files_that_do_not_fit():
    from etl.sizing import too_big

    block = 100
    assert too_big([[(10, 90)], [(1, 500)], [(5, 60), (1, 30)]], block) == []  # fits, one huge row, cut but fits
    assert too_big([[(10, 150)], [(8, 95), (2, 20)]], block) == [(10, 150), (10, 115)]


def test_rows_bigger_than_a_block_warn_and_publish(spark, tmp_path):
    big = spark.range(0, 12, 1, 2).selectExpr(
        "id", "unhex(array_join(transform(sequence(0, 2500), j -> sha2(concat_ws('-', id, j), 256)), '')) AS blob"
    )  # 80 KB of random bytes per row
    big.write.parquet(str(tmp_path / "big"))
    messages: list[str] = []
    result = run(path_conf(str(tmp_path / "big"), tmp_path / "out", "big", block="64KiB"), spark, log=messages.append)
    ds = loader.open_dataset(tmp_path / "out" / "big")
    assert result.rows == ds.num_rows == 12
    assert any("larger than the block" in m or "more than the" in m for m in messages), messages
    assert all(g.num_rows == 1 for f in ds.files for g in f.row_groups)
    assert ds.manifest.extra["oversized_rows"] == 12


def test_block_size_comes_from_the_destination_filesystem(spark):
    from etl.sizing import destination_block_size

    conf = spark._jsc.hadoopConfiguration()
    old = conf.get("dfs.blocksize")
    conf.set("dfs.blocksize", str(8 << 20))
    try:  # a port nothing listens on: the block size is the client's view, no call is made
        size, origin = destination_block_size(spark, "webhdfs://127.0.0.1:9/larder/shop", None, 128 << 20)
    finally:
        if old is None:
            conf.unset("dfs.blocksize")
        else:
            conf.set("dfs.blocksize", old)
    assert (size, origin) == (8 << 20, "webhdfs getDefaultBlockSize")
    assert destination_block_size(spark, "file:///tmp/x", None, 128 << 20) == (128 << 20, "default")
    assert destination_block_size(spark, "webhdfs://127.0.0.1:9/x", 4 << 20, 128 << 20) == (4 << 20, "conf")


def test_spark_settings_are_restored_even_on_failure(spark):
    from etl.sizing import temporary_conf

    key = "spark.sql.adaptive.enabled"
    spark.conf.unset(key)
    default = spark.conf.get(key)
    with pytest.raises(RuntimeError, match="inside"):
        with temporary_conf(spark, {key: "false", "spark.sql.files.maxRecordsPerFile": "7"}):
            assert spark.conf.get(key) == "false"
            raise RuntimeError("inside")
    assert spark.conf.get(key) == default and spark.conf.get(key, None) is None  # unset again, not pinned
    assert spark.conf.get("spark.sql.files.maxRecordsPerFile") == "0"


def test_prior_applies_only_to_the_same_settings_and_a_similar_selection():
    from etl.sizing import PriorSizing

    prior = PriorSizing("v1", "k", bytes_per_row=100.0, pilot_bytes_per_row=90.0, input_bytes_per_row=300.0)
    assert prior.applies("k", 90.0, 300.0) and prior.applies("k", 91.5, 295.0)  # within 2%
    assert not prior.applies("other", 90.0, 300.0)  # schema or Parquet settings changed
    assert not prior.applies("k", 93.0, 300.0)  # the first rows got wider
    assert not prior.applies("k", 90.0, 320.0)  # the input got wider per selected row
    assert not prior.applies("k", 90.0, None)  # one side without input files
    assert PriorSizing.from_manifest(None) is None


def test_rerun_reuses_the_measured_bytes_per_row_and_still_fits(spark, sources, tmp_path):
    """A forced rerun over the same selection takes the bytes per row measured in the live version's
    files instead of writing a sample; the row groups still sit just under the block. A selection whose
    rows are narrower falls back to the sample."""
    path, rows = sources["narrow"]
    cfg = path_conf(path, tmp_path, "narrow")
    first = run(cfg, spark, log=lambda _m: None)
    messages: list[str] = []
    second = run(cfg, spark, force=True, log=messages.append)
    ds = loader.open_dataset(tmp_path / "narrow")
    sizing = ds.manifest.extra["sizing"]
    assert sizing["estimate_from"] == first.version and "sample_rows" not in sizing, messages
    assert any("(reused)" in m for m in messages), messages
    fills = [g.compressed_bytes / BLOCK for f in ds.files for g in f.row_groups]
    assert ds.num_rows == rows == second.rows and max(fills) <= 1.0 and statistics.median(fills) >= 0.93, fills
    assert len(ds.files) == len(fills)  # one row group per file

    narrower = str(tmp_path / "narrower")
    spark.read.parquet(path).selectExpr("id", "substr(s, 1, 12) AS s", "k").write.parquet(narrower)
    third = run(path_conf(narrower, tmp_path, "narrow"), spark, log=lambda _m: None)
    ds = loader.open_dataset(tmp_path / "narrow")
    assert third.version != second.version and ds.manifest.extra["sizing"]["estimate_from"] == "sample"
    fills = [g.compressed_bytes / BLOCK for f in ds.files for g in f.row_groups]
    assert max(fills) <= 1.0 and statistics.median(fills) >= 0.93, fills
