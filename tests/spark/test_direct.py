"""The pyarrow source read (etl/direct.py): taken only when the selection is every row of local Parquet files;
then the same rows, values, vocabulary and file schema as Spark's read, exact file sizes, reproducible files;
every case it cannot serve falls back to Spark's read, and a source file changed under it is an error."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from etl import direct
from etl.config import from_dict
from etl.job import run
from loader.errors import ConfigError, SourceError

from .conftest import DEMO_COLUMNS, DEMO_TABLE, job_conf, same_value, write_typed_source

pytestmark = pytest.mark.slow


def _published(root, name) -> tuple[pa.Table, loader.Dataset]:
    ds = loader.open_dataset(os.path.join(str(root), name))
    table = pa.concat_tables([pq.read_table(ds.file_path(f)) for f in ds.files])
    return table, ds


def _run(cfg, spark) -> list[str]:
    said: list[str] = []
    run(cfg, spark, force=True, log=said.append)
    return said


def _days(spark) -> list[str]:
    return sorted(r[0] for r in spark.table(DEMO_TABLE).select("dt").distinct().collect())


def test_the_demo_table_is_read_with_pyarrow_and_matches_spark(spark, demo_table, tmp_path):
    """A partition filter (pruned by Spark) keeps the pyarrow read; rows, values by key, vocabulary and the
    files' Arrow schema equal those of the same job reading through Spark, and of the table itself."""
    day = _days(spark)[1]
    where = {"where": f"dt >= '{day}'"}
    tables, manifests = {}, {}
    for reader in ("auto", "spark"):
        said = _run(job_conf(tmp_path, name=reader, source={**where, "reader": reader},
                             output={"writer": "arrow"}), spark)
        tables[reader], ds = _published(tmp_path, reader)
        manifests[reader] = ds.manifest
        assert ds.manifest.extra["source_reader"] == ("pyarrow" if reader == "auto" else "spark"), said
        sizes = sorted((f.num_rows for f in ds.files), reverse=True)
        assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]  # n-1 files of exactly rows_per_file
    assert any("through Spark: source.reader is spark" in m for m in said), said  # it says why
    fast, slow = tables["auto"], tables["spark"]
    assert fast.schema == slow.schema
    assert manifests["auto"].vocabularies == manifests["spark"].vocabularies
    assert fast.sort_by("product_id").equals(slow.sort_by("product_id"))
    want = spark.table(DEMO_TABLE).where(where["where"]).select(*DEMO_COLUMNS).orderBy("product_id").collect()
    got = fast.sort_by("product_id").to_pylist()
    vocab = manifests["auto"].vocabularies["label"]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert vocab[g["label"]] == w["category"]
        for c in ("product_id", "title", "tokens", "wordpiece_ids", "price"):
            assert g[c] == w[c], c
        assert bytes(g["image"]) == bytes(w["image"])


def test_a_selected_partition_column_comes_from_the_directories(spark, demo_table, tmp_path):
    cfg = job_conf(tmp_path, name="dt", source={"columns": ["product_id", "dt", "price"]}, transforms=[],
                   output={"writer": "arrow"})
    _run(cfg, spark)
    table, ds = _published(tmp_path, "dt")
    assert ds.manifest.extra["source_reader"] == "pyarrow"
    want = {r["product_id"]: r["dt"] for r in spark.table(DEMO_TABLE).select("product_id", "dt").collect()}
    got = dict(zip(table.column("product_id").to_pylist(), table.column("dt").to_pylist(), strict=True))
    assert got == want and len(set(got.values())) == len(_days(spark))


def test_a_where_that_drops_no_row_still_reads_with_pyarrow(spark, demo_table, tmp_path):
    _run(job_conf(tmp_path, name="all", source={"where": "price >= 0"}, output={"writer": "arrow"}), spark)
    assert _published(tmp_path, "all")[1].manifest.extra["source_reader"] == "pyarrow"


@pytest.mark.parametrize(
    ("case", "sections", "reason"),
    [
        ("rowfilter", {"source": {"where": "price > 5000"}}, "row filter or sample"),
        ("sample", {"source": {"sample": 0.5}}, "row filter or sample"),
        ("python", {"transforms": [{"kind": "python", "function": "tests.spark.hooks:price_bucket"}]}, "python"),
        ("forced", {"source": {"reader": "spark"}}, "source.reader"),
        ("unshuffled", {"output": {"shuffle": False}}, "output.shuffle is false"),
    ],
)
def test_what_pyarrow_cannot_serve_is_read_through_spark(spark, demo_table, tmp_path, case, sections, reason):
    sections = {**sections, "output": {**sections.get("output", {}), "writer": "arrow"}}
    said = _run(job_conf(tmp_path, name=case, **sections), spark)
    table, ds = _published(tmp_path, case)
    assert ds.manifest.extra["source_reader"] == "spark"
    assert any("through Spark" in m and reason in m for m in said), said
    where = sections["source"].get("where") if "source" in sections else None
    if case != "sample":
        want = spark.table(DEMO_TABLE).where(where or "true").count()
        assert table.num_rows == want == len(set(table.column("product_id").to_pylist()))


def _path_conf(source, root, name, **sourcekeys):
    return from_dict({
        "name": name,
        "source": {"path": source, "format": "parquet", **sourcekeys},
        "output": {"root": str(root), "block_size": "64KiB", "writer": "arrow"},
        "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
    })  # fmt: skip


def test_every_non_timestamp_type_reads_the_same_with_pyarrow(spark, tmp_path):
    """Atomic types, decimals, dates, arrays and nulls: the pyarrow read publishes the files Spark's read
    publishes (same Arrow schema, same values by key); a timestamp column sends the job through Spark."""
    source = str(tmp_path / "src" / "typed")
    write_typed_source(spark, source, timestamps=False)
    tables = {}
    for reader in ("auto", "spark"):
        _run(_path_conf(source, tmp_path, reader, reader=reader), spark)
        tables[reader], ds = _published(tmp_path, reader)
        assert ds.manifest.extra["source_reader"] == ("pyarrow" if reader == "auto" else "spark")
    assert tables["auto"].schema == tables["spark"].schema
    assert tables["auto"].sort_by("id").equals(tables["spark"].sort_by("id"))
    want = [r.asDict() for r in spark.read.parquet(source).orderBy("id").collect()]
    got = tables["auto"].sort_by("id").to_pylist()
    assert len(got) == len(want) == 3000
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            assert same_value(g[k], v), (k, g[k], v)

    stamped = str(tmp_path / "src" / "stamped")
    write_typed_source(spark, stamped)
    said = _run(_path_conf(stamped, tmp_path, "stamped"), spark)
    assert _published(tmp_path, "stamped")[1].manifest.extra["source_reader"] == "spark"
    assert any("timestamp column 'ts'" in m for m in said), said


def test_runs_over_the_same_source_publish_the_same_files(spark, demo_table, tmp_path):
    """The layout and the in-file order are seeded functions of the source order: a rerun rewrites
    byte-identical files (so a retried task rewrites its slices exactly too)."""
    checksums = []
    for name in ("one", "two"):  # two datasets: neither run reuses the other's measured bytes per row
        _run(job_conf(tmp_path, name=name, output={"writer": "arrow"}), spark)
        ds = _published(tmp_path, name)[1]
        assert ds.manifest.extra["source_reader"] == "pyarrow"
        checksums.append([(f.path, f.checksum) for f in ds.files])
    assert checksums[0] == checksums[1] and len(checksums[0]) > 1


def test_a_source_file_changed_after_planning_fails_naming_it(spark, tmp_path):
    source = str(tmp_path / "src" / "changing")
    spark.range(0, 4000, 1, 2).selectExpr("id", "cast(id AS string) AS s").write.parquet(source)
    cfg = _path_conf(source, tmp_path, "changing")
    df = spark.read.parquet(source)
    plan, why = direct.plan(spark, df, df, cfg, {}, [], 4000)
    assert plan is not None, why
    victim = plan.pieces[0].path
    pq.write_table(pq.read_table(victim).slice(0, 10), victim)  # same name, fewer rows
    with pytest.raises(SourceError, match=f"changed while the job ran: .*{os.path.basename(victim)}.*footer said"):
        direct.spill(spark, plan, str(tmp_path / "slices"), 1000, 0)


def test_a_missing_column_or_another_type_in_a_file_is_read_through_spark(spark, tmp_path):
    """A file whose column type differs from the table's (schema evolution) is left to Spark's reader."""
    source = str(tmp_path / "src" / "evolved")
    os.makedirs(source)
    pq.write_table(pa.table({"id": pa.array(range(100), pa.int64()), "v": pa.array(range(100), pa.int64())}),
                   os.path.join(source, "a.parquet"))
    pq.write_table(pa.table({"id": pa.array(range(100, 200), pa.int64()), "v": pa.array(range(100), pa.int32())}),
                   os.path.join(source, "b.parquet"))
    df = spark.read.schema("id long, v long").parquet(source)
    plan, why = direct.plan(spark, df, df, _path_conf(source, tmp_path, "evolved"), {}, [], 200)
    assert plan is None and "column 'v'" in why


def test_an_unknown_source_reader_names_the_key():
    with pytest.raises(ConfigError, match="source.reader.*'pyarrow' is not one of auto, spark"):
        _path_conf("/x", "/y", "n", reader="pyarrow")


@pytest.mark.parametrize("sizes", [[5], [1, 1, 1], [10, 1, 1, 1, 10, 3], list(range(1, 40))])
@pytest.mark.parametrize("parallelism", [1, 2, 8])
def test_tasks_are_consecutive_runs_covering_every_piece(sizes, parallelism):
    pieces = tuple(direct.Piece(f"/f{i}", 0, n, int(sum(sizes[:i])), 100) for i, n in enumerate(sizes))
    plan = direct.DirectPlan(pieces, ("a",), {}, ("a",), (), pa.schema([("a", pa.int64())]), sum(sizes))
    runs = plan.tasks(parallelism)
    assert [p for run_ in runs for p in run_] == list(pieces)
    want = min(len(pieces), 2 * parallelism)
    assert all(runs) and len(runs) <= want
    share = sum(sizes) / want
    for run_ in runs:  # a run holds one piece, or about a share of the rows (one piece past it at most)
        assert len(run_) == 1 or sum(p.rows for p in run_[:-1]) <= share + 1e-9, run_
