"""Open a published cache from its manifest alone, and open its data files safely.

``open_dataset`` reads one or two small files (``CURRENT`` and ``_manifest.json``); it never lists the
version directory or touches a data file, so opening is constant time in the number of files.
:meth:`Dataset.open_file` is the one door to a data file: it checks the size and footer checksum against
the manifest and turns Parquet page-CRC failures into :class:`CorruptFileError` naming the file.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fs as lfs
from .errors import CorruptFileError, DatasetNotFoundError, RemoteError
from .manifest import MANIFEST_NAME, FileInfo, Manifest, crc32_hex, read_footer
from .publish import current_version, read_manifest


@dataclass
class Dataset:
    """A published version of a dataset, described by its manifest.

    Attributes:
        url: What the user asked to open.
        fs: The filesystem holding the version.
        version_path: The version directory on ``fs``.
        manifest: The parsed, validated manifest.
    """

    url: str
    fs: pafs.FileSystem
    version_path: str
    manifest: Manifest
    fs_options: dict = field(default_factory=dict, repr=False)
    # A local copy of remote files (loader.cache), attached by open_dataset(cache_dir=...).
    file_cache: Any = field(default=None, repr=False)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of every data file."""
        return self.manifest.arrow_schema

    @property
    def columns(self) -> list[str]:
        """Column names in schema order."""
        return self.manifest.columns

    @property
    def num_rows(self) -> int:
        """Rows in this version."""
        return self.manifest.num_rows

    @property
    def num_row_groups(self) -> int:
        """Row groups in this version."""
        return self.manifest.num_row_groups

    @property
    def files(self) -> tuple[FileInfo, ...]:
        """The data files, in manifest order."""
        return self.manifest.files

    @property
    def total_bytes(self) -> int:
        """Bytes of all data files."""
        return self.manifest.total_bytes

    @property
    def version(self) -> str:
        """The version's name (``v<stamp>-<fp8>``)."""
        return self.manifest.version

    @property
    def name(self) -> str:
        """The dataset's name."""
        return self.manifest.dataset

    @property
    def source(self) -> dict:
        """What the version was made from."""
        return self.manifest.source

    @property
    def vocabularies(self) -> dict[str, list]:
        """Static-transform vocabularies, output column -> ordered values."""
        return self.manifest.vocabularies

    def row_group_sizes(self) -> list[int]:
        """Row counts of every row group, in (file, row group) order."""
        return [g.num_rows for f in self.files for g in f.row_groups]

    def row_group_index(self) -> list[tuple[int, int]]:
        """``(file index, row group index in file)`` of every row group, in the same order."""
        return [(i, j) for i, f in enumerate(self.files) for j in range(len(f.row_groups))]

    def file_path(self, info: FileInfo) -> str:
        """The path of a data file on :attr:`fs`."""
        return lfs.join(self.version_path, info.path)

    def display(self, info: FileInfo) -> str:
        """A printable name for a data file (URL without secrets, or local path)."""
        return lfs.display(self.fs, self.file_path(info))

    def _locate(self, info: FileInfo) -> tuple[pafs.FileSystem, str]:
        if self.file_cache is not None:
            return self.file_cache.get(self, info)
        return self.fs, self.file_path(info)

    def prefetch(self, infos) -> None:
        """Hint the order in which data files will be read: with a local cache (``cache_dir=``) they are
        downloaded ahead, in that order, by parallel I/O threads. A no-op without a cache."""
        if self.file_cache is not None:
            self.file_cache.prefetch(self, list(infos))

    def open_file(self, info: FileInfo, **parquet_options) -> pq.ParquetFile:
        """Open a data file after checking its size and footer against the manifest.

        ``parquet_options`` go to :class:`pyarrow.parquet.ParquetFile` (e.g. ``pre_buffer=False,
        buffer_size=...`` to stream a huge row group instead of buffering it whole).

        Raises:
            CorruptFileError: The file is missing, truncated, resized, or its footer or metadata
                disagree with the manifest.
        """
        fs, path = self._locate(info)
        where = lfs.display(fs, path)
        try:
            f = fs.open_input_file(path)
        except FileNotFoundError as e:
            raise CorruptFileError(f"{where}: data file listed in the manifest is missing", where) from e
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(f"{where}: cannot open ({e})", where) from e
        try:
            size = f.size()
            if size != info.size:
                raise CorruptFileError(
                    f"{where}: {size} bytes, the manifest says {info.size} (truncated or replaced)", where
                )
            footer, footer_size = read_footer(f, size, where)
            if footer_size != info.footer_size or crc32_hex(zlib.crc32(footer)) != info.footer_checksum:
                raise CorruptFileError(f"{where}: Parquet footer fails its checksum", where)
            try:
                metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
                pf = pq.ParquetFile(f, metadata=metadata, page_checksum_verification=True, **parquet_options)
            except (OSError, pa.ArrowException) as e:
                raise CorruptFileError(f"{where}: cannot decode Parquet footer ({e})", where) from e
            groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
            if groups != [g.num_rows for g in info.row_groups]:
                raise CorruptFileError(f"{where}: row groups {groups} disagree with the manifest", where)
            return pf
        except BaseException:
            f.close()
            raise

    def read_row_group(
        self,
        info: FileInfo,
        index: int,
        columns: list[str] | None = None,
        pf: pq.ParquetFile | None = None,
    ) -> pa.Table:
        """Read one row group, verifying page checksums.

        Raises:
            CorruptFileError: The file fails a check or a page fails its CRC; names the file.
        """
        own = pf is None
        pf = pf or self.open_file(info)
        try:
            return pf.read_row_group(index, columns=columns, use_threads=False)
        except RemoteError:
            raise  # the remote storage failed after retries: not a corrupt file
        except (OSError, pa.ArrowException) as e:
            where = self.display(info)
            raise CorruptFileError(f"{where}: row group {index} cannot be read ({e})", where) from e
        finally:
            if own:
                pf.close(force=True)


def _resolve_version(fs: pafs.FileSystem, path: str) -> tuple[str, str]:
    """Return ``(version_dir, manifest_text)`` for a dataset or version directory."""
    manifest_path = lfs.join(path, MANIFEST_NAME)
    try:
        return path, lfs.read_bytes(fs, manifest_path)
    except DatasetNotFoundError:
        pass
    except IsADirectoryError as e:
        raise DatasetNotFoundError(f"{lfs.display(fs, manifest_path)} is not a file") from e
    try:
        name = current_version(fs, path)
    except DatasetNotFoundError as e:
        if not lfs.exists(fs, path):
            raise DatasetNotFoundError(f"{lfs.display(fs, path)} does not exist") from e
        raise DatasetNotFoundError(
            f"{lfs.display(fs, path)} is neither a dataset (no CURRENT) nor a version (no {MANIFEST_NAME})"
        ) from e
    version_dir = lfs.join(path, name)
    manifest_path = lfs.join(version_dir, MANIFEST_NAME)
    try:
        return version_dir, lfs.read_bytes(fs, manifest_path)
    except DatasetNotFoundError as e:
        raise DatasetNotFoundError(
            f"CURRENT of {lfs.display(fs, path)} names {name!r}, but {lfs.display(fs, manifest_path)} is missing"
        ) from e


def open_dataset(
    url: str | os.PathLike | Dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_cache_bytes: int | None = None,
    cache_options: dict | None = None,
    **fs_options,
) -> Dataset:
    """Open a published version from its manifest.

    Args:
        url: A dataset directory (its ``CURRENT`` is followed), a version directory, or a remote URL of
            either. A :class:`Dataset` is returned as is.
        cache_dir: A local directory where remote data files are copied as they are read.
        max_cache_bytes: Cap on the local cache (least recently used files are evicted).
        cache_options: More settings of the local cache (``io_threads``, ``pin_files``...; see
            :class:`loader.cache.FileCache`).
        **fs_options: Passed to the filesystem of the URL's scheme (see :func:`loader.fs.resolve`).

    Raises:
        DatasetNotFoundError: No dataset or version at ``url``.
        ManifestError: The manifest is malformed, of an unknown format version, or names a file
            outside its version directory.
    """
    if isinstance(url, Dataset):
        return url
    fs, path = lfs.resolve(url, **fs_options)
    path = path.rstrip("/") or "/"
    version_dir, text = _resolve_version(fs, path)
    manifest = Manifest.from_json(text, where=lfs.display(fs, lfs.join(version_dir, MANIFEST_NAME)))
    ds = Dataset(url=os.fspath(url), fs=fs, version_path=version_dir, manifest=manifest, fs_options=fs_options)
    if cache_dir is not None:
        from .cache import attach_cache  # local disk cache of remote files

        attach_cache(ds, cache_dir, max_cache_bytes=max_cache_bytes, **(cache_options or {}))
    return ds


__all__ = ["Dataset", "open_dataset", "read_manifest"]
