"""Arrow record batches to dicts of numpy arrays, vectorised (never a Python loop over rows).

The forms of a batch ``b`` (``dict[str, numpy.ndarray]``, every value has the batch's rows as first axis
except the flat ``values`` of ragged columns; every array is writable, and no two batches share memory
when shuffling; arrays are zero-copy views of the batch's Arrow buffers where the layouts agree):

* **Fixed-width columns** (integers, floats, bools, dates, timestamps, durations, times of day): a 1-D
  array of the matching numpy dtype (``datetime64`` for dates and timestamps, in UTC; ``timedelta64`` for
  durations and times of day, as the time since midnight). Nulls become ``NaN`` in float columns and
  ``0`` / ``False`` / the epoch / midnight in the others; ask ``masks=True`` to also get
  ``b[col + ".valid"]`` (bool, ``False`` where null) for every nullable column, in every batch. Dictionary
  columns are decoded; decimals become ``float64``: the nearest one for every value of up to 15 digits
  (unscaled integers up to 2**53) and a scale from -22 to 22, whatever the declared precision; longer values
  and larger scales are within 2 ulps of it (Arrow's cast).
* **Fixed-size lists** (``fixed_size_list<float32, 3>``, nested too): an ``(n, 3)`` (or higher-rank)
  array; a null list is filled like a null value of its items (``NaN`` for floats, ``0`` / ``False`` / the
  epoch otherwise). Fixed-size lists of strings or binaries are lists of strings (below) with 3 items in
  every row (a null list: 3 empty strings, ``None`` in the ``strings="object"`` form, which is an
  ``(n, 3)`` object array).
* **Variable-length lists, strings and binaries**, ``ragged="offsets"`` (default): ``b[col]`` holds the
  flat values of all rows (list values in their numpy dtype; strings and binaries as ``uint8`` bytes,
  UTF-8 for strings) and ``b[col + ".offsets"]`` is an ``int64`` array of ``n + 1`` offsets starting at 0:
  row ``i`` is ``b[col][offsets[i]:offsets[i + 1]]``. A null list or string is empty (a null fixed-size binary
  is its width of zero bytes).
* ``ragged="padded"``: ``b[col]`` is an ``(n, longest)`` array padded with ``pad_value`` (0) and
  ``b[col + ".lengths"]`` the ``int64`` lengths. One long row pads every row of its batch to its length: a
  batch whose padding takes more than 8x its values and over 16 MiB warns (once per column and process).
* **Lists of strings / binaries / lists** (``list<string>`` tokens, ``list<list<int32>>``): two levels.
  ``ragged="offsets"``: ``b[col]`` the flat innermost values (bytes for strings),
  ``b[col + ".offsets"]`` (``n + 1``) the rows' offsets into the items, and ``b[col + ".value_offsets"]``
  (items + 1) the items' offsets into the values: item ``j`` of row ``i`` is
  ``values[value_offsets[offsets[i] + j]:value_offsets[offsets[i] + j + 1]]``. ``ragged="padded"``: an
  ``(n, most items, longest item)`` array with ``b[col + ".lengths"]`` (items per row) and
  ``b[col + ".value_lengths"]`` (``(n, most items)``). With ``strings="object"``, a list of strings is an
  object array holding one array of ``str`` per row. Deeper nesting has no numpy form (a ``ConfigError``
  names the column).
* ``strings="object"``: string and binary columns become 1-D ``object`` arrays of ``str`` / ``bytes``
  (``None`` where null) instead: convenient for small batches and printing, but the result is one Python
  object per row (made without importing pandas, which Arrow's own converter would; a string that is not
  UTF-8 raises a ``ConfigError`` naming the column). ``strings="offsets"`` (default) follows ``ragged``.
* **String / binary views** (``string_view``, nested too) have the forms of plain strings / binaries (the
  reader reads them plain: :func:`loader.convert_types.plain_type`).
* **Structs**: flattened to ``b["col.field"]`` with the rules above.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from .convert_ragged import _ragged, _ragged2, pad, split_batch, to_padded
from .convert_types import (  # the type checks are importable from here too
    RAGGED_FORMS,
    STRING_FORMS,
    _is_binary_like,
    _is_list,
    _is_view,
    _needs_plain,
    check_options,
    check_schema,
    plain_type,
)
from .errors import ConfigError


def as_arrow(values: np.ndarray) -> pa.Array:
    """A 1-D numeric numpy array as an Arrow array, zero-copy when contiguous (no nulls).

    ``pa.array(ndarray)`` asks pyarrow's pandas shim whether the input is pandas-like, which imports
    pandas on first use (~0.3 s, taken inside the first batch) whenever pandas is installed; this does not.
    """
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])

_STRUCTURE = (".offsets", ".value_offsets", ".lengths", ".value_lengths")
"""Suffixes of the keys that give another key's ragged structure (read by name when batches are split, padded
or handed to an adapter)."""


def check_keys(schema: pa.Schema, columns: list[str], *, ragged: str = "offsets", strings: str = "offsets",
               masks: bool = False, with_row_ids: bool = False) -> None:
    """Fail early when two columns would write the same key of a batch (e.g. a column named ``"a.offsets"``
    next to a string column ``a``, ``"s.x"`` next to a struct ``s`` with a field ``x``, or ``"b.valid"``
    next to a nullable ``b`` with ``masks``), which would silently replace one's arrays with the other's;
    or when a key is another column's key plus ``.offsets``, ``.value_offsets``, ``.lengths`` or
    ``.value_lengths`` (a column ``"x.offsets"`` next to an integer ``x``), which would be taken for the
    structure of that column's values (struct fields count as columns here; with ``with_row_ids``, so do
    ``_row_group`` and ``_row``).

    Raises:
        ConfigError: Names the key and the columns that both produce it.
    """
    owner: dict[str, tuple[str, str]] = {}  # batch key -> (column, the column or struct field it comes from)
    units = [(n, schema.field(n)) for n in columns]
    if with_row_ids:
        from .tasks import ROW_ID_FIELDS  # here: tasks imports this module

        units += [(f.name, f) for f in ROW_ID_FIELDS]
    for column, field in units:
        for unit, keys in _unit_keys(column, field, ragged, strings, masks):
            for key in keys:
                if key in owner and owner[key][0] != column:
                    raise ConfigError(f"columns {owner[key][0]!r} and {column!r} both give the batch key {key!r}; "
                                      "select one of them (columns=) or rename it")
                if key in owner:
                    raise ConfigError(f"column {column!r} gives the batch key {key!r} twice (from {owner[key][1]!r} "
                                      f"and {unit!r}); rename one of its fields")
                owner[key] = (column, unit)
    for key, (column, unit) in owner.items():
        for suffix in _STRUCTURE:
            base = owner.get(key[: -len(suffix)]) if key.endswith(suffix) else None
            if base is not None and base[1] != unit:
                fix = "rename one of its fields" if base[0] == column else "select one of them (columns=) or rename it"
                raise ConfigError(f"column {_who(column, unit)} gives the batch key {key!r}, which would be read as "
                                  f"the {suffix[1:]} of column {_who(*base)}; {fix}")


def _who(column: str, unit: str) -> str:
    return repr(column) if unit == column else f"{column!r} (its field {unit!r})"


def _unit_keys(name: str, field: pa.Field, ragged: str, strings: str, masks: bool):
    """``(column or struct field, its batch keys)`` of a column, struct fields one by one."""
    t = field.type.value_type if pat.is_dictionary(field.type) else field.type
    if pat.is_struct(t):
        if masks and field.nullable:
            yield name, [name + ".valid"]
        for child in t:
            yield from _unit_keys(f"{name}.{child.name}", child, ragged, strings, masks)
        return
    empty = pa.RecordBatch.from_arrays([pa.nulls(0, field.type)], schema=pa.schema([field.with_name(name)]))
    yield name, list(to_numpy(empty, ragged=ragged, strings=strings, masks=masks, writable=False))


def to_numpy(
    batch: pa.RecordBatch | pa.Table,
    *,
    ragged: str = "offsets",
    strings: str = "offsets",
    masks: bool = False,
    pad_value: Any = 0,
    writable: bool = True,
) -> dict[str, np.ndarray]:
    """Convert a record batch to a dict of numpy arrays (forms in the module docstring).

    Args:
        batch: The Arrow data.
        ragged: ``"offsets"`` or ``"padded"``.
        strings: ``"offsets"`` or ``"object"``.
        masks: Add ``col.valid`` for nullable columns.
        pad_value: Fill of the padded form.
        writable: Copy the arrays that would be read-only views of Arrow memory, so every array can be
            modified in place (False keeps zero-copy views). Views of mutable Arrow buffers (what the
            reader's gathers allocate) are writable already and are not copied.
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks()
        columns = [c.chunk(0) if c.num_chunks == 1 else pa.concat_arrays(c.chunks) for c in batch.columns]
        if batch.num_rows == 0:
            columns = [pa.nulls(0, f.type) for f in batch.schema]  # pa.array would import pandas
    else:
        columns = list(batch.columns)
    out: dict[str, np.ndarray] = {}
    for field, arr in zip(batch.schema, columns, strict=True):
        _convert(field.name, arr, field.nullable, out, ragged, strings, masks, pad_value)
    if writable:
        for key, value in out.items():
            if not value.flags.writeable:
                out[key] = value.copy()
    return out


@functools.lru_cache(maxsize=512)
def _kind(t: pa.DataType) -> str:
    """How a type converts (cached: type checks cost more than the conversion of a small batch)."""
    if pat.is_null(t):
        return "null"
    if pat.is_dictionary(t):
        return "dictionary"
    if pat.is_struct(t):
        return "struct"
    if pat.is_fixed_size_list(t):
        inner = t.value_type.value_type if pat.is_dictionary(t.value_type) else t.value_type
        return "fixed_size_strings" if _is_binary_like(inner) else "fixed_size_list"
    if _is_list(t):
        return "list"
    if _is_binary_like(t):
        return "binary"
    return "fixed"


def _convert(name, arr: pa.Array, nullable: bool, out: dict, ragged, strings, masks, pad_value) -> None:
    t = arr.type
    kind = _kind(t)
    if kind == "null":
        return
    if masks and nullable:
        out[name + ".valid"] = _valid(arr)
    if kind == "dictionary":
        arr = arr.dictionary_decode()
        t, kind = arr.type, _kind(arr.type)
    if kind == "struct":
        for i in range(t.num_fields):
            child = arr.field(i)
            if arr.null_count:  # a null struct makes every field null (views have no if_else kernel)
                child = child if plain_type(child.type) is None else child.cast(plain_type(child.type))
                child = pc.if_else(arr.is_valid(), child, pa.nulls(len(arr), child.type))
            _convert(f"{name}.{t.field(i).name}", child, t.field(i).nullable, out, ragged, strings, masks, pad_value)
    elif kind == "fixed_size_list":
        out[name] = _fixed_size_list(arr)
    elif kind == "fixed_size_strings":
        _fixed_size_strings(name, arr, out, ragged, strings, pad_value)
    elif kind == "list":
        offsets = _list_offsets(arr)
        flat = arr.flatten()
        if _kind(flat.type) == "dictionary":
            flat = flat.dictionary_decode()
        inner = _kind(flat.type)
        if inner in ("fixed", "fixed_size_list"):
            _ragged(name, _fixed(flat), offsets, out, ragged, pad_value)
        elif inner == "binary" and strings == "object":
            out[name] = _string_lists(name, arr, flat, offsets)
        else:  # two levels: list<string|binary> or list<list<fixed-width>>
            if inner == "binary":
                values, value_offsets = _bytes(flat)
            else:
                value_offsets, values = _list_offsets(flat), _fixed(flat.flatten())
            _ragged2(name, values, value_offsets, offsets, out, ragged, pad_value)
    elif kind == "binary":
        if strings == "object":
            out[name] = _objects(name, arr)
            return
        values, offsets = _bytes(arr)
        _ragged(name, values, offsets, out, ragged, pad_value)
    else:
        out[name] = _fixed(arr)


def _list_offsets(arr: pa.Array) -> np.ndarray:
    """``int64`` offsets (from 0) of a list array's rows into ``arr.flatten()``."""
    if arr.null_count == 0 and hasattr(arr, "offsets") and not _is_view(arr.type):
        offsets = _numeric(arr.offsets).astype(np.int64)
        return offsets - offsets[0]
    return _offsets(_lengths(pc.list_value_length(arr)))  # null lists may hide values: count what flatten keeps


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _numeric(arr: pa.Array) -> np.ndarray:
    """An integer or floating array without nulls as a zero-copy numpy view (writable when Arrow's buffer
    is). Arrow's own ``to_numpy`` consults pyarrow's pandas shim, which imports pandas on first use."""
    dtype = np.dtype(arr.type.to_pandas_dtype())
    data = arr.buffers()[1]
    if data is None:  # an empty array may have no buffer
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def _bools(arr: pa.Array) -> np.ndarray:
    """A boolean array without nulls as numpy ``bool`` (Arrow packs them in bits)."""
    n, start = len(arr), arr.offset
    if not n:
        return np.zeros(0, dtype=bool)
    packed = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[start // 8 : (start + n + 7) // 8 + 1]
    return np.unpackbits(packed, bitorder="little")[start % 8 : start % 8 + n].astype(bool)


def _valid(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return _bools(arr.is_valid())


def _lengths(lengths: pa.Array) -> np.ndarray:
    out = _numeric(lengths).astype(np.int64)
    if lengths.null_count:
        out[~_bools(lengths.is_valid())] = 0
    return out


def _fixed(arr: pa.Array) -> np.ndarray:
    """A fixed-width array as numpy, nulls filled (NaN for floats, zero otherwise)."""
    t = arr.type
    if pat.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if pat.is_decimal(t):
        return _decimal(arr)
    if pat.is_fixed_size_list(t):
        return _fixed_size_list(arr)
    if pat.is_temporal(t):
        return _temporal(arr)
    numeric = pat.is_integer(t) or pat.is_floating(t)
    if arr.null_count and (numeric or pat.is_boolean(t)):  # filled in numpy (pa.scalar imports pandas)
        invalid = ~_bools(arr.is_valid())
        if pat.is_boolean(t):
            return _bools(arr) & ~invalid
        values = _numeric(arr).copy()
        values[invalid] = np.nan if pat.is_floating(t) else 0
        return values
    if arr.null_count:
        arr = arr.fill_null(pa.scalar(0).cast(t))
    if numeric:
        return _numeric(arr)  # zero-copy; writable where the reader allocated the memory
    if pat.is_boolean(t):
        return _bools(arr)
    return arr.to_numpy(zero_copy_only=False)


def _decimal(arr: pa.Array) -> np.ndarray:
    """A decimal array (32 to 256 bits, any precision) as ``float64``, nulls NaN.

    A value whose unscaled integer fits in a float64 (up to 2**53: every value of up to 15 digits) at a scale
    from -22 to 22 (where ``10**scale`` is exact too) becomes the nearest float64, whatever the declared
    precision: the integer (the low 32 or 64 bits, the higher words its sign) divided by ``10**scale`` (or
    multiplied by ``10**-scale``) in one correctly rounded operation, where Arrow's cast can be an ulp off
    (``9286.96`` became ``9286.960000000001``). Other values (more digits, or a scale beyond 22) take Arrow's
    cast, within 2 ulps of the nearest float64.
    """
    t = arr.type
    n = len(arr)
    fits = None  # which values are exact integers in a float64 (None: all)
    if t.bit_width == 32:  # at most 9 digits
        low = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n, offset=4 * arr.offset)
    else:  # little-endian words, the lowest first
        words = t.bit_width // 64
        data = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=words * n, offset=8 * words * arr.offset)
        data = data.reshape(n, words)
        low = data[:, 0]
        fits = (low >= -(2**53)) & (low <= 2**53)
        if words > 1:  # the higher words only extend the low word's sign
            fits &= (data[:, 1:] == (low >> 63)[:, None]).all(axis=1)
    values = None
    if -22 <= t.scale <= 22:
        ints = low.astype(np.float64)
        values = ints / float(10**t.scale) if t.scale >= 0 else ints * float(10**-t.scale)
    if values is None or (fits is not None and not fits.all()):
        cast = _numeric(arr.cast(pa.float64()))
        values = np.array(cast) if values is None else np.where(fits, values, cast)
    if arr.null_count:
        values[~_bools(arr.is_valid())] = np.nan
    return values


@functools.lru_cache(maxsize=128)
def _temporal_dtype(t: pa.DataType) -> np.dtype:
    """The numpy type of an Arrow date, time, timestamp or duration type: ``datetime64`` for dates and
    timestamps (UTC; a time zone is dropped), ``timedelta64`` for durations and times of day (time since
    midnight), in the Arrow type's unit."""
    if pat.is_date32(t):
        return np.dtype("datetime64[D]")
    if pat.is_date64(t):
        return np.dtype("datetime64[ms]")
    if pat.is_timestamp(t):
        return np.dtype(f"datetime64[{t.unit}]")
    return np.dtype(f"timedelta64[{t.unit}]")  # duration, time32, time64


def _temporal(arr: pa.Array) -> np.ndarray:
    """A date, time, timestamp or duration array as ``datetime64`` / ``timedelta64`` from its integer storage
    (zero-copy for 64-bit types without nulls); nulls become 0 (the epoch, or midnight)."""
    t = arr.type
    ints = _numeric(arr.view(pa.int32() if t.bit_width == 32 else pa.int64()))
    if arr.null_count:
        ints = ints.copy()
        ints[~_bools(arr.is_valid())] = 0
    return ints.astype(np.int64, copy=False).view(_temporal_dtype(t))


def _fixed_size_list(arr: pa.Array) -> np.ndarray:
    """A fixed-size list of fixed-width values (nested too) as an ``(n, k, ...)`` array; a null list is filled
    like a null value (NaN for floats, zero otherwise: 0, False, the epoch, midnight)."""
    t = arr.type
    n, k = len(arr), t.list_size
    if not arr.null_count:
        inner = _fixed(arr.flatten())
        return inner.reshape((n, k) + inner.shape[1:])
    # flatten() drops null lists: convert all the values, then fill the null lists like a null value
    inner = _fixed(arr.values.slice(arr.offset * k, n * k))
    out = inner.reshape((n, k) + inner.shape[1:]).copy()  # _fixed may give a view of Arrow memory: not written
    out[~_bools(arr.is_valid())] = np.nan if out.dtype.kind == "f" else np.zeros((), out.dtype)
    return out


def _fixed_size_strings(name: str, arr: pa.Array, out: dict, ragged: str, strings: str, pad_value) -> None:
    """``fixed_size_list<string|binary, k>``: a list of strings of k items in every row; a null list holds k
    null strings (empty; None in the object form, an ``(n, k)`` array)."""
    n, k = len(arr), arr.type.list_size
    values = arr.values.slice(arr.offset * k, n * k)
    if pat.is_dictionary(values.type):
        values = values.dictionary_decode()
    hidden = np.repeat(~_bools(arr.is_valid()), k) if arr.null_count else None
    if strings == "object":
        objects = _objects(name, values)  # Arrow's converter: None where null
        if hidden is not None:
            objects[hidden] = None
        out[name] = objects.reshape(n, k)
        return
    if hidden is not None and _valid(values)[hidden].any():  # strings behind a null list: nulls instead
        if _needs_plain(values.type) and not pat.is_fixed_size_binary(values.type):  # views: no if_else kernel
            values = values.cast(pa.large_binary())  # (as _bytes does)
        keep = pa.Array.from_buffers(pa.bool_(), n * k, [None, pa.py_buffer(np.packbits(~hidden, bitorder="little"))])
        values = pc.if_else(keep, values, pa.nulls(n * k, values.type))
    flat, value_offsets = _bytes(values)
    _ragged2(name, flat, value_offsets, np.arange(n + 1, dtype=np.int64) * k, out, ragged, pad_value)


def _string_lists(name: str, arr: pa.Array, flat: pa.Array, offsets: np.ndarray) -> np.ndarray:
    """A list of strings as an object array of one array of ``str``/``bytes`` per row (None for a null list or
    string): views of one object array of the items ``flat`` (``arr.flatten()``, rows at ``offsets``)."""
    items = _objects(name, flat)
    rows = np.fromiter((items[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)),
                       dtype=object, count=len(arr))
    if arr.null_count:
        rows[~_bools(arr.is_valid())] = None
    return rows


def _objects(name: str, arr: pa.Array) -> np.ndarray:
    """Strings or binaries (any layout: views, fixed-size, large) as a 1-D object array of ``str`` / ``bytes``,
    None where null.

    Made from ``to_pylist``, not Arrow's ``to_numpy``, whose converter imports pandas whenever it is installed
    (+36 MB, and 0.3 s in ``make_reader``); that one is faster per string (10,000 short strings: 0.19 against
    0.28 ms), a difference lost in a reader's batch (the same read of 1M strings in batches of 10,000 took as
    long, 0.17-0.27 s, either way).

    Raises:
        ConfigError: A string holds bytes that are not UTF-8 (no ``str`` has them); names the column and the
            forms that give the raw bytes.
    """
    try:
        items = arr.to_pylist()
    except (pa.ArrowException, UnicodeDecodeError) as e:
        try:
            arr.validate(full=True)  # only on this path: says which string is not UTF-8
        except pa.ArrowInvalid as invalid:
            raise ConfigError(
                f"column {name!r} holds a string that is not valid UTF-8 ({invalid}), which strings=\"object\" "
                "cannot give as str; strings=\"offsets\" gives its raw bytes (loader.torch: strings=\"tensor\", "
                "loader.tf: strings=\"bytes\")") from e
        raise
    return np.fromiter(items, dtype=object, count=len(items))  # faster than np.array(items, dtype=object)


def _bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``uint8`` bytes (zero-copy where possible) and ``int64`` offsets of a string or binary array."""
    t = arr.type
    n = len(arr)
    if pat.is_fixed_size_binary(t):
        width = t.byte_width
        if arr.null_count:
            arr = arr.fill_null(pa.scalar(b"\0" * width, t))
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        return data[arr.offset * width : (arr.offset + n) * width], np.arange(n + 1, dtype=np.int64) * width
    if pat.is_string(t) or pat.is_binary(t):
        width = np.int32
    elif pat.is_large_string(t) or pat.is_large_binary(t):
        width = np.int64
    else:  # view types: one conversion to a plain layout
        arr, width = arr.cast(pa.large_binary()), np.int64

    def offsets_of(a: pa.Array) -> np.ndarray:
        return np.frombuffer(a.buffers()[1], dtype=width)[a.offset : a.offset + n + 1].astype(np.int64)

    offsets = offsets_of(arr)
    # Nulls decoded from Parquet span no bytes, so the buffers are already the filled form; Arrow allows null
    # slots with bytes behind them, which are filled first (pa.scalar, here only, imports pandas).
    if arr.null_count and np.diff(offsets)[~_bools(arr.is_valid())].any():
        kind = arr.type
        arr = arr.fill_null(pa.scalar(b"" if pat.is_binary(kind) or pat.is_large_binary(kind) else "", kind))
        offsets = offsets_of(arr)
    buffers = arr.buffers()
    flat = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    flat = flat[offsets[0] : offsets[-1]]
    offsets -= offsets[0]
    return flat, offsets


__all__ = ["RAGGED_FORMS", "STRING_FORMS", "check_keys", "check_options", "check_schema", "pad", "plain_type",
           "split_batch", "to_numpy", "to_padded"]
