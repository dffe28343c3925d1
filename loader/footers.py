"""Open a data file checked against the manifest, checking and parsing its footer once per copy.

Every read of a row group opens its data file (:func:`open_checked`, behind
:meth:`loader.dataset.Dataset._open_checked`): its size is checked on every open, its column chunks (or pages) on
every read. The footer lists every row group of the file, so reading, checksumming and parsing it on every open
made a row group's read cost grow with its file's row groups (4,000 per file: a 2.5 MB footer, 54 ms to parse,
for a read of a few rows; an epoch quadratic in row groups per file). :class:`VerifiedFooters` keeps, per dataset
object (so per process), each file's parsed footer once it matched the manifest (footer size and checksum, row
groups), with the copies it was checked on, told apart by :func:`local_identity`: a local file by path, device,
inode, size and mtime (a rewrite, a replacement, a fresh download into a file cache are other copies, checked
again); a remote file by path and size (its versions are never rewritten in place). Only footers of files of
several row groups are kept: a file of one row group (the Spark job's layout) is opened once an epoch, and its
footer is checked on every open as before, at no cost in memory.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fs as lfs
from .crc import crc32
from .errors import CorruptFileError, RemoteError
from .manifest import FileInfo, crc32_hex, read_footer

FOOTER_CACHE_BYTES = 64 << 20
"""Memory the parsed footers a dataset object keeps may take, estimated (the most recent one is kept whatever
its size: it is in use)."""
PARSED_PER_FOOTER_BYTE = 8
"""A parsed footer's memory per byte of the footer (measured 6 to 9: 4,000 row groups of 6 columns, 2.5 MB of
footer, took 21 MB parsed; the bench's 211 one-row-group files, 0.9 MB of footers, 5.8 MB)."""
_STRIPES = 16  # locks that keep threads from parsing one footer at once (a file's lock: its name's stripe)
_COPIES = 4  # copies of a file remembered as checked (a rewritten local file, a cached copy fetched again)

Copy = tuple
"""A copy's identity (:func:`local_identity`, or ``(filesystem type, path, size)`` of a remote file)."""


@dataclass
class _Footer:
    metadata: pq.FileMetaData
    cost: int  # estimated bytes
    copies: OrderedDict = field(default_factory=OrderedDict)  # Copy -> None, most recent last


class VerifiedFooters:
    """Parsed footers of a dataset's data files, each kept with the copies it was checked on; least recently used
    footers go first once they take more than ``max_bytes`` (estimated). Thread-safe; a copy made by pickling or
    inherited through ``fork`` starts empty.

    Args:
        max_bytes: Estimated memory of the parsed footers kept.
    """

    def __init__(self, max_bytes: int = FOOTER_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._footers: OrderedDict[str, _Footer] = OrderedDict()  # file name in the version -> footer
        self.bytes = 0

    def __reduce__(self):
        return type(self), (self.max_bytes,)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # a lock held by another thread at the fork would never be released here
            self._reset()

    def __len__(self) -> int:
        return len(self._footers)

    def get(self, name: str, copy: Copy | None) -> pq.FileMetaData | None:
        """The parsed footer of file ``name`` if ``copy`` was checked (None: it was not, or is unknown)."""
        self._check_fork()
        with self._lock:
            footer = self._footers.get(name)
            if footer is None or copy is None or copy not in footer.copies:
                return None
            self._footers.move_to_end(name)
            return footer.metadata

    def parsed(self, name: str) -> pq.FileMetaData | None:
        """The parsed footer of file ``name`` checked on any copy (each copy is still checked: its footer's bytes
        against the manifest's checksum, which vouches for this parse)."""
        self._check_fork()
        with self._lock:
            footer = self._footers.get(name)
            return None if footer is None else footer.metadata

    def loading(self, name: str) -> threading.Lock:
        """The lock to hold while checking a copy of file ``name`` (threads reading one file check it once)."""
        self._check_fork()
        return self._stripes[hash(name) % _STRIPES]

    def add(self, name: str, copy: Copy | None, metadata: pq.FileMetaData, footer_size: int) -> None:
        """Keep the parsed footer of file ``name``, checked on ``copy`` (None: keep the parse only)."""
        self._check_fork()
        with self._lock:
            footer = self._footers.get(name)
            if footer is None:
                footer = self._footers[name] = _Footer(metadata, footer_size * PARSED_PER_FOOTER_BYTE)
                self.bytes += footer.cost
            self._footers.move_to_end(name)
            if copy is not None:
                footer.copies[copy] = None
                footer.copies.move_to_end(copy)
                while len(footer.copies) > _COPIES:
                    footer.copies.popitem(last=False)
            while self.bytes > self.max_bytes and len(self._footers) > 1:
                self.bytes -= self._footers.popitem(last=False)[1].cost

    def forget(self, name: str) -> None:
        """Check every copy of file ``name`` again (a copy of it failed a check while being read)."""
        self._check_fork()
        with self._lock:
            footer = self._footers.get(name)
            if footer is not None:
                footer.copies.clear()

    def clear(self) -> None:
        """Drop every footer (the dataset is closed)."""
        self._check_fork()
        with self._lock:
            self._footers.clear()
            self.bytes = 0


def local_identity(fs: pafs.FileSystem, path: str, where: str) -> Copy | None:
    """What tells a local copy of a data file from another: ``(path, device, inode, size, mtime)``; None for a
    file on another filesystem, or one that cannot be looked at (the open that follows says why). One ``stat``
    per open, which also refuses what is no regular file (opening a FIFO would block forever).

    Raises:
        CorruptFileError: ``path`` is a FIFO, a directory or another kind of file that is no regular file.
    """
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, a loop, a NUL byte...: the open says which
        return None
    kind = lfs.mode_kind(st.st_mode)
    if kind is not None:
        raise CorruptFileError(f"{where}: data file listed in the manifest is {kind}, not a regular file", where)
    return ("local", path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_checked(fs: pafs.FileSystem, path: str, info: FileInfo,
                 footers: VerifiedFooters) -> tuple[pa.NativeFile, pq.FileMetaData, str]:
    """Open the copy of data file ``info`` at ``path`` on ``fs``, check its size against the manifest and, unless
    ``footers`` knows the copy, its footer (size, checksum, row groups; kept in ``footers`` for a file of several
    row groups).

    Returns:
        ``(file, parsed footer, printable name of the copy)``.

    Raises:
        CorruptFileError: The copy is missing, no regular file, truncated or resized, or its footer or row groups
            disagree with the manifest; names the copy.
        RemoteError: The remote storage failed (after retries).
    """
    where = lfs.display(fs, path)
    copy = local_identity(fs, path, where)
    try:
        f = fs.open_input_file(path)
        try:
            size = f.size()  # a lazy filesystem (WebHDFS) looks the file up only here
        except BaseException:
            f.close()
            raise
    except RemoteError:
        raise  # a denial or an outage of the storage, not a fault of the file: it names the file already
    except FileNotFoundError as e:
        raise CorruptFileError(f"{where}: data file listed in the manifest is missing", where) from e
    except (OSError, pa.ArrowException) as e:
        raise CorruptFileError(f"{where}: cannot open ({e})", where) from e
    try:
        if size != info.size:
            raise CorruptFileError(f"{where}: {size} bytes, the manifest says {info.size} (truncated or replaced)",
                                   where)
        if copy is None and not isinstance(fs, pafs.LocalFileSystem):
            copy = (fs.type_name, path, size)
        if len(info.row_groups) < 2:  # opened once an epoch: nothing to gain from keeping its footer in memory
            return f, _check_footer(f, size, info, where, None), where
        metadata = footers.get(info.path, copy)
        if metadata is None:
            with footers.loading(info.path):
                metadata = footers.get(info.path, copy)  # checked by another thread meanwhile?
                if metadata is None:
                    metadata = _check_footer(f, size, info, where, footers.parsed(info.path))
                    footers.add(info.path, copy, metadata, info.footer_size)
        return f, metadata, where
    except BaseException:
        f.close()
        raise


def _check_footer(f: pa.NativeFile, size: int, info: FileInfo, where: str,
                  parsed: pq.FileMetaData | None) -> pq.FileMetaData:
    """Read a copy's footer and check it against the manifest; returns it parsed (``parsed``, the same footer
    parsed from another copy, when given).

    Raises:
        CorruptFileError: The footer's size or checksum, or its row groups, disagree with the manifest.
    """
    footer, footer_size = read_footer(f, size, where)
    if footer_size != info.footer_size or crc32_hex(crc32(footer)) != info.footer_checksum:
        raise CorruptFileError(f"{where}: Parquet footer fails its checksum", where)
    if parsed is not None:
        return parsed
    try:
        metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    except (OSError, pa.ArrowException) as e:
        raise CorruptFileError(f"{where}: cannot decode Parquet footer ({e})", where) from e
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    if groups != [g.num_rows for g in info.row_groups]:
        raise CorruptFileError(f"{where}: row groups {groups} disagree with the manifest's "
                               f"{[g.num_rows for g in info.row_groups]}", where)
    return metadata


__all__ = ["FOOTER_CACHE_BYTES", "VerifiedFooters", "local_identity", "open_checked"]
