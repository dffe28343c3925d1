"""Huge row groups read in slices from open streams: each row group decoded once, front to back.

A row group far larger than a window's share of the memory budget (the Spark job writes row groups just
under a 128 MiB block) is never held whole: the plan cuts it into slices, and :func:`read_streamed` reads
each from a forward-only stream over the row group (``iter_batches`` on a file opened without
pre-buffering), kept open in this process between the tasks that read its consecutive slices.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from .convert import as_arrow
from .convert_types import empty_table, made_plain
from .dataset import Dataset
from .errors import CorruptFileError, RemoteError

if TYPE_CHECKING:
    from .tasks import ReadContext

MAX_CHUNK_ROWS = 65_536  # rows a row group's stream decodes at a time, at most
STREAM_BUFFER = 256 << 10  # read buffer per column of a streamed row group (1 MiB: 20-40 MB more RSS, no faster)
_MIN_STREAM_BUFFER = 16 << 10


def stream_buffer_for(window_bytes: int, streams: int, leaves: int) -> int:
    """Read buffer per column of a stream: :data:`STREAM_BUFFER`, less on wide tables so that the buffers of
    ``streams`` streams of ``leaves`` Parquet columns take at most a quarter of a window's share (240 columns
    in 7 streams held 420 MiB of buffers at 256 KiB each), never under 16 KiB."""
    fit = window_bytes // (4 * max(1, streams) * max(1, leaves))
    return int(max(_MIN_STREAM_BUFFER, min(STREAM_BUFFER, fit)))


# Idle row-group streams kept open per reader (per ``ReadContext.key``): readers never evict each other's, and
# each one's streams are its own budget's (loader.sizes.stream_overhead). Streamed windows hold at most 10 slices
# and interleave runs of at most 15 row groups (loader.plan.split_pieces), whose streams are open together until
# their row groups end: 16 keeps them all, plus one left over. Left over are streams that never reach their row
# group's end (at a shard's edge; a sampled row group's unkept last rows); least recently used go first.
_MAX_IDLE_STREAMS = 16


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
        # The copy as it is (no fetch again here): read_streamed repeats open and read as a whole.
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


_idle: dict[str, dict[tuple, _GroupStream]] = {}  # reader key -> its idle streams, least recently used first
_busy: set[tuple] = set()
_streams_cond = threading.Condition()


def _checkout(skey: tuple) -> _GroupStream | None:
    with _streams_cond:
        while skey in _busy:  # the previous slice of this row group is being read: continue after it
            _streams_cond.wait()
        _busy.add(skey)
        mine = _idle.get(skey[0])
        return mine.pop(skey, None) if mine else None


def _checkin(skey: tuple, stream: _GroupStream | None) -> None:
    evicted = []
    with _streams_cond:
        _busy.discard(skey)
        if stream is not None:
            mine = _idle.setdefault(skey[0], {})
            mine[skey] = stream
            while len(mine) > _MAX_IDLE_STREAMS:  # this reader's least recently used
                evicted.append(mine.pop(next(iter(mine))))
        _streams_cond.notify_all()
    for s in evicted:
        s.close()


def read_streamed(ctx: ReadContext, epoch: int, group: int, info, local: int, rows, start: int,
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


def close_streams(key: str) -> None:
    """Close the idle row-group streams of one reader in this process."""
    with _streams_cond:
        closing = _idle.pop(key, {})
    for s in closing.values():
        s.close()


__all__ = ["MAX_CHUNK_ROWS", "STREAM_BUFFER", "close_streams", "read_streamed", "stream_buffer_for"]
