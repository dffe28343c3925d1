"""Atomic, versioned publishing of a cache, shared by ``write_cache`` and the Spark job.

Layout under ``<root>/<dataset>/``::

    CURRENT                     one line: the live version's directory name; replaced atomically
    v<UTC stamp>-<fp8>/         a published version; complete iff it holds _manifest.json
      _publishing               until CURRENT has named it: its run's staging name (loader.claims)
    .CURRENT.<hex>.tmp          a new CURRENT being written (a killed run's is removed 10 minutes on)
    _staging-<id>/              a run in progress (readers never look here)
    _staging-<id>.owner         who runs it: host, pid, start time (locked while the run lives)
    _staging-<id>.owner.new     an owner file being created, on local disk (not yet a claim)

A run writes its Parquet files into the staging directory, then :meth:`Staging.commit` builds the
manifest from the files' footers, writes it last, renames the directory to its version name, swaps
``CURRENT`` and prunes old versions. Any failure leaves the previous version live and removes the run's
version unless ``CURRENT`` named it; a run that dies leaves a staging directory whose owner lock is free, or a
version that was never live (still marked as its run's, see :func:`loader.claims.publish_state`), and the next
run removes either.

Concurrent runs of one dataset are safe, also on remote storage, which has no locks: see :func:`begin_staging`
for how a staging directory is claimed without a cleaner mistaking it for a dead run, :meth:`Staging.commit` for
how runs that publish at once get distinct version names and move ``CURRENT`` forward only, and
:func:`prune_versions` for why no run prunes a version another run is still publishing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from . import fs as lfs
from .claims import (
    OWNER_SUFFIX,
    PUBLISHED,
    claim,
    clean_stale_staging,
    mark_publishing,
    publish_lock,
    publish_state,
    remove,
    unmark,
)
from .errors import ConfigError, DatasetNotFoundError, EmptyDatasetError, PublishError
from .manifest import (
    CURRENT_NAME,
    MANIFEST_NAME,
    STAGING_PREFIX,
    FileInfo,
    Manifest,
    file_info_from_parquet,
)
from .publish_manifest import manifest_template, version_tag
from .versions import (  # re-exported: what readers and the Spark job import from here
    MAX_VERSION_NAME,
    current_manifest,
    current_version,
    list_versions,
    prune_versions,
    read_manifest,
)

log = logging.getLogger(__name__)
_CLAIM_ATTEMPTS = 5
_NAME_ATTEMPTS = 20
_SWAP_ROUNDS = 10  # reads of CURRENT while runs that publish at once settle it (two or three without a race)


def _utc_stamp(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _stamp_time(version: str) -> float | None:
    """The UTC time in a version name ``v<stamp>-<fp8>`` (None if it has no stamp)."""
    try:
        stamp = _dt.datetime.strptime(version[1:16], "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    return stamp.replace(tzinfo=_dt.timezone.utc).timestamp()


def _next_version(fs: pafs.FileSystem, dataset_dir: str, fp8: str) -> tuple[str, float]:
    """A version name that sorts after every existing version, and its time.

    Names must sort in publish order, even for runs within one second, so a name is at least one
    second after the newest one. Many publishes within a second therefore run ahead of the clock by
    up to one second per publish; the clock catches up as soon as publishes are rarer.
    """
    now = time.time()
    for existing in reversed(list_versions(fs, dataset_dir)):
        last = _stamp_time(existing)
        if last is not None:
            now = max(now, last + 1)
            break
    return f"v{_utc_stamp(now)}-{fp8}", now


@dataclass
class Staging:
    """A publish in progress. Create with :func:`begin_staging`.

    Attributes:
        manifest: After a successful :meth:`commit`, the manifest it published, as readers parse it.
        superseded_by: After a successful :meth:`commit`, the newer version that another run made live while this
            one published (``CURRENT`` then names it, not this run's version); None when this run's went live.
    """

    fs: pafs.FileSystem
    dataset_dir: str
    name: str
    path: str
    _lock_fd: int | None = field(default=None, repr=False)
    finished: bool = False
    manifest: Manifest | None = field(default=None, repr=False)
    superseded_by: str | None = None
    _version: str | None = field(default=None, repr=False)  # the version the staging directory was renamed to
    _swap_tried: bool = field(default=False, repr=False)  # a replace of CURRENT was sent

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

        The manifest is written last into the staging directory, which is then renamed to the version
        name. If another run published that very name meanwhile (same second, same data), the next free
        name is taken and the manifest rewritten; both publishes succeed. ``CURRENT`` then moves to the new
        version, unless a run that named its version later made that one live first: ``CURRENT`` never moves
        back, this run's version (never live) stays until the next publish removes it, the commit succeeds
        with a warning and :attr:`superseded_by` names the live one (see :meth:`_go_live`).

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
            The published version's directory name (its manifest is then in :attr:`manifest`).

        Raises:
            EmptyDatasetError: No rows were staged; nothing is published.
            ConfigError: ``keep_versions`` is below 1; nothing is published.
            PublishError: A step failed; the previous version stays live, this run's version is removed.
        """
        if self.finished:
            raise PublishError(f"{self.name} was already committed or aborted")
        if keep_versions < 1:
            raise ConfigError(f"keep_versions must be at least 1, got {keep_versions}")
        fs = self.fs
        try:
            files = self._staged_files(files)
            template = manifest_template(
                fs, self.path, self.dataset, files, arrow_schema, fingerprint,
                source=source, created_by=created_by, vocabularies=vocabularies, block_size=block_size,
                row_group_target=row_group_target, extra=extra,
            )  # fmt: skip
            with publish_lock(fs, self.dataset_dir):
                manifest = self._rename_into_place(template, version_tag(fingerprint, files))
                live = self._go_live(manifest.version)
                self.manifest = manifest
                if live != manifest.version:
                    self.superseded_by = live
                    log.warning("%s: %s is published but not live: the newer %s went live while this run "
                                "published (%s names it)", lfs.display(fs, self.dataset_dir), manifest.version, live,
                                CURRENT_NAME)
                self._prune(keep_versions)  # while this run's claim lives: its version, if overtaken, is spared
                self._release()
        except (EmptyDatasetError, PublishError) as e:
            self._abort_after(e)
            raise
        except BaseException as e:
            if not isinstance(e, (OSError, pa.ArrowException, ValueError)):
                self._abort_after(e)
                raise
            error = PublishError(
                f"publishing {lfs.display(fs, self.dataset_dir)} failed; the previous version stays live: {e}"
            )
            self._abort_after(error)
            raise error from e
        return manifest.version

    def _staged_files(self, files: Iterable[FileInfo] | None) -> tuple[FileInfo, ...]:
        """The file entries to publish, read from the staged footers unless given.

        Raises:
            EmptyDatasetError: They hold no rows.
        """
        if files is None:
            files = [file_info_from_parquet(self.fs, lfs.join(self.path, rel), rel) for rel in self.parquet_files()]
        files = tuple(files)
        if not files or sum(f.num_rows for f in files) == 0:
            raise EmptyDatasetError(f"nothing to publish for dataset {self.dataset!r}: the selection holds no rows")
        return files

    def _write_manifest(self, manifest: Manifest) -> Manifest:
        """Write ``manifest`` into the staging directory; return it as a reader will parse it."""
        text = manifest.to_json()
        parsed = Manifest.from_json(text, where="new manifest")  # never publish what a reader would refuse
        lfs.write_bytes_atomic(self.fs, lfs.join(self.path, MANIFEST_NAME), text.encode("utf-8"))
        return parsed

    def _rename_into_place(self, template: Manifest, fp8: str) -> Manifest:
        """Rename the staging directory to a fresh version name ``v<stamp>-<fp8>``; return its manifest.

        Raises:
            PublishError: Other runs took every name tried.
        """
        fs = self.fs
        mark_publishing(fs, self.path)  # goes with the directory: the version is this run's until CURRENT names it
        for _ in range(_NAME_ATTEMPTS):
            version, now = _next_version(fs, self.dataset_dir, fp8)
            created_at = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat().replace("+00:00", "Z")
            manifest = self._write_manifest(dataclasses.replace(template, version=version, created_at=created_at))
            target = lfs.join(self.dataset_dir, version)
            try:
                fs.move(self.path, target)
                self._version = version
                return manifest
            except OSError:
                if not (lfs.exists(fs, target) and lfs.exists(fs, self.path)):
                    raise
                # Another run published this very name since the versions were listed: take the next.
        raise PublishError(
            f"publishing {lfs.display(fs, self.dataset_dir)} failed; the previous version stays live: other "
            f"runs published under each of the {_NAME_ATTEMPTS} version names this run chose"
        )

    def _go_live(self, version: str) -> str:
        """Point ``CURRENT`` at ``version`` unless a newer version went live first; return the version it names.

        Remote storage has neither locks nor a compare-and-swap, so runs that publish at once settle ``CURRENT``
        by rules each of them follows (version names sort by time):

        * It only moves to the run's version or to a newer published one (no marker: never one another run is
          still publishing, nor an abandoned one), and only if it still names what the run read before: that is
          read again once the new content is written, just before the rename.
        * A run is done when ``CURRENT`` names a complete version at least as new as that target, read after the
          run removed its own version's marker. If a slower run moved ``CURRENT`` back (its rename landing in the
          instant after its check), whichever of the two looks last finds a newer published version and moves it
          forward again.
        * The version ``CURRENT`` named first was live: its marker, left if its run was killed right after its
          swap, is removed, so pruning counts it as a version that was live.

        A replace whose answer is lost may still have landed, so ``CURRENT`` is read back to tell the truth.
        Once this run's version went live, a failure to check afterwards is only logged.

        Raises:
            PublishError: ``CURRENT`` could not be made to name ``version`` (says which version is live, if known),
                or kept changing for :data:`_SWAP_ROUNDS` reads.
        """
        fs, where = self.fs, lfs.display(self.fs, self.dataset_dir)
        marked, landed = True, False
        for attempt in range(_SWAP_ROUNDS):
            try:
                live = self._live()
                if attempt == 0 and live is not None and live != version:
                    unmark(fs, lfs.join(self.dataset_dir, live))
                target = self._target(version)
                if live is not None and live >= target and lfs.is_file(fs, self._manifest_path(live)):
                    if not marked or (live != version and not landed):
                        # Done; or overtaken before this run's version was ever live: it keeps its marker, so
                        # it counts for no keep_versions and the next publish, once this run is gone, removes it.
                        return live
                    unmark(fs, lfs.join(self.dataset_dir, version))
                    marked = False
                    continue  # and look once more: a run that moved CURRENT meanwhile is put right
            except OSError as e:
                if not landed:
                    raise
                log.warning("%s: published %s, but checking %s afterwards failed: %s", where, version, CURRENT_NAME, e)
                return version
            self._swap_tried = True
            landed = self._replace_current(target, live) == version or landed
        raise PublishError(f"publishing {where} failed: {CURRENT_NAME} kept changing under runs publishing at once "
                           f"({_SWAP_ROUNDS} reads); it names {live}")

    def _live(self) -> str | None:
        """The version ``CURRENT`` names; None if there is none (or it names no version)."""
        try:
            return current_version(self.fs, self.dataset_dir, retries=0)
        except DatasetNotFoundError:
            return None

    def _manifest_path(self, version: str) -> str:
        return lfs.join(self.dataset_dir, version, MANIFEST_NAME)

    def _target(self, version: str) -> str:
        """``version``, or the newest published (unmarked, complete) version newer than it."""
        for name in reversed(list_versions(self.fs, self.dataset_dir)):
            if name <= version:
                break
            if publish_state(self.fs, self.dataset_dir, name) == PUBLISHED and lfs.is_file(
                    self.fs, self._manifest_path(name)):
                return name
        return version

    def _replace_current(self, target: str, seen: str | None) -> str | None:
        """Write ``target`` into ``CURRENT`` if it still names ``seen``; the version it names when this returns
        (None when ``CURRENT`` changed meanwhile: nothing was written).

        Raises:
            PublishError: The replace failed and ``CURRENT`` does not name ``target`` (or could not be read back).
        """
        fs, where = self.fs, lfs.display(self.fs, self.dataset_dir)
        try:
            replaced = lfs.write_bytes_atomic(fs, lfs.join(self.dataset_dir, CURRENT_NAME), (target + "\n").encode(),
                                              before_replace=lambda: self._live() == seen)
            return target if replaced else None
        except OSError as e:
            error = e
        try:
            live = current_version(fs, self.dataset_dir, retries=2)
        except OSError as e:
            raise PublishError(
                f"publishing {where} failed while replacing {CURRENT_NAME} ({error}); whether it names the previous "
                f"version or the new {target} could not be checked ({e})"
            ) from error
        if live == target:
            return live  # the replace landed; only its answer was lost
        raise PublishError(
            f"publishing {where} failed; the previous version stays live ({CURRENT_NAME} names {live}): {error}"
        ) from error

    def _prune(self, keep_versions: int) -> None:
        try:
            prune_versions(self.fs, self.dataset_dir, keep_versions)
        except OSError:
            pass  # an old version in use elsewhere, or CURRENT swapped meanwhile; the next run prunes it

    def _abort_after(self, error: BaseException) -> None:
        """:meth:`abort` after ``error``; a clean-up that fails too is logged and noted on ``error``, never raised
        in its place (the next run removes what is left)."""
        try:
            self.abort()
        except Exception as e:
            note = (f"cleaning up the staging directory {lfs.display(self.fs, self.path)} failed too, the next run "
                    f"removes it: {type(e).__name__}: {e}")
            log.warning("%s", note)
            error.__notes__ = [*getattr(error, "__notes__", ()), note]  # add_note(), also on Python 3.10

    def abort(self) -> None:
        """Remove the staging directory, or the version it was renamed to unless ``CURRENT`` names it; the live
        version is untouched."""
        if self.finished:
            return
        try:
            if lfs.exists(self.fs, self.path):
                self.fs.delete_dir(self.path)
            if self._version is not None and not self._swap_tried and self._live() != self._version:
                # Never live, and still marked as this run's: no other run points CURRENT at it. After a replace
                # of CURRENT was tried, it stays (a rename held up on the name node may still land); still
                # marked, it counts for no keep_versions and the next publish removes it unless it is live.
                remove(self.fs, lfs.join(self.dataset_dir, self._version), directory=True)
        finally:
            self._release()

    def _release(self) -> None:
        """Give up the claim: remove the owner file while still holding its lock, then unlock."""
        self.finished = True
        remove(self.fs, self.path + OWNER_SUFFIX, directory=False)  # gone already is fine
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        if exc is None:
            self.abort()
        else:  # the block's error is what failed: a clean-up failing too is noted on it, never raised instead
            self._abort_after(exc)


def begin_staging(fs: pafs.FileSystem, root: str, name: str) -> Staging:
    """Start a publish of dataset ``name`` under ``root``: clean dead runs, claim a staging directory.

    The claim is an owner file that is locked before it becomes visible (see the protocol above), so
    a concurrent run's cleaner never takes it for a dead run's. The staging directory itself is not
    created, so a writer that insists on a fresh directory (Spark) can create it.

    Raises:
        PublishError: ``name`` is not a plain directory name, or the destination cannot be created or written.
    """
    if not name or name.startswith((".", "_")) or any(c in name for c in "/\\\0#?"):
        raise PublishError(f"dataset name {name!r} must be a plain directory name: not starting with '.' or '_', "
                           "without '/', '\\', NUL, '#' or '?' (a URL would cut the name at '#' or '?')")
    dataset_dir = lfs.join(root, name)
    try:
        fs.create_dir(dataset_dir, recursive=True)
        clean_stale_staging(fs, dataset_dir)
        for _ in range(_CLAIM_ATTEMPTS):
            stage = f"{STAGING_PREFIX}{_utc_stamp(time.time())}-{uuid.uuid4().hex[:8]}"
            path = lfs.join(dataset_dir, stage)
            claimed, lock_fd = claim(fs, path)
            if claimed:
                return Staging(fs=fs, dataset_dir=dataset_dir, name=stage, path=path, _lock_fd=lock_fd)
    except OSError as e:
        raise PublishError(f"cannot write to {lfs.display(fs, dataset_dir)}: {e}") from e
    raise PublishError(
        f"cannot claim a staging directory in {lfs.display(fs, dataset_dir)}: the owner file was removed "
        f"while being created, {_CLAIM_ATTEMPTS} times"
    )




__all__ = ["MAX_VERSION_NAME", "Staging", "begin_staging", "current_manifest", "current_version", "list_versions",
           "prune_versions", "read_manifest"]
