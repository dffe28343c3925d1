"""The manifest: the JSON contract between the Spark job (or ``write_cache``) and the reader.

A version directory is complete when its ``_manifest.json`` exists; the manifest alone describes the
version (schema, sizes, checksums, row groups), so a reader never lists the directory or scans footers.
File paths in a manifest are relative and are checked to stay inside the version directory.

Checksums: ``checksum`` is ``"crc32:<8 hex>"`` over the whole file (checked when a file is copied into
a local cache and by ``python -m loader verify``); ``footer_checksum`` covers the Parquet footer (checked
at every open, cheap); each row group entry may list one CRC-32 per column chunk (checked when a whole
row group is read: one fast pass over the bytes read, instead of Parquet's slower page CRCs), and data
pages carry Parquet's own page CRCs (checked when a row group is streamed, or for manifests without
chunk checksums). Together they detect truncated and corrupt files without reading every file twice.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fs as lfs
from .crc import crc32
from .errors import CorruptFileError, ManifestError, UnsupportedFormatError
from .json_values import vocabulary_problem
from .parquet_footer import (  # chunk_inside, chunk_range, read_footer: re-exported (imported from loader.manifest)
    chunk_inside,  # noqa: F401
    chunk_layout,
    chunk_range,  # noqa: F401
    read_footer,  # noqa: F401
    row_group_sizes,
)

FORMAT_NAME = "larder-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
CURRENT_NAME = "CURRENT"
STAGING_PREFIX = "_staging-"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class RowGroupInfo:
    """One Parquet row group of a data file.

    ``column_checksums`` holds one CRC-32 (8 hex digits) per Parquet leaf column, over the column chunk's
    bytes (from its first page, ``total_compressed_size`` bytes); empty in manifests written before they
    existed. With them the reader verifies a row group with one fast pass over the bytes it reads instead
    of Parquet's per-page CRCs.
    """

    num_rows: int
    compressed_bytes: int
    uncompressed_bytes: int
    column_checksums: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileInfo:
    """One data file of a version, as the manifest records it."""

    path: str
    size: int
    checksum: str
    footer_checksum: str
    footer_size: int
    num_rows: int
    row_groups: tuple[RowGroupInfo, ...]


@dataclass(frozen=True)
class Manifest:
    """A published version: what it holds and how it was made."""

    format_version: int
    dataset: str
    version: str
    created_at: str
    created_by: dict
    source: dict
    schema_fields: tuple[dict, ...]
    arrow_schema: pa.Schema
    vocabularies: dict[str, list]
    block_size: int
    row_group_target: int
    files: tuple[FileInfo, ...]
    extra: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Rows in the version."""
        return sum(f.num_rows for f in self.files)

    @property
    def num_row_groups(self) -> int:
        """Row groups in the version."""
        return sum(len(f.row_groups) for f in self.files)

    @property
    def total_bytes(self) -> int:
        """Bytes of all data files."""
        return sum(f.size for f in self.files)

    @property
    def columns(self) -> list[str]:
        """Column names, in schema order."""
        return list(self.arrow_schema.names)

    def to_json(self) -> str:
        """Serialise to the manifest's JSON text (strict JSON).

        Raises:
            ManifestError: A value is a NaN or an infinity, which JSON cannot hold.
        """
        doc: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "dataset": self.dataset,
            "version": self.version,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "source": self.source,
            "schema": {
                "fields": list(self.schema_fields),
                "arrow_ipc_base64": base64.b64encode(self.arrow_schema.serialize().to_pybytes()).decode(),
            },
            "vocabularies": self.vocabularies,
            "block_size": self.block_size,
            "row_group_target": self.row_group_target,
            "num_rows": self.num_rows,
            "num_row_groups": self.num_row_groups,
            "total_bytes": self.total_bytes,
            "files": [file_to_doc(f) for f in self.files],
            "extra": self.extra,
        }
        try:
            return json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
        except ValueError as e:  # a bare NaN token is not JSON: readers in other languages refuse it
            raise ManifestError(f"the manifest of dataset {self.dataset!r} holds a NaN or infinity ({e})") from e

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "manifest") -> Manifest:
        """Parse and validate manifest JSON.

        Args:
            text: The manifest's JSON text.
            where: The manifest's path or URL, named in errors.

        Raises:
            UnsupportedFormatError: The format or format version is unknown.
            ManifestError: A key is missing or malformed (a vocabulary that is not a list of JSON scalars names
                its column), a file path leaves the version directory, the schema lists a column twice, or the
                dataset or version name is not a single path component (local caches use them as directories).
        """
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"{where}: not valid JSON ({e})") from e
        except RecursionError as e:
            raise ManifestError(f"{where}: JSON nested too deeply to be a manifest") from e
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        if doc.get("format") != FORMAT_NAME:
            raise UnsupportedFormatError(f"{where}: key 'format' is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{where}: format_version {version!r} is not supported (this larder reads {FORMAT_VERSION}); "
                "upgrade larder or re-publish the cache"
            )
        try:
            schema_doc = _get(doc, "schema", dict, where)
            arrow_schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema_doc["arrow_ipc_base64"])))
            docs = _get(doc, "files", list, where)
            try:
                files = _files_fast(docs, where)
            except (KeyError, TypeError, ValueError, IndexError):  # entry by entry: the error names the key
                files = tuple(_file_from_doc_checked(f, i, where) for i, f in enumerate(docs))
            manifest = cls(
                format_version=version,
                dataset=_component(doc, "dataset", where),
                version=_component(doc, "version", where),
                created_at=_get(doc, "created_at", str, where),
                created_by=_get(doc, "created_by", dict, where),
                source=_get(doc, "source", dict, where),
                schema_fields=tuple(_get(schema_doc, "fields", list, where)),
                arrow_schema=arrow_schema,
                vocabularies=_vocabularies(doc, where),
                block_size=_get(doc, "block_size", int, where),
                row_group_target=_get(doc, "row_group_target", int, where),
                files=files,
                extra=doc.get("extra") or {},
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, pa.ArrowException) as e:
            raise ManifestError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from e
        names = [f.path for f in files]
        if len(set(names)) != len(names):
            raise ManifestError(f"{where}: key 'files' lists a path twice")
        columns = arrow_schema.names
        if len(set(columns)) != len(columns):
            twice = next(c for i, c in enumerate(columns) if c in columns[:i])
            raise ManifestError(f"{where}: the schema lists column {twice!r} twice")
        if manifest.num_rows >= MAX_ROWS:
            raise ManifestError(f"{where}: key 'files' counts {manifest.num_rows} rows in all, more than larder "
                                f"reads (fewer than 2**53)")
        return manifest


MAX_GROUP_ROWS = 2**31
"""Rows a row group may hold, at most (excluded). A row group stays under a storage block (128 MiB to a few GiB), so
even one byte a row is fewer rows; and Arrow's plain string, binary and list columns index their values with
32-bit offsets, so a larger group could not be decoded as one table anyway."""
MAX_ROWS = 2**53
"""Rows a version may hold, at most (excluded): counts stay exact as float64 (sampling fractions, JSON readers of
other languages) and every sum and plan of them fits an int64."""
_MAX_BYTES = 2**63  # bytes of a row group: an int64


def _get(doc: dict, key: str, kind: type, where: str):
    if key not in doc:
        raise ManifestError(f"{where}: missing key {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where}: key {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _vocabularies(doc: dict, where: str) -> dict[str, list]:
    """``doc['vocabularies']``, each checked by :func:`vocabulary_problem`."""
    vocabularies = _get(doc, "vocabularies", dict, where)
    for column, values in vocabularies.items():
        problem = vocabulary_problem(values)
        if problem:
            raise ManifestError(f"{where}: key 'vocabularies': the vocabulary of column {column!r} {problem}")
    return vocabularies


def _component(doc: dict, key: str, where: str) -> str:
    """``doc[key]`` if it names one directory (local caches keep files in ``<dir>/<dataset>/<version>/``)."""
    value = _get(doc, key, str, where)
    if value in ("", ".", "..") or any(c in value for c in "/\\\0"):
        raise ManifestError(f"{where}: key {key!r} is {value!r}, which is not a single path component "
                            "(not empty, '.' or '..'; no '/', '\\' or NUL)")
    return value


_PLAIN_PATH = re.compile(r"(?:[\w\-][\w.\-]*/)*[\w\-][\w.\-]*", re.ASCII)


def check_relative_path(path: str, where: str = "manifest") -> str:
    """Return ``path`` if it is a relative path that stays inside its version directory.

    Raises:
        ManifestError: The path is absolute, has a scheme, or climbs out with ``..``.
    """
    if type(path) is str and _PLAIN_PATH.fullmatch(path):  # segments of word characters, none starting with "."
        return path
    if (
        not isinstance(path, str)
        or not path
        or path.startswith(("/", "\\"))
        or "\\" in path
        or ":" in path
        or posixpath.normpath(path) != path
        or path.split("/")[0] == ".."
    ):
        raise ManifestError(f"{where}: file path {path!r} leaves the version directory")
    return path


def file_to_doc(f: FileInfo) -> dict:
    """A file entry as the manifest's JSON writes it."""
    return {
        "path": f.path,
        "size": f.size,
        "checksum": f.checksum,
        "footer_checksum": f.footer_checksum,
        "footer_size": f.footer_size,
        "num_rows": f.num_rows,
        "row_groups": [
            [g.num_rows, g.compressed_bytes, g.uncompressed_bytes]
            + ([list(g.column_checksums)] if g.column_checksums else [])
            for g in f.row_groups
        ],
    }


def file_from_doc(doc: dict, where: str = "file entry") -> FileInfo:
    """Parse and validate one file entry (the inverse of :func:`file_to_doc`)."""
    return _file_from_doc(doc, 0, where)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _file_from_doc(doc: dict, index: int, where: str) -> FileInfo:
    """One file entry (the checking path for single entries)."""
    try:
        return _files_fast([doc], where, index)[0]
    except (KeyError, TypeError, ValueError, IndexError):
        return _file_from_doc_checked(doc, index, where)


def _files_fast(docs: list, where: str, first: int = 0) -> tuple[FileInfo, ...]:
    """Well-formed file entries, parsed with their checks done in bulk; anything unexpected raises KeyError,
    TypeError or ValueError, and the caller parses entry by entry to name the key at fault. Paths are
    checked here, with their own error."""
    files, sums = [], []
    for index, doc in enumerate(docs, first):
        path, size, rows, footer_size = doc["path"], doc["size"], doc["num_rows"], doc["footer_size"]
        checksum, footer_checksum, entries = doc["checksum"], doc["footer_checksum"], doc["row_groups"]
        if not (type(path) is str and type(size) is int and type(rows) is int and type(footer_size) is int
                and type(checksum) is str and type(footer_checksum) is str and type(entries) is list):
            raise TypeError
        groups, total = [], 0
        for g in entries:
            if type(g) is not list or not (type(g[0]) is int and type(g[1]) is int and type(g[2]) is int):
                raise TypeError
            if not (0 <= g[0] < MAX_GROUP_ROWS and 0 <= g[1] < _MAX_BYTES and 0 <= g[2] < _MAX_BYTES):
                raise ValueError
            if len(g) == 4:
                chunk_sums = tuple(g[3])
                if not chunk_sums:
                    raise ValueError
                sums.append(chunk_sums)
            elif len(g) == 3:
                chunk_sums = ()
            else:
                raise ValueError
            groups.append(RowGroupInfo(g[0], g[1], g[2], chunk_sums))
            total += g[0]
        if rows != total or size < 0 or footer_size > size:
            raise ValueError
        files.append(FileInfo(path=check_relative_path(path, f"{where} files[{index}]"), size=size,
                              checksum=checksum, footer_checksum=footer_checksum, footer_size=footer_size,
                              num_rows=rows, row_groups=tuple(groups)))
    flat = [x for t in sums for x in t]
    joined = "".join(flat)  # TypeError unless every checksum is a string
    if flat and (set(map(len, flat)) != {8} or not _HEX_DIGITS.issuperset(joined)):
        raise ValueError
    return tuple(files)


def _file_from_doc_checked(doc: dict, index: int, where: str) -> FileInfo:
    here = f"{where} files[{index}]"
    path = check_relative_path(_get(doc, "path", str, here), here)
    groups = tuple(_row_group_from_doc(g, f"{here} row_groups[{j}]")
                   for j, g in enumerate(_get(doc, "row_groups", list, here)))
    info = FileInfo(
        path=path,
        size=_get(doc, "size", int, here),
        checksum=_get(doc, "checksum", str, here),
        footer_checksum=_get(doc, "footer_checksum", str, here),
        footer_size=_get(doc, "footer_size", int, here),
        num_rows=_get(doc, "num_rows", int, here),
        row_groups=groups,
    )
    if info.num_rows != sum(g.num_rows for g in groups) or info.size < 0 or info.footer_size > info.size:
        raise ManifestError(f"{here} ({path}): row counts or sizes are inconsistent")
    return info


def _row_group_from_doc(entry: list, where: str) -> RowGroupInfo:
    """``[rows, compressed, uncompressed]`` plus, optionally, the list of column-chunk checksums."""
    if not isinstance(entry, list) or len(entry) not in (3, 4):
        raise ManifestError(f"{where}: a row_groups entry should be [rows, compressed, uncompressed(, checksums)]")
    sums = ()
    if len(entry) == 4:
        sums = tuple(entry[3])
        if not sums or not all(isinstance(x, str) and len(x) == 8 for x in sums):
            raise ManifestError(f"{where}: row group column checksums should be 8-hex-digit strings")
        try:
            [int(x, 16) for x in sums]
        except ValueError as e:
            raise ManifestError(f"{where}: row group column checksums should be 8-hex-digit strings") from e
    for i, (name, most) in enumerate((("rows", MAX_GROUP_ROWS), ("compressed bytes", _MAX_BYTES),
                                      ("uncompressed bytes", _MAX_BYTES))):
        value = entry[i]
        if type(value) is not int or not 0 <= value < most:  # not Infinity, NaN, 1.5, true or 2**70
            raise ManifestError(f"{where}[{i}] ({name}) is {value!r}: expected an integer in [0, {most})")
    return RowGroupInfo(entry[0], entry[1], entry[2], sums)


def crc32_hex(value: int) -> str:
    """Format a CRC-32 as the manifest writes it."""
    return f"crc32:{value & 0xFFFFFFFF:08x}"


def checksum_stream(stream, size_hint: int | None = None) -> tuple[str, int]:
    """CRC-32 of everything left in a readable stream; returns ``(checksum, bytes read)``."""
    crc, total = 0, 0
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        crc = crc32(chunk, crc)
        total += len(chunk)
    return crc32_hex(crc), total


def _checksum_with_ranges(stream, ranges: list) -> tuple[str, int, dict]:
    """One pass over a stream: the whole-stream checksum, bytes read, and the CRC-32 of each
    ``(offset, length, *key)`` range, by key."""
    crc, pos = 0, 0
    sums = {tuple(key): 0 for _, _, *key in ranges}
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        crc = crc32(chunk, crc)
        end = pos + len(chunk)
        view = memoryview(chunk)
        for start, length, *key in ranges:
            a, b = max(start, pos), min(start + length, end)
            if a < b:
                k = tuple(key)
                sums[k] = crc32(view[a - pos : b - pos], sums[k])
        pos = end
    return crc32_hex(crc), pos, sums


def checksum_file(fs: pafs.FileSystem, path: str) -> str:
    """The whole-file checksum of ``path``."""
    with fs.open_input_stream(path) as f:
        return checksum_stream(f)[0]


def file_info_from_parquet(fs: pafs.FileSystem, path: str, relpath: str) -> FileInfo:
    """Build a :class:`FileInfo` for a written Parquet file from its footer and a full checksum.

    Raises:
        CorruptFileError: The file is not a readable Parquet file.
    """
    where = lfs.display(fs, path)
    size = fs.get_file_info(path).size
    try:
        with fs.open_input_file(path) as f:
            return _file_info(f, size, relpath, where)
    except CorruptFileError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise CorruptFileError(f"{where}: cannot read Parquet footer ({e})", where) from e


def file_info_from_bytes(data: bytes | pa.Buffer, relpath: str) -> FileInfo:
    """Build a :class:`FileInfo` for a Parquet file still held in memory (no read back from storage)."""
    try:
        return _file_info(pa.BufferReader(data), len(data), relpath, relpath)
    except CorruptFileError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise CorruptFileError(f"{relpath}: cannot read Parquet footer ({e})", relpath) from e


def assemble_file_info(
    relpath: str, size: int, footer: bytes, footer_size: int, checksum: str, sums: dict[tuple[int, int], int]
) -> FileInfo:
    """A :class:`FileInfo` from a footer and checksums computed elsewhere (``sums``: (row group, column) ->
    CRC-32 of that column chunk)."""
    meta = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    groups = []
    for i, (_, compressed) in enumerate(row_group_sizes(meta)):
        rg = meta.row_group(i)
        column_sums = tuple(f"{sums[(i, c)] & 0xFFFFFFFF:08x}" for c in range(rg.num_columns))
        groups.append(RowGroupInfo(rg.num_rows, compressed, rg.total_byte_size, column_sums))
    return FileInfo(
        path=check_relative_path(relpath),
        size=size,
        checksum=checksum,
        footer_checksum=crc32_hex(crc32(footer)),
        footer_size=footer_size,
        num_rows=meta.num_rows,
        row_groups=tuple(groups),
    )


def _file_info(f, size: int, relpath: str, where: str) -> FileInfo:
    footer, footer_size, ranges = chunk_layout(f, size, where)
    f.seek(0)
    checksum, read, sums = _checksum_with_ranges(f, ranges)
    if read != size:
        raise CorruptFileError(f"{where}: read {read} bytes, file status says {size}", where)
    return assemble_file_info(relpath, size, footer, footer_size, checksum, sums)


def schema_fields(schema: pa.Schema) -> tuple[dict, ...]:
    """The human-readable key/value view of a schema: name, Arrow type and nullability per column."""
    return tuple({"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema)
