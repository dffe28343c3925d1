"""Audit C findings on Parquet path sources (``source.path``):

* a partition column (``k=x/`` directories) that the files also hold: Spark reads the directory's value, so
  the cache must too (the pyarrow read took the files' column);
* a partition filter in ``source.where``: the fingerprint and the after-write check cover the selected
  partitions only (``inputFiles()`` of a path lists every file under it);
* a corrupt data page in the first source file: a :class:`SourceError` naming the file, exit 1;
* empty or blank string keys (``source.path: ''``): a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import direct, fingerprint
from etl.config import from_dict
from etl.entry import EXIT_FAILED, guarded
from etl.failures import as_larder_error
from etl.job import run
from etl.source import load_source
from loader.errors import ConfigError, SourceError
from tests.spark.published import live_version, published_rows


def _conf(root, name: str, path: str, transforms=(), **source):
    return from_dict({
        "name": name,
        "source": {"path": path, **source},
        "transforms": list(transforms),
        "output": {"root": str(root), "block_size": "64KiB", "keep_versions": 2, "writer": "arrow"},
        "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
    })  # fmt: skip


def _write(path: str, ids, cats, **more) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(list(ids), pa.int64()), "cat": cats, **more}), path)


@pytest.mark.slow
def test_a_partition_column_the_files_also_hold_takes_the_directory_values(spark, tmp_path):
    """``k=x/`` files holding ``k = 'stale-x'``: Spark reads x, and so does the cache (also through an index
    transform on ``k``, which used to fail with a false "the source changed while the job ran")."""
    base = str(tmp_path / "src")
    for d in ("x", "y"):
        start = 0 if d == "x" else 50
        _write(f"{base}/k={d}/p.parquet", range(start, start + 50), [f"c{i % 3}" for i in range(50)],
               k=pa.array([f"stale-{d}"] * 50))
    assert sorted({r.k for r in spark.read.parquet(base).collect()}) == ["x", "y"]  # Spark: the directories

    cfg = _conf(tmp_path, "overlap", base, [{"kind": "index", "column": "k", "output": "label"}])
    said: list[str] = []
    run(cfg, spark, force=True, log=said.append)
    ds, rows = published_rows(tmp_path, "overlap")
    assert ds.vocabularies["label"] == ["x", "y"]
    want = sorted((r.asDict() for r in spark.read.parquet(base).collect()), key=lambda r: r["id"])
    assert [{c: r[c] for c in ("id", "cat", "k")} for r in rows] == want
    assert [ds.vocabularies["label"][r["label"]] for r in rows] == [r["k"] for r in rows]
    assert any("through Spark" in m and "'k'" in m for m in said), said

    source = load_source(spark, cfg.source)
    assert source.partition_columns == ["k"]
    plan, why = direct.plan(spark, source.df, source.df, cfg, {"label": ["x", "y"]}, source.partition_columns, 100)
    assert plan is None and "'k'" in why and "partition column" in why, why


@pytest.mark.slow
def test_a_path_partition_filter_fingerprints_and_checks_only_the_selected_partitions(spark, tmp_path):
    base = str(tmp_path / "src")

    def part(dt: str, start: int, rows: int = 100) -> str:
        path = f"{base}/dt={dt}/part-0.parquet"
        _write(path, range(start, start + rows), [f"c{i % 3}" for i in range(rows)])
        return path

    selected, other = part("2024-01-01", 0), part("2024-01-02", 100)
    cfg = _conf(tmp_path, "pruned", base, where="dt = '2024-01-01'", columns=["id", "cat"])
    said: list[str] = []
    first = run(cfg, spark, log=said.append)
    ds, rows = published_rows(tmp_path, "pruned")
    assert first.status == "published" and [r["id"] for r in rows] == list(range(100))
    snapshot = ds.manifest.source["snapshot"]
    assert snapshot["partitions"] == ["dt=2024-01-01"] and snapshot["files"] == 1, snapshot
    assert snapshot["bytes"] == os.path.getsize(selected)
    assert ds.manifest.extra["source_reader"] == "pyarrow", said  # every row of the selected file

    part("2024-01-03", 200)  # a new partition the filter leaves out: the selection is unchanged
    assert run(cfg, spark, log=said.append).status == "up to date"

    def rewrite(path: str, start: int):
        def log(message: str, done: list = []) -> None:  # noqa: B006 - once per hook
            if "input files" in message and not done:  # after the input files' statuses were taken
                part(path.rsplit("/", 2)[-2].split("=", 1)[1], start)
                done.append(message)
        return log

    again = run(cfg, spark, force=True, log=rewrite(other, 500))  # an unselected partition rewritten meanwhile
    assert again.status == "published" and again.version != first.version

    with pytest.raises(SourceError, match="changed while the job ran: .*dt=2024-01-01/part-0.parquet"):
        run(cfg, spark, force=True, log=rewrite(selected, 1000))  # a selected one still fails the job
    assert live_version(tmp_path, "pruned") == again.version
    source = load_source(spark, cfg.source)
    assert [f.rsplit("/", 2)[-2] for f in fingerprint.selection_files(source.df)] == ["dt=2024-01-01"]


@pytest.mark.slow
def test_a_corrupt_page_in_the_first_source_file_is_a_source_error_naming_it(spark, tmp_path, capsys):
    base = str(tmp_path / "src")
    path = f"{base}/a.parquet"
    _write(path, range(100), [f"c{i % 3}" for i in range(100)])
    data = bytearray(open(path, "rb").read())
    data[10:60] = b"\xff" * 50  # the first data page's header; the footer is intact
    with open(path, "wb") as f:
        f.write(bytes(data))
    cfg = _conf(tmp_path, "corrupt", base)
    with pytest.raises(SourceError, match="a.parquet"):
        run(cfg, spark, force=True, log=lambda _m: None)
    capsys.readouterr()
    assert guarded(lambda: run(cfg, spark, force=True, log=lambda _m: None).summary()) == EXIT_FAILED
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("larder: error: ") and path in line, line
    assert not os.path.exists(tmp_path / "corrupt" / "CURRENT")


@pytest.mark.slow
def test_a_corrupt_page_met_by_the_pyarrow_tasks_names_the_file(spark, tmp_path):
    """A file corrupted after planning fails the stage-1 tasks; the typed error names it (it named only the
    source directory)."""
    base = str(tmp_path / "src")
    for name in ("a", "b"):
        _write(f"{base}/{name}.parquet", range(100), [f"c{i % 3}" for i in range(100)])
    df = spark.read.parquet(base)
    plan, why = direct.plan(spark, df, df, _conf(tmp_path, "late", base), {}, [], 200)
    assert plan is not None, why
    victim = f"{base}/b.parquet"
    data = bytearray(open(victim, "rb").read())
    data[10:60] = b"\xff" * 50
    with open(victim, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(Exception) as raised:
        direct.spill(spark, plan, str(tmp_path / "slices"), 1000, 0)
    error = as_larder_error(raised.value, base)
    assert isinstance(error, SourceError) and f"{victim} row group 0" in str(error), error


def _raw(**sections) -> dict:
    raw = {
        "name": "ds",
        "source": {"path": "/data/src"},
        "transforms": [{"kind": "index", "column": "cat"}],
        "output": {"root": "/data/cache"},
        "spark": {},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw[key], dict) else value
    return raw


@pytest.mark.parametrize("blank", ["", "  ", "\t"])
@pytest.mark.parametrize(
    ("key", "sections"),
    [
        ("source.path", lambda v: {"source": {"path": v}}),
        ("source.table", lambda v: {"source": {"path": None, "table": v}}),
        ("source.where", lambda v: {"source": {"where": v}}),
        ("source.columns.1", lambda v: {"source": {"columns": ["id", v]}}),
        ("output.root", lambda v: {"output": {"root": v}}),
        ("name", lambda v: {"name": v}),
        ("transforms.0.column", lambda v: {"transforms": [{"kind": "index", "column": v}]}),
        ("transforms.0.output", lambda v: {"transforms": [{"kind": "index", "column": "cat", "output": v}]}),
        ("transforms.0.vocabulary", lambda v: {"transforms": [{"kind": "index", "column": "cat", "vocabulary": v}]}),
        ("spark.master", lambda v: {"spark": {"master": v}}),
        ("spark.warehouse_dir", lambda v: {"spark": {"warehouse_dir": v}}),
        ("spark.metastore_dir", lambda v: {"spark": {"metastore_dir": v}}),
        ("spark.app_name", lambda v: {"spark": {"app_name": v}}),
    ],
)
def test_an_empty_or_blank_string_key_is_a_config_error_naming_it(key, sections, blank):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: "):
        from_dict(_raw(**sections(blank)))


def test_an_empty_source_path_given_with_set_names_the_key():
    with pytest.raises(ConfigError, match=r"^source[.]path: .*empty"):
        from_dict(_raw(), ["source.path="])
    assert from_dict(_raw(), ["source.where=~"]).source.where is None  # unsetting stays possible
