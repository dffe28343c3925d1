"""Fingerprint of a source snapshot, so an unchanged source is not materialized twice.

The fingerprint is a SHA-256 over (a) every input file of the selection after partition pruning
(:func:`selection_files`: also for a path source's ``k=v`` partitions, which ``inputFiles()`` does not prune) —
path, length and modification time, as the Hadoop filesystem reports them on the driver (through the
JVM gateway; one directory listing per directory, not one call per file); for a table Spark reads
through Hive's own reader (``STORED AS TEXTFILE``...), whose ``inputFiles()`` is the table's directory,
the files under the locations of the partitions the selection reads (:func:`fingerprint_inputs`) —
(b) everything in the job conf that changes the output (source, columns, transforms, output layout)
with the content hash of each ``vocabulary`` file, so editing the conf or a vocabulary file in place
also triggers a rebuild, and
(c) the definition of the selection as Spark resolves it (:func:`selection_definition`): its schema
(names, types, nullability) and the catalog definition of every table and view it reads (a view's SQL
text, a table's format, SerDe, location and partition columns), so redefining a view, adding, dropping,
renaming or widening a column, or recreating a table over the same files also rebuilds, while an
unchanged table keeps its fingerprint across runs and sessions (no plan ids or timestamps go in).
A source that is not file based (a view over JDBC, say) has no files to fingerprint; such a run always
rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from loader import fs as lfs
from loader.errors import LarderError

from .config import JobConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FINGERPRINT_VERSION = "larder-etl-2"  # -2: the selection's definition is in
_EXPR_ID = re.compile(r"#\d+")


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
    values (``hour=10%3A00``) match. An entry that is a directory (what ``inputFiles()`` gives for a table
    Spark reads through Hive's own reader, or a partition location from :func:`fingerprint_inputs`) stands
    for the files under it, listed recursively (:func:`files_under`).
    """
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    by_dir: dict[str, set[str]] = defaultdict(set)
    for f in files:
        by_dir[posixpath.dirname(f.rstrip("/"))].add(f)
    out = []
    for directory, wanted in sorted(by_dir.items()):
        path = hadoop_path(jvm, directory)
        hfs = path.getFileSystem(conf)
        found = {}
        try:
            listing = hfs.listStatus(path)
        except Exception:  # py4j: FileNotFoundException (a partition location that is gone)
            listing = []
        for status in listing:
            found[status.getPath().getName()] = (int(status.getLen()), int(status.getModificationTime()),
                                                 bool(status.isDirectory()))  # fmt: skip
        for f in sorted(wanted):
            entry = found.get(file_name(f.rstrip("/")))
            if entry is None:
                entry = _single_status(hfs, hadoop_path(jvm, f))
                if entry is None:
                    continue  # gone: it is not read either
            length, mtime, is_dir = entry
            if is_dir:
                out.extend(files_under(hfs, hadoop_path(jvm, f)))
            else:
                out.append((f, length, mtime))
    return list(dict.fromkeys(out))  # in listing order (the fingerprint hashes it), a file named twice once


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def files_under(hfs, path) -> list[tuple[str, int, int]]:
    """``(URI, length, modification time ms)`` of every file under a directory, recursively, through
    ``FileSystem.listFiles`` (statuses only). Files and directories whose name starts with ``_`` or
    ``.`` (``_SUCCESS``, ``.hive-staging_*``, ``_temporary``) are skipped, as Hive and Spark skip them."""
    base = hfs.makeQualified(path).toUri().getPath().rstrip("/")
    out = []
    it = hfs.listFiles(path, True)
    while it.hasNext():
        status = it.next()
        file_path = status.getPath()
        full = str(file_path.toUri().getPath())
        rel = full[len(base) + 1 :] if full.startswith(base + "/") else str(file_path.getName())
        if any(_hidden(piece) for piece in rel.split("/")):
            continue
        out.append((str(file_path.toUri().toString()), int(status.getLen()), int(status.getModificationTime())))
    return sorted(out)


def _single_status(hfs, path) -> tuple[int, int, bool] | None:
    try:
        status = hfs.getFileStatus(path)
    except Exception:  # py4j: FileNotFoundException
        if hfs.exists(path):
            raise
        return None
    return int(status.getLen()), int(status.getModificationTime()), bool(status.isDirectory())


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


def _option(value) -> str | None:
    """A Scala ``Option``'s value as text, or None."""
    return str(value.get()) if value.isDefined() else None


def _catalog_entry(table) -> dict:
    """What of a ``CatalogTable`` decides the rows Spark reads from it: kind, provider, storage format,
    location, partition and bucket columns, and a view's SQL text. Its schema is left out (the
    selection's own schema is fingerprinted), and so are creation and access times, statistics and table
    properties, which change without the data changing (``transient_lastDdlTime``, ``ANALYZE TABLE``)."""
    storage = table.storage()
    properties, it = [], storage.properties().iterator()
    while it.hasNext():
        pair = it.next()
        properties.append([str(pair._1()), str(pair._2())])
    return {
        "table": str(table.identifier().unquotedString()),
        "type": str(table.tableType().name()),
        "provider": _option(table.provider()),
        "location": _option(storage.locationUri()),
        "input_format": _option(storage.inputFormat()),
        "serde": _option(storage.serde()),
        "storage_properties": sorted(properties),
        "partition_columns": str(table.partitionColumnNames().mkString(",")),
        "buckets": _option(table.bucketSpec()),
        "view_text": _option(table.viewText()),
    }


def _catalog_tables(plan) -> list:
    """The ``CatalogTable`` of every view and table in an analyzed plan (subqueries included)."""
    found, stack = [], [plan]
    while stack:
        node = stack.pop()
        kind = node.getClass().getSimpleName()
        if kind == "View":
            found.append(node.desc())
        elif kind == "HiveTableRelation":
            found.append(node.tableMeta())
        elif kind == "LogicalRelation" and node.catalogTable().isDefined():
            found.append(node.catalogTable().get())
        for seq in (node.children(), node.subqueries()):
            stack.extend(seq.apply(i) for i in range(seq.size()))
    return found


def _plan_nodes(plan, kind: str) -> list:
    """Every node of a plan whose class is ``kind``, subqueries included."""
    found, stack = [], [plan]
    while stack:
        node = stack.pop()
        if node.getClass().getSimpleName() == kind:
            found.append(node)
        for seq in (node.children(), node.subqueries()):
            stack.extend(seq.apply(i) for i in range(seq.size()))
    return found


def selection_files(df: DataFrame) -> list[str]:
    """``sorted(df.inputFiles())`` without the files of the partitions the selection's partition filters
    leave out: the files the selection reads.

    Spark prunes ``inputFiles()`` for a catalog table only (the optimizer swaps its file index for the
    selected partitions'); for a path source (``k=v`` directories) it is every file under the path, whatever
    ``source.where`` says of the partition columns. Each file scan of the physical plan with partition filters
    has its file index list the partitions those filters select (as the scan itself does, from the index's
    listing: no I/O for a path); files an index holds that no scan selects are dropped. Should the plan not
    be walkable, or a filter not be evaluable there (a subquery), every file is kept (more rebuilds, never a
    stale "up to date").
    """
    files = sorted(df.inputFiles())
    try:
        held: set[str] = set()
        read: set[str] = set()
        for scan in _plan_nodes(df._jdf.queryExecution().sparkPlan(), "FileSourceScanExec"):
            filters = scan.partitionFilters()
            if filters.isEmpty():
                continue  # all of its index is read
            index = scan.relation().location()
            listed = [str(f) for f in index.inputFiles()]
            dirs = index.listFiles(filters, filters.take(0))  # (partition filters, no data filters)
            chosen = [dirs.apply(i).files() for i in range(dirs.size())]
            held.update(listed)
            if sum(c.size() for c in chosen) == len(listed):
                read.update(listed)  # nothing pruned (a catalog table's index is pruned already)
            else:
                read.update(str(c.apply(j).getPath().toUri().toString()) for c in chosen for j in range(c.size()))
    except Exception:  # py4j: a plan or index class without these accessors, or a filter it cannot evaluate
        return files
    if not read <= held:  # the two listings spell a path differently: keep everything
        return files
    return [f for f in files if f not in held - read]


def fingerprint_inputs(spark: SparkSession, df: DataFrame, files: list[str]) -> list[str]:
    """The entries to fingerprint: ``files`` (``df.inputFiles()``) with the location of every partitioned
    table Spark reads through Hive's own reader (``HiveTableRelation``: ``STORED AS TEXTFILE``, or any
    table Spark does not convert to its own reader) replaced by the locations of the partitions the
    selection reads after pruning (``inputFiles()`` gives the table's location for such a table, whatever
    the filter). Directories are expanded into their files by :func:`file_statuses`. Should the plan not
    be walkable, ``files`` are kept as they are (the whole table then goes in: more rebuilds, never a
    stale "up to date")."""
    try:
        relations = _plan_nodes(df._jdf.queryExecution().optimizedPlan(), "HiveTableRelation")
        if not relations:
            return files
        catalog = spark._jsparkSession.sessionState().catalog()
        replaced: set[str] = set()
        partitions: list[str] = []
        for relation in relations:
            meta = relation.tableMeta()
            if meta.partitionColumnNames().isEmpty():
                continue  # the table's location is what is read
            location = _option(meta.storage().locationUri())
            if location is not None:
                replaced.add(location)
            pruned = relation.prunedPartitions()  # set by PruneHiveTablePartitions; unset: all of them
            parts = pruned.get() if pruned.isDefined() else catalog.listPartitions(
                meta.identifier(), spark._jvm.scala.Option.apply(None))  # fmt: skip
            for i in range(parts.size()):
                part_location = _option(parts.apply(i).storage().locationUri())
                if part_location is not None:
                    partitions.append(part_location)
    except Exception:  # py4j: a plan or catalog class without these accessors
        return files
    return sorted({f for f in files if f not in replaced} | set(partitions))


def selection_definition(df: DataFrame) -> dict:
    """The definition of a selection as Spark resolves it, stable across runs and sessions.

    Args:
        df: The selection (filtered, projected, sampled).

    Returns:
        ``{"schema": [[name, type, nullable], ...], "catalog": [...]}``: the selection's schema, and
        the catalog entry (:func:`_catalog_entry`) of every table and view its analyzed plan reads,
        nested views and subqueries included. Should the plan not be walkable (a plan node from
        another Spark), ``"plan"`` holds the analyzed plan's text with expression ids removed instead.
    """
    schema = [[f.name, f.dataType.jsonValue(), f.nullable] for f in df.schema.fields]
    plan = df._jdf.queryExecution().analyzed()
    try:
        entries = {json.dumps(e, sort_keys=True) for e in map(_catalog_entry, _catalog_tables(plan))}
        return {"schema": schema, "catalog": [json.loads(e) for e in sorted(entries)]}
    except Exception:  # py4j: a plan or catalog class without these accessors
        return {"schema": schema, "plan": _EXPR_ID.sub("", str(plan.toString()))}


def input_statuses(spark: SparkSession, df: DataFrame, files: list[str]) -> list[tuple[str, int, int]]:
    """``(path, length, modification time ms)`` of every file the selection reads (:func:`fingerprint_inputs`,
    directories expanded by :func:`file_statuses`): the part of the fingerprint that says which bytes are read.

    Args:
        spark: The session.
        df: The validated selection.
        files: :func:`selection_files` of ``df``.
    """
    return file_statuses(spark, fingerprint_inputs(spark, df, files)) if files else []


def changed_inputs(before: list[tuple[str, int, int]], after: list[tuple[str, int, int]]) -> str | None:
    """What differs between two :func:`input_statuses` of a selection (the first file that changed, was
    removed or appeared, and how many differ), or None when they are the same."""
    old, new = {p: (n, m) for p, n, m in before}, {p: (n, m) for p, n, m in after}
    differ = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    if not differ:
        return None
    first = differ[0]
    if first not in new:
        what = f"{first} was removed"
    elif first not in old:
        what = f"{first} appeared"
    else:
        what = (f"{first} was rewritten ({old[first][0]} bytes modified at {old[first][1]} ms -> {new[first][0]} "
                f"bytes modified at {new[first][1]} ms)")
    return what + (f", and {len(differ) - 1} more input files differ" if len(differ) > 1 else "")


def source_fingerprint(spark: SparkSession, df: DataFrame, cfg: JobConfig, block_size: int,
                       files: list[str] | None = None, statuses: list[tuple[str, int, int]] | None = None
                       ) -> tuple[str | None, dict]:
    """Fingerprint the selection's snapshot: its input files, the conf and its definition.

    Args:
        spark: The session.
        df: The validated selection (partition pruning is applied by :func:`selection_files`, and for a
            table read through Hive's reader by :func:`fingerprint_inputs`; its schema and the tables and
            views it reads are fingerprinted by :func:`selection_definition`).
        cfg: The job conf.
        block_size: The resolved block size.
        files: :func:`selection_files` of ``df`` if the caller has listed them already.
        statuses: :func:`input_statuses` of ``files`` if the caller has taken them already (the job takes
            them again after writing, :func:`changed_inputs`).

    Returns:
        ``(fingerprint or None, snapshot summary)``; None when the source has no input files. The
        summary counts the files fingerprinted (directories expanded).
    """
    files = selection_files(df) if files is None else files
    if not files:
        return None, {"files": 0, "partitions": []}
    statuses = input_statuses(spark, df, files) if statuses is None else statuses
    snapshot = {"files": len(statuses), "partitions": partitions_of([path for path, _, _ in statuses])}
    if not statuses:
        return None, snapshot
    snapshot["bytes"] = sum(length for _, length, _ in statuses)
    snapshot["latest_mtime_ms"] = max(m for _, _, m in statuses)
    definition = selection_definition(df)
    snapshot["definition_sha256"] = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    doc = {"v": FINGERPRINT_VERSION, "files": statuses, "conf": conf_digest(cfg, block_size), "definition": definition}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return digest, snapshot
