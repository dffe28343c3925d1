"""The reader's worker-side tasks: read a planned piece of a row group, and finish a batch.

Both run in a pool worker (thread, process, or the caller for the serial pool). They find the reader's
settings in a per-process registry filled by the pool's initializer (:func:`install`), so a process pool
pickles the dataset and the user transform once per worker, not once per task. Every task is a pure
function of its arguments and those settings: which worker runs it cannot change its result.
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .convert import as_arrow, plain_type, split_batch, to_numpy, to_padded
from .dataset import Dataset, check_rows
from .decoded import DecodedCache, source_of
from .errors import ConfigError, CorruptFileError, RemoteError, TransformError
from .plan import sample_rows, transform_rng

ROW_GROUP_COLUMN = "_row_group"
ROW_COLUMN = "_row"
ROW_ID_FIELDS = (pa.field(ROW_GROUP_COLUMN, pa.int64(), nullable=False),
                 pa.field(ROW_COLUMN, pa.int64(), nullable=False))
"""The row-id columns ``with_row_ids`` adds: never null, so no ``.valid`` mask."""
MAX_CHUNK_ROWS = 65_536  # rows a row group's stream decodes at a time, at most
STREAM_BUFFER = 256 << 10  # read buffer per column of a streamed row group (1 MiB: 20-40 MB more RSS, no faster)
_MIN_STREAM_BUFFER = 16 << 10


def stream_buffer_for(window_bytes: int, streams: int, leaves: int) -> int:
    """Read buffer per column of a stream: :data:`STREAM_BUFFER`, less on wide tables so that the buffers of
    ``streams`` streams of ``leaves`` Parquet columns take at most a quarter of a window's share (240 columns
    in 7 streams held 420 MiB of buffers at 256 KiB each), never under 16 KiB."""
    fit = window_bytes // (4 * max(1, streams) * max(1, leaves))
    return int(max(_MIN_STREAM_BUFFER, min(STREAM_BUFFER, fit)))
_MAX_IDLE_STREAMS = 16  # open row-group streams kept per process


@dataclass(frozen=True)
class ReadContext:
    """What every task of one reader needs (pickled once per process worker).

    Attributes:
        key: Registry key of this reader.
        dataset: The opened version.
        columns: Columns to read.
        sizes: Rows of every row group, global order.
        locations: ``(file index, row group in file)`` of every row group.
        seed: The user's seed.
        rank: This rank.
        world_size: Number of ranks.
        stream: Read pieces as slices of row-group streams instead of whole row groups (huge row groups).
        stream_chunk_rows: Rows decoded at a time by a stream.
        stream_buffer: Read buffer per column of a stream (smaller for wide tables: :func:`stream_buffer_for`).
        local_files: Data files are read from local disk (directly or through a local file cache).
        ragged: Form of variable-length columns.
        strings: Form of string columns.
        masks: Add validity masks.
        with_row_ids: Keep the ``_row_group`` / ``_row`` columns in batches.
        transform: The user transform, or None.
        transform_takes_rng: Call it as ``transform(batch, rng)`` rather than ``transform(batch)``.
        transform_rng_by_keyword: Pass that RNG as ``rng=rng`` (:func:`rng_parameter`).
        decoded: The local cache of decoded row groups (:mod:`loader.decoded`), or None.
        plain: Set from the others: the columns holding string / binary views (nested too) -> the plain type
            they are read as (:func:`loader.convert.plain_type`: Arrow's ``take`` has no kernel for views);
            empty for most datasets.
    """

    key: str
    dataset: Dataset
    columns: tuple[str, ...]
    sizes: tuple[int, ...]
    locations: tuple[tuple[int, int], ...]
    seed: int
    rank: int
    world_size: int
    stream: bool
    stream_chunk_rows: int
    local_files: bool
    ragged: str
    strings: str
    masks: bool
    with_row_ids: bool
    transform: Callable | None
    transform_takes_rng: bool
    transform_rng_by_keyword: bool = False
    decoded: DecodedCache | None = None
    stream_buffer: int = STREAM_BUFFER
    plain: dict[str, pa.DataType] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        """Runs once per reader, in the process that plans it (not in process workers: they unpickle it)."""
        types = {c: plain_type(self.dataset.schema.field(c).type) for c in self.columns}
        object.__setattr__(self, "plain", {c: t for c, t in types.items() if t is not None})
        if self.dataset is not None:  # no plan reads a file of 0 rows: check before the first epoch that it has none
            self.dataset.check_empty_files()


def made_plain(plain: dict[str, pa.DataType], data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``data`` (as decoded) with its view columns cast to their plain types (``plain``, from
    :attr:`ReadContext.plain`): one cast per such column, before any row is gathered; nothing otherwise."""
    for name, t in plain.items():
        i = data.schema.get_field_index(name)
        if i >= 0 and data.schema.field(i).type != t:
            data = data.set_column(i, data.schema.field(i).with_type(t), data.column(i).cast(t))
    return data


_CONTEXTS: dict[str, ReadContext] = {}


def install(ctx: ReadContext) -> None:
    """Register a reader's context in this process (the pools' initializer)."""
    _CONTEXTS[ctx.key] = ctx


def uninstall(key: str) -> None:
    """Forget a reader's context in this process, and close its row-group streams."""
    _CONTEXTS.pop(key, None)
    close_streams(key)


def takes_rng(fn: Callable) -> bool:
    """True if ``fn`` takes the RNG (:func:`rng_parameter`): ``f(batch, eps=1e-6)`` keeps its ``eps``;
    ``f(batch, rng)``, ``f(batch, rng=None)``, ``f(batch, eps=1e-6, rng=None)`` and ``f(batch, *, rng)`` get the RNG.

    Raises:
        ConfigError: As :func:`rng_parameter`.
    """
    return rng_parameter(fn) is not None


def rng_by_keyword(fn: Callable) -> bool:
    """True if ``fn`` takes the RNG as ``rng=`` (:func:`rng_parameter`).

    Raises:
        ConfigError: As :func:`rng_parameter`.
    """
    return rng_parameter(fn) == "keyword"


def rng_parameter(fn: Callable) -> str | None:
    """How a transform takes the RNG: ``"keyword"`` (``fn(batch, rng=rng)``), ``"positional"`` (``fn(batch, rng)``)
    or None (``fn(batch)``).

    A parameter named ``rng`` gets it wherever it is: second, by position; keyword-only or after other
    parameters, by keyword (their defaults stay). Otherwise a second positional parameter without a default
    gets it (``*args`` too, when the batch is the only positional parameter before it). A callable without a
    signature is called with the batch alone.

    Raises:
        ConfigError: ``rng`` is positional-only after a parameter with a default: the RNG could not reach it
            without overriding that default (names the transform and the parameters).
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rng = sig.parameters.get("rng")
    if rng is not None and rng.kind == rng.KEYWORD_ONLY:
        return "keyword"
    if rng is not None and rng in positional[1:]:
        at = positional.index(rng)
        if at == 1:
            return "positional"
        if rng.kind == rng.POSITIONAL_OR_KEYWORD:
            return "keyword"
        name = getattr(fn, "__qualname__", repr(fn))
        before = ", ".join(repr(p.name) for p in positional[1:at])
        raise ConfigError(
            f"transform {name}: its parameter 'rng' is positional-only (before '/') and comes after {before}, so "
            "the RNG cannot be passed to it without overriding those; make 'rng' the second parameter, or "
            "remove the '/' (it is then given as rng=...)")
    if len(positional) >= 2:
        return "positional" if positional[1].default is inspect.Parameter.empty else None
    return "positional" if any(p.kind == p.VAR_POSITIONAL for p in params) else None


def read_piece(key: str, epoch: int, group: int, start: int, stop: int,
               kept: int | None) -> tuple[pa.Table, float, int, np.ndarray | None]:
    """Read rows ``[start, stop)`` of a row group's kept rows.

    Returns:
        ``(table, seconds, decoded_rows, ids)``: the rows, the time spent, how many rows were decoded, and
        the rows' positions in their row group when the reader keeps row ids (else None).

    Raises:
        CorruptFileError: The file fails its size, footer or page checks (names the file).
        RemoteError: Remote storage failed after retries.
    """
    t0 = time.perf_counter()
    ctx = _CONTEXTS[key]
    ds = ctx.dataset
    file_index, local = ctx.locations[group]
    info = ds.files[file_index]
    size = ctx.sizes[group]
    rows = None
    if kept is not None and kept < size:
        rows = sample_rows(size, kept, ctx.seed, epoch, group)[start:stop]
    if ctx.stream:
        table, decoded = _read_streamed(ctx, epoch, group, info, local, rows, start, stop)
    else:
        if ctx.decoded is not None:  # decoded before, by this or an earlier process: no Parquet decode
            table = made_plain(ctx.plain, ctx.decoded.get(info.path, local, lambda: _decode_group(ctx, info, local),
                                                          source_of(info, local, ctx.columns)))
        else:
            table = _decode_group(ctx, info, local)
        decoded = table.num_rows
        if decoded != size:  # the manifest's count (a decoded-cache file too): one compare per row group
            check_rows(table, info, local, ds.display(info))
        table = table.take(as_arrow(rows)) if rows is not None else table.slice(start, stop - start)
    ids = None
    if ctx.with_row_ids:
        ids = rows.astype(np.int64) if rows is not None else np.arange(start, stop, dtype=np.int64)
    return table, time.perf_counter() - t0, decoded, ids


def _decode_group(ctx: ReadContext, info, local: int) -> pa.Table:
    """Read and decode one whole row group, checked against the manifest (views made plain)."""
    ds = ctx.dataset
    if info.row_groups[local].column_checksums:  # chunks checked against the manifest, decoded from memory
        return made_plain(ctx.plain, ds.read_row_group(info, local, list(ctx.columns)))
    # Local files (or local copies) read faster without pre-buffering; remote ones want coalesced reads.
    pf = ds.open_file(info, pre_buffer=not ctx.local_files)
    try:
        return made_plain(ctx.plain, ds.read_row_group(info, local, list(ctx.columns), pf))
    finally:
        pf.close(force=True)


class _GroupStream:
    """A forward-only reader over one row group, kept open between the tasks that read its slices.

    It decodes ``chunk_rows`` at a time with ``iter_batches`` on a file opened without pre-buffering, so
    a huge row group is decoded once, front to back, and never held whole in memory. A new stream starts at
    the row group's first row: :meth:`read` decodes and skips the rows before the slice it is asked for.
    """

    def __init__(self, ds: Dataset, info, local: int, columns: list[str], chunk_rows: int,
                 plain: dict[str, pa.DataType], buffer_size: int = STREAM_BUFFER):
        self.local = local
        self.size = info.row_groups[local].num_rows  # the manifest's: the stream must end exactly there
        self.plain = plain  # view columns -> their plain types (ReadContext.plain)
        self.decoded: pa.Schema | None = None  # the chunks' schema as decoded (before views are made plain)
        # The copy as it is (no fetch again here): _read_streamed repeats open and read as a whole.
        self.pf, self.where = ds.open_copy(info, pre_buffer=False, buffer_size=buffer_size)
        try:  # iter_batches ignores a column it does not find
            ds.check_columns(self.pf.schema_arrow.names, info, columns)
        except BaseException:
            self.pf.close(force=True)
            raise
        self.chunks = self.pf.iter_batches(batch_size=chunk_rows, row_groups=[local], columns=columns,
                                           use_threads=False)
        self.pos = 0  # row of the row group at the start of ``pending``
        self.pending: pa.RecordBatch | None = None
        self.checked = False  # decoded types checked against the manifest

    def read(self, lo: int, hi: int, rows: np.ndarray | None) -> tuple[list[pa.RecordBatch], int]:
        """Rows ``[lo, hi)`` of the row group (only ``rows`` among them, if given); needs ``pos <= lo``.

        Returns:
            ``(parts, decoded)``: the rows, and how many rows were decoded to get them.

        Raises:
            CorruptFileError: A page fails its CRC or cannot be decoded, or the row group decodes to fewer or
                more rows than the manifest says (a page Parquet skips, of unknown type); names the copy read.
        """
        parts, decoded = [], 0
        while self.pos < hi:
            if self.pending is None:
                self.pending = self._next_chunk()
                if self.pending is None or self.pos + self.pending.num_rows > self.size:
                    self._wrong_count(self.pos + (0 if self.pending is None else self.pending.num_rows))
                decoded += self.pending.num_rows
            chunk, end = self.pending, self.pos + self.pending.num_rows
            a, b = max(lo, self.pos), min(hi, end)
            if a < b:
                if rows is not None:
                    wanted = rows[(rows >= a) & (rows < b)] - self.pos
                    parts.append(chunk.take(as_arrow(wanted)))
                else:
                    parts.append(chunk.slice(a - self.pos, b - a))
            if end <= hi:
                self.pos, self.pending = end, None
            else:
                self.pos, self.pending = hi, chunk.slice(hi - self.pos)
        if self.pos >= self.size and self.pending is None:  # the end: nothing may follow
            extra = self._next_chunk()
            if extra is not None and extra.num_rows:
                self._wrong_count(self.pos + extra.num_rows, "at least ")
        return parts, decoded

    def _wrong_count(self, got: int, prefix: str = "") -> None:
        """Raise the error of a row group whose stream ends before or after the manifest's row count."""
        ends = f"holds {prefix}{got}" if got > self.size else f"ends after {got}"
        raise CorruptFileError(f"{self.where}: row group {self.local} {ends} rows, the manifest says {self.size} "
                               "(a page is damaged or missing)", self.where)

    def _next_chunk(self) -> pa.RecordBatch | None:
        try:
            chunk = next(self.chunks, None)
        except (RemoteError, CorruptFileError):
            raise  # the remote storage failed after retries (not a corrupt file), or already named
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(f"{self.where}: row group {self.local} cannot be read ({e})", self.where) from e
        if chunk is None:
            return None
        self.decoded = chunk.schema
        return made_plain(self.plain, chunk)

    def close(self) -> None:
        self.pf.close(force=True)


_streams: dict[tuple, _GroupStream] = {}  # idle streams, oldest first
_busy: set[tuple] = set()
_streams_cond = threading.Condition()


def _checkout(skey: tuple) -> _GroupStream | None:
    with _streams_cond:
        while skey in _busy:  # the previous slice of this row group is being read: continue after it
            _streams_cond.wait()
        _busy.add(skey)
        return _streams.pop(skey, None)


def _checkin(skey: tuple, stream: _GroupStream | None) -> None:
    evicted = []
    with _streams_cond:
        _busy.discard(skey)
        if stream is not None:
            _streams[skey] = stream
            while len(_streams) > _MAX_IDLE_STREAMS:
                evicted.append(_streams.pop(next(iter(_streams))))
        _streams_cond.notify_all()
    for s in evicted:
        s.close()


def _read_streamed(ctx: ReadContext, epoch: int, group: int, info, local: int, rows, start: int,
                   stop: int) -> tuple[pa.Table, int]:
    """Read a slice of a huge row group from the row group's open stream (opened if needed).

    A cached copy that fails mid-stream is fetched again once, as on every read path
    (:meth:`~loader.dataset.Dataset.with_fresh_copy`): the stream restarts on the fresh copy and skips the
    rows before the slice (slices delivered before were read from the bad copy's good pages, and the fresh
    copy's bytes are the manifest's, so they are the same rows: none is lost or delivered twice).
    """
    lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows is not None and len(rows) else (start, stop)
    skey = (ctx.key, epoch, group)
    stream = _checkout(skey)

    def read(fresh: bool) -> tuple[list[pa.RecordBatch], int]:
        nonlocal stream
        # A bad copy, or an earlier slice wanted again (resume): start over (a new stream skips to ``lo``).
        if stream is not None and (fresh or stream.pos > lo):
            stream.close()
            stream = None
        if stream is None:  # decoding one slice at a time (the plan cuts a row group's slices alike)
            chunk = ctx.stream_chunk_rows if rows is not None else max(1, min(MAX_CHUNK_ROWS, stop - start))
            stream = _GroupStream(ctx.dataset, info, local, list(ctx.columns), chunk, ctx.plain, ctx.stream_buffer)
        return stream.read(lo, hi, rows)

    try:
        parts, decoded = ctx.dataset.with_fresh_copy(info, read)
        if stream.decoded is not None and not stream.checked:  # one stream, one schema: checked once
            ctx.dataset.check_types(empty_table(stream.decoded), info, local, ctx.columns)
            stream.checked = True
        if stream.pos >= ctx.sizes[group]:
            stream.close()
            stream = None
    except BaseException:
        if stream is not None:
            stream.close()
        _checkin(skey, None)
        raise
    _checkin(skey, stream)
    if parts:  # their types were checked against the manifest's
        table = pa.Table.from_batches(parts)
    else:
        table = made_plain(ctx.plain, empty_table(pa.schema([ctx.dataset.schema.field(c) for c in ctx.columns])))
    return table, decoded


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of no rows of ``schema``, made without pandas (``Schema.empty_table`` imports it: +33 MiB and a
    quarter of a second in the trainer's process)."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def close_streams(key: str) -> None:
    """Close the idle row-group streams of one reader in this process."""
    with _streams_cond:
        mine = [k for k in _streams if k[0] == key]
        closing = [_streams.pop(k) for k in mine]
    for s in closing:
        s.close()


def finish_batch(key: str, epoch: int, index: int, table: pa.Table | pa.RecordBatch,
                 transform: bool = True) -> tuple[dict, float, float]:
    """Convert a cut batch (row-id columns included if kept) to numpy and apply the transform (unless
    ``transform`` is False: the reader runs it elsewhere, in a process pool).

    Returns ``(batch, convert_s, transform_s)``.

    Raises:
        TransformError: The transform raised (its traceback is in the message and ``__cause__``) or
            returned something other than a dict of equal-length columns.
    """
    t0 = time.perf_counter()
    batch = convert_batch(key, table)
    convert_s = time.perf_counter() - t0
    out, transform_s = transform_batch(key, epoch, index, batch) if transform else (batch, 0.0)
    return out, convert_s, transform_s


def convert_batch(key: str, table: pa.Table | pa.RecordBatch, ragged: str | None = None) -> dict:
    """Rows as the reader's numpy forms (its ``ragged`` / ``strings`` / ``masks`` options; ``ragged``
    overrides the reader's)."""
    ctx = _CONTEXTS[key]
    return to_numpy(table, ragged=ragged or ctx.ragged, strings=ctx.strings, masks=ctx.masks)


def convert_split(key: str, table: pa.Table | pa.RecordBatch, bounds: list[int]) -> list[dict]:
    """Rows converted once, in the offsets form, and split at row ``bounds`` into exactly the batches a
    per-batch conversion gives (padded afterwards, batch by batch, if the reader pads: a padded batch's width
    is its own longest row)."""
    parts = split_batch(convert_batch(key, table, ragged="offsets"), bounds)
    return [to_padded(p) for p in parts] if _CONTEXTS[key].ragged == "padded" else parts


def transform_batch(key: str, epoch: int, index: int, batch: dict) -> tuple[dict, float]:
    """Apply the reader's transform (if any) to a converted batch; returns ``(batch, transform_s)``.

    Raises:
        TransformError: As :func:`finish_batch`.
    """
    ctx = _CONTEXTS[key]
    if ctx.transform is None:
        return batch, 0.0
    t1 = time.perf_counter()
    name = getattr(ctx.transform, "__qualname__", repr(ctx.transform))
    try:
        if ctx.transform_takes_rng:
            rng = transform_rng(ctx.seed, epoch, ctx.rank, ctx.world_size, index)
            out = ctx.transform(batch, rng=rng) if ctx.transform_rng_by_keyword else ctx.transform(batch, rng)
        else:
            out = ctx.transform(batch)
    except Exception as e:
        text = "".join(traceback.format_exception(e))
        raise TransformError(
            f"transform {name} raised {type(e).__name__}: {e} (epoch {epoch}, batch {index})\n\n"
            f"transform traceback:\n{text}"
        ) from e
    return check_output(out, name), time.perf_counter() - t1


def transform_batches(key: str, positions: tuple[tuple[int, int], ...], batches: tuple[dict, ...]) -> tuple:
    """Transform consecutive batches in one task (a process worker: one round trip for several batches).

    Args:
        key: The reader's registry key.
        positions: ``(epoch, index)`` of each batch (the transform's RNG derives from them).
        batches: The converted batches.

    Returns:
        One ``(batch, transform_s)`` per batch, in order; a batch whose transform fails ends the tuple with
        its :class:`~loader.errors.TransformError` (raised by the consumer after the batches before it).
    """
    out: list = []
    for (epoch, index), batch in zip(positions, batches, strict=True):
        try:
            out.append(transform_batch(key, epoch, index, batch))
        except TransformError as e:
            out.append(e)
            break
    return tuple(out)


def check_output(out, name: str) -> dict:
    """Check a transform's result: a mapping of equal-length columns.

    Raises:
        TransformError: Not a mapping, a scalar column, or columns of unequal lengths (all named).
    """
    if not isinstance(out, Mapping):
        raise TransformError(f"transform {name} must return a dict of columns, it returned {type(out).__name__}")
    lengths = {}
    for k, v in out.items():
        if not isinstance(k, str):
            raise TransformError(f"transform {name} returned a column keyed {k!r} ({type(k).__name__}); keys must "
                                 "be column names (str)")
        try:
            lengths[k] = len(v)
        except TypeError as e:
            raise TransformError(f"transform {name} returned column {k!r} without a length ({type(v).__name__})") from e
    # Ragged values (``col`` next to ``col.offsets``) are flat, offsets hold one entry more than rows, and
    # the item offsets of two-level columns (``col.value_offsets``) follow the items, not the rows.
    rows = {k: n - 1 if k.endswith(".offsets") and k[:-8] in out else n for k, n in lengths.items()
            if k + ".offsets" not in out and not (k.endswith(".value_offsets") and k[:-14] in out)}
    if len(set(rows.values())) > 1:
        shown = ", ".join(f"{k!r}: {n}" for k, n in rows.items())
        raise TransformError(f"transform {name} returned columns of unequal lengths (rows per column: {shown})")
    return dict(out)


__all__ = ["MAX_CHUNK_ROWS", "ROW_COLUMN", "ROW_GROUP_COLUMN", "ROW_ID_FIELDS", "STREAM_BUFFER", "ReadContext",
           "convert_batch", "convert_split", "finish_batch", "install", "read_piece", "rng_by_keyword", "rng_parameter",
           "stream_buffer_for", "takes_rng", "transform_batch", "transform_batches"]
