"""Atomic, versioned publishing of a cache, shared by ``write_cache`` and the Spark job.

Layout under ``<root>/<dataset>/``::

    CURRENT                 one line: the live version's directory name; replaced atomically
    v<UTC stamp>-<fp8>/     a published version; complete iff it holds _manifest.json
    _staging-<id>/          a run in progress (readers never look here)
    _staging-<id>.owner     who runs it: host, pid, start time (locked while the run lives)

A run writes its Parquet files into the staging directory, then :meth:`Staging.commit` builds the
manifest from the files' footers, writes it last, renames the directory to its version name, swaps
``CURRENT`` and prunes old versions. Any failure before the swap leaves the previous version live;
a run that dies leaves a staging directory whose owner lock is free, and the next run removes it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fs as lfs
from .crc import crc32
from .errors import DatasetNotFoundError, EmptyDatasetError, PublishError
from .manifest import (
    CURRENT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STAGING_PREFIX,
    FileInfo,
    Manifest,
    file_info_from_parquet,
    schema_fields,
)

OWNER_SUFFIX = ".owner"
REMOTE_STALE_AFTER_S = 24 * 3600


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return f"larder {version('larder')}"
    except Exception:  # not installed as a distribution (e.g. shipped as a zip to executors)
        return "larder"


def list_versions(fs: pafs.FileSystem, dataset_dir: str) -> list[str]:
    """Names of version directories under ``dataset_dir``, oldest first (complete or not)."""
    return sorted(
        e.base_name
        for e in lfs.listdir(fs, dataset_dir)
        if e.type == pafs.FileType.Directory and e.base_name.startswith("v")
    )


def current_version(fs: pafs.FileSystem, dataset_dir: str, retries: int = 5) -> str:
    """The live version's name from ``CURRENT``.

    On filesystems that cannot replace a file atomically (HDFS), ``CURRENT`` is briefly absent during a
    swap; a missing pointer is retried a few times before it counts as missing.

    Raises:
        DatasetNotFoundError: There is no ``CURRENT`` file.
    """
    path = lfs.join(dataset_dir, CURRENT_NAME)
    for attempt in range(retries + 1):
        try:
            name = lfs.read_bytes(fs, path).decode("utf-8").strip()
        except DatasetNotFoundError:
            name = ""
        if name:
            if "/" in name or name.startswith(".") or not name.startswith("v"):
                raise DatasetNotFoundError(f"{lfs.display(fs, path)} names {name!r}, which is not a version")
            return name
        if attempt < retries:
            time.sleep(0.05 * (attempt + 1))
    raise DatasetNotFoundError(f"no {CURRENT_NAME} in {lfs.display(fs, dataset_dir)}: nothing is published there")


def read_manifest(fs: pafs.FileSystem, version_dir: str) -> Manifest:
    """Load and validate ``<version_dir>/_manifest.json``."""
    path = lfs.join(version_dir, MANIFEST_NAME)
    return Manifest.from_json(lfs.read_bytes(fs, path), where=lfs.display(fs, path))


def current_manifest(fs: pafs.FileSystem, dataset_dir: str) -> Manifest | None:
    """The live version's manifest, or None if nothing is published yet."""
    try:
        name = current_version(fs, dataset_dir, retries=0)
    except DatasetNotFoundError:
        return None
    return read_manifest(fs, lfs.join(dataset_dir, name))


def _owner_alive(fs: pafs.FileSystem, owner_path: str) -> bool:
    """Whether the run that owns a staging directory still lives."""
    if isinstance(fs, pafs.LocalFileSystem):
        import fcntl

        try:
            fd = os.open(owner_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the probe lock
        return False
    try:
        owner = json.loads(lfs.read_bytes(fs, owner_path))
    except (DatasetNotFoundError, ValueError):
        return False
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
            return True
        except (OSError, KeyError, ValueError):
            return False
    return time.time() - float(owner.get("started", 0)) < REMOTE_STALE_AFTER_S


def clean_stale_staging(fs: pafs.FileSystem, dataset_dir: str) -> list[str]:
    """Remove staging directories (and owner files) of runs that are no longer alive."""
    removed = []
    entries = {e.base_name: e for e in lfs.listdir(fs, dataset_dir)}
    for name, entry in entries.items():
        if not name.startswith(STAGING_PREFIX) or name.endswith(OWNER_SUFFIX) or name.startswith("."):
            continue
        owner = lfs.join(dataset_dir, name + OWNER_SUFFIX)
        if _owner_alive(fs, owner):
            continue
        if entry.type == pafs.FileType.Directory:
            fs.delete_dir(entry.path)
        if lfs.exists(fs, owner):
            fs.delete_file(owner)
        removed.append(name)
    # Owner files whose staging directory never got created.
    for name in entries:
        if name.startswith(STAGING_PREFIX) and name.endswith(OWNER_SUFFIX):
            stem = name[: -len(OWNER_SUFFIX)]
            if stem not in entries and stem not in removed and not _owner_alive(fs, lfs.join(dataset_dir, name)):
                fs.delete_file(lfs.join(dataset_dir, name))
    return removed


def prune_versions(fs: pafs.FileSystem, dataset_dir: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the live one."""
    if keep < 1:
        raise ValueError("keep_versions must be at least 1")
    live = current_version(fs, dataset_dir, retries=0)
    versions = list_versions(fs, dataset_dir)
    doomed = [v for v in versions[:-keep] if v != live]
    for name in doomed:
        fs.delete_dir(lfs.join(dataset_dir, name))
    return doomed


def _utc_stamp(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@dataclass
class Staging:
    """A publish in progress. Create with :func:`begin_staging`."""

    fs: pafs.FileSystem
    dataset_dir: str
    name: str
    path: str
    _lock_fd: int | None = field(default=None, repr=False)
    finished: bool = False

    @property
    def dataset(self) -> str:
        """The dataset's name (last part of its directory)."""
        return self.dataset_dir.rstrip("/").rsplit("/", 1)[-1]

    def parquet_files(self) -> list[str]:
        """Relative paths of the Parquet data files written into the staging directory, sorted."""
        if not lfs.exists(self.fs, self.path):
            return []
        found = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        rels = []
        for info in found:
            rel = info.path[len(self.path.rstrip("/")) + 1 :]
            base = rel.rsplit("/", 1)[-1]
            if info.type == pafs.FileType.File and base.endswith(".parquet") and not base.startswith(("_", ".")):
                rels.append(rel)
        return sorted(rels)

    def commit(
        self,
        *,
        source: dict | None = None,
        created_by: dict | None = None,
        vocabularies: dict[str, list] | None = None,
        block_size: int = 128 << 20,
        row_group_target: int | None = None,
        extra: dict | None = None,
        keep_versions: int = 3,
        fingerprint: str | None = None,
        files: Iterable[FileInfo] | None = None,
        arrow_schema: pa.Schema | None = None,
    ) -> str:
        """Publish the staged files as the new live version.

        Args:
            source: What the data was made from (table, path, filter, columns, fingerprint...).
            created_by: The job and its configuration.
            vocabularies: Static-transform vocabularies, output column -> ordered values.
            block_size: The storage block size the row groups were sized for.
            row_group_target: The row-group byte target (default 0.95 × block size).
            extra: More manifest fields (statistics, shuffle seed...).
            keep_versions: How many versions to keep after publishing (the live one always stays).
            fingerprint: Source fingerprint; its first 8 hex digits name the version. Defaults to a
                digest of the files' checksums.
            files: Precomputed file entries (e.g. computed by executors); by default built from the
                staged files' footers.
            arrow_schema: The schema; by default read from the first file's footer.

        Returns:
            The published version's directory name.

        Raises:
            EmptyDatasetError: No rows were staged; nothing is published.
            PublishError: A step failed; the previous version stays live.
        """
        if self.finished:
            raise PublishError(f"{self.name} was already committed or aborted")
        fs = self.fs
        try:
            if files is None:
                files = [file_info_from_parquet(fs, lfs.join(self.path, rel), rel) for rel in self.parquet_files()]
            files = tuple(files)
            if not files or sum(f.num_rows for f in files) == 0:
                raise EmptyDatasetError(
                    f"nothing to publish for dataset {self.dataset!r}: the selection holds no rows"
                )
            if arrow_schema is None:
                with fs.open_input_file(lfs.join(self.path, files[0].path)) as f:
                    arrow_schema = pq.read_schema(f)
            fp = fingerprint or f"{crc32(''.join(f.checksum for f in files).encode()) & 0xFFFFFFFF:08x}"
            fp8 = "".join(c for c in fp.lower() if c in "0123456789abcdef")[:8].ljust(8, "0")
            now = time.time()
            existing = list_versions(fs, self.dataset_dir)
            if existing:  # names must sort in publish order, even for runs within one second
                last = _dt.datetime.strptime(existing[-1][1:16], "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc)
                now = max(now, last.timestamp() + 1)
            version = f"v{_utc_stamp(now)}-{fp8}"
            src = dict(source or {})
            if fingerprint is not None:
                src.setdefault("fingerprint", fingerprint)
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                dataset=self.dataset,
                version=version,
                created_at=_dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat().replace("+00:00", "Z"),
                created_by={"tool": _tool_version(), **(created_by or {})},
                source=src,
                schema_fields=schema_fields(arrow_schema),
                arrow_schema=arrow_schema,
                vocabularies=dict(vocabularies or {}),
                block_size=int(block_size),
                row_group_target=int(row_group_target or int(0.95 * block_size)),
                files=files,
                extra=dict(extra or {}),
            )
            text = manifest.to_json()
            Manifest.from_json(text, where="new manifest")  # never publish what a reader would refuse
            lfs.write_bytes_atomic(fs, lfs.join(self.path, MANIFEST_NAME), text.encode("utf-8"))
            version_dir = lfs.join(self.dataset_dir, version)
            fs.move(self.path, version_dir)
            lfs.write_bytes_atomic(fs, lfs.join(self.dataset_dir, CURRENT_NAME), (version + "\n").encode())
        except EmptyDatasetError:
            self.abort()
            raise
        except BaseException as e:
            self.abort()
            if isinstance(e, (OSError, pa.ArrowException, ValueError)):
                raise PublishError(
                    f"publishing {lfs.display(fs, self.dataset_dir)} failed; the previous version stays live: {e}"
                ) from e
            raise
        self._release()
        try:
            prune_versions(fs, self.dataset_dir, keep_versions)
        except OSError:
            pass  # an old version in use elsewhere; the next run prunes it
        return version

    def abort(self) -> None:
        """Remove the staging directory; the live version is untouched."""
        if self.finished:
            return
        try:
            if lfs.exists(self.fs, self.path):
                self.fs.delete_dir(self.path)
        finally:
            self._release()

    def _release(self) -> None:
        self.finished = True
        owner = self.path + OWNER_SUFFIX
        try:
            if lfs.exists(self.fs, owner):
                self.fs.delete_file(owner)
        except OSError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.finished:
            self.abort()


def begin_staging(fs: pafs.FileSystem, root: str, name: str) -> Staging:
    """Start a publish of dataset ``name`` under ``root``: clean dead runs, claim a staging directory.

    The staging directory itself is not created, so a writer that insists on a fresh directory (Spark)
    can create it.

    Raises:
        PublishError: The destination cannot be created or written.
    """
    if not name or "/" in name or name.startswith((".", "_")):
        raise PublishError(f"dataset name {name!r} must be a plain directory name")
    dataset_dir = lfs.join(root, name)
    try:
        fs.create_dir(dataset_dir, recursive=True)
        clean_stale_staging(fs, dataset_dir)
        stage = f"{STAGING_PREFIX}{_utc_stamp(time.time())}-{uuid.uuid4().hex[:8]}"
        path = lfs.join(dataset_dir, stage)
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        lfs.write_bytes(fs, path + OWNER_SUFFIX, json.dumps(owner).encode())
    except OSError as e:
        raise PublishError(f"cannot write to {lfs.display(fs, dataset_dir)}: {e}") from e
    lock_fd = None
    if isinstance(fs, pafs.LocalFileSystem):
        import fcntl

        lock_fd = os.open(path + OWNER_SUFFIX, os.O_RDONLY)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return Staging(fs=fs, dataset_dir=dataset_dir, name=stage, path=path, _lock_fd=lock_fd)
