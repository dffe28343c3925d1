"""The prepare job end to end: validate, fingerprint, transform, size, write to staging, publish.

Order matters for the "nothing lost" rule: everything that can be checked cheaply (conf, table,
partitions, columns, types, filter, emptiness, destination) is checked before a staging directory
exists; the data is written into ``_staging-<id>`` and only :meth:`loader.publish.Staging.commit` makes
it live, so a failed or killed run leaves the previous version live (the next run removes its staging
directory).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from loader import fs as lfs
from loader.claims import clean_stale_staging
from loader.errors import ConfigError, EmptyDatasetError, LarderError, PublishError, SourceError
from loader.publish import begin_staging

from . import direct
from .config import DEFAULT_BLOCK_SIZE, JobConfig, check_page_size, format_size
from .failures import as_larder_error
from .fingerprint import changed_inputs, input_statuses, selection_files, source_fingerprint
from .layout import LAYOUT_SETTINGS, partition_counts, scan_counts
from .prior import read_live
from .sizing import PriorSizing, SizedWriter, destination_block_size, temporary_conf
from .source import check_types, load_source
from .transforms import apply_transforms, base_vocabularies, check_transforms, precountable_columns

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        status: ``"published"`` or ``"up to date"``.
        dataset_dir: The dataset directory (URL or local path).
        version: The live version after the run.
        rows: Rows in the live version.
        fill: Row-group fill statistics (published runs).
        seconds: Wall time of the run.
    """

    status: str
    dataset_dir: str
    version: str
    rows: int
    fill: dict = field(default_factory=dict)
    files: int = 0
    block_size: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """The one-paragraph summary the job prints."""
        if self.status == "up to date":
            return f"larder: {self.dataset_dir} is up to date (version {self.version}, {self.rows} rows)"
        f = self.fill
        return (
            f"larder: published {self.dataset_dir}/{self.version}: {self.rows} rows in {self.files} files, "
            f"{f.get('row_groups')} row groups; fill of {format_size(self.block_size)} block "
            f"min {f.get('min', 0):.3f} / median {f.get('median', 0):.3f} / max {f.get('max', 0):.3f}; "
            f"{self.seconds:.1f}s"
        )


def _stderr(message: str) -> None:
    print(f"larder: {message}", file=sys.stderr, flush=True)


def hadoop_uri(root: str, root_path: str, path: str) -> str:
    """The Hadoop URI of ``path`` (a path on the loader filesystem of ``root``)."""
    if not lfs.is_remote(root):
        return "file://" + os.path.abspath(path)
    rel = path[len(root_path.rstrip("/")) :].lstrip("/")
    return f"{root.rstrip('/')}/{rel}"


def check_destination(fs: pafs.FileSystem, dataset_dir: str) -> None:
    """Fail early, before any Spark work, if the dataset directory cannot be created and written.

    Raises:
        PublishError: Naming the directory and the filesystem's reason.
    """
    probe = lfs.join(dataset_dir, f".larder-probe-{uuid.uuid4().hex[:8]}")
    try:
        fs.create_dir(dataset_dir, recursive=True)
        lfs.write_bytes(fs, probe, b"")
        fs.delete_file(probe)
    except OSError as e:
        raise PublishError(f"cannot write to {lfs.display(fs, dataset_dir)}: {e}") from e


def choose_writer(configured: str, fs: pafs.FileSystem, log: Callable[[str], None]) -> str:
    """The data-file writer for ``output.writer`` (see :class:`etl.config.OutputConfig`).

    Raises:
        ConfigError: ``arrow`` asked for a remote destination, or without pandas installed.
    """
    local = isinstance(fs, pafs.LocalFileSystem)
    try:
        import pandas  # noqa: F401 - PySpark's Arrow path (mapInArrow) insists on it
    except ImportError:
        has_pandas = False
    else:
        has_pandas = True
    if configured == "spark":
        return "spark"
    if local and has_pandas:
        return "arrow"
    if configured == "auto":
        if local:
            log("pandas is not installed (PySpark's Arrow path needs it): writing with parquet-mr")
        return "spark"
    if not local:
        raise ConfigError("output.writer: 'arrow' needs a local destination; use 'spark' for output.root on HDFS")
    if not has_pandas:
        raise ConfigError("output.writer: 'arrow' needs pandas (PySpark's Arrow path): pip install -e '.[spark]' "
                          "(in the larder checkout)")
    return "arrow"


def run(
    cfg: JobConfig,
    spark: SparkSession | None = None,
    *,
    force: bool = False,
    log: Callable[[str], None] = _stderr,
    conf_path: str | None = None,
) -> RunResult:
    """Materialize the conf's selection into a new cache version (or report it up to date).

    Args:
        cfg: A validated job conf.
        spark: A session (built from ``cfg.spark`` if None).
        force: Publish even if the source fingerprint is unchanged; also let a ``vocabulary`` file's
            ids win over the live ones, and rebuild vocabularies when the live manifest is unreadable
            (both warned about: label ids may change).
        log: Progress messages.
        conf_path: The conf file, recorded in the manifest.

    Returns:
        What happened.

    Raises:
        SourceError: Unknown table, partition, column, filter or unsupported type.
        EmptyDatasetError: The selection holds no rows; nothing is published.
        ConfigError: A transform is misconfigured, names a column the selection lacks, or its
            vocabulary file contradicts the live ids (checked before the up-to-date exit).
        LiveManifestError: The live manifest is unreadable and index ids depend on it (no ``force``).
        TransformError: A user transform failed (also on the executors: the transform and the Python
            exception line are named, :mod:`etl.failures`).
        SourceError: Reading the source failed on the executors (Spark's error class and message), or the
            source changed while the job ran: fewer or more rows written than counted, a non-null value
            its vocabulary lacks (:func:`etl.transforms.index_column`), or an input file's length or
            modification time differs after the write (:func:`etl.fingerprint.changed_inputs`).
        PublishError: The destination cannot be written; the previous version stays live.
    """
    try:
        return _run(cfg, spark, force=force, log=log, conf_path=conf_path)
    except LarderError:
        raise
    except Exception as e:  # a Spark task failure: the innermost Spark or Python error, typed
        try:
            fs, root_path = lfs.resolve(cfg.output.root)
            shown = lfs.display(fs, lfs.join(root_path, cfg.name))  # as errors show it: no secrets
        except (LarderError, OSError, ValueError):
            shown = None
        mapped = as_larder_error(e, cfg.source.table or str(cfg.source.path), cfg.transforms, destination=shown)
        if mapped is None:
            raise
        raise mapped.with_traceback(None) from e


def _run(
    cfg: JobConfig,
    spark: SparkSession | None,
    *,
    force: bool,
    log: Callable[[str], None],
    conf_path: str | None,
) -> RunResult:
    started = time.time()
    phases: dict[str, float] = {}
    mark = [started]

    def phase(name: str) -> None:
        now = time.time()
        phases[name] = round(now - mark[0], 2)
        mark[0] = now

    if spark is None:
        from .session import build_session

        spark = build_session(cfg.spark)
    root = cfg.output.root
    fs, root_path = lfs.resolve(root)
    dataset_dir = lfs.join(root_path, cfg.name)
    dataset_uri = hadoop_uri(root, root_path, dataset_dir)
    shown = lfs.display(fs, dataset_dir)
    writer_kind = choose_writer(cfg.output.writer, fs, log)  # before any I/O: a conf error is named first
    check_destination(fs, dataset_dir)

    python = any(t.kind == "python" for t in cfg.transforms)  # it may flatten a map or struct: types checked after
    source = load_source(spark, cfg.source, check_column_types=not python)
    check_transforms(source.df, cfg.transforms, source.name)  # before the up-to-date exit: a vanished column
    block, block_from = destination_block_size(spark, dataset_uri, cfg.output.block_size, DEFAULT_BLOCK_SIZE)
    check_page_size(cfg.output.page_size, block, f"the block size ({block_from})")
    previous = read_live(fs, dataset_dir, cfg.transforms, force=force, log=log)
    bases = base_vocabularies(cfg.transforms, previous.vocabularies if previous else None, force=force, log=log,
                              live=previous.version if previous else None)  # fmt: skip
    input_files = selection_files(source.df)  # listed once: the fingerprint and the pyarrow read use them
    statuses = input_statuses(spark, source.df, input_files)  # taken again after the write: unchanged?
    fingerprint, snapshot = source_fingerprint(spark, source.df, cfg, block, input_files, statuses)
    phase("validate+fingerprint")
    if previous is not None and fingerprint and previous.source.get("fingerprint") == fingerprint and not force:
        try:  # a killed run's staging directory goes now too, as a publishing run's would (never a live run's)
            clean_stale_staging(fs, dataset_dir)
        except OSError as e:
            log(f"warning: could not remove the staging directories of dead runs in {shown}: {e}")
        return RunResult("up to date", shown, previous.version, previous.num_rows, seconds=time.time() - started)

    # Index transforms are broadcast joins, which keep the source's partitions and row order, so the
    # rows per partition and the values to index are counted on the source, in one scan of the indexed
    # columns; python hooks may reshuffle, so their output is counted as the write will see it.
    columns = precountable_columns(source.df, cfg.transforms)
    counts, value_counts = scan_counts(source.df, columns) if columns is not None else ([], {})
    df, vocabularies = apply_transforms(
        spark, source.df, cfg.transforms, previous.vocabularies if previous else None, log, value_counts, bases,
        source=source.name,
    )
    check_types(df, "after transforms")  # with a python transform, the only check of the source's types
    if columns is None:
        with temporary_conf(spark, LAYOUT_SETTINGS):
            counts = partition_counts(df)
    count = sum(counts)
    phase("transforms+counts")
    if count == 0:
        what = f"source {source.name}"
        if cfg.source.where or cfg.source.partitions:
            what += f" with filter {cfg.source.where or ''} {cfg.source.partitions or ''}".rstrip()
        raise EmptyDatasetError(f"{what} selects no rows; nothing published, the live version is unchanged")
    files_in = snapshot.get("files", 0)
    log(f"{source.name}: {count} rows, {files_in} input files; block {format_size(block)} ({block_from})")
    direct_plan = None
    if writer_kind == "arrow":
        direct_plan, why = direct.plan(spark, source.df, df, cfg, vocabularies, source.partition_columns, count,
                                         input_files)
        log(f"source read {'with pyarrow: ' if direct_plan else 'through Spark: '}{why}")
        phase("plan read")

    with begin_staging(fs, root_path, cfg.name) as staging:
        writer = SizedWriter(
            spark, fs, staging.path, hadoop_uri(root, root_path, staging.path),
            block_size=block, fill=cfg.output.fill, page_size=cfg.output.page_size,
            compression=cfg.output.compression, shuffle=cfg.output.shuffle, seed=cfg.output.seed, log=log,
            prior=PriorSizing.from_manifest(previous), input_bytes=snapshot.get("bytes"),
            writer=writer_kind, direct=direct_plan,
        )  # fmt: skip
        try:
            sized = writer.write(df, counts)
        except OSError as e:
            raise PublishError(f"writing {shown} failed; the live version is unchanged: {e}") from e
        phase("sample+write+verify")
        written = sum(f.num_rows for f in sized.files)
        if written != count:
            raise SourceError(f"source {source.name} changed while the job ran: counted {count} rows, wrote {written}")
        changed = changed_inputs(statuses, input_statuses(spark, source.df, input_files))
        if changed:  # the rows written may mix old and new files: the fingerprint would describe neither
            raise SourceError(f"source {source.name} changed while the job ran: {changed}; nothing published, the "
                              "live version is unchanged")
        fill = sized.fill()
        version = staging.commit(
            source={**source.description, "fingerprint": fingerprint, "snapshot": snapshot},
            created_by={"job": "jobs/materialize.py", "conf_path": conf_path, "conf": cfg.to_dict(), "forced": force,
                        "spark_master": spark.sparkContext.master},  # the one it ran on (spark-submit's --master)
            vocabularies=vocabularies,
            block_size=block,
            row_group_target=sized.target,
            extra={
                "compression": cfg.output.compression,
                "shuffle": {
                    "enabled": cfg.output.shuffle,
                    "seed": cfg.output.seed,
                    "method": "affine permutation of the source order + random order in files",
                },
                "block_size_from": block_from,
                "page_size": writer.page_size,
                "writer": writer.writer,
                **({"encoding": writer.column_encoding} if writer.writer == "arrow" else {}),
                "source_reader": "pyarrow" if direct_plan is not None else "spark",
                "fill": fill,
                "sizing": {
                    "bytes_per_row": round(sized.bytes_per_row, 3),
                    **{k: v for k, v in sized.history[0].items() if k != "sample_seconds"},
                    "attempts": sized.history,
                },
                "oversized_rows": sized.oversized_rows,
                "seconds": phases,
            },
            keep_versions=cfg.output.keep_versions,
            fingerprint=fingerprint,
            files=sized.files,
        )
    phase("publish")
    log(f"seconds per phase: {phases}")
    if staging.superseded_by is not None:  # another run's newer version went live first; CURRENT names it
        _stderr(f"published {version}, but {staging.superseded_by}, published by another run meanwhile, is live "
                "(it is newer); this run's version is removed by the next publish")
    return RunResult(
        "published", shown, version, count, fill=fill, files=len(sized.files), block_size=block,
        seconds=time.time() - started,
    )  # fmt: skip
