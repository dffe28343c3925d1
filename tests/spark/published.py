"""Helpers for tests that rerun the job over a changing Hive table: a small conf, and the published
rows read back through :mod:`loader` for comparison with the table itself."""

from __future__ import annotations

import os

import loader
from etl.config import JobConfig, from_dict


def small_conf(root, name: str, table: str, transforms=None, **source) -> JobConfig:
    """A conf over ``table`` (all columns unless ``source`` says otherwise), indexing ``cat`` -> ``label``."""
    if transforms is None:
        transforms = [{"kind": "index", "column": "cat", "output": "label"}]
    return from_dict(
        {
            "name": name,
            "source": {"table": table, **source},
            "transforms": transforms,
            "output": {"root": str(root), "block_size": "256KiB", "keep_versions": 2},
            "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
        }
    )


def live_version(root, name: str) -> str:
    """The name CURRENT holds."""
    with open(os.path.join(str(root), name, "CURRENT")) as f:
        return f.read().strip()


def published_rows(root, name: str) -> tuple[loader.Dataset, list[dict]]:
    """The live version's dataset and every row of it (sorted by ``id``), read from its row groups."""
    ds = loader.open_dataset(os.path.join(str(root), name))
    rows = []
    for info in ds.files:
        for g in range(len(info.row_groups)):
            rows.extend(ds.read_row_group(info, g).to_pylist())
    return ds, sorted(rows, key=lambda r: r["id"])


def table_rows(spark, table: str) -> list[dict]:
    """Every row of a table or view as Spark reads it, sorted by ``id``."""
    return sorted((r.asDict() for r in spark.table(table).collect()), key=lambda r: r["id"])


def assert_labels_match(ds, rows: list[dict], column: str = "cat", output: str = "label") -> None:
    """Every row's id is its value's position in the published vocabulary (null -> -1)."""
    vocab = ds.vocabularies[output]
    assert [vocab[r[output]] if r[output] >= 0 else None for r in rows] == [r[column] for r in rows]
