"""Label ids across versions of a changing table.

* With a ``vocabulary`` file, the values the live version appended after the file's entries keep their
  ids when new values arrive; a file that contradicts the live ids is refused (exit 2) unless forced,
  and then the file's ids win with a warning naming the values that move.
* An unreadable live manifest is an error naming it (exit 1) when index ids depend on it; ``--force``
  rebuilds the vocabulary from scratch with a warning; without index transforms the run only warns.
"""

from __future__ import annotations

import os

import pytest

from etl.config import TransformConfig
from etl.entry import EXIT_FAILED, EXIT_USAGE, guarded
from etl.job import run
from etl.prior import LiveManifestError
from etl.transforms import base_vocabulary
from loader.errors import ConfigError, LarderError
from tests.spark.published import assert_labels_match, live_version, published_rows, small_conf, table_rows

DB = "vocabdb"


def _index(tmp_path, entries, **kw) -> TransformConfig:
    path = tmp_path / "vocab.txt"
    path.write_text("".join(f"{v}\n" for v in entries))
    return TransformConfig(kind="index", column="cat", output="label", vocabulary=str(path), **kw)


@pytest.mark.parametrize(
    "previous, entries, want",
    [
        (None, ["cat", "dog"], ["cat", "dog"]),  # first version: the file
        (["cat", "dog", "emu"], ["cat", "dog"], ["cat", "dog", "emu"]),  # appended values keep their ids
        (["cat", "dog", "emu"], ["cat"], ["cat", "dog", "emu"]),  # an entry dropped from the file keeps its id
        (["cat", "dog"], ["cat", "dog", "fox"], ["cat", "dog", "fox"]),  # entries added at the end
        (["cat", "dog", "emu"], ["cat", "dog", "emu", "fox"], ["cat", "dog", "emu", "fox"]),
    ],
)
def test_base_vocabulary_keeps_file_and_appended_ids(tmp_path, previous, entries, want):
    assert base_vocabulary(_index(tmp_path, entries), "transforms.0", previous) == want


def test_base_vocabulary_conflict_is_refused_unless_forced(tmp_path):
    t = _index(tmp_path, ["dog", "cat"])
    with pytest.raises(ConfigError, match=r"transforms.0.vocabulary: .*vocab.txt gives 2 value\(s\) of 'label' other "
                                          r"ids than the live version v1 \('cat' 0 -> 1, 'dog' 1 -> 0\)"):  # fmt: skip
        base_vocabulary(t, "transforms.0", ["cat", "dog", "emu"], live="v1")
    said = []
    assert base_vocabulary(t, "transforms.0", ["cat", "dog", "emu"], force=True, log=said.append) == [
        "dog", "cat", "emu",
    ]  # fmt: skip
    assert len(said) == 1 and said[0].startswith("warning: transforms.0.vocabulary") and "--force" in said[0]
    # a new file entry where the live version appended another value moves that value
    with pytest.raises(ConfigError, match=r"'emu' 2 -> 3"):
        base_vocabulary(_index(tmp_path, ["cat", "dog", "fox"]), "transforms.0", ["cat", "dog", "emu"])
    # reuse_previous: false opts out of the live ids: the file, then fresh values
    free = _index(tmp_path, ["dog", "cat"], reuse_previous=False)
    assert base_vocabulary(free, "transforms.0", ["cat", "dog", "emu"]) == ["dog", "cat"]


@pytest.fixture(scope="module")
def db(spark) -> str:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    return DB


def _table(spark, name: str) -> str:
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    spark.sql(f"CREATE TABLE {name} (id INT, cat STRING) PARTITIONED BY (dt STRING) STORED AS PARQUET")
    return name


def _add(spark, table: str, dt: str, cats: list[str], start: int) -> None:
    rows = [(start + i, c) for i, c in enumerate(cats)]
    spark.createDataFrame(rows, "id int, cat string").createOrReplaceTempView("vocab_rows")
    spark.sql(f"INSERT OVERWRITE TABLE {table} PARTITION (dt='{dt}') SELECT * FROM vocab_rows")


def _check_published(spark, root, name: str, table: str) -> list[str]:
    """The live version holds the table's rows, each label its value's id; returns the vocabulary."""
    ds, got = published_rows(root, name)
    assert [{k: r[k] for k in ("id", "cat", "dt")} for r in got] == table_rows(spark, table)
    assert_labels_match(ds, got)
    return ds.vocabularies["label"]


@pytest.mark.slow
def test_appended_values_keep_their_ids_next_to_a_vocabulary_file(spark, db, tmp_path):
    table = _table(spark, f"{db}.pinned")
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("cat\ndog\n")
    transforms = [{"kind": "index", "column": "cat", "output": "label", "vocabulary": str(vocab_file)}]
    cfg = small_conf(tmp_path / "cache", "pinned", table, transforms=transforms)
    _add(spark, table, "d1", ["cat"] * 50 + ["dog"] * 30 + ["emu"] * 5, 0)
    run(cfg, spark, log=lambda _m: None)
    assert _check_published(spark, tmp_path / "cache", "pinned", table) == ["cat", "dog", "emu"]

    _add(spark, table, "d2", ["fox"] * 40 + ["emu"], 1000)  # fox is now more frequent than emu
    run(cfg, spark, log=lambda _m: None)
    assert _check_published(spark, tmp_path / "cache", "pinned", table) == ["cat", "dog", "emu", "fox"]

    # the file reordered: refused, exit 2, the live version is unchanged ...
    live = live_version(tmp_path / "cache", "pinned")
    vocab_file.write_text("dog\ncat\n")
    with pytest.raises(ConfigError, match=r"transforms.0.vocabulary: .*'cat' 0 -> 1, 'dog' 1 -> 0.*--force"):
        run(cfg, spark, log=lambda _m: None)
    assert guarded(lambda: run(cfg, spark, log=lambda _m: None).summary()) == EXIT_USAGE
    assert live_version(tmp_path / "cache", "pinned") == live
    # ... unless forced: the file's ids win, the other values follow in their order, with a warning
    said = []
    assert run(cfg, spark, force=True, log=said.append).status == "published"
    assert any(m.startswith("warning: transforms.0.vocabulary") and "'cat' 0 -> 1" in m for m in said)
    assert _check_published(spark, tmp_path / "cache", "pinned", table) == ["dog", "cat", "emu", "fox"]
    assert run(cfg, spark, log=lambda _m: None).status == "up to date"  # and the next run agrees with it


def _tear_live_manifest(root, name: str) -> str:
    path = os.path.join(str(root), name, live_version(root, name), "_manifest.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    return path


@pytest.mark.slow
def test_unreadable_live_manifest_fails_unless_forced(spark, db, tmp_path):
    table = _table(spark, f"{db}.torn")
    root = tmp_path / "cache"
    cfg = small_conf(root, "torn", table)
    _add(spark, table, "d1", ["cat"] * 50 + ["dog"] * 30, 0)
    run(cfg, spark, log=lambda _m: None)
    assert _check_published(spark, root, "torn", table) == ["cat", "dog"]
    live = live_version(root, "torn")
    manifest = _tear_live_manifest(root, "torn")
    _add(spark, table, "d2", ["dog"] * 100, 1000)  # a fresh vocabulary would swap the ids of cat and dog

    with pytest.raises(LiveManifestError, match=rf"{manifest}.*transforms.0 \(label\).*--force") as info:
        run(cfg, spark, log=lambda _m: None)
    assert isinstance(info.value, LarderError) and not isinstance(info.value, ConfigError)
    assert guarded(lambda: run(cfg, spark, log=lambda _m: None).summary()) == EXIT_FAILED
    assert live_version(root, "torn") == live

    said = []
    assert run(cfg, spark, force=True, log=said.append).status == "published"
    assert any(m.startswith("warning: cannot read the live version's manifest") and "ids may change" in m
               for m in said)  # fmt: skip
    assert _check_published(spark, root, "torn", table) == ["dog", "cat"]  # rebuilt by frequency, as warned

    # without index transforms nothing depends on the live manifest: the run warns and publishes
    _tear_live_manifest(root, "torn")
    plain = small_conf(root, "torn", table, transforms=[])
    said = []
    assert run(plain, spark, log=said.append).status == "published"
    assert any(m.startswith("warning: cannot read the live version's manifest") for m in said)
    ds, got = published_rows(root, "torn")
    assert got == table_rows(spark, table)
