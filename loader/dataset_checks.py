"""The checks of decoded data against the manifest: types, columns, row counts, and files of 0 rows; and what
a missing data file means (its version pruned by a newer publish, or a file lost).

:class:`DatasetChecks` is a part of :class:`loader.dataset.Dataset` (it holds no state of its own: the caches
it uses, ``_types``, ``_leaves`` and ``_empty_checked``, are fields of the dataset); :func:`check_rows` is
also used on its own by the streamed reads of :mod:`loader.tasks`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import pyarrow as pa

from . import fs as lfs
from .errors import CorruptFileError, RemoteError, VersionRemovedError
from .manifest import FileInfo
from .versions import replaced_by

T = TypeVar("T")


class DatasetChecks:
    """Checks of a :class:`loader.dataset.Dataset`'s data files and of the data decoded from them."""

    def check_empty_files(self) -> None:
        """Check the footers of the data files whose manifest row count is 0 (once per dataset object).

        A reader plans no read of a row group of 0 rows, so it would never open such a file, and rows that the
        file does hold would be skipped without a word. Such files are rare: this costs nothing otherwise. The
        files are read where they are (not copied to a local file cache): size and footer only.

        Raises:
            CorruptFileError: As :meth:`open_file` (the file holds rows: its row groups disagree with the
                manifest's).
        """
        if self._empty_checked:
            return
        for info in self.files:
            if info.num_rows == 0:
                self._open_checked(info, (self.fs, self.file_path(info)))[0].close()
        self._empty_checked = True

    def _removed_version(self, info: FileInfo, error: CorruptFileError | RemoteError) -> VersionRemovedError | None:
        """The error to raise instead of ``error`` (data file ``info`` is missing, or cannot be opened) when a
        newer publish pruned this version: ``CURRENT`` names another version and this one's manifest is gone
        (:func:`loader.versions.prune_versions` removes whole version directories). None otherwise: a file
        missing from a version still there (live or not) is reported as it is, and so is a local cached copy's
        fault. Looks at the storage only when the file is missing."""
        if not isinstance(error.__cause__, FileNotFoundError) or (
                isinstance(error, CorruptFileError) and error.path != self.display(info)):
            return None
        replaced = replaced_by(self.fs, self.version_path)
        if replaced is None or not replaced[1]:
            return None
        where, live = self.display(info), replaced[0]
        dataset_dir = lfs.display(self.fs, self.version_path.rstrip("/").rpartition("/")[0] or "/")
        return VersionRemovedError(
            f"{where}: version {self.version!r} of {dataset_dir} was removed by a newer publish (keep_versions) "
            f"while this reader still read it; {live!r} is live now: make a new reader to read it (or publish "
            "with a larger keep_versions)", where, self.version, live)

    def check_types(self, data: pa.Table | pa.RecordBatch, info: FileInfo, index: int,
                    columns: list[str] | tuple[str, ...] | None = None):
        """Return ``data`` (decoded from row group ``index`` of ``info``) if it holds the ``columns`` asked for
        (all the manifest's when None) and they have the manifest's types.

        Raises:
            CorruptFileError: A column decodes to another type than the manifest says (a file rewritten
                with another schema, or a manifest that does not describe its files), or is not in the file
                (Parquet ignores a name it does not find); names the file, row group and column.
        """
        names = tuple(data.schema.names)
        if len(names) != len(self.columns if columns is None else columns):
            self.check_columns(names, info, columns)
        expected = self._types.get(names)
        if expected is None:
            schema = self.schema
            expected = self._types[names] = [
                schema.field(n).type if schema.get_field_index(n) >= 0 else None for n in names]
        if data.schema.types != expected:
            for name, got, want in zip(names, data.schema.types, expected, strict=True):
                if got != want:
                    where = self.display(info)
                    raise CorruptFileError(
                        f"{where}: row group {index} column {name!r} decodes to {got}, the manifest says "
                        f"{want}", where)
        return data

    def check_columns(self, names, info: FileInfo, columns: list[str] | tuple[str, ...] | None) -> None:
        """Check that the columns a file holds (or decoded from it), ``names``, include all of ``columns`` (all
        the manifest's when None).

        Raises:
            CorruptFileError: A column is missing; names the file and the column.
        """
        missing = [c for c in (self.columns if columns is None else columns) if c not in set(names)]
        if missing:
            where = self.display(info)
            raise CorruptFileError(f"{where}: column {missing[0]!r} of the manifest is not in the file (the manifest "
                                   "does not describe its files)", where)

    def _leaf_columns(self, columns: list[str] | None, num_leaves: int) -> list[int]:
        """Indices of the Parquet leaf columns of ``columns`` (all leaves when unknown)."""
        if columns is None:
            return list(range(num_leaves))
        key = tuple(columns)
        cached = self._leaves.get(key)
        if cached is None:
            counts = [_leaf_count(f.type) for f in self.schema]
            if sum(counts) != num_leaves:  # not the layout the schema predicts: read every chunk
                return list(range(num_leaves))
            starts = np.cumsum([0, *counts])
            names = self.schema.names
            cached = [j for c in columns for i in [names.index(c)] for j in range(starts[i], starts[i + 1])]
            self._leaves[key] = cached
        return cached


def check_rows(data: T, info: FileInfo, index: int, where: str, rows: int | None = None, first: int = 0) -> T:
    """Return ``data`` (decoded from row group ``index`` of ``info``, read from the copy named ``where``) if it
    holds the rows it should: the manifest's count for the row group, or ``rows`` (a slice starting at row
    ``first``). One integer comparison: a page that Parquet skips (one of unknown type) shortens a column
    without any other error.

    Raises:
        CorruptFileError: Fewer or more rows; names the file and row group.
    """
    want = info.row_groups[index].num_rows if rows is None else rows
    if data.num_rows != want:
        what = "" if rows is None else f" (rows {first} to {first + rows})"
        raise CorruptFileError(f"{where}: row group {index} decodes to {data.num_rows} rows{what}, the manifest "
                               f"says {want} (a page is damaged or missing)", where)
    return data


def _leaf_count(t: pa.DataType) -> int:
    """Parquet leaf columns of an Arrow type."""
    if pa.types.is_struct(t):
        return sum(_leaf_count(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaf_count(t.key_type) + _leaf_count(t.item_type)
    if isinstance(t, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)) or hasattr(t, "value_field") and \
            not pa.types.is_dictionary(t):
        return _leaf_count(t.value_type)
    return 1
