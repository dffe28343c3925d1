"""Manifest file entries computed on the executors, so the driver never pulls the data.

A file entry needs a pass over every byte (whole-file CRC-32 and one CRC-32 per column chunk). Spark's
``binaryFile`` source reads each staged file where the executors run, through Hadoop's filesystem (so
``hdfs://``, ``webhdfs://`` and ``file://`` alike); larder's own :func:`loader.manifest.file_info_from_bytes`
runs on the bytes there, and only the small JSON entry travels back to the driver.
"""

from __future__ import annotations

import json

from pyspark.sql import SparkSession

from loader.manifest import FileInfo, file_from_doc


def _entry(path: str, content: bytes | bytearray) -> tuple[str, str]:
    """Executor side: ``(file name, JSON file entry)`` of one staged file."""
    from loader.manifest import file_info_from_bytes, file_to_doc

    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name, json.dumps(file_to_doc(file_info_from_bytes(bytes(content), name)))


def file_infos_on_executors(spark: SparkSession, directory_uri: str) -> list[FileInfo]:
    """File entries of the ``*.parquet`` files directly in ``directory_uri``, sorted by name.

    Args:
        spark: The job's session.
        directory_uri: The staging directory as Spark sees it (``file:/...``, ``hdfs://...``).

    Returns:
        One :class:`~loader.manifest.FileInfo` per file, paths relative to the directory.
    """
    df = spark.read.format("binaryFile").option("pathGlobFilter", "*.parquet").load(directory_uri)
    pairs = df.select("path", "content").rdd.map(lambda row: _entry(row[0], row[1])).collect()
    infos = [file_from_doc(json.loads(doc), where=f"{directory_uri}/{name}") for name, doc in pairs]
    return sorted(infos, key=lambda f: f.path)
