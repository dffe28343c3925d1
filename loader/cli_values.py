"""The cells ``python -m loader head`` prints: every value as stored, whatever Python's own types can hold.

Arrow's ``to_pylist`` goes through ``datetime`` (microseconds at most, years 1 to 9999) and ``str`` (valid UTF-8
only), so a ``time64[ns]`` lost its last digits and a timestamp of year 146138, a date32 of 2**30 days or a
string of invalid bytes stopped ``head`` with a traceback. Here dates, times, timestamps and durations are
numpy's ``datetime64`` / ``timedelta64`` text in their own unit (the integer with its unit where numpy has none,
e.g. its ``NaT`` value), and the text form prints strings quoted and escaped as JSON strings, so a string
``"null"``, ``"NaN"`` or one holding a newline cannot pass for a null, a float or another line. A byte that is
not UTF-8 prints as ``\\xff`` (a backslash in the string itself as ``\\\\``); ``--json`` holds the text
``\\xff`` there (Python's ``backslashreplace``), since JSON has no escape for a byte.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

MAX_ITEMS = 8
MAX_CHARS = 60
MAX_BYTES = 16


class Shown(str):
    """A cell's display text that the text form prints as it is (a temporal, a bytes summary, a note); a JSON
    string in ``--json``. ``json_text`` is its ``--json`` form when that differs (a cut string)."""

    json_text: str | None = None


def _shown(text: str, json_text: str | None = None) -> Shown:
    out = Shown(text)
    out.json_text = json_text
    return out


def cells(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of ``table`` as dicts of Python values (:func:`short` then gives their display form)."""
    columns = {name: _cells(table.column(name).combine_chunks()) for name in table.column_names}
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def _is(kind: str, t: pa.DataType) -> bool:
    """``pyarrow.types.is_<kind>(t)``, False where this pyarrow has no such type (views came in pyarrow 16)."""
    return getattr(pat, f"is_{kind}", lambda _: False)(t)


def _cells(arr: pa.Array) -> list:
    t = arr.type
    if pat.is_dictionary(t):
        return _cells(arr.dictionary_decode())
    if pat.is_temporal(t):
        return _temporals(arr)
    if pat.is_string(t) or pat.is_large_string(t) or _is("string_view", t):
        raw = arr.cast(pa.binary_view()) if _is("string_view", t) else \
            arr.view(pa.large_binary() if pat.is_large_string(t) else pa.binary())
        return [None if v is None else v.decode("utf-8", "surrogateescape") for v in raw.to_pylist()]
    if pat.is_struct(t):
        fields = [_cells(child) for child in arr.flatten()]
        valid = arr.is_valid().to_pylist()
        return [{t.field(j).name: f[i] for j, f in enumerate(fields)} if valid[i] else None for i in range(len(arr))]
    if pat.is_map(t):
        return _cells(arr.cast(pa.list_(pa.struct([t.key_field, t.item_field]))))
    if pat.is_list(t) or pat.is_large_list(t) or pat.is_fixed_size_list(t) or _is("list_view", t) \
            or _is("large_list_view", t):
        values = iter(_cells(arr.flatten()))
        lengths = pc.list_value_length(arr).to_pylist()
        return [None if n is None else [next(values) for _ in range(n)] for n in lengths]
    return arr.to_pylist()


def _temporals(arr: pa.Array) -> list:
    """Dates, timestamps, times of day and durations as their full text (numpy's, in the type's own unit)."""
    t = arr.type
    ints = arr.view(pa.int32() if t.bit_width == 32 else pa.int64()).to_pylist()
    if pat.is_time(t):
        return [None if v is None else _shown(_time_of_day(v, t.unit)) for v in ints]
    if pat.is_duration(t):
        unit, make, suffix = t.unit, np.timedelta64, ""
    else:
        unit = "D" if pat.is_date32(t) else "ms" if pat.is_date64(t) else t.unit
        make, suffix = np.datetime64, "Z" if getattr(t, "tz", None) else ""  # a zoned timestamp: the UTC instant
    out = []
    for v in ints:
        text = None if v is None else str(make(v, unit))
        out.append(None if v is None else _shown(f"{v} {unit}" if text == "NaT" else text + suffix))
    return out


_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _time_of_day(v: int, unit: str) -> str:
    """``HH:MM:SS`` with every digit of the unit (``.123456789`` for ns); the integer with its unit outside a day."""
    per = _PER_SECOND[unit]
    if not 0 <= v < 86_400 * per:
        return f"{v} {unit}"
    seconds, fraction = divmod(v, per)
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text if per == 1 else f"{text}.{fraction:0{len(str(per)) - 1}d}"


def short(value: Any) -> Any:
    """A display form of one cell: long strings, bytes and lists cut with a note of what was left out."""
    if isinstance(value, Shown):
        return value
    if isinstance(value, bytes):
        head = value[:MAX_BYTES].hex()
        return _shown(f"<{len(value)} bytes: {head}{'...' if len(value) > MAX_BYTES else ''}>")
    if isinstance(value, str):
        if len(value) <= MAX_CHARS:
            return value
        note = f"... ({len(value)} chars)"
        return _shown(_quoted(value[:MAX_CHARS]) + note, value[:MAX_CHARS] + note)
    if isinstance(value, list):
        items = [short(v) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(_shown(f"... +{len(value) - MAX_ITEMS} more ({len(value)} items)"))
        return items
    if isinstance(value, dict):
        return {k: short(v) for k, v in value.items()}
    if isinstance(value, float | int | bool) or value is None:
        return value
    return _shown(str(value))  # decimals


def strict(value: Any) -> Any:
    """``value`` as strict JSON allows: float NaN and infinities become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (kept apart from null, which stays ``null``), in dicts and lists too; a cut string its text."""
    if isinstance(value, Shown):
        return _escaped(value.json_text if value.json_text is not None else str(value))
    if isinstance(value, str):
        return _escaped(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def text(value: Any) -> str:
    """The text form of a :func:`short` cell: strings (and dict keys) quoted and escaped as JSON strings, null as
    ``null``, floats as JSON would (``NaN``, ``Infinity``), :class:`Shown` texts as they are."""
    if isinstance(value, Shown):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quoted(k)}: {text(v)}" for k, v in value.items()) + "}"
    return _quoted(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_UNDECODED = re.compile("[\udc80-\udcff]")  # the bytes that are not UTF-8, as ``surrogateescape`` decodes them


def _quoted(value: str) -> str:
    """A JSON string literal of ``value``, its undecodable bytes as ``\\xff``."""
    return _UNDECODED.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", json.dumps(value, ensure_ascii=False))


def _escaped(value: str) -> str:
    """``value`` with its undecodable bytes as the text ``\\xff`` (what ``backslashreplace`` gives)."""
    if not _UNDECODED.search(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


__all__ = ["Shown", "cells", "short", "strict", "text"]
