"""End to end with a real local Spark and Hive metastore: demo table -> job -> loader reads it back."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import loader
from etl.job import run
from loader import fs as lfs
from loader.publish import list_versions
from tests.spark.conftest import DEMO_COLUMNS, job_conf, quiet

pytestmark = pytest.mark.slow
WHERE = "dt >= '2026-11-22'"


def rows_by_key(spark, table: str, where: str) -> dict[int, dict]:
    rows = spark.table(table).where(where).select(*DEMO_COLUMNS).collect()
    return {r["product_id"]: r.asDict() for r in rows}


@pytest.fixture(scope="module")
def published(spark, demo_table, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    cfg = job_conf(root, source={"where": WHERE})
    result = run(cfg, spark, log=quiet)
    return cfg, result, root


def test_every_selected_row_read_once_with_spark_values(spark, demo_table, published):
    cfg, result, root = published
    expected = rows_by_key(spark, demo_table, WHERE)
    assert result.status == "published" and result.rows == len(expected)
    ds = loader.open_dataset(lfs.join(str(root), cfg.name))
    vocab = ds.vocabularies["label"]
    assert ds.columns == DEMO_COLUMNS + ["label"]
    assert ds.source["table"] == demo_table and ds.source["where"] == WHERE and ds.source["fingerprint"]

    seen: Counter = Counter()
    # tokens (list<string>) has no vectorised numpy form in the reader yet; it is checked below from the files.
    columns = [c for c in ds.columns if c != "tokens"]
    with loader.make_reader(ds, columns, batch_size=300, seed=3, strings="object", workers=2) as reader:
        for batch in reader:
            offsets = batch["wordpiece_ids.offsets"]
            for i, key in enumerate(batch["product_id"].tolist()):
                seen[key] += 1
                want = expected[key]
                assert batch["title"][i] == want["title"]
                assert batch["image"][i] == bytes(want["image"])
                assert batch["category"][i] == want["category"]
                assert batch["price"][i] == want["price"]
                assert batch["wordpiece_ids"][offsets[i] : offsets[i + 1]].tolist() == want["wordpiece_ids"]
                assert vocab[batch["label"][i]] == want["category"]  # vocabulary consistent with the data
    assert set(seen) == set(expected) and set(seen.values()) == {1}

    tokens = {}
    for info in ds.files:
        for g in range(len(info.row_groups)):
            t = ds.read_row_group(info, g, columns=["product_id", "tokens"])
            tokens.update(zip(t["product_id"].to_pylist(), t["tokens"].to_pylist(), strict=True))
    assert tokens == {k: v["tokens"] for k, v in expected.items()}


def test_images_are_jpeg_and_vocabulary_is_frequency_ordered(spark, demo_table, published):
    from etl.demo import is_jpeg

    cfg, _, root = published
    ds = loader.open_dataset(lfs.join(str(root), cfg.name))
    table = ds.read_row_group(ds.files[0], 0, columns=["image"])
    assert all(is_jpeg(spark, img) for img in table["image"].to_pylist()[:5])
    counts = {r[0]: r[1] for r in spark.table(demo_table).where(WHERE).groupBy("category").count().collect()}
    vocab = ds.vocabularies["label"]
    assert sorted(vocab) == sorted(counts)
    assert vocab == sorted(counts, key=lambda v: (-counts[v], v))
    # provenance: the master the job really ran on (under spark-submit, its --master, not the conf's default)
    assert ds.manifest.created_by["spark_master"] == spark.sparkContext.master


def test_second_run_is_up_to_date_and_force_publishes(spark, published):
    cfg, first, root = published
    dataset_dir = lfs.join(str(root), cfg.name)
    fs, path = lfs.resolve(dataset_dir)
    before = list_versions(fs, path)
    again = run(cfg, spark, log=quiet)
    assert again.status == "up to date" and again.version == first.version
    assert list_versions(fs, path) == before
    forced = run(cfg, spark, force=True, log=quiet)
    assert forced.status == "published" and forced.version != first.version
    live = loader.open_dataset(dataset_dir)
    assert live.version == forced.version
    assert live.vocabularies == loader.open_dataset(lfs.join(dataset_dir, first.version)).vocabularies


def test_vocabulary_ids_stay_stable_when_values_are_added(spark, demo_table, tmp_path):
    narrow = job_conf(tmp_path, name="vocab", source={"where": "category < '식품'"})
    run(narrow, spark, log=quiet)
    first = loader.open_dataset(tmp_path / "vocab").vocabularies["label"]
    wide = job_conf(tmp_path, name="vocab", source={"where": "dt >= '2026-11-21'"})
    result = run(wide, spark, log=quiet)
    assert result.status == "published"  # the conf changed, so the fingerprint did
    ds = loader.open_dataset(tmp_path / "vocab")
    second = ds.vocabularies["label"]
    assert second[: len(first)] == first and len(second) > len(first)
    table = ds.read_row_group(ds.files[0], 0, columns=["category", "label"])
    assert [second[i] for i in table["label"].to_pylist()] == table["category"].to_pylist()


def test_python_hook_and_sample(spark, demo_table, tmp_path):
    cfg = job_conf(
        tmp_path,
        name="hooked",
        source={"where": WHERE, "sample": 0.5, "seed": 7},
        transforms=[{"kind": "python", "function": "tests.spark.hooks:price_bucket", "args": {"buckets": 4}}],
    )
    result = run(cfg, spark, log=quiet)
    ds = loader.open_dataset(tmp_path / "hooked")
    total = spark.table(demo_table).where(WHERE).count()
    assert 0.4 * total < result.rows < 0.6 * total and ds.source["sample"] == 0.5
    t = ds.read_row_group(ds.files[0], 0, columns=["price", "price_bucket"])
    assert np.array_equal(np.asarray(t["price"]) % 4, np.asarray(t["price_bucket"]))


def test_partitions_key_selects_partitions(spark, demo_table, tmp_path):
    cfg = job_conf(tmp_path, name="parts", source={"partitions": {"dt": ["2026-11-21", "2026-11-23"]}})
    result = run(cfg, spark, log=quiet)
    expected = spark.table(demo_table).where("dt IN ('2026-11-21', '2026-11-23')").count()
    ds = loader.open_dataset(tmp_path / "parts")
    assert result.rows == ds.num_rows == expected
    assert ds.source["partitions"] == {"dt": ["2026-11-21", "2026-11-23"]}
    assert ds.source["snapshot"]["partitions"] == ["dt=2026-11-21", "dt=2026-11-23"]


@pytest.mark.parametrize("fmt", ["parquet", "orc"])
def test_path_source_rebuilds_when_its_files_change(spark, tmp_path, fmt):
    src = str(tmp_path / "src")
    spark.range(0, 3000, 1, 2).selectExpr("id", "cast(id % 7 AS string) AS c").write.format(fmt).save(src)
    cfg = job_conf(
        tmp_path / "out", name="pathsrc", source={"table": None, "path": src, "format": fmt, "columns": ["id", "c"]},
        transforms=[{"kind": "index", "column": "c"}],
    )  # fmt: skip
    first = run(cfg, spark, log=quiet)
    assert run(cfg, spark, log=quiet).status == "up to date"
    spark.range(3000, 3500, 1, 1).selectExpr("id", "cast(id % 7 AS string) AS c").write.mode("append").format(fmt).save(
        src
    )
    second = run(cfg, spark, log=quiet)
    assert second.status == "published" and second.version != first.version and second.rows == 3500
    ds = loader.open_dataset(tmp_path / "out" / "pathsrc")
    ids = sorted(i for f in ds.files for g in range(len(f.row_groups))
                 for i in ds.read_row_group(f, g, columns=["id"])["id"].to_pylist())  # fmt: skip
    assert ids == list(range(3500)) and ds.source["format"] == fmt
