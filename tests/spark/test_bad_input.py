"""Bad input: a clear, typed error naming what is at fault, and nothing lost.

Every case runs against a dataset that already has a live version; afterwards CURRENT still names it, no
version was added or removed, no staging directory is left, and every row of the live version reads back.
"""

from __future__ import annotations

import os

import pytest

import loader
from etl.job import run
from jobs.materialize import main as materialize_main
from loader.errors import ConfigError, EmptyDatasetError, PublishError, SourceError, TransformError
from tests.spark.conftest import job_conf, quiet

pytestmark = pytest.mark.slow
NAME = "shop"


def snapshot(root) -> tuple[str, list[str]]:
    base = os.path.join(root, NAME)
    current = open(os.path.join(base, "CURRENT")).read().strip()
    return current, sorted(os.listdir(base))


def assert_nothing_lost(root, before) -> None:
    assert snapshot(root) == before  # same CURRENT, same versions, no staging or owner files left
    ds = loader.open_dataset(os.path.join(root, NAME))
    rows = sum(
        ds.read_row_group(f, g, columns=["product_id"]).num_rows for f in ds.files for g in range(len(f.row_groups))
    )
    assert rows == ds.num_rows > 0


@pytest.fixture(scope="module")
def live(spark, demo_table, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad-input"))
    run(job_conf(root, NAME, source={"where": "dt = '2026-11-21'"}), spark, log=quiet)
    return root


BAD_SOURCES = [
    ("source", {"table": "demo.no_such_table"}, SourceError, r"'demo.no_such_table' does not exist"),
    ("source", {"table": "demo.shoping_products"}, SourceError, r"does not exist; did you mean 'shopping_products'"),
    ("source", {"table": "nodb.products"}, SourceError, r"database 'nodb' does not exist"),
    ("source", {"columns": ["product_id", "titel"]}, SourceError, r"no column 'titel'; did you mean 'title'"),
    ("source", {"columns": ["product_id", "attrs"]}, SourceError, r"column 'attrs' has type map<string,string>"),
    ("source", {"where": "dtt = '2026-11-21'"}, SourceError, r"source.where .*dtt"),
    ("source", {"where": "dt = "}, SourceError, r"source.where"),
    ("source", {"partitions": {"dt": "1999-01-01"}}, SourceError, r"has no partition dt=1999-01-01"),
    (
        "source",
        {"partitions": {"dtt": "2026-11-21"}},
        SourceError,
        r"'dtt' is not a partition column.*did you mean 'dt'",
    ),
    (
        "source",
        {"partitions": {"day": "2026-11-21"}},
        SourceError,
        r"'day' is not a partition column.*partition columns: dt",
    ),
    ("source", {"where": "dt = '1999-01-01'"}, EmptyDatasetError, r"selects no rows; nothing published"),
    ("source", {"where": "price < 0"}, EmptyDatasetError, r"demo.shopping_products with filter price < 0"),
]
BAD_TRANSFORMS = [
    ("transforms", [{"kind": "index", "column": "price"}], ConfigError, r"transforms.0.column: 'price' is int"),
    ("transforms", [{"kind": "index", "column": "colour"}], ConfigError, r"no column 'colour' to index"),
    ("transforms", [{"kind": "python", "function": "tests.spark.nope:f"}], ConfigError, r"cannot import module"),
    (
        "transforms",
        [{"kind": "python", "function": "tests.spark.hooks:explode"}],
        TransformError,
        r"explode.*boom in user code",
    ),
    ("transforms", [{"kind": "python", "function": "tests.spark.hooks:not_a_frame"}], TransformError, r"returned list"),
    (
        "transforms",
        [{"kind": "python", "function": "tests.spark.hooks:add_map"}],
        SourceError,
        r"column 'm' has type map",
    ),
]


@pytest.mark.parametrize(("section", "value", "error", "message"), BAD_SOURCES + BAD_TRANSFORMS)
def test_bad_input_is_refused(spark, live, section, value, error, message):
    before = snapshot(live)
    with pytest.raises(error, match=message):
        run(job_conf(live, NAME, **{section: value}), spark, log=quiet, force=True)
    assert_nothing_lost(live, before)


def test_missing_path_source(spark, live, tmp_path):
    before = snapshot(live)
    cfg = job_conf(live, NAME, source={"table": None, "path": str(tmp_path / "nope"), "columns": None})
    with pytest.raises(SourceError, match=r"source.path .*nope"):
        run(cfg, spark, log=quiet)
    assert_nothing_lost(live, before)


def test_vocabulary_file_keeps_ids(spark, live, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("완구>블록>레고\n없는>카테고리\n")
    cfg = job_conf(tmp_path, "vocab", transforms=[{"kind": "index", "column": "category", "vocabulary": str(vocab)}])
    run(cfg, spark, log=quiet)
    ds = loader.open_dataset(tmp_path / "vocab")
    assert ds.vocabularies["category"][:2] == ["완구>블록>레고", "없는>카테고리"]
    assert ds.schema.field("category").type == "int32"
    (tmp_path / "dupe.txt").write_text("a\na\n")
    bad = job_conf(
        tmp_path,
        "vocab",
        transforms=[{"kind": "index", "column": "category", "vocabulary": str(tmp_path / "dupe.txt")}],
    )
    with pytest.raises(ConfigError, match=r"transforms.0.vocabulary: .*lists a value twice"):
        run(bad, spark, log=quiet, force=True)


def test_destination_not_writable(spark, live, tmp_path):
    before = snapshot(live)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PublishError, match=r"cannot write to .*a-file"):
        run(job_conf(blocker / "cache", NAME), spark, log=quiet)
    assert_nothing_lost(live, before)


def test_misspelled_conf_key_exits_2_with_one_line(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("name: shop\nsource: {table: demo.shopping_products}\noutput: {root: ./x, blocksize: 8MiB}\n")
    assert materialize_main(["--conf", str(conf)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "larder: error: unknown key 'output.blocksize'; did you mean 'output.block_size'?"
    conf.write_text("name: shop\nsource: {table: demo.shopping_products}\n")
    assert materialize_main(["--conf", str(conf), "--set", "output.fill=7"]) == 2
    assert capsys.readouterr().err.startswith("larder: error: output.fill: must be in [0.5, 1.0], got 7")
