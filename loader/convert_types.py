"""The types of :mod:`loader.convert`: which Arrow types have a numpy form, the checks made before a read,
and the plain types the reader reads string / binary views as."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.types as pat

from .errors import ConfigError

RAGGED_FORMS = ("offsets", "padded")
STRING_FORMS = ("offsets", "object")


def check_options(ragged: str, strings: str) -> None:
    """Validate the conversion options.

    Raises:
        ConfigError: An option has an unknown value (names the option).
    """
    if ragged not in RAGGED_FORMS:
        raise ConfigError(f"ragged must be one of {RAGGED_FORMS}, got {ragged!r}")
    if strings not in STRING_FORMS:
        raise ConfigError(f"strings must be one of {STRING_FORMS}, got {strings!r}")


def check_schema(schema: pa.Schema, columns: list[str]) -> None:
    """Fail early on columns that have no numpy form.

    Raises:
        ConfigError: A column's type cannot be converted (names the column and type).
    """
    for name in columns:
        _check_type(name, schema.field(name).type)


def _check_type(name: str, t: pa.DataType) -> None:
    if pat.is_dictionary(t):
        t = t.value_type
    if pat.is_struct(t):
        for i in range(t.num_fields):
            _check_type(f"{name}.{t.field(i).name}", t.field(i).type)
    elif pat.is_fixed_size_list(t):
        inner = t.value_type.value_type if pat.is_dictionary(t.value_type) else t.value_type
        if not (_is_fixed_width(inner) or _is_fixed_size_list_of_fixed(inner) or _is_binary_like(inner)):
            raise ConfigError(f"column {name!r}: {t} has no numpy form (fixed-size lists of fixed-width values "
                              "or of strings have one)")
    elif _is_list(t):
        inner = t.value_type.value_type if pat.is_dictionary(t.value_type) else t.value_type
        if _is_list(inner):
            inner = inner.value_type
            ok = _is_fixed_width(inner) or _is_fixed_size_list_of_fixed(inner)
            deeper = _is_list(inner) or _is_binary_like(inner)
            why = "more than two list levels" if deeper else f"lists of lists of {inner} have none"
        else:
            ok = _is_fixed_width(inner) or _is_fixed_size_list_of_fixed(inner) or _is_binary_like(inner)
            why = "lists of structs have none: read each field as its own list column" if pat.is_struct(inner) \
                else f"lists of {inner} have none"
        if not ok:
            raise ConfigError(f"column {name!r}: {t} has no vectorised numpy form ({why})")
    elif pat.is_null(t):
        raise ConfigError(f"column {name!r} has type null (it holds no values); leave it out with columns=")
    elif not (_is_fixed_width(t) or _is_binary_like(t)):
        raise ConfigError(f"column {name!r}: type {t} has no numpy form")


def _is_list(t: pa.DataType) -> bool:
    return pat.is_list(t) or pat.is_large_list(t) or getattr(pat, "is_list_view", lambda _: False)(t) or getattr(
        pat, "is_large_list_view", lambda _: False
    )(t)


def _is_binary_like(t: pa.DataType) -> bool:
    return (
        pat.is_string(t)
        or pat.is_large_string(t)
        or pat.is_binary(t)
        or pat.is_large_binary(t)
        or pat.is_fixed_size_binary(t)
        or getattr(pat, "is_string_view", lambda _: False)(t)
        or getattr(pat, "is_binary_view", lambda _: False)(t)
    )


def _is_fixed_width(t: pa.DataType) -> bool:
    if pat.is_dictionary(t):
        return _is_fixed_width(t.value_type)
    return (
        pat.is_integer(t)
        or pat.is_floating(t)
        or pat.is_boolean(t)
        or pat.is_temporal(t)
        or pat.is_decimal(t)
    )


def _is_fixed_size_list_of_fixed(t: pa.DataType) -> bool:
    return pat.is_fixed_size_list(t) and (_is_fixed_width(t.value_type) or _is_fixed_size_list_of_fixed(t.value_type))


def _is_view(t: pa.DataType) -> bool:
    return getattr(pat, "is_list_view", lambda _: False)(t) or getattr(pat, "is_large_list_view", lambda _: False)(t)


@functools.lru_cache(maxsize=256)
def plain_type(t: pa.DataType) -> pa.DataType | None:
    """``t`` with every string / binary view in it (at any depth) a large string / binary, and a list view
    holding one a large list; None when ``t`` holds no such view. Arrow's ``take`` and ``if_else`` have no
    kernels for views, and their batch forms are those of the plain types: the reader reads them plain."""
    if getattr(pat, "is_string_view", lambda _: False)(t):
        return pa.large_string()
    if getattr(pat, "is_binary_view", lambda _: False)(t):
        return pa.large_binary()
    if pat.is_dictionary(t):
        inner = plain_type(t.value_type)
        return None if inner is None else pa.dictionary(t.index_type, inner, t.ordered)
    if pat.is_struct(t):
        fields = [(f, plain_type(f.type)) for f in t]
        if all(p is None for _, p in fields):
            return None
        return pa.struct([f if p is None else f.with_type(p) for f, p in fields])
    if not (_is_list(t) or pat.is_fixed_size_list(t)):
        return None  # maps have no numpy form (refused before any read)
    inner = plain_type(t.value_type)
    if inner is None:
        return None
    item = t.value_field.with_type(inner)
    if pat.is_fixed_size_list(t):
        return pa.list_(item, t.list_size)
    return pa.list_(item) if pat.is_list(t) else pa.large_list(item)  # a list view: no cast to another view


def flat_fields(name: str, t: pa.DataType):
    """``(batch key, type)`` of each value a column's batch holds apart: struct fields one by one as
    ``col.field`` (nested too), dictionaries as their value type."""
    if pat.is_dictionary(t):
        t = t.value_type
    if pat.is_struct(t):
        for child in t:
            yield from flat_fields(f"{name}.{child.name}", child.type)
    else:
        yield name, t


@functools.lru_cache(maxsize=128)
def _needs_plain(t: pa.DataType) -> bool:
    if pat.is_dictionary(t):
        t = t.value_type
    return _is_binary_like(t) and not (pat.is_string(t) or pat.is_large_string(t) or pat.is_binary(t)
                                       or pat.is_large_binary(t))


def made_plain(plain: dict[str, pa.DataType], data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``data`` (as decoded) with its view columns cast to their plain types (``plain``, from
    :attr:`loader.tasks.ReadContext.plain`): one cast per such column, before any row is gathered; nothing otherwise."""
    for name, t in plain.items():
        i = data.schema.get_field_index(name)
        if i >= 0 and data.schema.field(i).type != t:
            data = data.set_column(i, data.schema.field(i).with_type(t), data.column(i).cast(t))
    return data


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of no rows of ``schema``, made without pandas (``Schema.empty_table`` imports it: +33 MiB and a
    quarter of a second in the trainer's process)."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


__all__ = ["RAGGED_FORMS", "STRING_FORMS", "check_options", "check_schema", "empty_table", "flat_fields", "made_plain",
           "plain_type"]
