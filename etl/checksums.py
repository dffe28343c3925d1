"""Manifest file entries checksummed on the executors, so the driver never pulls the data.

The driver reads only each staged file's footer (a small ranged read) to learn where its column chunks
lie. The executors read the files through Hadoop's filesystem (Spark's ``binaryFile`` source, so
``hdfs://``, ``webhdfs://`` and ``file://`` alike) and compute the whole-file CRC-32 and one CRC-32 per
column chunk with Spark SQL's ``crc32`` (``java.util.zip.CRC32``, the same polynomial as ``zlib.crc32``):
a JVM plan, so executors need no Python. Only the small checksums travel back to the driver.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from loader import fs as lfs
from loader.manifest import FileInfo, assemble_file_info, chunk_layout, crc32_hex

CHUNK_TABLE = "larder-chunks.json"  # not hidden: Spark skips files named _* or .*


def file_infos_on_executors(
    spark: SparkSession, directory_uri: str, fs: pafs.FileSystem, directory: str
) -> list[FileInfo]:
    """File entries of the ``*.parquet`` files directly in a directory, sorted by name.

    Args:
        spark: The job's session.
        directory_uri: The directory as Spark sees it (``file:/...``, ``hdfs://...``).
        fs: The same directory's filesystem as larder sees it (for the footers).
        directory: The directory's path on ``fs``.

    Returns:
        One :class:`~loader.manifest.FileInfo` per file, paths relative to the directory.
    """
    layouts = {}
    for entry in lfs.listdir(fs, directory):
        name = entry.base_name
        if entry.type != pafs.FileType.File or not name.endswith(".parquet") or name.startswith(("_", ".")):
            continue
        with fs.open_input_file(entry.path) as f:
            layouts[name] = (entry.size, *chunk_layout(f, entry.size, lfs.display(fs, entry.path)))
    if not layouts:
        return []
    # The chunk table goes to the executors as a small JSON file (a local list would need Python workers).
    table_path = lfs.join(directory, CHUNK_TABLE)
    lines = (
        json.dumps({"name": name, "chunks": [{"pos": start + 1, "len": length} for start, length, _, _ in lay[3]]})
        for name, lay in layouts.items()
    )
    lfs.write_bytes(fs, table_path, "\n".join(lines).encode())
    chunks = spark.read.schema("name string, chunks array<struct<pos:bigint,len:bigint>>").json(
        f"{directory_uri.rstrip('/')}/{CHUNK_TABLE}"
    )
    files = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.parquet")
        .load(directory_uri)
        .select(F.element_at(F.split("path", "/"), -1).alias("name"), "length", "content")
    )
    rows = (
        files.join(F.broadcast(chunks), "name")
        .select(
            "name",
            "length",
            F.crc32("content").alias("crc"),
            F.expr("transform(chunks, x -> crc32(substring(content, cast(x.pos as int), cast(x.len as int))))")
            .alias("sums"),
        )
        .collect()
    )
    fs.delete_file(table_path)
    infos = []
    for row in rows:
        size, footer, footer_size, ranges = layouts[row["name"]]
        if row["length"] != size:
            raise OSError(f"{row['name']}: {row['length']} bytes on the executors, {size} in the listing")
        sums = {(i, c): crc for (_, _, i, c), crc in zip(ranges, row["sums"], strict=True)}
        infos.append(assemble_file_info(row["name"], size, footer, footer_size, crc32_hex(row["crc"]), sums))
    if len(infos) != len(layouts):
        raise OSError(f"{directory_uri}: {len(infos)} of {len(layouts)} staged files were checksummed")
    return sorted(infos, key=lambda f: f.path)
