"""Audit findings on the Spark job: Hive CHAR/VARCHAR columns and relocated partitions under the pyarrow
source read, column names holding dots or backticks, an index output naming another column, and the arrow
writer's bytes-per-row estimate on small blocks.

Each case runs the job once or twice (``etl.job.run`` on the suite's session, as the other Spark tests do).
"""

from __future__ import annotations

import os
import statistics
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from etl import direct
from etl.config import from_dict
from etl.job import run
from etl.source import load_source
from loader.errors import ConfigError

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def conf(root, name, source, transforms=(), **output):
    return from_dict({
        "name": name, "source": source, "transforms": list(transforms),
        "output": {"root": str(root), "block_size": "1MiB", "writer": "arrow", **output},
        "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
    })  # fmt: skip


def publish(cfg, spark) -> tuple[list[str], loader.Dataset, dict]:
    """Run the job; its log, the dataset, and every row read back by ``loader.make_reader``."""
    said: list[str] = []
    run(cfg, spark, force=True, log=said.append)
    ds = loader.open_dataset(os.path.join(cfg.output.root, cfg.name))
    with loader.make_reader(ds, shuffle=False, batch_size=ds.num_rows, strings="object") as reader:
        batch = next(iter(reader))
    return said, ds, batch


def by_id(batch: dict, column: str) -> dict:
    return dict(zip(batch["id"].tolist(), batch[column].tolist(), strict=True))


@pytest.fixture(scope="module")
def char_table(spark, tmp_path_factory) -> str:
    """An external Hive table declaring CHAR(5) and VARCHAR(5) over a Parquet file of unpadded text (written
    by another tool)."""
    ext = tmp_path_factory.mktemp("chars")
    pq.write_table(pa.table({"id": pa.array(range(5), pa.int32()), "c": ["ab", "abcde", None, "", "a"],
                             "v": ["x", "xy", None, "", "xyz"]}), ext / "f.parquet")
    spark.sql("CREATE DATABASE IF NOT EXISTS audit")
    spark.sql("DROP TABLE IF EXISTS audit.chars")
    spark.sql(f"CREATE EXTERNAL TABLE audit.chars (id INT, c CHAR(5), v VARCHAR(5)) STORED AS PARQUET "
              f"LOCATION '{ext}'")
    return "audit.chars"


def test_a_char_column_is_read_through_spark_padded_with_its_labels(spark, char_table, tmp_path):
    cfg = conf(tmp_path, "chars", {"table": char_table, "columns": ["id", "c"]},
               [{"kind": "index", "column": "c", "output": "c_id"}])
    said, ds, batch = publish(cfg, spark)
    assert ds.manifest.extra["source_reader"] == "spark"
    assert any("through Spark: column 'c' is a Hive char(5)" in m for m in said), said
    want = {r["id"]: r["c"] for r in spark.table(char_table).collect()}
    assert want[0] == "ab   " and by_id(batch, "c") == want
    vocab = ds.vocabularies["c_id"]
    labels = by_id(batch, "c_id")
    assert {i: (vocab[k] if k >= 0 else None) for i, k in labels.items()} == want


def test_a_varchar_column_declines_the_pyarrow_read_and_the_other_columns_keep_it(spark, char_table, tmp_path):
    for columns, declined in ((["id", "v"], "column 'v' is a Hive varchar(5)"), (["id"], None)):
        cfg = conf(tmp_path, "varchar", {"table": char_table, "columns": columns})
        df = load_source(spark, cfg.source).df
        plan, why = direct.plan(spark, df, df, cfg, {}, [], 5)
        assert (plan is None and declined in why) if declined else plan is not None, why


@pytest.fixture(scope="module")
def relocated_table(spark, tmp_path_factory) -> str:
    """A partitioned table whose partitions (p='real2', n=2) and (p='real3', n=3) were added with locations
    named after other values, plus a partition whose n is Hive's null partition."""
    base = tmp_path_factory.mktemp("reloc")
    spark.sql("CREATE DATABASE IF NOT EXISTS audit")
    spark.sql("DROP TABLE IF EXISTS audit.reloc")
    spark.sql("CREATE TABLE audit.reloc (id BIGINT, name STRING) PARTITIONED BY (p STRING, n INT) STORED AS PARQUET")
    spark.sql("INSERT INTO audit.reloc PARTITION (p='real1', n=1) VALUES (1, 'a'), (2, 'b')")
    spark.sql("INSERT INTO audit.reloc PARTITION (p='real1', n) SELECT 3, 'z', CAST(NULL AS INT)")
    for (p, n), where, ids in ((("real2", 2), "elsewhere/p=stale/n=7", [10, 11, 12]),
                               (("real3", 3), "p=real1/n=1", [20, 21])):  # fmt: skip
        location = base / where
        location.mkdir(parents=True)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "name": [f"r{i}" for i in ids]}),
                       location / "f.parquet")
        spark.sql(f"ALTER TABLE audit.reloc ADD PARTITION (p='{p}', n={n}) LOCATION '{location}'")
    return "audit.reloc"


def test_partition_values_come_from_the_metastore_not_the_directory_names(spark, relocated_table, tmp_path):
    cfg = conf(tmp_path, "reloc", {"table": relocated_table, "columns": ["id", "name", "p", "n"]},
               [{"kind": "index", "column": "p", "output": "p_id"}])
    said, ds, batch = publish(cfg, spark)
    assert ds.manifest.extra["source_reader"] == "pyarrow", said
    want = {r["id"]: (r["p"], r["n"]) for r in spark.table(relocated_table).collect()}
    assert want[10] == ("real2", 2) and want[20] == ("real3", 3) and want[3] == ("real1", None)
    vocab = ds.vocabularies["p_id"]
    rows = pa.concat_tables(pq.read_table(ds.file_path(f)) for f in ds.files).to_pylist()
    assert {r["id"]: (r["p"], r["n"]) for r in rows} == want
    assert all(vocab[r["p_id"]] == r["p"] for r in rows)
    assert by_id(batch, "p") == {i: w[0] for i, w in want.items()}  # and the reader hands them over


DOTTED = ["id", "lab.el", "x`y"]


@pytest.fixture(scope="module")
def dotted_source(tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("dotted") / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3, 4, 5], "lab.el": ["a", "b", "a", None, "b"],
                             "x`y": ["p", "q", "p", "p", "q"], "lab": [9, 9, 9, 9, 9]}), src / "f.parquet")
    return str(src)


@pytest.mark.parametrize(("case", "where", "writer", "reader"), [
    ("direct", None, "arrow", "pyarrow"),
    ("spark-read", "id > 1", "arrow", "spark"),  # a row filter: Spark's scan, then mapInArrow
    ("parquet-mr", "id > 1", "spark", "spark"),
])  # fmt: skip
def test_columns_named_with_dots_and_backticks_are_selected_indexed_and_published(
        spark, dotted_source, tmp_path, case, where, writer, reader):
    source = {"path": dotted_source, "columns": DOTTED, **({"where": where} if where else {})}
    cfg = conf(tmp_path, case, source, [{"kind": "index", "column": "lab.el", "output": "lab_id"},
                                        {"kind": "index", "column": "x`y"}], writer=writer)
    said, ds, batch = publish(cfg, spark)
    assert ds.manifest.extra["source_reader"] == reader, said
    assert ds.columns == DOTTED + ["lab_id"]
    want = {1: ("a", "p"), 2: ("b", "q"), 3: ("a", "p"), 4: (None, "p"), 5: ("b", "q")}
    want = {i: v for i, v in want.items() if where is None or i > 1}
    labels, xy = by_id(batch, "lab.el"), by_id(batch, "x`y")
    assert labels == {i: v[0] for i, v in want.items()}
    ids, xy_vocab = by_id(batch, "lab_id"), ds.vocabularies["x`y"]
    assert {i: (ds.vocabularies["lab_id"][k] if k >= 0 else None) for i, k in ids.items()} == labels
    assert {i: xy_vocab[k] for i, k in xy.items()} == {i: v[1] for i, v in want.items()}


def test_an_index_output_naming_another_listed_column_is_a_conf_error_with_exit_2(tmp_path, capsys):
    sys.path.insert(0, REPO)
    from jobs.materialize import main

    source = {"path": "/nowhere", "columns": ["id", "cat", "score"]}
    with pytest.raises(ConfigError, match=r"transforms\.0\.output: 'score' would replace the column 'score' "
                                          r"\(listed in source\.columns\) with the ids of 'cat'"):
        conf(tmp_path, "clobber", source, [{"kind": "index", "column": "cat", "output": "score"}])
    with pytest.raises(ConfigError, match=r"transforms\.1\.output: 'lab' would replace the column 'lab' "
                                          r"\(the output of transforms\.0\) with the ids of 'cat'"):
        conf(tmp_path, "twice", {"path": "/nowhere"}, [{"kind": "index", "column": "name", "output": "lab"},
                                                       {"kind": "index", "column": "cat", "output": "lab"}])
    for allowed in ({"kind": "index", "column": "cat"}, {"kind": "index", "column": "cat", "output": "cat"},
                    {"kind": "index", "column": "cat", "output": "label"}):
        conf(tmp_path, "fine", source, [allowed])
    path = tmp_path / "clobber.yaml"
    path.write_text(f"name: clobber\nsource: {{path: /nowhere, columns: [id, cat, score]}}\n"
                    f"transforms: [{{kind: index, column: cat, output: score}}]\noutput: {{root: {tmp_path}}}\n")
    assert main(["--conf", str(path)]) == 2
    assert "larder: error: transforms.0.output: 'score' would replace the column 'score'" in capsys.readouterr().err


def test_an_index_output_naming_a_column_of_the_source_fails_before_any_write(spark, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "cat": ["a", "b", "a"], "score": [0.5, 0.25, 0.125]}),
                   src / "f.parquet")
    cfg = conf(tmp_path, "clobber", {"path": str(src)}, [{"kind": "index", "column": "cat", "output": "score"}])
    with pytest.raises(ConfigError, match=rf"transforms\.0\.output: 'score' would replace the column 'score' of "
                                          rf"the selection from {src} with the ids of 'cat'"):
        run(cfg, spark, force=True, log=lambda _m: None)
    assert not os.path.exists(tmp_path / "clobber" / "CURRENT")


def test_the_arrow_writers_first_estimate_matches_the_bytes_per_row_of_its_small_block_files(spark, tmp_path):
    """Rows whose int lists get a dictionary: one row group of the whole 2,000-row sample pays for its
    dictionary once, block-sized groups once per ~170 rows (the estimate was 20% low and most files were
    cut). The first estimate must match what the files hold, so they come out one group each."""
    rng = np.random.default_rng(3)
    n = 6000
    lengths = rng.integers(20, 60, n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    table = pa.table({
        "id": np.arange(n),
        "payload": pa.array([rng.bytes(int(k)) for k in rng.integers(100, 300, n)], pa.binary()),
        "vec": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 5000, int(lengths.sum())), pa.int32())),
    })  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    for k in range(2):
        pq.write_table(table.slice(k * n // 2, n // 2), src / f"part-{k}.parquet")
    said, ds, _ = publish(conf(tmp_path, "small", {"path": str(src)}, block_size="64KiB"), spark)
    first = next(a for a in ds.manifest.extra["sizing"]["attempts"] if a.get("attempt") == 1)
    rows_per_file = max(f.num_rows for f in ds.files)
    full = [f for f in ds.files if f.num_rows == rows_per_file]  # all but the remainder
    measured = statistics.median(sum(g.compressed_bytes for g in f.row_groups) / f.num_rows for f in full)
    assert len(full) >= 20 and first["bytes_per_row"] == pytest.approx(measured, rel=0.02), (first, measured, said)
    cut = [f for f in ds.files if len(f.row_groups) > 1]
    assert len(cut) <= 0.1 * len(ds.files) and ds.manifest.extra["sizing"]["attempts"][-1]["attempt"] == 1, said
