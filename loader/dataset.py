"""Open a published cache from its manifest alone, and open its data files safely.

``open_dataset`` reads one or two small files (``CURRENT`` and ``_manifest.json``); it never lists the
version directory or touches a data file, so opening is constant time in the number of files.
:meth:`Dataset.open_file` is the one door to a data file: it checks the size against the manifest on every open,
and the footer's checksum once per copy of the file (:mod:`loader.footers`: a parsed footer is kept, not read
again per row group), and turns Parquet page-CRC failures into :class:`CorruptFileError` naming the file. A locally
cached copy that fails any check is dropped and read once more from a fresh download, on every read path
(:meth:`Dataset.with_fresh_copy`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fs as lfs
from .crc import crc32
from .dataset_checks import DatasetChecks, check_rows
from .errors import ConfigError, CorruptFileError, DatasetNotFoundError, RemoteError
from .footers import VerifiedFooters, open_checked
from .manifest import (
    CURRENT_NAME,
    MANIFEST_NAME,
    FileInfo,
    Manifest,
    chunk_inside,
    chunk_range,
)
from .publish import current_version, list_versions, read_manifest

T = TypeVar("T")


@dataclass
class Dataset(DatasetChecks):
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
    _leaves: dict = field(default_factory=dict, repr=False, compare=False)  # columns -> Parquet leaf indices
    _types: dict = field(default_factory=dict, repr=False, compare=False)  # column names -> manifest types
    _empty_checked: bool = field(default=False, repr=False, compare=False)  # check_empty_files passed
    # Footers checked against the manifest, per copy of a file (loader.footers); a copy of the dataset gets its own.
    _footers: VerifiedFooters = field(default_factory=VerifiedFooters, init=False, repr=False, compare=False)

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
        buffer_size=...`` to stream a huge row group instead of buffering it whole). A locally cached copy
        that fails the checks is fetched again once (:meth:`with_fresh_copy`).

        Raises:
            CorruptFileError: The file is missing, truncated, resized, or its footer or metadata
                disagree with the manifest.
            VersionRemovedError: The file is missing because a newer publish pruned this version.
        """
        return self.with_fresh_copy(info, lambda fresh: self.open_copy(info, **parquet_options)[0])

    def open_copy(self, info: FileInfo, **parquet_options) -> tuple[pq.ParquetFile, str]:
        """Open the copy of a data file that reads go to (the local cache's, or the file itself), checked as
        :meth:`open_file` checks it but without fetching a bad cached copy again: for reads that
        :meth:`with_fresh_copy` repeats as a whole.

        Returns:
            ``(file, printable name of the copy)``: errors of reads from the file name the copy.

        Raises:
            CorruptFileError: As :meth:`open_file`, naming the copy.
        """
        f, metadata, where = self._open_checked(info)
        try:
            return pq.ParquetFile(f, metadata=metadata, page_checksum_verification=True, **parquet_options), where
        except (OSError, pa.ArrowException) as e:
            f.close()
            raise CorruptFileError(f"{where}: cannot decode Parquet footer ({e})", where) from e
        except BaseException:
            f.close()
            raise

    def with_fresh_copy(self, info: FileInfo, read: Callable[[bool], T]) -> T:
        """``read(False)``; if it fails on a locally cached copy, drop that copy and ``read(True)`` once.

        The one rule for a cached copy that turns out bad while it is read (rot that kept its size and
        mtime, so its verification marker still vouched for it; a truncation; an eviction race): the copy
        is discarded (:meth:`loader.cache.FileCache.discard`) and the read repeated once on a fresh download
        of the remote file, the master copy. Every read path goes through here: whole row groups checked
        against their chunk checksums, pages checked by their CRCs, and streamed slices of a row group
        (:mod:`loader.tasks`).

        Args:
            info: The data file.
            read: Opens the file (:meth:`open_copy`, or a method that locates it) and reads it; raises
                :class:`CorruptFileError` naming the copy it read. ``read(True)`` must open the file anew
                (that open fetches the fresh copy); ``read(False)`` may go on with a file it already has open.

        Raises:
            CorruptFileError: The fresh copy fails too (names the remote file); or the failure was not a
                cached copy's (no local cache, or the remote file itself does not match the manifest), raised
                as it is.
        """
        try:
            return read(False)
        except CorruptFileError as e:
            if not self._cached_copy_failed(info, e):
                raise
            self._footers.forget(info.path)
        try:
            return read(True)
        except CorruptFileError as e:
            where = self.display(info)
            raise CorruptFileError(f"{where}: a fresh copy from the remote storage fails too: {e}", where) from e

    def _cached_copy_failed(self, info: FileInfo, error: CorruptFileError) -> bool:
        """Tell the file cache that its copy of ``info`` failed ``error``; True if a copy was dropped."""
        cache_dir = getattr(self.file_cache, "cache_dir", None)
        if cache_dir is None or not str(error.path or "").startswith(os.path.join(cache_dir, "")):
            return False  # no cache, or the remote file itself is at fault
        self.file_cache.discard(self, info)
        return True

    def _copy_name(self, info: FileInfo) -> str:
        """The printable name of the copy :meth:`open_file` opens: the cached copy's path, or the file's."""
        if self.file_cache is not None:
            return self.file_cache.local_path(self, info)
        return self.display(info)

    def _open_checked(self, info: FileInfo,
                      located: tuple[pafs.FileSystem, str] | None = None) -> tuple[pa.NativeFile, pq.FileMetaData, str]:
        """Open a data file (the copy reads go to, or ``located``: filesystem and path), check its size and, once per
        copy (:mod:`loader.footers`), its footer checksum and row groups; returns ``(file, metadata, printable
        name)``.

        Raises:
            VersionRemovedError: The file is missing because a newer publish pruned this version.
        """
        try:
            fs, path = located or self._locate(info)
            return open_checked(fs, path, info, self._footers)
        except (CorruptFileError, RemoteError) as e:  # RemoteError: a missing remote file, from the cache's download
            removed = self._removed_version(info, e)
            if removed is None:
                raise
            raise removed from e

    def close(self) -> None:
        """Release what this dataset object holds: its local file cache's download threads and pins
        (:meth:`loader.cache.FileCache.close`), its filesystem's HTTP connections (WebHDFS) and its parsed
        footers. Idempotent; the dataset stays usable: a later read opens what it needs again (a reader restarted
        with ``load_state_dict``)."""
        if self.file_cache is not None:
            self.file_cache.close()
        self._footers.clear()
        lfs.close_connections(self.fs)

    def read_row_group(
        self,
        info: FileInfo,
        index: int,
        columns: list[str] | None = None,
        pf: pq.ParquetFile | None = None,
    ) -> pa.Table:
        """Read one row group, verifying its checksums.

        Without ``pf``, when the manifest holds the row group's column-chunk checksums, the selected
        column chunks are read into memory once, checked against them (one fast CRC-32 pass), and decoded
        from memory without Parquet's slower per-page CRCs. Otherwise (or with ``pf``, a file from
        :meth:`open_file`) the pages are decoded and checked with their page CRCs. Either way a locally
        cached copy that fails is fetched again once (:meth:`with_fresh_copy`; a failing ``pf`` is then
        left as it is, and the row group read from a fresh copy opened here).

        Raises:
            CorruptFileError: The file fails a check, a column chunk fails its checksum or a page its CRC;
                names the file (and the row group and column).
        """
        if pf is None and info.row_groups[index].column_checksums:
            table = self.with_fresh_copy(info, lambda fresh: self._read_checked_chunks(info, index, columns))
            return self.check_types(table, info, index, columns)

        def read(fresh: bool) -> pa.Table:
            if pf is not None and not fresh:
                where = self._copy_name(info)
                return check_rows(self._read_pages(pf, where, index, columns), info, index, where)
            own, where = self.open_copy(info)
            try:
                return check_rows(self._read_pages(own, where, index, columns), info, index, where)
            finally:
                own.close(force=True)

        return self.check_types(self.with_fresh_copy(info, read), info, index, columns)

    @staticmethod
    def _read_pages(pf: pq.ParquetFile, where: str, index: int, columns: list[str] | None) -> pa.Table:
        """Decode row group ``index`` of ``pf`` (the copy named ``where``), checking its page CRCs."""
        try:
            return pf.read_row_group(index, columns=columns, use_threads=False)
        except RemoteError:
            raise  # the remote storage failed after retries: not a corrupt file
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(f"{where}: row group {index} cannot be read ({e})", where) from e

    def _read_checked_chunks(self, info: FileInfo, index: int, columns: list[str] | None) -> pa.Table:
        """Read a row group's selected column chunks, verify each against the manifest, decode from memory.

        The chunks are read with positional reads into one private buffer the size of the file (filled only
        at the chunks read: untouched pages cost no memory), checksummed there while the bytes are in the CPU
        cache, and decoded from it. A memory map of local files was slower: its page faults on first touch
        cost more than the copy (bench: 1.28 against 1.00 CPU us per row to read, check and decode).
        """
        f, metadata, where = self._open_checked(info)
        try:
            expected = info.row_groups[index].column_checksums
            rg = metadata.row_group(index)
            if len(expected) != rg.num_columns:
                raise CorruptFileError(
                    f"{where}: row group {index} has {rg.num_columns} column chunks, the manifest "
                    f"{len(expected)} checksums", where)
            buf = pa.allocate_buffer(info.size)
            view = np.frombuffer(buf, dtype=np.uint8)
            for c in self._leaf_columns(columns, rg.num_columns):
                chunk = rg.column(c)
                start, length = chunk_range(chunk)
                if not chunk_inside(start, length, info.size):
                    raise CorruptFileError(f"{where}: row group {index} column {chunk.path_in_schema} lies "
                                           "outside the file", where)
                f.seek(start)
                data = view[start : start + f.readinto(view[start : start + length])]  # one copy
                if len(data) != length or f"{crc32(data) & 0xFFFFFFFF:08x}" != expected[c]:
                    raise CorruptFileError(
                        f"{where}: row group {index} column {chunk.path_in_schema} fails its checksum", where)
            pf = pq.ParquetFile(pa.BufferReader(buf), metadata=metadata, pre_buffer=False)
            return check_rows(pf.read_row_group(index, columns=columns, use_threads=False), info, index, where)
        except RemoteError:
            raise  # the remote storage failed after retries: not a corrupt file
        except CorruptFileError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(f"{where}: row group {index} cannot be read ({e})", where) from e
        finally:
            f.close()


_FOLLOW_CURRENT = 5  # versions CURRENT may name in turn while one open_dataset reads it (publishes pruning them)


def _resolve_version(fs: pafs.FileSystem, path: str) -> tuple[str, str]:
    """Return ``(version_dir, manifest_text)`` for a dataset or version directory.

    A dataset directory's ``CURRENT`` is followed; if the manifest of the version it named is missing, ``CURRENT``
    is read again and followed if it moved meanwhile (a publish with ``keep_versions=1`` prunes the version it
    replaced right after its swap), a few times, before the version counts as missing.
    """
    text, _ = _manifest_text(fs, path)
    if text is not None:
        return path, text
    try:
        name = current_version(fs, path)
    except DatasetNotFoundError as e:
        if e.__cause__ is not None and not isinstance(e.__cause__, FileNotFoundError):
            raise  # CURRENT is there but unusable (a symlink loop, not UTF-8): its message says why
        kind = fs.get_file_info(path).type  # asked once: does it exist, and is it a file
        if kind == pafs.FileType.NotFound:
            raise DatasetNotFoundError(f"{lfs.display(fs, path)} does not exist") from e
        if kind == pafs.FileType.File:
            raise DatasetNotFoundError(f"{lfs.display(fs, path)} is a file: open the dataset's directory (the "
                                       "one holding CURRENT) or a version directory") from e
        if lfs.exists(fs, lfs.join(path, CURRENT_NAME)):
            raise  # CURRENT is there but unusable: its own message says why
        raise DatasetNotFoundError(
            f"{lfs.display(fs, path)} is neither a dataset (no CURRENT) nor a version (no {MANIFEST_NAME})"
            f"{_orphaned_versions(fs, path)}"
        ) from e
    for _ in range(_FOLLOW_CURRENT):
        version_dir = lfs.join(path, name)
        text, missing = _manifest_text(fs, version_dir)
        if text is not None:
            return version_dir, text
        # A publish may have moved CURRENT on and pruned this version since CURRENT was read: read it again.
        try:
            again = current_version(fs, path, retries=0)
        except DatasetNotFoundError:
            break
        if again == name:
            break
        name = again
    raise DatasetNotFoundError(f"CURRENT of {lfs.display(fs, path)} names {name!r}, but "
                               f"{lfs.display(fs, lfs.join(path, name, MANIFEST_NAME))} is missing") from missing


def _manifest_text(fs: pafs.FileSystem, version_dir: str) -> tuple[str | None, DatasetNotFoundError | None]:
    """``(text, None)`` of ``<version_dir>/_manifest.json``, or ``(None, the error)`` when it does not exist.

    Raises:
        DatasetNotFoundError: It is there but cannot be read (a directory, a FIFO...): its message says why.
    """
    try:
        return lfs.read_bytes(fs, lfs.join(version_dir, MANIFEST_NAME)), None
    except DatasetNotFoundError as e:
        if not isinstance(e.__cause__, (FileNotFoundError, NotADirectoryError)):
            raise
        return None, e


def _orphaned_versions(fs: pafs.FileSystem, path: str) -> str:
    """A hint when ``path`` holds complete versions but lost its ``CURRENT``: the newest one, and how to go on.
    Local directories are listed; a remote one is not (an error path should not cost the name node a listing
    and a status per version), and gets the advice without names."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return (f"; if it holds complete versions, its {CURRENT_NAME} is lost: open a version directly, or "
                f"write a version's name into {lfs.display(fs, lfs.join(path, CURRENT_NAME))}")
    try:
        done = [v for v in list_versions(fs, path) if lfs.exists(fs, lfs.join(path, v, MANIFEST_NAME))]
    except (OSError, pa.ArrowException, DatasetNotFoundError):  # cannot be listed: the message stands alone
        return ""
    if not done:
        return ""
    return (f"; it holds {len(done)} complete version(s), the newest {done[-1]!r}: open "
            f"{lfs.display(fs, lfs.join(path, done[-1]))} directly, or write its name into "
            f"{lfs.display(fs, lfs.join(path, CURRENT_NAME))} to make it live again")


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
        ConfigError: ``url`` is not a str, os.PathLike or Dataset, or is empty.
        DatasetNotFoundError: No dataset or version at ``url``.
        ManifestError: The manifest is malformed, of an unknown format version, or names a file
            outside its version directory.
    """
    if isinstance(url, Dataset):
        return url
    where = url if isinstance(url, str) else os.fspath(url) if isinstance(url, os.PathLike) else None
    if not isinstance(where, str) or not where.strip():  # "" would open the current directory
        raise ConfigError(f"url must be a dataset or version path or URL (a non-empty str or os.PathLike) or a "
                          f"Dataset, got {type(url).__name__} {url!r:.80}")
    fs, path = lfs.resolve(url, **fs_options)
    path = path.rstrip("/") or "/"
    version_dir, text = _resolve_version(fs, path)
    manifest = Manifest.from_json(text, where=lfs.display(fs, lfs.join(version_dir, MANIFEST_NAME)))
    ds = Dataset(url=os.fspath(url), fs=fs, version_path=version_dir, manifest=manifest, fs_options=fs_options)
    if cache_dir is not None:
        from .cache import attach_cache  # local disk cache of remote files

        attach_cache(ds, cache_dir, max_cache_bytes=max_cache_bytes, **(cache_options or {}))
    return ds


def pin_version(url: str | os.PathLike | Dataset, **fs_options) -> str | Dataset:
    """``url`` narrowed to the version it names now: a dataset directory's ``CURRENT`` is followed once.

    Readers opened later on the result (in another epoch, in a DataLoader worker) read that version even
    after a newer one is published, as one :func:`loader.make_reader` does for all its epochs. A version
    directory is returned as given; a remote URL keeps its scheme, address and query (options) and gains the
    version's name in its path; a local path or ``file://`` URL becomes the version directory's path. An
    opened :class:`Dataset` is one version already: returned as it is.

    Raises:
        DatasetNotFoundError, ManifestError: As :func:`open_dataset`.
    """
    if isinstance(url, Dataset):
        return url
    return pinned(url, **fs_options)[0]


def pinned(url: str | os.PathLike, **fs_options) -> tuple[str, Dataset]:
    """:func:`pin_version`'s URL and the version opened to find it (one open: a publish in between cannot
    separate them)."""
    text = os.fspath(url)
    ds = open_dataset(text, **fs_options)
    _, path = lfs.resolve(text, **fs_options)
    path = path.rstrip("/") or "/"
    if ds.version_path == path:
        return text, ds  # already a version
    suffix = ds.version_path[len(path):]
    assert ds.version_path.startswith(path) and suffix.startswith("/"), (path, ds.version_path)
    if not lfs.is_remote(text):
        return ds.version_path, ds
    parts = urlsplit(text)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix)), ds


__all__ = ["Dataset", "check_rows", "open_dataset", "pin_version", "read_manifest"]
