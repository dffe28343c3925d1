"""The bytes per row measured in a published version, reused by the next run's sized write while the
selection still looks the same (see :meth:`etl.sizing.SizedWriter.estimate_bytes_per_row`)."""

from __future__ import annotations

from dataclasses import dataclass

from loader.manifest import Manifest

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
        rows = sum(f.num_rows for f in full)
        if not rows:
            return None
        nbytes = sum(g.compressed_bytes for f in full for g in f.row_groups)
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
