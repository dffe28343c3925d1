"""Decorrelation: on the demo table (clustered by dt, and by category inside a day), every row group of
the published cache holds each day and category in about its share of the whole selection.

Tolerance: for a row group of n rows and a value with overall share p, |share - p| <= 4·sqrt(p(1-p)/n)
+ 1/n — four standard deviations of a random sample of n rows (the seeded permutation spreads runs
more evenly than that). With ``output.shuffle: false`` the row groups are runs of the source order and
the same check must fail.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

import loader
from etl.job import run
from tests.spark.conftest import job_conf

pytestmark = pytest.mark.slow


def worst_excess(ds: loader.Dataset, column: str) -> float:
    """Largest |share - p| / tolerance over all (row group, value); <= 1 means within tolerance."""
    groups = [ds.read_row_group(f, g, columns=[column])[column].to_pylist() for f in ds.files
              for g in range(len(f.row_groups))]  # fmt: skip
    overall = Counter(v for g in groups for v in g)
    total = sum(overall.values())
    worst = 0.0
    for values in groups:
        n, counts = len(values), Counter(values)
        for value, c in overall.items():
            p = c / total
            tolerance = 4 * math.sqrt(p * (1 - p) / n) + 1 / n
            worst = max(worst, abs(counts.get(value, 0) / n - p) / tolerance)
    return worst


@pytest.fixture(scope="module")
def caches(spark, demo_table, tmp_path_factory):
    root = tmp_path_factory.mktemp("decorrelate")
    out = {}
    for shuffle in (True, False):
        cfg = job_conf(
            root,
            name=f"shuffle_{shuffle}",
            source={"columns": ["product_id", "category", "dt", "image"]},
            transforms=[],
            output={"shuffle": shuffle, "seed": 11, "block_size": "128KiB"},
        )
        run(cfg, spark, log=lambda _m: None)
        out[shuffle] = loader.open_dataset(root / f"shuffle_{shuffle}")
    return out


@pytest.mark.parametrize("column", ["category", "dt"])
def test_shuffled_row_groups_are_samples_of_the_selection(caches, column):
    ds = caches[True]
    assert ds.num_row_groups >= 8
    assert ds.manifest.extra["shuffle"]["enabled"] is True and ds.manifest.extra["shuffle"]["seed"] == 11
    assert worst_excess(ds, column) <= 1.0


@pytest.mark.parametrize("column", ["category", "dt"])
def test_unshuffled_row_groups_keep_source_runs(caches, column):
    assert caches[False].num_row_groups >= 8
    assert worst_excess(caches[False], column) > 1.0


def test_unshuffled_keeps_source_order(spark, demo_table, caches):
    ds = caches[False]
    ids = [i for f in ds.files for g in range(len(f.row_groups))
           for i in ds.read_row_group(f, g, columns=["product_id"])["product_id"].to_pylist()]  # fmt: skip
    source = [r[0] for r in spark.table(demo_table).select("product_id").collect()]
    assert ids == source
