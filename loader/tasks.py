"""The reader's worker-side tasks: read a planned piece of a row group, and finish a batch.

Both run in a pool worker (thread, process, or the caller for the serial pool). They find the reader's
settings in a per-process registry filled by the pool's initializer (:func:`install`), so a process pool
pickles the dataset and the user transform once per worker, not once per task. Every task is a pure
function of its arguments and those settings: which worker runs it cannot change its result.
"""

from __future__ import annotations

import inspect
import pickle
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .convert import as_arrow, plain_type, split_batch, to_numpy, to_padded
from .convert_types import made_plain
from .dataset import Dataset, check_rows
from .decoded import DecodedCache, source_of
from .errors import ConfigError, TransformError, WorkerError
from .plan import sample_rows, transform_rng
from .streams import STREAM_BUFFER, close_streams, read_streamed

ROW_GROUP_COLUMN = "_row_group"
ROW_COLUMN = "_row"
ROW_ID_FIELDS = (pa.field(ROW_GROUP_COLUMN, pa.int64(), nullable=False),
                 pa.field(ROW_COLUMN, pa.int64(), nullable=False))
"""The row-id columns ``with_row_ids`` adds: never null, so no ``.valid`` mask."""


class Transform:
    """A reader's user transform, owned by its :class:`~loader.reader.Reader`; its read context refers to it
    weakly in the reader's process.

    So nothing reachable from this module's registry, the pools or their running threads holds the transform,
    whose bound ``self`` or closure may hold the reader itself (``self.reader = make_reader(...,
    transform=self.augment)``): dropping that owner lets garbage collection reach and close the reader.
    Pickled (a process worker's copy of the context), it sends the function, which the worker holds strongly.

    Attributes:
        fn: The user's callable.
        name: Its name in errors (computed once: ``repr`` of a bound method or partial is not free).
    """

    __slots__ = ("__weakref__", "fn", "name")

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or repr(fn)

    def __reduce__(self):
        if getattr(_shipping, "active", False):  # met while pickling a transform (one that refers to its reader)
            return Transform, (self.fn,)
        return _unpickle_transform, (pickled_transform(self.fn),)


def _unpickle_transform(data: bytes) -> Transform:
    return Transform(pickle.loads(data))  # noqa: S301 - the consumer's own transform, sent to its worker


_shipping = threading.local()  # ``active`` while this thread runs pickled_transform


def pickled_transform(fn: Callable) -> bytes:
    """``fn`` pickled as a process pool sends it (checked at construction, and for every worker started).

    Raises:
        ConfigError: It cannot be pickled (names it, the pickling error and, when found, the reader it refers
            to), chained from the pickling error.
    """
    from multiprocessing.reduction import ForkingPickler  # loaded only when a process pool is asked for

    outer = not getattr(_shipping, "active", False)
    _shipping.active = True
    try:
        return bytes(ForkingPickler.dumps(fn))
    except Exception as e:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        why = ("it refers to a larder reader (e.g. a bound method or closure of an object that holds the reader: "
               "self.reader = make_reader(..., transform=self.augment)), whose threads and locks cannot go to "
               "another process; leave the reader out of what the transform refers to (a __getstate__ without "
               "it, or a module-level function)" if _refers_to_reader(fn)
               else "it, or something it refers to (a bound method's self, a closure's variables), cannot be "
               "sent to another process; use a module-level function or a picklable callable object")
        raise ConfigError(
            f"pool='process' needs a transform that pickles by reference (worker processes receive it pickled); "
            f"{name!r} does not ({type(e).__name__}: {e}): {why}, or use pool='thread'") from e
    finally:
        if outer:
            _shipping.active = False


def _refers_to_reader(fn: Callable) -> bool:
    """Whether pickling ``fn`` reaches a :class:`~loader.reader.Reader` before it fails (error messages only)."""
    import io

    from .reader import Reader

    class Found(Exception):
        pass

    class Probe(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, Reader):
                raise Found
            return NotImplemented

    try:
        Probe(io.BytesIO()).dump(fn)
    except Found:
        return True
    except Exception:  # noqa: BLE001 - failed elsewhere first: no reader seen
        return False
    return False


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
        transform: The user transform: a :class:`Transform` (a plain callable given is wrapped in one, held
            strongly: process workers, tests), a weak reference to the one the reader owns (the reader's own
            process: see :class:`Transform`), or None; :func:`transform_of` resolves it.
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
    transform: Transform | weakref.ref | Callable | None
    transform_takes_rng: bool
    transform_rng_by_keyword: bool = False
    decoded: DecodedCache | None = None
    stream_buffer: int = STREAM_BUFFER
    plain: dict[str, pa.DataType] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        """Runs once per reader, in the process that plans it (not in process workers: they unpickle it)."""
        types = {c: plain_type(self.dataset.schema.field(c).type) for c in self.columns}
        object.__setattr__(self, "plain", {c: t for c, t in types.items() if t is not None})
        if self.transform is not None and not isinstance(self.transform, (Transform, weakref.ref)):
            object.__setattr__(self, "transform", Transform(self.transform))
        if self.dataset is not None:  # no plan reads a file of 0 rows: check before the first epoch that it has none
            self.dataset.check_empty_files()

    def __getstate__(self) -> dict:
        """Pickled (a process worker's copy) with the transform itself: a worker holds it strongly."""
        return {**self.__dict__, "transform": transform_of(self)}


def transform_of(ctx: ReadContext) -> Transform | None:
    """The context's transform (None without one), resolved from the weak reference in the reader's process.

    Raises:
        WorkerError: The reader is gone (garbage-collected while this task ran; its result is dropped).
    """
    t = ctx.transform
    if t is None or type(t) is Transform:
        return t
    held = t()
    if held is None:
        raise WorkerError(f"reader {ctx.key} was garbage-collected while its task ran")
    return held


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
        table, decoded = read_streamed(ctx, epoch, group, info, local, rows, start, stop)
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
    return _apply(ctx, transform_of(ctx), epoch, index, batch)


def _apply(ctx: ReadContext, transform: Transform | None, epoch: int, index: int, batch: dict) -> tuple[dict, float]:
    """:func:`transform_batch` with the transform resolved (:func:`transform_of`)."""
    if transform is None:
        return batch, 0.0
    t1 = time.perf_counter()
    fn = transform.fn
    try:
        if ctx.transform_takes_rng:
            rng = transform_rng(ctx.seed, epoch, ctx.rank, ctx.world_size, index)
            out = fn(batch, rng=rng) if ctx.transform_rng_by_keyword else fn(batch, rng)
        else:
            out = fn(batch)
    except Exception as e:
        text = "".join(traceback.format_exception(e))
        raise TransformError(
            f"transform {transform.name} raised {type(e).__name__}: {e} (epoch {epoch}, batch {index})\n\n"
            f"transform traceback:\n{text}"
        ) from e
    return check_output(out, transform.name), time.perf_counter() - t1


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
    ctx = _CONTEXTS[key]
    transform = transform_of(ctx)  # once per task
    out: list = []
    for (epoch, index), batch in zip(positions, batches, strict=True):
        try:
            out.append(_apply(ctx, transform, epoch, index, batch))
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


__all__ = ["ROW_COLUMN", "ROW_GROUP_COLUMN", "ROW_ID_FIELDS", "ReadContext", "Transform", "convert_batch",
           "convert_split", "finish_batch", "install", "pickled_transform", "read_piece", "rng_by_keyword",
           "rng_parameter", "takes_rng", "transform_batch", "transform_batches", "transform_of"]
