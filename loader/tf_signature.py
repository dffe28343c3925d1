"""The ``output_signature`` of :mod:`loader.tf`: the ``tf.TypeSpec`` dict of the reader's batches, derived from
the manifest's Arrow schema (or from a first batch), and the lazy TensorFlow import of the adapter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .convert import _is_binary_like, _is_list, to_numpy
from .convert_types import empty_table, flat_fields
from .errors import ConfigError, TransformError
from .tasks import ROW_ID_FIELDS


def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("loader.tf needs TensorFlow: pip install -e '.[tf]' in the larder checkout") from e
    return tf


def _string_lists(schema) -> set[str]:
    """Batch keys of the lists of strings or binaries (any list kind, items dictionary-encoded or not; struct
    fields flattened as ``col.field``): the columns the reader gives as one object array of strings per row."""
    import pyarrow.types as pat

    out: set[str] = set()
    for field in schema:
        for key, t in flat_fields(field.name, field.type):
            if _is_list(t):
                item = t.value_type.value_type if pat.is_dictionary(t.value_type) else t.value_type
                if _is_binary_like(item):
                    out.add(key)
    return out


def _is_string_list(spec) -> bool:
    """Whether a ``tf.string`` spec is a list of strings per row (ragged, or padded ``[None, None]``), not a
    fixed-size list of strings (``[None, k]``)."""
    tf = _tf()
    return isinstance(spec, tf.RaggedTensorSpec) or (spec.shape.rank == 2 and spec.shape[1] is None)


def _splits(sample: dict[str, np.ndarray]) -> dict[str, int]:
    """Keys given as values + offsets -> ragged rank (2 with ``.value_offsets``: lists of strings/lists)."""
    out = {}
    for k in sample:
        if k.endswith(".offsets") and k[: -len(".offsets")] in sample:
            base = k[: -len(".offsets")]
            out[base] = 2 if base + ".value_offsets" in sample else 1
    return out


def _is_split_key(key: str, splits: dict[str, int]) -> bool:
    for suffix in (".offsets", ".value_offsets"):
        if key.endswith(suffix) and key[: -len(suffix)] in splits:
            return True
    return False


_ARRAY_KINDS = "biufcUSmM"  # numbers, bools, strings and bytes, dates and durations (as int64)


def column_array(key: str, value: Any) -> np.ndarray:
    """A batch column as the numpy array the tf adapter sends: an array as is; anything else a transform may return
    (a list, a tuple...) as ``np.asarray`` makes it, if that is one array of numbers, bools or strings.

    Raises:
        TransformError: numpy makes no such array of it (a scalar, rows of different lengths, mixed objects):
            names the column and the forms taken.
    """
    if isinstance(value, np.ndarray):
        return value
    taken = ("the tf adapter takes numpy arrays, or lists numpy turns into one array of numbers, bools or strings "
             "(a ragged column as its flat values plus 'col.offsets')")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise TransformError(f"column {key!r} ({type(value).__name__}) is no array: {e}; {taken}") from e
    strings = arr.dtype.kind == "O" and arr.ndim == 1 and all(v is None or isinstance(v, (str, bytes)) for v in arr)
    if arr.ndim == 0 or not (arr.dtype.kind in _ARRAY_KINDS or strings):
        raise TransformError(f"column {key!r} ({type(value).__name__}) makes a {arr.ndim}-d {arr.dtype} numpy array; "
                             f"{taken}")
    return arr


def check_signature(signature: Any) -> dict[str, Any]:
    """An ``output_signature`` given to :func:`loader.tf.make_dataset`, as a dict.

    Raises:
        ConfigError: Not a dict of column names to ``tf.TensorSpec`` / ``tf.RaggedTensorSpec`` (names the key).
    """
    tf = _tf()
    if not isinstance(signature, Mapping):
        raise ConfigError("output_signature must be a dict of column name -> tf.TensorSpec or tf.RaggedTensorSpec, "
                          f"got {type(signature).__name__} {signature!r}")
    for key, spec in signature.items():
        if not isinstance(key, str):
            raise ConfigError(f"output_signature keys must be column names (str), got {type(key).__name__} {key!r}")
        if not isinstance(spec, (tf.TensorSpec, tf.RaggedTensorSpec)):
            raise ConfigError(f"output_signature[{key!r}] must be a tf.TensorSpec or tf.RaggedTensorSpec, got "
                              f"{type(spec).__name__} {spec!r}")
    return dict(signature)


def signature_of(
    sample: dict[str, np.ndarray], ragged_form: bool = True, string_lists: set[str] | None = None
) -> dict[str, Any]:
    """The ``tf.TypeSpec`` dict of batches shaped like ``sample`` (a batch dict of numpy arrays).

    Args:
        sample: A batch (possibly empty) in the reader's numpy forms (lists too: :func:`column_array`).
        ragged_form: Fold values + offsets into ``tf.RaggedTensorSpec`` (else padded dense specs).
        string_lists: Object columns holding a list of strings per row (found from the data if None).

    Raises:
        TransformError: A column is no array of a tf type (as :func:`column_array`).
    """
    tf = _tf()
    sample = {k: column_array(k, v) for k, v in sample.items()}
    splits = _splits(sample) if ragged_form else {}
    if string_lists is None:
        string_lists = {  # (a 2-D object array is a fixed-size list of strings)
            k for k, v in sample.items()
            if v.dtype.kind == "O" and v.ndim == 1 and any(isinstance(x, np.ndarray) for x in v)
        }
    spec: dict[str, Any] = {}
    for key, arr in sample.items():
        if _is_split_key(key, splits):
            continue
        if arr.dtype.kind in "OUS":
            if key not in string_lists:  # strings, or fixed-size lists of them
                spec[key] = tf.TensorSpec([None, *arr.shape[1:]], tf.string)
            elif ragged_form:
                spec[key] = tf.RaggedTensorSpec([None, None], tf.string, ragged_rank=1, row_splits_dtype=tf.int64)
            else:  # padded with b"" by _to_parts, plus the items per row
                spec[key] = tf.TensorSpec([None, None], tf.string)
                spec[key + ".lengths"] = tf.TensorSpec([None], tf.int64)
            continue
        dtype = tf.int64 if arr.dtype.kind in "mM" else tf.as_dtype(arr.dtype)
        if key in splits:  # the values' own dimensions (fixed-size lists) follow the ragged ones
            rank = splits[key]
            spec[key] = tf.RaggedTensorSpec([None] * (rank + 1) + list(arr.shape[1:]), dtype, ragged_rank=rank,
                                            row_splits_dtype=tf.int64)
        elif key + ".lengths" in sample:  # padded: the padded widths vary per batch, fixed-size dims do not
            levels = 2 if key + ".value_lengths" in sample else 1
            spec[key] = tf.TensorSpec([None] * (levels + 1) + list(arr.shape[levels + 1 :]), dtype)
        elif key.endswith(".value_lengths"):
            spec[key] = tf.TensorSpec([None, None], dtype)
        else:
            spec[key] = tf.TensorSpec([None, *arr.shape[1:]], dtype)
    return spec


def _derive_signature(kwargs: dict, open_reader: Callable, ragged_form: bool) -> dict[str, Any]:
    """The signature from the manifest schema (no transform) or from the first batch (with one).

    A probe reader is built either way (its constructor opens the manifest and validates the arguments,
    with the same filesystem options, and starts nothing); only with a transform is a batch read.
    """
    import pyarrow as pa

    with open_reader() as probe:
        if kwargs.get("transform") is not None:
            first = next(iter(probe), None)
            if first is None:
                raise ConfigError("output_signature: cannot derive it from an empty reader; pass it explicitly")
            return signature_of(first, ragged_form)
        fields = [probe.dataset.schema.field(c) for c in probe.columns]
        string_lists = _string_lists(probe.dataset.schema)
    if kwargs.get("with_row_ids"):  # appended by the reader as never-null int64 (no mask)
        fields += list(ROW_ID_FIELDS)
    empty = to_numpy(
        empty_table(pa.schema(fields)), ragged=kwargs["ragged"], strings=kwargs["strings"],
        masks=bool(kwargs.get("masks")),
    )
    return signature_of(empty, ragged_form, string_lists)


__all__ = ["check_signature", "column_array", "signature_of"]
