"""``write_cache``: publish a version from Arrow data without Spark.

Small data, tests and notebooks use this; it writes the same layout and manifest as the Spark job and
publishes through the same :mod:`loader.publish` code. Row groups are sized to a byte target: the
compressed bytes per row are estimated from a sample written in memory, then corrected from every file
actually written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat

from . import fs as lfs
from .convert import as_arrow, plain_type
from .convert_types import empty_table
from .dataset import Dataset
from .encoding import Encoding, choose
from .errors import ConfigError, EmptyDatasetError, SourceError
from .manifest import file_info_from_bytes
from .publish import Staging, begin_staging
from .write_checks import check_vocabularies, check_write_arguments, json_source

DEFAULT_BLOCK_SIZE = 128 << 20
DEFAULT_FILL = 0.95
_SAMPLE_BYTES = 4 << 20
_AIM = 0.97  # aim a little under the target so few row groups need re-encoding


def _as_reader(data) -> tuple[pa.RecordBatchReader, dict]:
    """Turn the accepted inputs into a stream of record batches and a source description."""
    if isinstance(data, pa.Table):
        return data.to_reader(), {"kind": "arrow-table"}
    if isinstance(data, pa.RecordBatchReader):
        return data, {"kind": "arrow-stream"}
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data]).to_reader(), {"kind": "arrow-table"}
    if isinstance(data, (str, os.PathLike)):
        import pyarrow.dataset as pads  # here, not at import: it costs ~0.1 s and imports pandas when installed

        fs, path = lfs.resolve(data)
        try:
            ds = pads.dataset(path, filesystem=fs, format="parquet")
            scan = ds.scanner().to_reader()
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"cannot read Parquet source {os.fspath(data)}: {e}") from e
        batches = pa.RecordBatchReader.from_batches(scan.schema, _scanned(ds, scan, os.fspath(data)))
        return batches, {"kind": "parquet", "path": os.fspath(data)}
    raise ConfigError(
        f"write_cache: data must be a pyarrow Table, RecordBatchReader or Parquet path, not {type(data).__name__}"
    )


def _scanned(ds, scan: pa.RecordBatchReader, source: str) -> Iterator[pa.RecordBatch]:
    """The batches of a Parquet source's scan.

    Raises:
        SourceError: The scan failed; names the file (and column) that does not fit the schema the dataset
            took from its first file, when one does not, else the source.
    """
    try:
        yield from scan
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"cannot read Parquet source {source}: {_misfit(ds) or e}") from e


def _misfit(ds) -> str | None:
    """The first file of a Parquet source whose columns cannot be read as the source's schema (read again, on
    the error path only; only files whose column types differ are suspects), as a message naming it."""
    import pyarrow.dataset as pads

    for fragment in ds.get_fragments():
        physical = fragment.physical_schema
        differ = [f for f in ds.schema if physical.get_field_index(f.name) >= 0
                  and physical.field(f.name).type != f.type]
        if not differ:
            continue
        try:
            for _ in pads.Scanner.from_fragment(fragment, schema=ds.schema).to_reader():
                pass
        except (OSError, pa.ArrowException) as e:
            found = "; ".join(f"column {f.name!r} is {physical.field(f.name).type}, the source's schema (from its "
                              f"first file) says {f.type}" for f in differ)
            return f"{fragment.path}: {found} ({e})"
    return None


def _check_writable(schema: pa.Schema) -> None:
    """Refuse, before anything is written, columns that a cache cannot hold faithfully.

    Raises:
        ConfigError: A column name appears twice; or a column (or a field nested in it) is a union, which
            Parquet cannot store, or of the null type, which holds no values (readers refuse it), or a dictionary
            of nested values or views; or its type has no Parquet form. The message names the column and its type.
    """
    seen = set()
    for column in schema:
        if column.name in seen:
            raise ConfigError(f"write_cache: column {column.name!r} appears twice in the data; rename or drop one "
                              "(readers select columns by name)")
        seen.add(column.name)
        _check_type(column.name, column.type)
        try:
            pq.write_table(empty_table(pa.schema([column])), pa.BufferOutputStream())
        except (pa.ArrowException, OSError) as e:  # e.g. a decimal of negative scale: an OSError from Arrow
            raise ConfigError(
                f"write_cache: column {column.name!r} of type {column.type} cannot be stored in Parquet: {e}"
            ) from e


def _check_type(name: str, t: pa.DataType) -> None:
    """Raise ConfigError for a union or null type in column ``name`` (at any nesting depth)."""
    if pat.is_union(t):
        raise ConfigError(
            f"write_cache: column {name!r} has type {t}: union columns cannot be stored in Parquet; "
            "split it into one column per member type"
        )
    if pat.is_null(t):
        raise ConfigError(
            f"write_cache: column {name!r} has type {t}: it holds no values (readers refuse it); "
            "give it the type it stands for (e.g. pa.nulls(n, pa.int64())) or leave it out"
        )
    if pat.is_dictionary(t):
        if t.value_type.num_fields or plain_type(t.value_type) is not None:
            plain = plain_type(t.value_type)
            advice = "decode it first (column.dictionary_decode())" if t.value_type.num_fields else \
                f"cast its values first (column.cast(pa.dictionary(pa.{t.index_type}(), pa.{plain}())))"
            raise ConfigError(
                f"write_cache: column {name!r} has type {t}: Parquet stores no dictionary of {t.value_type} "
                f"values; {advice}"
            )
        _check_type(name, t.value_type)
    for i in range(t.num_fields):
        _check_type(f"{name}.{t.field(i).name}", t.field(i).type)


def _stored_schema(given: pa.Schema, stored: pa.Schema) -> pa.Schema:
    """The schema for the manifest: the input's, except where Parquet stores a column as another type.

    Parquet has no seconds unit and no date64 (``timestamp[s]`` and ``time32[s]`` come back in ms,
    ``date64`` as ``date32``), so for those columns the manifest must say what the files hold, which is
    what every reader gets. A column whose type Parquet keeps (equal types; pyarrow ignores list item
    names, which Parquet renames to ``element``) keeps the input's field as the user wrote it.
    """
    fields = [g if g.type == s.type else s for g, s in zip(given, stored, strict=True)]
    return pa.schema(fields, metadata=stored.metadata)


def _rebatch(reader: pa.RecordBatchReader) -> Iterator[pa.Table]:
    for batch in reader:
        if batch.num_rows:
            for i, column in enumerate(batch.columns):
                if pat.is_dictionary(column.type) and column.dictionary.null_count:  # Parquet has no such form:
                    column = column.dictionary_decode().dictionary_encode().cast(column.type)  # nulls as null indices
                    batch = batch.set_column(i, batch.schema.field(i), column)
            yield _storable(pa.Table.from_batches([batch]))


def _storable(table: pa.Table) -> pa.Table:
    """``table`` with its columns that hold a struct of string / binary views (nested too) cast to plain strings /
    binaries: pyarrow's Parquet writer cannot write them beyond 1024 rows ("Slicing not implemented for
    StringView"). The manifest then says what the files hold, as for the other types Parquet changes."""
    for i, field in enumerate(table.schema):
        plain = plain_type(field.type)
        if plain is not None and _struct_of_views(field.type):
            table = table.set_column(i, field.with_type(plain), table.column(i).cast(plain))
    return table


def _struct_of_views(t: pa.DataType) -> bool:
    if pat.is_struct(t):
        return plain_type(t) is not None
    return any(_struct_of_views(t.field(i).type) for i in range(t.num_fields))


def _shuffled(table: pa.Table, perm: np.ndarray) -> pa.Table:
    """The rows of ``table`` in the order ``perm`` (views, which have no take kernel, taken in a plain form)."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        plain = plain_type(field.type)
        columns.append(column.take(as_arrow(perm)) if plain is None else
                       column.cast(plain).take(as_arrow(perm)).cast(field.type))
    return pa.Table.from_arrays(columns, schema=table.schema)


def _unwritable(table: pa.Table) -> ConfigError | None:
    """After pyarrow failed to write ``table``: an error naming the first column it cannot write alone (None
    if every column can be: then the failure was not a column's)."""
    for field in table.schema:
        try:
            pq.write_table(table.select([field.name]), pa.BufferOutputStream())
        except (pa.ArrowException, OSError) as e:
            return ConfigError(f"write_cache: column {field.name!r} of type {field.type} cannot be stored in "
                               f"Parquet: {e}")
    return None


def _compressed_bytes_per_row(table: pa.Table, encoding: Encoding) -> float:
    """Compressed Parquet bytes per row of ``table``, measured by writing it to memory."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=max(1, table.num_rows), **encoding.parquet_options(table.schema))
    return max(1.0, sink.getvalue().size / max(1, table.num_rows))


class _Chunker:
    """Cuts a stream of tables into tables of an adjustable number of rows."""

    def __init__(self, tables: Iterator[pa.Table]):
        self._tables = tables
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def peek(self, rows: int) -> pa.Table | None:
        """Up to ``rows`` rows without consuming them (None when the stream is done)."""
        while self._buffered < rows:
            nxt = next(self._tables, None)
            if nxt is None:
                break
            self._buffer.append(nxt)
            self._buffered += nxt.num_rows
        if not self._buffered:
            return None
        return pa.concat_tables(self._buffer).slice(0, rows)

    def take(self, rows: int) -> pa.Table | None:
        """The next ``rows`` rows (fewer at the end; None when done)."""
        head = self.peek(rows)
        if head is None:
            return None
        rest = pa.concat_tables(self._buffer).slice(head.num_rows)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows
        return head.combine_chunks()


def _encode_file(
    chunks: _Chunker, rows: int, groups_per_file: int, schema: pa.Schema, encoding: Encoding, target: int
) -> tuple[bytes | None, list[tuple[int, int]]]:
    """Encode the next file in memory with row groups of ``rows`` rows, each under ``target`` bytes.

    A row group that comes out over the target is re-encoded with proportionally fewer rows (a single
    row larger than the target stays whole). Returns the file's bytes and ``(rows, compressed bytes)``
    per row group, or ``(None, [])`` when the stream is done.
    """
    options = encoding.parquet_options(schema)
    while True:
        pending = chunks.peek(rows * groups_per_file)
        if pending is None:
            return None, []
        sink = pa.BufferOutputStream()
        try:
            with pq.ParquetWriter(sink, schema, write_page_checksum=True, **options) as w:
                for start in range(0, pending.num_rows, rows):
                    part = pending.slice(start, rows)
                    w.write_table(part, row_group_size=part.num_rows)
        except pa.ArrowException as e:
            problem = _unwritable(pending)
            if problem is None:
                raise
            raise problem from e
        buf = sink.getvalue()
        meta = pq.read_metadata(pa.BufferReader(buf))
        groups = []
        for i in range(meta.num_row_groups):
            g = meta.row_group(i)
            groups.append((g.num_rows, sum(g.column(c).total_compressed_size for c in range(g.num_columns))))
        worst = max(c for _, c in groups)
        if worst <= target or rows == 1:
            chunks.take(pending.num_rows)
            return buf.to_pybytes(), groups
        rows = max(1, int(rows * _AIM * target / worst))


def write_cache(
    data,
    root: str | os.PathLike,
    name: str,
    *,
    row_group_bytes: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    fill: float = DEFAULT_FILL,
    row_groups_per_file: int = 1,
    compression: str = "zstd",
    encoding: Encoding | None = None,
    shuffle: bool = False,
    seed: int = 0,
    keep_versions: int = 3,
    source: dict | None = None,
    vocabularies: dict[str, list] | None = None,
    fingerprint: str | None = None,
    **fs_options,
) -> Dataset:
    """Publish a new version of dataset ``name`` under ``root`` from Arrow data.

    Args:
        data: A ``pyarrow.Table``, ``RecordBatchReader`` or Parquet file/directory path.
        root: The cache root (local path or URL); the dataset lives in ``<root>/<name>``.
        name: The dataset's name.
        row_group_bytes: Compressed byte target per row group (default ``fill × block_size``).
        block_size: The storage block size recorded in the manifest.
        fill: Row-group target as a fraction of the block size, used when ``row_group_bytes`` is unset.
        row_groups_per_file: Row groups in each data file.
        compression: Parquet codec of the columns it shrinks (``zstd``, ``snappy``, ``gzip``, ``lz4``,
            ``brotli``, ``none``; any case); columns it cannot shrink (image bytes) are
            stored uncompressed, and only repetitive columns get a dictionary (:mod:`loader.encoding`).
        encoding: Per-column settings to use instead of choosing them from a sample (e.g.
            ``Encoding("zstd")``: pyarrow's defaults, a dictionary and the codec on every column).
        shuffle: Permute rows once before writing (seeded; needs the data in memory).
        seed: Seed of that permutation.
        keep_versions: Versions to keep after publishing.
        source: Description of the source, stored in the manifest: a dict with string keys of JSON values (a
            float NaN or infinity is stored as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``).
        vocabularies: Vocabularies to store in the manifest: column of the data -> list of values (strings, finite
            numbers, booleans or nulls), the value of id ``i`` at position ``i``.
        fingerprint: Source fingerprint (default: digest of the written files).
        **fs_options: Options of the destination's filesystem.

    Returns:
        The published version, opened from the manifest just committed. Its schema is the one the
        Parquet files hold, which may differ from the input's where Parquet has no exact form
        (``timestamp[s]`` and ``time32[s]`` are stored in ms, ``date64`` as ``date32``; string / binary
        views inside structs as large strings / binaries).

    Raises:
        EmptyDatasetError: ``data`` holds no rows; nothing is published.
        ConfigError: An argument has the wrong type or is out of range (:mod:`loader.write_checks`: ``source``
            must be a dict of JSON values with string keys; a vocabulary a list of strings, finite numbers, booleans
            or nulls for a column of the data), or a column name appears twice, or a column is a union or of the
            null type, a dictionary of nested values or views, or has no Parquet form (names the column and its
            type); nothing is published.
        SourceError: A Parquet source cannot be read (names the file and column when its files disagree).
        PublishError: Writing or publishing failed; the previous version stays live.
    """
    check_write_arguments(root=root, name=name, row_group_bytes=row_group_bytes, block_size=block_size, fill=fill,
                          row_groups_per_file=row_groups_per_file, compression=compression, encoding=encoding,
                          shuffle=shuffle, seed=seed, keep_versions=keep_versions, fingerprint=fingerprint)
    source = json_source(source)
    seed, row_groups_per_file, keep_versions = int(seed), int(row_groups_per_file), int(keep_versions)
    target = int(row_group_bytes if row_group_bytes is not None else fill * block_size)
    if target <= 0:
        raise ConfigError(f"row_group_bytes must be positive, got {target}")
    reader, src = _as_reader(data)
    _check_writable(reader.schema)
    vocabularies = check_vocabularies(vocabularies, reader.schema.names)
    if shuffle:
        table = reader.read_all()
        perm = np.random.default_rng(seed).permutation(table.num_rows)
        reader = _shuffled(table, perm).to_reader()
        src["shuffle_seed"] = seed
    schema = _storable(empty_table(reader.schema)).schema
    chunks = _Chunker(_rebatch(reader))
    fs, root_path = lfs.resolve(root, **fs_options)
    with begin_staging(fs, root_path, name) as staging:
        fs.create_dir(staging.path, recursive=True)
        sample = chunks.peek(1024)
        if sample is None:
            raise EmptyDatasetError(f"write_cache: no rows to publish for dataset {name!r}")
        # Grow the sample until it is big enough to measure compression honestly.
        while sample.nbytes < _SAMPLE_BYTES:
            bigger = chunks.peek(sample.num_rows * 4)
            if bigger is None or bigger.num_rows == sample.num_rows:
                break
            sample = bigger
        try:
            encoding = encoding or choose(sample, compression)
            bytes_per_row = _compressed_bytes_per_row(sample, encoding)
        except pa.ArrowException as e:
            problem = _unwritable(sample)
            if problem is None:
                raise
            raise problem from e
        index = 0
        files = []
        stored_schema = schema
        while True:
            rows = max(1, int(_AIM * target / bytes_per_row))
            data_bytes, groups = _encode_file(chunks, rows, row_groups_per_file, schema, encoding, target)
            if data_bytes is None:
                break
            relpath = f"part-{index:05d}.parquet"
            lfs.write_bytes(fs, lfs.join(staging.path, relpath), data_bytes)
            files.append(file_info_from_bytes(data_bytes, relpath))  # no read back from (remote) storage
            if index == 0:
                stored_schema = _stored_schema(schema, pq.read_schema(pa.BufferReader(data_bytes)))
            full = [(n, c) for n, c in groups if n > 1]
            if full:  # correct the estimate from what was really written
                bytes_per_row = max(1.0, sum(c for _, c in full) / sum(n for n, _ in full))
            index += 1
        version = staging.commit(
            source={**src, "columns": schema.names, **source},
            created_by={"job": "loader.write_cache"},
            vocabularies=vocabularies,
            block_size=block_size,
            row_group_target=target,
            extra={"compression": compression, "encoding": encoding.describe(),
                   "row_groups_per_file": row_groups_per_file},
            keep_versions=keep_versions,
            fingerprint=fingerprint,
            files=files,
            arrow_schema=stored_schema,  # what the files hold, not the input's schema
        )
    return _published(staging, os.fspath(root), name, version, fs_options)


def _published(staging: Staging, root: str, name: str, version: str, fs_options: dict) -> Dataset:
    """The version a run just published, from the manifest it committed.

    Not re-read from storage: by then a concurrent run may have pruned the version, which must not turn
    a successful publish into an error.
    """
    version_path = lfs.join(staging.dataset_dir, version)
    url = _version_url(root, name, version) if lfs.is_remote(root) else version_path
    return Dataset(url=url, fs=staging.fs, version_path=version_path, manifest=staging.manifest,
                   fs_options=fs_options)


def _version_url(root: str, name: str, version: str) -> str:
    return "/".join([root.rstrip("/"), name, version])
