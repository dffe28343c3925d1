"""A local disk cache of *decoded* row groups: later epochs and later runs skip Parquet decoding.

Decoding Parquet (decompression, dictionary and byte-array decoding into Arrow buffers) is most of a
reader's CPU once the data is local. With ``make_reader(..., decoded_cache_dir=DIR)`` every row group read
from Parquet (checked against the manifest's checksums as always) is also written to ``DIR`` as an
uncompressed Arrow IPC file; the next read of that row group, in this or any later process on the machine,
maps the file and uses its buffers in place (zero copy, no decode). This is what Petastorm's local-disk
cache and ``tf.data.Dataset.cache(filename)`` do; the files are plain Arrow IPC plus a small trailer
(``pa.ipc.open_file(pa.py_buffer(data[:-16]))`` opens one).

Layout: ``DIR/<dataset>/<version>/<columns key>/<data file>.rg<k>.arrow``, the columns key being a hash of the
selected columns and their Arrow types (another selection gets its own files). Each file is the IPC file
followed by a 16-byte trailer (``LRDC`` magic, CRC-32 of the IPC bytes, their length), written under a
temporary name and renamed into place, so a reader never sees a partial file and concurrent readers of one
machine share the files safely. Every read checks size, trailer and CRC-32 (``loader.crc``: memory speed
with zlib-ng); a file that fails is deleted and its row group decoded from the checked Parquet again, so a
truncated or corrupt cache file never yields wrong rows. Each file also records what it was decoded from (the
Arrow schema's ``larder.source`` metadata: data file, its size and checksum in the manifest, row group, rows and
columns; :func:`source_of`), and a file that does not match the row group asked for (swapped, copied or renamed
from elsewhere) is rejected the same way.

Space: decoded files take about the manifest's uncompressed bytes. ``max_bytes`` caps the bytes the cache
holds on disk for the dataset version, ``DIR/<dataset>/<version>/`` (every column selection together, written
by any reader, pass, worker or process): a cache counts the files there when it is made, keeps the count up
to date as it writes, and counts again before it stores a file (unless its last count is younger than
:data:`RECOUNT_RATIO` times what that count took: counting costs at most about 5% of the time, even in a
directory of very many files), seeing other processes' files and removals. A new row group is simply not
cached once it would not fit. So readers made one after the other (the torch adapter makes one per pass,
a restarted job another) never take the directory past the cap; writers running at the same time
(DataLoader workers, several processes) may together go past it by the files the others were writing at
that moment (about a row group each; more only in a directory so large that counts are spaced out).
Nothing is evicted
automatically: remove the version directories you no longer train on (``DIR/<dataset>/<old version>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from .crc import crc32

MAGIC = b"LRDC"
_TRAILER = struct.Struct("<4sIQ")  # magic, CRC-32 of the IPC bytes, their length
SOURCE_KEY = b"larder.source"
"""Schema metadata key of a decoded file: what it was decoded from (:func:`source_of`)."""


def source_of(info, row_group: int, columns) -> bytes:
    """What a decoded row group comes from: data file (manifest-relative path, size, checksum), row group,
    rows and columns, as the key :class:`DecodedCache` stores in and checks against each file.

    Args:
        info: The data file's :class:`loader.manifest.FileInfo`.
        row_group: The row group's index in the file.
        columns: The columns decoded.
    """
    return json.dumps([info.path, info.size, info.checksum, row_group, info.row_groups[row_group].num_rows,
                       list(columns)]).encode()


def columns_key(schema: pa.Schema) -> str:
    """A short hash naming a column selection (names and Arrow types)."""
    text = "\n".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


RECOUNT_RATIO = 20
"""A capped cache counts its version directory's bytes again before storing a file unless its last count is
younger than this many times what that count took."""


@dataclass
class DecodedCache:
    """Decoded row groups of one dataset version and column selection (picklable: a process pool's
    workers read and fill the same directory).

    Attributes:
        root: The directory of this version and selection.
        max_bytes: Most bytes the files under ``scope`` may take (every writer's, this one's decoding threads
            included; a file is stored only if it fits); None: no cap.
        scope: The directory whose bytes count against ``max_bytes``: the version's directory for
            :meth:`for_dataset` (every column selection), ``root`` when None.
        added: Bytes this cache wrote (in this process).
        held: Bytes counted under ``scope``: at the last count, plus what this cache wrote or is writing since.
    """

    root: str
    max_bytes: int | None = None
    scope: str | None = None
    added: int = field(default=0, compare=False)
    held: int = field(default=0, compare=False)
    hits: int = field(default=0, compare=False)
    misses: int = field(default=0, compare=False)
    rejected: int = field(default=0, compare=False)
    _writing: int = field(default=0, repr=False, compare=False)  # bytes reserved by this cache's stores under way
    _counted_at: float | None = field(default=None, repr=False, compare=False)
    _count_seconds: float = field(default=0.0, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _writing=0)

    @classmethod
    def for_dataset(cls, directory: str | os.PathLike, dataset: str, version: str, schema: pa.Schema,
                    max_bytes: int | None = None) -> DecodedCache:
        """The cache of ``dataset``/``version`` for the columns of ``schema`` under ``directory`` (the
        partial files of writers that died there are removed; with a cap, the version's files are counted)."""
        scope = os.path.join(os.fspath(directory), dataset, version)
        cache = cls(os.path.join(scope, columns_key(schema)), max_bytes, scope)
        cache.remove_stale_parts()
        if max_bytes is not None:
            with cache._lock:
                cache._count()
        return cache

    def bytes_on_disk(self) -> int:
        """Bytes of the files under ``scope`` (``root`` when None), other writers' partial files included and
        this process's own left out (they are counted as reserved while being written)."""
        mine = f".{os.getpid()}-"
        total = 0
        for dirpath, _, names in os.walk(self.scope or self.root):
            for name in names:
                if name.endswith(".part") and mine in name:
                    continue
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed meanwhile
                    continue
        return total

    def _count(self) -> None:
        """Count the bytes under ``scope`` again (with the lock held)."""
        t0 = time.monotonic()
        self.held = self.bytes_on_disk() + self._writing
        self._counted_at = time.monotonic()
        self._count_seconds = self._counted_at - t0

    def _reserve(self, estimate: int) -> bool:
        """Reserve room for a file of about ``estimate`` bytes; False when it would take ``scope`` past the cap."""
        with self._lock:  # reserve first: concurrent threads never exceed the cap together
            if self.max_bytes is not None:
                if self._counted_at is None or (time.monotonic() - self._counted_at
                                                >= RECOUNT_RATIO * self._count_seconds):
                    self._count()
                if self.held + estimate > self.max_bytes:
                    return False
            self.held += estimate
            self.added += estimate
            self._writing += estimate
            return True

    def remove_stale_parts(self) -> int:
        """Remove the ``.part`` files of writers that are gone (a reader killed while storing); returns how
        many. A part is named ``<file>.<pid>-<hex>.part``: its writer is gone when that process no longer
        exists on this host, or, for a part without a pid (or of another host), after an hour."""
        removed = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if not name.endswith(".part"):
                    continue
                path = os.path.join(dirpath, name)
                pid = name[:-5].rsplit(".", 1)[-1].split("-", 1)[0]
                try:
                    young = time.time() - os.path.getmtime(path) < 3600
                    if young and (not pid.isdigit() or _alive(int(pid))):  # its writer may still be at it
                        continue
                    os.unlink(path)
                    removed += 1
                except OSError:  # gone already, or not ours to remove
                    continue
        return removed

    def path(self, data_file: str, row_group: int) -> str:
        """Where a row group of a data file (its manifest-relative path) is cached."""
        return os.path.join(self.root, f"{data_file}.rg{row_group}.arrow")

    def get(self, data_file: str, row_group: int, decode: Callable[[], pa.Table], source: bytes = b"") -> pa.Table:
        """The row group from the cache, or ``decode()``d (and cached, within the cap).

        Args:
            data_file: The data file's manifest-relative path.
            row_group: The row group's index in the file.
            decode: Decodes the row group from the checked Parquet.
            source: What the row group is decoded from (:func:`source_of`): stored with the file, and a cached
                file recording anything else is rejected (decoded again).
        """
        path = self.path(data_file, row_group)
        table = self._load(path, source)
        if table is not None:
            self.hits += 1
            return table
        self.misses += 1
        table = decode()
        estimate = table.nbytes + 4096  # IPC framing; corrected once written
        if not self._reserve(estimate):
            return table
        written = 0
        try:
            written = self._store(path, table, source)
        finally:
            with self._lock:
                self._writing -= estimate
                self.added += written - estimate
                self.held += written - estimate
        return table

    def _load(self, path: str, source: bytes) -> pa.Table | None:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO put there would block the open forever
                return self._reject(path)
            mapped = pa.memory_map(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return self._reject(path)
        try:
            size = mapped.size()
            if size < _TRAILER.size:
                return self._reject(path)
            buf = mapped.read_buffer(size)  # zero-copy view of the mapping
            magic, crc, length = _TRAILER.unpack(buf.slice(size - _TRAILER.size).to_pybytes())
            body = buf.slice(0, size - _TRAILER.size)
            if magic != MAGIC or length != body.size or crc32(body) & 0xFFFFFFFF != crc:
                return self._reject(path)
            try:
                ipc = pa.ipc.open_file(body)
                meta = dict(ipc.schema.metadata or {})
                if meta.pop(SOURCE_KEY, None) != source:  # another row group's file (swapped, copied)
                    return self._reject(path)
                return ipc.read_all().replace_schema_metadata(meta or None)
            except (OSError, pa.ArrowException):
                return self._reject(path)
        finally:
            mapped.close()  # tables read from a mapping keep their region mapped

    def _reject(self, path: str) -> None:
        """A cached file failed its checks: remove it (the caller decodes the Parquet again)."""
        self.rejected += 1
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except OSError:
            return None
        with self._lock:
            self.held -= size
        return None

    def _store(self, path: str, table: pa.Table, source: bytes) -> int:
        """Write ``table`` under ``path`` (temporary name, then rename), recording ``source``; bytes written, 0
        if it failed.

        The IPC bytes go straight to the file; their CRC-32 is taken from the written file (page cache)."""
        tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_KEY: source})
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with pa.OSFile(tmp, "wb") as sink:
                with pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
                length = sink.tell()
            written = pa.memory_map(tmp)
            try:
                crc = crc32(written.read_buffer(length)) & 0xFFFFFFFF
            finally:
                written.close()
            with open(tmp, "ab") as f:
                f.write(_TRAILER.pack(MAGIC, crc, length))
            os.replace(tmp, path)
        except (OSError, pa.ArrowException):  # a full or read-only disk only costs the speed-up
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return 0
        return length + _TRAILER.size


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


__all__ = ["MAGIC", "RECOUNT_RATIO", "SOURCE_KEY", "DecodedCache", "columns_key", "source_of"]
