"""Fingerprint of a source snapshot, so an unchanged source is not materialized twice.

The fingerprint is a SHA-256 over (a) every input file of the selection after partition pruning —
path, length and modification time, as the Hadoop filesystem reports them on the driver (through the
JVM gateway; one directory listing per directory, not one call per file) — and (b) everything in the
job conf that changes the output (source, columns, transforms, output layout) with the content hash of
each ``vocabulary`` file, so editing the conf or a vocabulary file in place also triggers a rebuild.
A source that is not file based (a view over JDBC, say) has no files to fingerprint; such a run always
rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from loader import fs as lfs
from loader.errors import LarderError

from .config import JobConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FINGERPRINT_VERSION = "larder-etl-1"


def hadoop_path(jvm, uri: str):
    """The Hadoop ``Path`` of a URI string as ``df.inputFiles()`` gives it (Spark 4: URI-encoded, so a
    space is ``%20`` and a Hive-escaped ``%3A`` in a partition directory is ``%253A``). ``Path(String)``
    would take the escapes literally; ``Path(java.net.URI)`` decodes them. A string that is not a valid
    URI (an unencoded path from an older Spark) is taken as a plain path."""
    try:
        return jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(uri))
    except Exception:  # py4j error: URISyntaxException
        return jvm.org.apache.hadoop.fs.Path(uri)


def file_name(uri: str) -> str:
    """The decoded last path segment of a file URI (what Hadoop's ``Path.getName()`` returns)."""
    parsed = urlparse(uri)
    return unquote(posixpath.basename(parsed.path)) if parsed.scheme else posixpath.basename(uri)


def file_statuses(spark: SparkSession, files: list[str]) -> list[tuple[str, int, int]]:
    """``(path, length, modification time ms)`` of each file, listed per parent directory.

    ``files`` are URI strings as ``df.inputFiles()`` returns them; names are matched in decoded form
    (``Path.getName()`` against the URI's unquoted last segment), so spaces and Hive-escaped partition
    values (``hour=10%3A00``) match.
    """
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    by_dir: dict[str, set[str]] = defaultdict(set)
    for f in files:
        by_dir[posixpath.dirname(f)].add(f)
    out = []
    for directory, wanted in sorted(by_dir.items()):
        path = hadoop_path(jvm, directory)
        hfs = path.getFileSystem(conf)
        found = {}
        for status in hfs.listStatus(path):
            found[status.getPath().getName()] = (int(status.getLen()), int(status.getModificationTime()))
        for f in sorted(wanted):
            length, mtime = found.get(file_name(f)) or _single_status(hfs, hadoop_path(jvm, f))
            out.append((f, length, mtime))
    return out


def _single_status(hfs, path) -> tuple[int, int]:
    status = hfs.getFileStatus(path)
    return int(status.getLen()), int(status.getModificationTime())


def partitions_of(files: list[str]) -> list[str]:
    """The distinct ``k=v/...`` partition directories the files live in (Hive layout)."""
    parts = set()
    for f in files:  # URI-decoded once: the directory names as on disk (Hive's own %XX escapes kept)
        pieces = [p for p in posixpath.dirname(unquote(f)).split("/") if "=" in p]
        if pieces:
            parts.add("/".join(pieces))
    return sorted(parts)


def file_digest(url: str) -> str | None:
    """SHA-256 of a file's content (a vocabulary file), or None when it cannot be read (the transform
    then reports it, naming the key)."""
    try:
        fs, path = lfs.resolve(url)
        return hashlib.sha256(lfs.read_bytes(fs, path)).hexdigest()
    except (OSError, LarderError):
        return None


def conf_digest(cfg: JobConfig, block_size: int) -> dict:
    """The parts of the conf that change the output, with the content of the vocabulary files it names
    (editing a file in place changes the ids, so it must trigger a rebuild)."""
    transforms = []
    for t in cfg.transforms:
        entry = asdict(t)
        if t.vocabulary:
            entry["vocabulary_sha256"] = file_digest(t.vocabulary)
        transforms.append(entry)
    return {
        "name": cfg.name,
        "source": asdict(cfg.source),
        "transforms": transforms,
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
