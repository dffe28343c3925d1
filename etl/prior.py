"""What a run takes from the live version: its manifest (:func:`read_live`: fingerprint, vocabularies)
and the bytes per row measured in its files, reused by the next run's sized write while the selection
still looks the same (:class:`PriorSizing`, see :meth:`etl.sizing.SizedWriter.estimate_bytes_per_row`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from loader import fs as lfs
from loader.errors import LarderError, ManifestError, PublishError
from loader.manifest import CURRENT_NAME, MANIFEST_NAME, Manifest
from loader.publish import current_version, read_manifest

from .config import TransformConfig

REUSE_TOLERANCE = 0.02  # a previous version's bytes/row is reused while the pilot and input agree this well


@dataclass(frozen=True)
class PriorSizing:
    """The bytes per row measured in the files of a published version, and what it was measured under.

    Attributes:
        version: The version the figure comes from.
        key: :meth:`SizedWriter.sizing_key` of that run (schema and Parquet settings).
        bytes_per_row: Compressed row-group bytes per row of its full files (the remainder file left
            out): the shuffled write of the whole selection, the best sample there is.
        pilot_bytes_per_row: That run's pilot figure (first rows, same settings).
        input_bytes_per_row: That run's input file bytes per selected row, if the source had files.
    """

    version: str
    key: str
    bytes_per_row: float
    pilot_bytes_per_row: float
    input_bytes_per_row: float | None

    @classmethod
    def from_manifest(cls, manifest: Manifest | None) -> PriorSizing | None:
        """The prior of a published version, or None when its manifest does not record one."""
        sizing = (manifest.extra or {}).get("sizing") if manifest is not None else None
        if not isinstance(sizing, dict) or not sizing.get("key") or not sizing.get("pilot_bytes_per_row"):
            return None
        files = sorted(manifest.files, key=lambda f: f.num_rows, reverse=True)
        full = files[:-1] if len(files) > 1 else files
        # Rows larger than the block have row groups of their own: left out, they would make every row look big.
        groups = [g for f in full for g in f.row_groups
                  if not (g.num_rows == 1 and g.compressed_bytes > manifest.block_size)]
        rows = sum(g.num_rows for g in groups)
        if not rows:
            return None
        nbytes = sum(g.compressed_bytes for g in groups)
        return cls(
            version=manifest.version, key=str(sizing["key"]), bytes_per_row=nbytes / rows,
            pilot_bytes_per_row=float(sizing["pilot_bytes_per_row"]),
            input_bytes_per_row=sizing.get("input_bytes_per_row"),
        )  # fmt: skip

    def applies(self, key: str, pilot: float, input_bytes_per_row: float | None) -> bool:
        """Whether the selection still looks like the one measured: same schema and Parquet settings, the
        pilot within :data:`REUSE_TOLERANCE`, and so are the input bytes per row when both are known."""

        def close(a: float, b: float) -> bool:
            return abs(a - b) <= REUSE_TOLERANCE * max(a, b)

        if key != self.key or not close(pilot, self.pilot_bytes_per_row):
            return False
        if input_bytes_per_row is None or self.input_bytes_per_row is None:
            return input_bytes_per_row is None and self.input_bytes_per_row is None
        return close(float(input_bytes_per_row), float(self.input_bytes_per_row))


class LiveManifestError(ManifestError):
    """The live version's manifest (or ``CURRENT``) cannot be read, and the run's label ids continue the
    vocabularies it holds; nothing is published (exit 1) unless the run is forced."""


def read_live(
    fs: pafs.FileSystem,
    dataset_dir: str,
    transforms: tuple[TransformConfig, ...],
    *,
    force: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> Manifest | None:
    """The live version's manifest, or None when nothing is published.

    When ``CURRENT`` exists but it, or the manifest of the version it names, cannot be read (truncated,
    not JSON, deleted), the run cannot know the live label ids: with an index transform that keeps them
    (``reuse_previous``, the default, also with a ``vocabulary`` file) that is an error, since a fresh
    vocabulary would silently give labels other ids. ``force`` rebuilds the vocabularies from scratch
    instead, with a warning; without such transforms the run only warns (it loses the fingerprint, so it
    rebuilds, and the sizing prior).

    Args:
        fs: The destination filesystem.
        dataset_dir: The dataset directory on ``fs``.
        transforms: The conf's transforms.
        force: Rebuild even though the live ids cannot be read.
        log: Progress messages and warnings.

    Raises:
        LiveManifestError: The live manifest is unreadable and index ids depend on it; names the file.
        PublishError: The destination cannot be listed or read at all.
    """
    pointer = lfs.join(dataset_dir, CURRENT_NAME)
    shown = lfs.display(fs, pointer)
    try:
        if not lfs.exists(fs, pointer):
            return None
        version = current_version(fs, dataset_dir, retries=0)
        shown = lfs.display(fs, lfs.join(dataset_dir, version, MANIFEST_NAME))
        return read_manifest(fs, lfs.join(dataset_dir, version))
    except LarderError as e:
        failure = e
    except OSError as e:
        raise PublishError(f"cannot read {lfs.display(fs, dataset_dir)}: {e}") from e
    reason = str(failure) if shown in str(failure) else f"{shown}: {failure}"  # the file is always named
    keyed = [f"transforms.{i} ({t.output or t.column})" for i, t in enumerate(transforms)
             if t.kind == "index" and t.reuse_previous]  # fmt: skip
    if not keyed:
        log(f"warning: cannot read the live version's manifest ({reason}); publishing without it")
        return None
    if force:
        log(f"warning: cannot read the live version's manifest ({reason}); --force: the vocabularies of "
            f"{', '.join(keyed)} start afresh, so label ids may change")  # fmt: skip
        return None
    raise LiveManifestError(
        f"cannot read the live version's manifest ({reason}); the ids of {', '.join(keyed)} continue its "
        "vocabulary, so nothing is published and the live version is unchanged. Restore the manifest (or point "
        "CURRENT at a good version), or rerun with --force to rebuild the vocabularies from scratch (ids may change)"
    ) from failure
