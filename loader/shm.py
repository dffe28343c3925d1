"""Shared-memory transport of the process pool: Arrow data and numpy dicts, never pickled rows.

:func:`encode` moves every ``pyarrow.Table`` / ``RecordBatch`` of a payload into a
``multiprocessing.shared_memory`` segment as an Arrow IPC stream, and every dict of numpy arrays into one
segment of raw, 64-byte aligned buffers (``object`` arrays, e.g. ``strings="object"``, travel pickled
beside it); tuples are walked, anything else passes through. :func:`decode` maps the segment
copy-on-write (on Linux, where segments are files under ``/dev/shm``): the Arrow and numpy data it returns
are views of that private mapping, writable, and the mapping is released when the last of them is; on the
consumer side the segment's name is unlinked at once, so nothing is left behind however long the data
lives. Elsewhere, or with ``copy=True`` (a worker reading arguments in segments its pool reuses), the bytes
are copied out once. :func:`encode` takes the segments from an ``allocate`` callable when given one (a
pool's reused argument segments). Segment names start with a per-pool prefix, so a pool can remove what a
killed worker left behind.
"""

from __future__ import annotations

import mmap
import os
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
    """Numpy buffers in a segment: ``specs`` place each array; ``objects`` are the pickled object arrays."""

    name: str
    size: int
    specs: tuple  # (key, dtype str, shape, offset)
    objects: dict


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


def encode(obj: Any, prefix: str, segments: list[str], allocate: Allocate | None = None) -> Any:
    """Move Arrow data and numpy dicts into shared memory; other objects pass through.

    Every segment written is named in ``segments``. With ``allocate``, segments come from it (e.g. a pool's
    reused argument segments, whose pages are already in memory) and stay open; otherwise each is a new segment,
    closed once written.
    """
    if isinstance(obj, tuple):
        return tuple(encode(o, prefix, segments, allocate) for o in obj)
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        return _encode_arrow(obj, prefix, segments, allocate)
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return _encode_numpy(obj, prefix, segments, allocate)
    return obj


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


def _encode_numpy(obj: dict, prefix: str, segments: list[str], allocate: Allocate | None) -> NumpyRef:
    specs, objects, offset = [], {}, 0
    arrays = {}
    for key, value in obj.items():
        if value.dtype.hasobject:
            objects[key] = value
            continue
        value = np.ascontiguousarray(value)
        arrays[key] = value
        specs.append((key, value.dtype.str, value.shape, offset))
        offset += -(-value.nbytes // _ALIGN) * _ALIGN
    shm = _segment(prefix, offset, allocate)
    segments.append(shm.name)
    try:
        view = np.ndarray((max(1, offset),), dtype=np.uint8, buffer=shm.buf)
        for key, _, _, start in specs:
            raw = arrays[key].reshape(-1).view(np.uint8)
            view[start : start + raw.size] = raw
        del view
    finally:
        if allocate is None:
            shm.close()
    return NumpyRef(shm.name, offset, tuple(specs), objects)


_SHM_DIR = "/dev/shm"  # where POSIX shared memory segments are files (Linux)


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


def decode(obj: Any, unlink: bool, copy: bool = False) -> Any:
    """Read back what :func:`encode` wrote: views of a private mapping of each segment, or with ``copy`` a
    copy (for segments their owner will rewrite: the data must not change under whoever keeps it);
    unlinking the segments if asked."""
    if isinstance(obj, tuple):
        return tuple(decode(o, unlink, copy) for o in obj)
    if isinstance(obj, ArrowRef):
        data = _read_segment(obj.name, obj.size, unlink, copy)
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        if obj.table:
            return table
        return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
    if isinstance(obj, NumpyRef):
        data = _read_segment(obj.name, obj.size, unlink, copy)
        out = {}
        for key, dtype, shape, start in obj.specs:
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            out[key] = np.frombuffer(data, dtype=dt, count=count, offset=start).reshape(shape)
        out.update(obj.objects)
        return out
    return obj


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




__all__ = ["ArrowRef", "NumpyRef", "decode", "encode", "refs", "unlink_quietly"]
