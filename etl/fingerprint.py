"""Fingerprint of a source snapshot, so an unchanged source is not materialized twice.

The fingerprint is a SHA-256 over (a) every input file of the selection after partition pruning —
path, length and modification time, as the Hadoop filesystem reports them on the driver (through the
JVM gateway; one directory listing per directory, not one call per file) — and (b) everything in the
job conf that changes the output (source, columns, transforms, output layout), so editing the conf also
triggers a rebuild. A source that is not file based (a view over JDBC, say) has no files to fingerprint;
such a run always rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING

from .config import JobConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FINGERPRINT_VERSION = "larder-etl-1"


def file_statuses(spark: SparkSession, files: list[str]) -> list[tuple[str, int, int]]:
    """``(path, length, modification time ms)`` of each file, listed per parent directory."""
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    by_dir: dict[str, set[str]] = defaultdict(set)
    for f in files:
        by_dir[posixpath.dirname(f)].add(f)
    out = []
    for directory, wanted in sorted(by_dir.items()):
        path = jvm.org.apache.hadoop.fs.Path(directory)
        hfs = path.getFileSystem(conf)
        found = {}
        for status in hfs.listStatus(path):
            name = status.getPath().toString()
            found[name] = (int(status.getLen()), int(status.getModificationTime()))
        for f in sorted(wanted):
            length, mtime = found.get(f) or _single_status(hfs, jvm.org.apache.hadoop.fs.Path(f))
            out.append((f, length, mtime))
    return out


def _single_status(hfs, path) -> tuple[int, int]:
    status = hfs.getFileStatus(path)
    return int(status.getLen()), int(status.getModificationTime())


def partitions_of(files: list[str]) -> list[str]:
    """The distinct ``k=v/...`` partition directories the files live in (Hive layout)."""
    parts = set()
    for f in files:
        pieces = [p for p in posixpath.dirname(f).split("/") if "=" in p]
        if pieces:
            parts.add("/".join(pieces))
    return sorted(parts)


def conf_digest(cfg: JobConfig, block_size: int) -> dict:
    """The parts of the conf that change the output."""
    return {
        "name": cfg.name,
        "source": asdict(cfg.source),
        "transforms": [asdict(t) for t in cfg.transforms],
        "output": {k: v for k, v in asdict(cfg.output).items() if k not in ("root", "keep_versions")},
        "block_size": block_size,
    }


def source_fingerprint(spark: SparkSession, df: DataFrame, cfg: JobConfig, block_size: int,
                       files: list[str] | None = None) -> tuple[str | None, dict]:
    """Fingerprint the selection's snapshot.

    Args:
        spark: The session.
        df: The validated selection (partition pruning is applied by ``inputFiles``).
        cfg: The job conf.
        block_size: The resolved block size.
        files: ``sorted(df.inputFiles())`` if the caller has listed them already.

    Returns:
        ``(fingerprint or None, snapshot summary)``; None when the source has no input files.
    """
    files = sorted(df.inputFiles()) if files is None else files
    snapshot = {"files": len(files), "partitions": partitions_of(files)}
    if not files:
        return None, snapshot
    statuses = file_statuses(spark, files)
    snapshot["bytes"] = sum(length for _, length, _ in statuses)
    snapshot["latest_mtime_ms"] = max(m for _, _, m in statuses)
    doc = {"v": FINGERPRINT_VERSION, "files": statuses, "conf": conf_digest(cfg, block_size)}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return digest, snapshot
