"""Audit E: a map or struct column flattened by a python transform publishes (one left as it is is still
refused, naming it); an empty (or null) partition value list is a conf error naming the key, never "every
partition"; a typo in ``source.where`` is larder's one line on stderr, without PySpark's JSON error record;
``source.partitions: ~`` means the default, like every key with one.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from etl.config import SourceConfig, from_dict, load
from etl.entry import guarded
from etl.job import run
from etl.source import load_source
from loader.errors import ConfigError, SourceError
from tests.conftest import read_all
from tests.spark.conftest import job_conf, quiet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINIMAL = {"name": "shop", "source": {"table": "demo.shopping_products"}}


def flatten_attrs(df):
    """A python transform: the demo table's ``attrs`` (map<string,string>) -> ``attrs_color`` (string)."""
    from pyspark.sql import functions as F

    return df.withColumn("attrs_color", F.col("attrs")["color"]).drop("attrs")


def attrs_to_struct(df):
    """A python transform that leaves ``attrs`` as a struct, a type the cache refuses."""
    from pyspark.sql import functions as F

    return df.withColumn("attrs", F.struct(F.col("attrs")["color"].alias("color")))


# ------------------------------------------------------------------ 1. maps and structs in a python transform


@pytest.mark.slow
def test_a_map_column_flattened_by_a_python_transform_publishes(spark, demo_table, tmp_path):
    source = {"columns": ["product_id", "category", "attrs"], "where": "dt = '2026-11-21'"}
    cfg = job_conf(tmp_path, "flat", source=source,
                   transforms=[{"kind": "python", "function": "tests.spark.test_audit_e:flatten_attrs"},
                               {"kind": "index", "column": "category", "output": "label"}])  # fmt: skip
    result = run(cfg, spark, log=quiet)
    assert result.status == "published"
    table = read_all(loader.open_dataset(tmp_path / "flat"))
    want = {r["product_id"]: r["attrs"]["color"] for r in
            spark.table(demo_table).where("dt = '2026-11-21'").select("product_id", "attrs").collect()}
    assert "attrs" not in table.column_names and table.num_rows == len(want) > 0
    got = dict(zip(table.column("product_id").to_pylist(), table.column("attrs_color").to_pylist(), strict=True))
    assert got == want and set(got.values()) == {"red", "blue", "black"}


@pytest.mark.slow
@pytest.mark.parametrize(("function", "kind"), [
    ("tests.spark.hooks:price_bucket", "map<string,string>"),  # the source's map, left as it is
    ("tests.spark.test_audit_e:attrs_to_struct", "struct<color:string>"),  # made a struct
])  # fmt: skip
def test_a_map_or_struct_left_after_the_python_transforms_is_refused(spark, demo_table, tmp_path, function, kind):
    cfg = job_conf(tmp_path, "left", source={"columns": ["product_id", "price", "attrs"]},
                   transforms=[{"kind": "python", "function": function}])
    message = rf"^after transforms: column 'attrs' has type {re.escape(kind)}: .*flatten it"
    with pytest.raises(SourceError, match=message):
        run(cfg, spark, log=quiet)
    assert not os.path.exists(tmp_path / "left" / "CURRENT")


@pytest.mark.slow
def test_without_a_python_transform_a_map_column_is_still_refused_by_the_source(spark, demo_table, tmp_path):
    cfg = job_conf(tmp_path, "map", source={"columns": ["product_id", "category", "attrs"]})
    message = r"^source demo.shopping_products: column 'attrs' has type map<string,string>"
    with pytest.raises(SourceError, match=message):
        run(cfg, spark, log=quiet)


# ------------------------------------------------------------------ 2. empty or null partition value lists


@pytest.mark.parametrize(("partitions", "overrides", "message"), [
    ({"dt": []}, [], "the list of values is empty"),
    ({"dt": [], "hr": "1"}, [], "the list of values is empty"),  # next to another key: was every dt
    ({"hr": "1"}, ["source.partitions.dt=[]"], "the list of values is empty"),
    ({}, ["source.partitions={dt: [], hr: '1'}"], "the list of values is empty"),
    ({"dt": None}, [], r"no value \(null\)"),
    ({}, ["source.partitions.dt=~"], r"no value \(null\)"),
])  # fmt: skip
def test_an_empty_or_null_partition_value_list_is_refused(partitions, overrides, message):
    raw = {"name": "shop", "source": {"table": "db.t", "partitions": partitions}}
    with pytest.raises(ConfigError, match=rf"^source.partitions.dt: {message}; .*leave the key out to select every dt"):
        from_dict(raw, overrides)


@pytest.mark.slow
def test_the_partition_filter_never_reads_an_empty_list_as_no_filter(spark, demo_table):
    for value in ((), None):  # a SourceConfig built in Python, which validate() never saw
        with pytest.raises(ConfigError, match=r"^source.partitions.dt: (the list of values is empty|no value)"):
            load_source(spark, SourceConfig(table=demo_table, partitions={"dt": value}))


# ------------------------------------------------------------------ 3. a typo in source.where: one line


@pytest.mark.slow
def test_a_typo_in_source_where_is_one_line_on_stderr(tmp_path):
    """A real run through ./spark-submit.sh (one JVM): PySpark 4 logs every analysis error it raises as a
    JSON record with the Java stack trace on stderr; the job's stderr is larder's line alone."""
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "dt": ["a", "b", "c"]}), src / "part-0.parquet")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"name: typo\nsource: {{path: {src}, where: 'dtt > 1'}}\noutput: {{root: {tmp_path / 'cache'}}}\n"
                    f"spark: {{hive: false, metastore_dir: null, warehouse_dir: {tmp_path / 'wh'}, "
                    "conf: {spark.ui.enabled: false}}\n")
    env = {k: v for k, v in os.environ.items() if k != "LARDER_SPARK_VERBOSE"}
    done = subprocess.run([os.path.join(REPO, "spark-submit.sh"), "--master", "local[1]", "jobs/materialize.py",
                           "--conf", str(conf)], cwd=REPO, env={**env, "SPARK_LOCAL_IP": "127.0.0.1"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Using incubator modules")]
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"larder: error: source.where 'dtt > 1' on {src}: [UNRESOLVED_COLUMN"), lines[0]
    assert done.stdout == ""


def test_larder_spark_verbose_keeps_pysparks_error_records(monkeypatch, capsys):
    """The records stay reachable: with LARDER_SPARK_VERBOSE=1 the job leaves PySpark's loggers alone."""
    from pyspark.logger import PySparkLogger

    loggers = [PySparkLogger.getLogger(n) for n in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    before = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)  # PySpark's own level
        monkeypatch.setenv("LARDER_SPARK_VERBOSE", "1")
        assert guarded(lambda: "ok") == 0
        assert all(lg.isEnabledFor(logging.ERROR) for lg in loggers)
        monkeypatch.delenv("LARDER_SPARK_VERBOSE")
        assert guarded(lambda: "ok") == 0
        assert not any(lg.isEnabledFor(logging.ERROR) for lg in loggers)
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)
    assert capsys.readouterr().out == "ok\nok\n"


# ------------------------------------------------------------------ 4. null unsets source.partitions


@pytest.mark.parametrize("overrides", [["source.partitions=~"], ["source.partitions=null"]])
def test_null_unsets_source_partitions(overrides):
    assert from_dict({**MINIMAL, "source": {**MINIMAL["source"], "partitions": {"dt": "x"}}},
                     overrides).source.partitions == {}


def test_null_in_the_conf_file_means_the_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: shop\nsource: {table: a.b, partitions: ~, sample: null}\ntransforms: ~\n"
                    "output: {fill: ~, shuffle: null, block_size: ~}\nspark: {conf: ~, master: ~}\n")
    cfg = load(path)
    assert cfg.source.partitions == {} and cfg.source.sample == 1.0 and cfg.transforms == ()
    assert cfg.output.fill == 0.95 and cfg.output.shuffle is True and cfg.output.block_size is None
    assert cfg.spark.conf == {} and cfg.spark.master is None  # a key that may be None is unset to None
    with pytest.raises(ConfigError, match=r"^name: expected a string, got None$"):  # no default: still required
        from_dict({"name": None, "source": {"table": "a.b"}})
