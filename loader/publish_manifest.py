"""The manifest a publish writes (:meth:`loader.publish.Staging.commit`), built from the staged files' entries,
and the tag that ends its version's name."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fs as lfs
from .crc import crc32
from .manifest import FORMAT_VERSION, FileInfo, Manifest, schema_fields


def tool_version() -> str:
    """``larder <version>`` of the installed distribution, or ``larder`` when it is not installed as one."""
    try:
        from importlib.metadata import version

        return f"larder {version('larder')}"
    except Exception:  # not installed as a distribution (e.g. shipped as a zip to executors)
        return "larder"


def version_tag(fingerprint: str | None, files: Iterable[FileInfo]) -> str:
    """The 8 hex digits that end a version name: from the fingerprint, else the files' checksums."""
    fp = fingerprint or f"{crc32(''.join(f.checksum for f in files).encode()) & 0xFFFFFFFF:08x}"
    return "".join(c for c in fp.lower() if c in "0123456789abcdef")[:8].ljust(8, "0")


def manifest_template(
    fs: pafs.FileSystem,
    staging_path: str,
    dataset: str,
    files: tuple[FileInfo, ...],
    arrow_schema: pa.Schema | None,
    fingerprint: str | None,
    *,
    source: dict | None,
    created_by: dict | None,
    vocabularies: dict[str, list] | None,
    block_size: int,
    row_group_target: int | None,
    extra: dict | None,
) -> Manifest:
    """The manifest of the files staged in ``staging_path`` but for its ``version`` and ``created_at`` (chosen late,
    when the staging directory is renamed to its version); the schema is read from the first file's footer unless
    given. The other arguments are :meth:`loader.publish.Staging.commit`'s."""
    if arrow_schema is None:
        with fs.open_input_file(lfs.join(staging_path, files[0].path)) as f:
            arrow_schema = pq.read_schema(f)
    src = dict(source or {})
    if fingerprint is not None:
        src.setdefault("fingerprint", fingerprint)

    return Manifest(
        format_version=FORMAT_VERSION,
        dataset=dataset,
        version="",
        created_at="",
        created_by={"tool": tool_version(), **(created_by or {})},
        source=src,
        schema_fields=schema_fields(arrow_schema),
        arrow_schema=arrow_schema,
        vocabularies=dict(vocabularies or {}),
        block_size=int(block_size),
        row_group_target=int(row_group_target or int(0.95 * block_size)),
        files=files,
        extra=dict(extra or {}),
    )
