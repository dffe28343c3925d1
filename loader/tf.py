"""TensorFlow adapter: a larder cache as a ``tf.data.Dataset`` of ready batches.

``import loader`` and ``import loader.tf`` never import TensorFlow; :func:`make_dataset` does.

Each element is one reader batch, a dict of tensors:

* fixed-width columns: ``tf.Tensor`` of shape ``[None]`` (fixed-size lists ``[None, k, ...]``);
* variable-length lists, ``ragged="ragged"`` (default): a ``tf.RaggedTensor`` ``[None, None]`` built from
  the reader's values + offsets (row splits) without a per-row loop; ``ragged="padded"``: a ``[None, None]``
  tensor plus ``col + ".lengths"`` (``int64``);
* strings and binaries: ``tf.string`` of shape ``[None]`` (``strings="string"``, default), or ``uint8`` in the
  ``ragged`` form (``strings="bytes"``).

The ``output_signature`` is derived from the manifest's Arrow schema by running the reader's own numpy
conversion on an empty table of that schema, so it matches the batches exactly. A ``transform`` may change
the columns: then pass ``output_signature`` yourself (or let it be taken from the first batch, which
opens one extra reader).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .convert import to_numpy
from .errors import ConfigError
from .tasks import ROW_COLUMN, ROW_GROUP_COLUMN

RAGGED_FORMS = ("ragged", "padded")
STRING_FORMS = ("string", "bytes")


def _tf():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("loader.tf needs TensorFlow: pip install 'larder[tf]'") from e
    return tf


def _reader_forms(ragged: str, strings: str) -> dict[str, str]:
    if ragged not in RAGGED_FORMS:
        raise ConfigError(f"ragged must be one of {RAGGED_FORMS}, got {ragged!r}")
    if strings not in STRING_FORMS:
        raise ConfigError(f"strings must be one of {STRING_FORMS}, got {strings!r}")
    return {
        "ragged": "offsets" if ragged == "ragged" else "padded",
        "strings": "object" if strings == "string" else "offsets",
    }


def _ragged_columns(sample: dict[str, np.ndarray]) -> set[str]:
    """Columns given as values + offsets (each becomes one RaggedTensor)."""
    return {k[: -len(".offsets")] for k in sample if k.endswith(".offsets") and k[: -len(".offsets")] in sample}


def signature_of(sample: dict[str, np.ndarray], ragged_form: bool = True) -> dict[str, Any]:
    """The ``tf.TypeSpec`` dict of batches shaped like ``sample`` (a batch dict of numpy arrays).

    Args:
        sample: A batch (possibly empty) in the reader's numpy forms.
        ragged_form: Fold ``col`` + ``col.offsets`` into one ``tf.RaggedTensorSpec``.
    """
    tf = _tf()
    folded = _ragged_columns(sample) if ragged_form else set()
    spec: dict[str, Any] = {}
    for key, arr in sample.items():
        if key.endswith(".offsets") and key[: -len(".offsets")] in folded:
            continue
        if arr.dtype.kind in "OUS":
            spec[key] = tf.TensorSpec([None], tf.string)
            continue
        dtype = tf.int64 if arr.dtype.kind in "mM" else tf.as_dtype(arr.dtype)
        if key in folded:
            spec[key] = tf.RaggedTensorSpec([None, None], dtype, ragged_rank=1, row_splits_dtype=tf.int64)
        else:
            inner = list(arr.shape[1:])
            if key + ".lengths" in sample:
                inner = [None] * len(inner)  # padded: the width varies per batch
            spec[key] = tf.TensorSpec([None, *inner], dtype)
    return spec


def _to_tf(batch: dict[str, np.ndarray], folded: set[str]) -> dict[str, Any]:
    tf = _tf()
    out: dict[str, Any] = {}
    for key, arr in batch.items():
        if key.endswith(".offsets") and key[: -len(".offsets")] in folded:
            continue
        if arr.dtype.kind in "mM":
            arr = arr.view(np.int64)
        if key in folded:
            out[key] = tf.RaggedTensor.from_row_splits(arr, batch[key + ".offsets"], validate=False)
        elif arr.dtype.kind == "O":
            out[key] = tf.constant([b"" if v is None else v for v in arr], tf.string) if len(arr) else tf.zeros(
                [0], tf.string
            )
        else:
            out[key] = arr
    return out


def make_dataset(
    url: str | os.PathLike,
    *,
    batch_size: int = 100,
    ragged: str = "ragged",
    strings: str = "string",
    output_signature: dict | None = None,
    **reader_kwargs,
):
    """A ``tf.data.Dataset`` of batches from a larder cache (``tf.data.Dataset.from_generator``).

    Every iteration of the dataset (e.g. each epoch of ``model.fit``, or ``.repeat()``) opens a new reader
    with the same arguments; pass ``num_epochs`` to the reader to read several epochs in one iteration.

    Args:
        url: Dataset directory, version directory or remote URL.
        batch_size: Rows per batch.
        ragged: ``"ragged"`` (``tf.RaggedTensor``) or ``"padded"`` (dense + ``.lengths``).
        strings: ``"string"`` (``tf.string``) or ``"bytes"`` (``uint8`` in the ``ragged`` form).
        output_signature: Override the signature derived from the manifest (needed when a ``transform``
            changes the columns; when omitted with a transform, it is taken from the first batch).
        **reader_kwargs: Passed to :func:`loader.make_reader` (``columns``, ``shuffle``, ``seed``,
            ``num_epochs``, ``rank``, ``world_size``, ``transform``, ``pool``, ``cache_dir``...).

    Returns:
        The ``tf.data.Dataset``.

    Raises:
        ConfigError: An argument is invalid (names it).
        ColumnNotFoundError: A requested column is not in the schema.
        DatasetNotFoundError, ManifestError: The cache cannot be opened.
    """
    tf = _tf()
    from .reader import make_reader

    forms = _reader_forms(ragged, strings)
    kwargs = {**reader_kwargs, "batch_size": batch_size, **forms}

    def open_reader():
        return make_reader(url, **kwargs)

    if output_signature is None:
        output_signature = _derive_signature(kwargs, open_reader, ragged == "ragged")
    folded = {k for k, v in output_signature.items() if isinstance(v, tf.RaggedTensorSpec)}

    def generate() -> Iterator[dict[str, Any]]:
        with open_reader() as reader:
            for batch in reader:
                yield _to_tf(batch, folded)

    return tf.data.Dataset.from_generator(generate, output_signature=output_signature)


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
    if kwargs.get("with_row_ids"):  # appended by the reader like Table.append_column does (nullable int64)
        fields += [pa.field(ROW_GROUP_COLUMN, pa.int64()), pa.field(ROW_COLUMN, pa.int64())]
    empty = to_numpy(
        pa.schema(fields).empty_table(), ragged=kwargs["ragged"], strings=kwargs["strings"],
        masks=bool(kwargs.get("masks")),
    )
    return signature_of(empty, ragged_form)


__all__ = ["make_dataset", "signature_of"]
