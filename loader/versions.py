"""The versions of a dataset directory: which exist, which one ``CURRENT`` names, and which to prune.

:mod:`loader.publish` makes versions (and re-exports these names); :mod:`loader.dataset` opens them.
"""

from __future__ import annotations

import time

import pyarrow.fs as pafs

from . import fs as lfs
from .claims import ABANDONED, PUBLISHED, publish_state, remove
from .errors import ConfigError, DatasetNotFoundError
from .manifest import CURRENT_NAME, MANIFEST_NAME, Manifest


def list_versions(fs: pafs.FileSystem, dataset_dir: str) -> list[str]:
    """Names of version directories under ``dataset_dir``, oldest first (complete or not)."""
    return sorted(
        e.base_name
        for e in lfs.listdir(fs, dataset_dir)
        if e.type == pafs.FileType.Directory and e.base_name.startswith("v")
    )


MAX_VERSION_NAME = 255
"""Longest version name (bytes) CURRENT may hold: a path component on every common filesystem (NAME_MAX)."""


def current_version(fs: pafs.FileSystem, dataset_dir: str, retries: int = 5) -> str:
    """The live version's name from ``CURRENT``.

    On filesystems that cannot replace a file atomically (HDFS), ``CURRENT`` is briefly absent during a
    swap; a missing pointer is retried a few times before it counts as missing.

    Raises:
        DatasetNotFoundError: There is no ``CURRENT`` file, or it does not name a version (not UTF-8
            text, a path, a name that is not a version's).
    """
    path = lfs.join(dataset_dir, CURRENT_NAME)
    missing = None
    for attempt in range(retries + 1):
        try:
            raw = lfs.read_bytes(fs, path)
        except DatasetNotFoundError as e:
            if not isinstance(e.__cause__, (FileNotFoundError, NotADirectoryError)):
                raise  # there, but not a file that can be read (a directory, a FIFO...): its message says why
            raw, missing = b"", e
        name = _decode_current(fs, path, raw)
        if name:
            if ("/" in name or name.startswith(".") or not name.startswith("v") or not name.isprintable()
                    or len(name.encode()) > MAX_VERSION_NAME):  # a NUL byte, a name no filesystem holds
                shown = repr(name) if len(name) <= 80 else f"{name[:60]!r}... ({len(name)} characters)"
                raise DatasetNotFoundError(f"{lfs.display(fs, path)} names {shown}, which is not a version")
            return name
        if attempt < retries:
            time.sleep(0.05 * (attempt + 1))
    raise DatasetNotFoundError(
        f"no {CURRENT_NAME} in {lfs.display(fs, dataset_dir)}: nothing is published there") from missing


def _decode_current(fs: pafs.FileSystem, path: str, raw: bytes) -> str:
    """The version name held by the bytes of ``CURRENT`` at ``path``.

    Raises:
        DatasetNotFoundError: The bytes are not UTF-8 text, so they name no version.
    """
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DatasetNotFoundError(
            f"{lfs.display(fs, path)} holds {raw[:40]!r}, which is not UTF-8 text naming a version"
        ) from e


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


def replaced_by(fs: pafs.FileSystem, version_dir: str) -> tuple[str, bool] | None:
    """Whether a newer publish replaced the version at ``version_dir`` (asked when one of its files is missing).

    :func:`prune_versions` only removes versions ``CURRENT`` no longer names, whole directories at a time.

    Returns:
        ``(the live version's name, whether this version's manifest is gone too: pruned)`` when the ``CURRENT``
        beside ``version_dir`` names another version; None when it names this one, or cannot be read (a version
        directory outside a dataset directory).
    """
    dataset_dir, _, name = version_dir.rstrip("/").rpartition("/")
    try:
        live = current_version(fs, dataset_dir or "/", retries=0)
        if live == name:
            return None
        return live, not lfs.exists(fs, lfs.join(version_dir, MANIFEST_NAME))
    except (OSError, ValueError):  # no CURRENT there, or the storage fails: the caller's error stands
        return None


def prune_versions(fs: pafs.FileSystem, dataset_dir: str, keep: int) -> list[str]:
    """Keep the live version and the ``keep - 1`` newest published versions before it; delete the older ones,
    and the versions whose run died before ``CURRENT`` named them (:data:`~loader.claims.ABANDONED`: never live,
    they do not count).

    Never deleted: the live version, any newer one (a concurrent run may be about to make it live), and any
    version a live run is still publishing (:data:`~loader.claims.PUBLISHING`, also when older than the live
    one: a run that lost a race still reads it). ``CURRENT`` is read before the versions are listed and their
    markers read, so a version whose marker is gone was named by ``CURRENT`` before it was read: the live one or
    an older one.

    Returns:
        The names of the versions deleted.
    """
    if keep < 1:
        raise ConfigError(f"keep_versions must be at least 1, got {keep}")
    live = current_version(fs, dataset_dir, retries=0)
    kept, doomed = 1, []
    for name in reversed([v for v in list_versions(fs, dataset_dir) if v < live]):
        state = publish_state(fs, dataset_dir, name)
        if state == ABANDONED or (state == PUBLISHED and kept >= keep):
            doomed.append(name)
        elif state == PUBLISHED:
            kept += 1
    return [name for name in doomed if remove(fs, lfs.join(dataset_dir, name), directory=True)]


__all__ = ["MAX_VERSION_NAME", "current_manifest", "current_version", "list_versions", "prune_versions",
           "read_manifest", "replaced_by"]
