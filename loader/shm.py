"""Shared-memory transport of the process pool: Arrow data and numpy dicts, never pickled rows.

:func:`encode` moves every ``pyarrow.Table`` / ``RecordBatch`` of a payload into a
``multiprocessing.shared_memory`` segment as an Arrow IPC stream, and all the dicts of numpy arrays of a
payload together into one segment of raw, 64-byte aligned buffers (``object`` arrays, e.g.
``strings="object"``, and ndarray subclasses such as masked arrays travel pickled beside it; a dtype whose
``str`` loses something, e.g. a structured one's fields, travels whole); tuples are walked, anything else
passes through. A task's
result names the argument arrays it returns unchanged instead of carrying them (:func:`argument_arrays`,
with :class:`WrittenPages` telling which pages of a mapping the task wrote): the consumer still holds them.

:func:`decode` maps the segment copy-on-write (on Linux, where segments are files under ``/dev/shm``): the
Arrow and numpy data it returns are views of that private mapping, writable, and the mapping is released
when the last of them is; on the consumer side the segment's name is unlinked at once, so nothing is left
behind however long the data lives. With ``copy_small=True`` (the process pool's results), arrays smaller
than 64 KiB or than a sixteenth of their segment are copied out instead, so what a consumer keeps pins at
most 16 times its bytes of a segment (e.g. a label kept from every batch, not every column of every batch
of its task). Elsewhere, or with ``copy=True`` (a worker that cannot read its page
map, whose argument segments the pool reuses), the bytes are copied out once. :func:`encode` takes the
segments from an ``allocate`` callable when given one (a pool's reused argument segments). Segment names
start with a per-pool prefix, so a pool can remove what a killed worker left behind.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
import pyarrow as pa

_ALIGN = 64


@dataclass(frozen=True)
class ArrowRef:
    """An Arrow IPC stream in a segment."""

    name: str
    size: int
    table: bool


@dataclass(frozen=True)
class NumpyRef:
    """Numpy buffers in a segment: ``specs`` place each array; ``objects`` are the pickled arrays (object
    dtype, or an ndarray subclass); ``kept`` names arrays not sent because the receiver has them already (a
    task's result returning its argument's arrays unchanged), each by its place in the task's arguments;
    ``order`` is the dict's key order when anything is kept or pickled (decoding puts the keys back in it)."""

    name: str
    size: int
    specs: tuple  # (key, dtype: its str or, if that loses anything, itself; shape, offset)
    objects: dict
    kept: tuple = ()  # (key, path into the task's arguments)
    order: tuple = ()


_counter = 0


def new_segment(prefix: str, size: int) -> shared_memory.SharedMemory:
    global _counter
    _counter += 1
    name = f"{prefix}_{os.getpid():x}_{_counter:x}"
    return shared_memory.SharedMemory(name=name, create=True, size=max(1, size))


Allocate = Callable[[int], shared_memory.SharedMemory]
"""``allocate(size)``: a segment of at least ``size`` bytes that the caller keeps (and maps) itself."""


def _segment(prefix: str, size: int, allocate: Allocate | None) -> shared_memory.SharedMemory:
    return allocate(size) if allocate is not None else new_segment(prefix, size)


Known = dict
"""``{id(array): (array, path, test)}``: arrays the receiver holds already (see :func:`argument_arrays`);
``test(array)`` says whether the array is still as it was sent."""


def encode(obj: Any, prefix: str, segments: list[str], allocate: Allocate | None = None,
           known: Known | None = None) -> Any:
    """Move Arrow data and numpy dicts into shared memory; other objects pass through.

    Every segment written is named in ``segments``. With ``allocate``, segments come from it (e.g. a pool's
    reused argument segments, whose pages are already in memory) and stay open; otherwise each is a new segment,
    closed once written. An array of a numpy dict that is one of ``known`` (the very object) and still equals
    its original is not written but named by its path (:func:`decode` takes it from the arguments).
    """
    layouts: list[_Layout] = []
    planned = _plan(obj, layouts, known, prefix, segments, allocate)
    if not layouts:
        return planned
    name, size = _write_numpy(layouts, prefix, segments, allocate)
    return _finish(planned, name, size)


# Module-level recursions, not closures: a recursive closure is a reference cycle, which would keep the
# payload's arrays (and the mappings under them) alive until the next garbage collection.
def _plan(o: Any, layouts: list, known: Known | None, prefix: str, segments: list[str],
          allocate: Allocate | None) -> Any:
    if isinstance(o, tuple):
        return tuple(_plan(x, layouts, known, prefix, segments, allocate) for x in o)
    if isinstance(o, (pa.Table, pa.RecordBatch)):
        return _encode_arrow(o, prefix, segments, allocate)
    if isinstance(o, dict) and o and all(isinstance(v, np.ndarray) for v in o.values()):
        layouts.append(_layout(o, known, layouts[-1].end if layouts else 0))
        return layouts[-1]
    return o


def _finish(o: Any, name: str, size: int) -> Any:
    if isinstance(o, tuple):
        return tuple(_finish(x, name, size) for x in o)
    if isinstance(o, _Layout):
        order = tuple(o.order) if o.kept or o.objects else ()  # else the specs are in the dict's order
        return NumpyRef(name, size, tuple(o.specs), o.objects, tuple(o.kept), order)
    return o


def argument_arrays(args: tuple, encoded: tuple, pages: WrittenPages | None = None) -> Known:
    """The numpy arrays of a task's arguments ``args`` (decoded from ``encoded``: dicts of arrays, in tuples),
    each with its path and a test that it is unchanged, for :func:`encode` to leave out of the task's result.

    With ``pages`` (the arguments are copy-on-write mappings of their segments), an array is unchanged if it
    still covers its place in the segment and none of its pages was written. Otherwise (the arguments are
    copies), it is compared with its original in the segment, which stays as sent while the task runs.
    """
    known: Known = {}
    mapped: dict = {}  # segment name -> its mapping, made at the first original asked for

    def original(ref: NumpyRef, spec: tuple) -> np.ndarray:
        if ref.name not in mapped:
            mapped[ref.name] = _read_segment(ref.name, ref.size, unlink=False)
        _, dtype, shape, start = spec
        return np.frombuffer(mapped[ref.name], dtype=dtype, count=math.prod(shape), offset=start).reshape(shape)

    def compared(value: np.ndarray, ref: NumpyRef, spec: tuple) -> bool:
        before = original(ref, spec)
        return value.dtype == before.dtype and value.shape == before.shape and np.array_equal(value, before)

    def untouched(value: np.ndarray, spec: tuple, address: int) -> bool:
        _, dtype, shape, _ = spec
        return (value.ctypes.data == address and value.dtype == dtype and value.shape == tuple(shape)
                and value.flags.c_contiguous and not pages.written(address, value.nbytes))

    def visit(value: np.ndarray, path: tuple, ref: NumpyRef, spec: tuple) -> None:
        if pages is not None:
            test = functools.partial(untouched, spec=spec, address=value.ctypes.data)
        else:
            test = functools.partial(compared, ref=ref, spec=spec)
        known[id(value)] = (value, path, test)

    _walk_arguments(args, encoded, (), visit)
    return known


def _walk_arguments(a: Any, ref: Any, path: tuple, visit: Callable) -> None:
    if isinstance(a, tuple):
        for i, (x, r) in enumerate(zip(a, ref, strict=True)):
            _walk_arguments(x, r, (*path, i), visit)
    elif isinstance(ref, NumpyRef) and isinstance(a, dict):
        for spec in ref.specs:
            value = a.get(spec[0])
            if isinstance(value, np.ndarray):
                visit(value, (*path, spec[0]), ref, spec)


def _unchanged(value: np.ndarray, known: Known | None) -> tuple | None:
    """The argument path of ``value`` if it is a known argument array, unchanged; else None."""
    entry = known.get(id(value)) if known else None
    if entry is None or entry[0] is not value:
        return None
    _, path, test = entry
    return path if test(value) else None


class WrittenPages:
    """Which pages of a process's copy-on-write mappings were written, from ``/proc/self/pagemap`` (Linux).

    A page of a private file mapping that was only read is the file's page; the first write replaces it
    with a private copy, which the kernel reports as an anonymous page. Read once per mapping, when first
    asked (after the task). :meth:`open` returns None where the pagemap cannot be read.
    """

    def __init__(self, fd: int, maps: list):
        self._fd = fd
        self._ranges = []  # (start address, length, mapping index)
        for i, (_, m) in enumerate(maps):
            self._ranges.append((np.frombuffer(m, dtype=np.uint8, count=1).ctypes.data, len(m), i))
        self._flags: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, maps: list) -> WrittenPages | None:
        """For the mappings ``maps`` (``(name, mmap)`` pairs), or None without a readable pagemap."""
        try:
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError:
            return None
        return cls(fd, maps)

    def close(self) -> None:
        os.close(self._fd)

    def written(self, address: int, nbytes: int) -> bool:
        """Whether any page under ``[address, address + nbytes)`` was written (True if not in a mapping)."""
        if nbytes == 0:
            return False
        inside = [r for r in self._ranges if r[0] <= address and address + nbytes <= r[0] + r[1]]
        if not inside:
            return True
        start, length, i = inside[0]
        if i not in self._flags:
            first, count = start // _PAGE, -(-length // _PAGE)
            raw = os.pread(self._fd, count * 8, first * 8)
            if len(raw) != count * 8:
                return True
            entries = np.frombuffer(raw, dtype=np.uint64)
            present, swapped, filed = (entries >> np.uint64(63)) & 1, (entries >> np.uint64(62)) & 1, \
                (entries >> np.uint64(61)) & 1
            self._flags[i] = ((present & (1 - filed)) | swapped).astype(bool)
        lo = address // _PAGE - start // _PAGE
        hi = (address + nbytes - 1) // _PAGE - start // _PAGE
        return bool(self._flags[i][lo : hi + 1].any())


_PAGE = mmap.PAGESIZE


def _write_ipc(obj: pa.Table | pa.RecordBatch, sink) -> None:
    with pa.ipc.new_stream(sink, obj.schema) as writer:
        if isinstance(obj, pa.Table):
            writer.write_table(obj)
        else:
            writer.write_batch(obj)


def _encode_arrow(obj: pa.Table | pa.RecordBatch, prefix: str, segments: list[str],
                  allocate: Allocate | None) -> ArrowRef:
    mock = pa.MockOutputStream()
    _write_ipc(obj, mock)
    size = mock.size()
    shm = _segment(prefix, size, allocate)
    segments.append(shm.name)
    try:
        buf = pa.py_buffer(shm.buf[:size])  # a reused segment may be larger than the payload
        writer = pa.FixedSizeBufferWriter(buf)
        _write_ipc(obj, writer)
        writer.close()
        del writer, buf
    finally:
        if allocate is None:
            shm.close()
    return ArrowRef(shm.name, size, isinstance(obj, pa.Table))


@dataclass
class _Layout:
    """Where one numpy dict's arrays go in the payload's segment (offsets from its start)."""

    specs: list
    objects: dict
    kept: list
    order: list
    arrays: dict
    end: int


def _layout(obj: dict, known: Known | None, offset: int) -> _Layout:
    specs, objects, arrays, kept = [], {}, {}, []
    for key, value in obj.items():
        if value.dtype.hasobject or type(value) is not np.ndarray:  # a subclass (e.g. a mask) is more than buffers
            objects[key] = value
            continue
        path = _unchanged(value, known)
        if path is not None:
            kept.append((key, path))
            continue
        if not value.flags.c_contiguous:  # (np.ascontiguousarray would also make a 0-d array 1-d)
            value = np.ascontiguousarray(value)
        arrays[key] = value
        specs.append((key, _dtype_spec(value.dtype), value.shape, offset))
        offset += -(-value.nbytes // _ALIGN) * _ALIGN
    return _Layout(specs, objects, kept, list(obj), arrays, offset)


def _dtype_spec(dtype: np.dtype) -> str | np.dtype:
    """``dtype.str`` (small to pickle) where it rebuilds ``dtype`` exactly, else the dtype itself: a structured
    dtype's str is a plain void (``|V12``: no fields), as is a user dtype's (ml_dtypes' bfloat16), and a str never
    carries metadata."""
    text = dtype.str
    if dtype.isbuiltin == 1:  # numpy's own native-order dtypes (no fields, no metadata): the common case
        return text
    try:
        exact = dtype.metadata is None and np.dtype(text) == dtype
    except TypeError:
        exact = False
    return text if exact else dtype


def _write_numpy(layouts: list[_Layout], prefix: str, segments: list[str],
                 allocate: Allocate | None) -> tuple[str, int]:
    """Write every array of ``layouts`` into one segment; returns its name and the bytes used."""
    size = layouts[-1].end
    shm = _segment(prefix, size, allocate)
    segments.append(shm.name)
    try:
        view = np.ndarray((max(1, size),), dtype=np.uint8, buffer=shm.buf)
        for layout in layouts:
            for key, _, _, start in layout.specs:
                raw = layout.arrays[key].reshape(-1).view(np.uint8)
                view[start : start + raw.size] = raw
        del view
    finally:
        if allocate is None:
            shm.close()
    return shm.name, size


_SHM_DIR = "/dev/shm"  # where POSIX shared memory segments are files (Linux)

VIEW_MIN_BYTES = 64 << 10
"""With ``decode(copy_small=True)``, numpy arrays smaller than this are copied out of their segment (a copy this
small costs about what faulting its pages in from the mapping does)."""
VIEW_SHARE = 16
"""...and so are those smaller than this fraction of their segment (a task's result holds several batches): a
kept view pins at most ``VIEW_SHARE`` times its bytes."""


def _read_segment(name: str, size: int, unlink: bool, copy: bool = False) -> mmap.mmap | bytearray:
    """A segment's first ``size`` bytes: a private copy-on-write mapping where segments are files (zero copy,
    writable, unmapped once nothing refers to it), else (or with ``copy``, or out of mappings) a copy.
    Unlinks the name if asked."""
    try:
        fd = os.open(os.path.join(_SHM_DIR, name), os.O_RDONLY)
    except FileNotFoundError:  # not a file on this platform (or missing: attaching raises FileNotFoundError)
        shm = shared_memory.SharedMemory(name=name)
        try:
            data: mmap.mmap | bytearray = bytearray(shm.buf[:size])
        finally:
            shm.close()
    else:
        try:
            data = None
            if not copy and size:
                try:
                    data = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
                except OSError:  # out of mappings (vm.max_map_count: a trainer holding very many batches)
                    data = None
            if data is None:
                data = bytearray(size)
                if size and os.preadv(fd, [data], 0) != size:
                    raise OSError(f"shared-memory segment {name} holds fewer than {size} bytes")
        finally:
            os.close(fd)
    if unlink:
        unlink_quietly(name)
    return data


def decode(obj: Any, unlink: bool, copy: bool = False, args: tuple | None = None, maps: list | None = None,
           copy_small: bool = False) -> Any:
    """Read back what :func:`encode` wrote: views of a private mapping of each segment, or with ``copy`` a
    copy (for segments their owner will rewrite: the data must not change under whoever keeps it);
    unlinking the segments if asked. Arrays kept back by :func:`encode` are taken from ``args`` (the task's
    own arguments, on the side that sent them). The private mappings made are added to ``maps`` as
    ``(segment name, mmap)`` pairs, if given.

    With ``copy_small`` (the process pool's results), each numpy array smaller than :data:`VIEW_MIN_BYTES` or
    than ``1 / VIEW_SHARE`` of its segment is copied out instead of viewed, so a segment's mapping lives only
    as long as the large arrays that view it (released on return if none does), and whatever a consumer keeps
    pins at most ``VIEW_SHARE`` times its own bytes: a label array kept from every batch no longer keeps
    every column of its task's batches mapped. Arrow data are views whatever their size."""
    data: dict = {}
    out = _decode(obj, unlink, copy, args, data, copy_small)
    if maps is not None:
        maps.extend((name, d) for name, d in data.items() if isinstance(d, mmap.mmap))
    return out


def _decode(obj: Any, unlink: bool, copy: bool, args: tuple | None, data: dict, copy_small: bool) -> Any:
    """:func:`decode`, reading each segment once (``data``: name -> its bytes so far)."""
    if isinstance(obj, tuple):
        return tuple(_decode(o, unlink, copy, args, data, copy_small) for o in obj)
    if isinstance(obj, ArrowRef):
        data[obj.name] = _read_segment(obj.name, obj.size, unlink, copy)
        table = pa.ipc.open_stream(pa.py_buffer(data[obj.name])).read_all()
        if obj.table:
            return table
        return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
    if isinstance(obj, NumpyRef):
        if obj.kept and args is None:
            raise ValueError("decoding a result that refers to its task's arguments needs the arguments")
        if obj.name not in data:  # the dicts of one payload share a segment
            data[obj.name] = _read_segment(obj.name, obj.size, unlink, copy)
        buf = data[obj.name]
        out = {}
        for key, dtype, shape, start in obj.specs:
            view = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=start).reshape(shape)
            if copy_small and (view.nbytes < VIEW_MIN_BYTES or view.nbytes * VIEW_SHARE < obj.size):
                view = view.copy()  # small: not worth keeping the whole segment mapped for
            out[key] = view
        out.update(obj.objects)
        for key, path in obj.kept:
            out[key] = _at(args, path)
        if obj.order:  # the sender's key order, whatever went as buffers, pickled or was kept
            out = {key: out[key] for key in obj.order}
        return out
    return obj


def _at(args: tuple, path: tuple) -> np.ndarray:
    for step in path:
        args = args[step]
    return args


def refs(obj: Any) -> list:
    """The segment references in an encoded payload."""
    if isinstance(obj, tuple):
        return [r for o in obj for r in refs(o)]
    return [obj] if isinstance(obj, (ArrowRef, NumpyRef)) else []


def unlink_quietly(name: str) -> None:
    """Unlink a segment if it still exists (where segments are files, without mapping it: that works even
    when the process is out of mappings), and tell the resource tracker, as ``SharedMemory.unlink`` does."""
    if os.path.isdir(_SHM_DIR):
        try:
            os.unlink(os.path.join(_SHM_DIR, name))
        except FileNotFoundError:
            return
        resource_tracker.unregister("/" + name, "shared_memory")
        return
    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


# A process pool's segment names: ``lrd<owner pid>x<4 hex>_<creator pid>_<n>`` (hex; see ProcessPool).
_OWN_NAME = re.compile(r"lrd([0-9a-f]+)x[0-9a-f]{4}_([0-9a-f]+)_[0-9a-f]+")


def sweep_orphans() -> list[str]:
    """Unlink the segments larder's process pools left behind in ``/dev/shm`` when their processes were killed
    together (``kill -9`` of a process group, ``timeout -s KILL``): the resource tracker that would have
    removed them died with them. Only names of larder's own pattern are touched, and only those whose owner
    (the reader's process) and creator (it, or a worker) are both dead; a dead pid reused by a live process
    keeps its segments (left, never wrongly removed). Returns the names removed (Linux; elsewhere none).
    """
    from .claims import pid_alive

    try:
        names = os.listdir(_SHM_DIR)
    except OSError:  # no /dev/shm (not Linux)
        return []
    removed = []
    alive: dict[int, bool] = {}
    for name in names:
        m = _OWN_NAME.fullmatch(name)
        if m is None:
            continue
        pids = (int(m.group(1), 16), int(m.group(2), 16))
        if any(alive.setdefault(pid, pid == os.getpid() or pid_alive(pid)) for pid in pids):
            continue
        try:  # not through the resource tracker: this process never registered it
            os.unlink(os.path.join(_SHM_DIR, name))
        except OSError:  # removed meanwhile, or not ours to remove (another user's sticky /dev/shm)
            continue
        removed.append(name)
    return removed


__all__ = ["ArrowRef", "NumpyRef", "WrittenPages", "argument_arrays", "decode", "encode", "refs", "sweep_orphans",
           "unlink_quietly"]
