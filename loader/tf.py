"""TensorFlow adapter: a larder cache as a ``tf.data.Dataset`` of ready batches.

``import loader`` and ``import loader.tf`` never import TensorFlow; :func:`make_dataset` does.

Each element is one reader batch, a dict of tensors:

* fixed-width columns: ``tf.Tensor`` of shape ``[None]`` (fixed-size lists ``[None, k, ...]``);
* variable-length lists, ``ragged="ragged"`` (default): a ``tf.RaggedTensor`` ``[None, None]`` built from
  the reader's values + offsets (row splits) without a per-row loop; lists of lists a rank-2 ragged
  ``[None, None, None]``; lists of fixed-size lists keep their fixed dimensions (``[None, None, k]``).
  ``ragged="padded"``: dense ``[None, None(, None)]`` plus ``col + ".lengths"`` (and
  ``col + ".value_lengths"`` for lists of lists);
* strings and binaries: ``tf.string`` ``[None]`` (``strings="string"``, default; nulls become ``b""``,
  a null fixed-size binary its width of zero bytes as in the numpy batch);
  ``list<string>`` (dictionary-encoded or fixed-size binary items too) a ragged ``tf.string``
  ``[None, None]`` (padded with ``b""`` plus ``.lengths`` when ``ragged="padded"``); a fixed-size list of
  ``k`` strings a dense ``tf.string`` ``[None, k]``; ``strings="bytes"``: ``uint8`` in the ``ragged`` form
  instead (a fixed-size list of strings like a list of strings).

The generator behind ``from_generator`` yields dense parts only: a ragged column's flat values and row
splits, and (default forms, no transform) a string column's bytes as one scalar string plus their offsets;
a ``map`` builds the ragged and ``tf.string`` tensors from them in the graph. Ragged specs through
``from_generator`` and one Python object per string cost about twice as much (bench, 4 MiB row groups:
38k samples/s before, 71-89k after).

The ``output_signature`` is derived from the manifest's Arrow schema by running the reader's own numpy
conversion on an empty table of that schema, so it matches the batches exactly. A ``transform`` may change
the columns: then pass ``output_signature`` yourself (or let it be taken from the first batch, which
opens one extra reader).

Errors inside the reader (a corrupt file, a failing transform) reach the consumer as TensorFlow's
``tf.errors.UnknownError``, whose message starts with the larder error and carries its original traceback:
``tf.data`` does not re-raise Python exception types from a generator.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from .arguments import check_int
from .convert import _is_list, _offsets, pad
from .convert_types import flat_fields
from .errors import ConfigError
from .kept import KeptReader, PinnedVersion
from .tf_signature import (
    _derive_signature,
    _is_split_key,
    _is_string_list,
    _tf,
    check_signature,
    column_array,
    signature_of,
)

RAGGED_FORMS = ("ragged", "padded")
STRING_FORMS = ("string", "bytes")


def _reader_forms(ragged: str, strings: str) -> dict[str, str]:
    if ragged not in RAGGED_FORMS:
        raise ConfigError(f"ragged must be one of {RAGGED_FORMS}, got {ragged!r}")
    if strings not in STRING_FORMS:
        raise ConfigError(f"strings must be one of {STRING_FORMS}, got {strings!r}")
    return {
        "ragged": "offsets" if ragged == "ragged" else "padded",
        "strings": "object" if strings == "string" else "offsets",
    }


def _null_bytes(schema, columns) -> dict[str, bytes]:
    """Batch keys of fixed-size binaries (alone, as the items of a list or fixed-size list, struct fields flattened as
    ``col.field``) -> the form of their null, as in the numpy batch: their width of zero bytes (the reader's object
    form, which the padded and transform paths convert, has None there)."""
    import pyarrow.types as pat

    out: dict[str, bytes] = {}
    for column in columns:
        for key, t in flat_fields(column, schema.field(column).type):
            if _is_list(t) or pat.is_fixed_size_list(t):
                t = t.value_type.value_type if pat.is_dictionary(t.value_type) else t.value_type
            if pat.is_fixed_size_binary(t):
                out[key] = bytes(t.byte_width)
    return out


_SPLITS = "::larder_row_splits_"  # component key of a ragged column's row splits: f"{col}{_SPLITS}{level}"
_BYTES = "::larder_byte_offsets"  # component key of a string column's byte offsets into its one scalar string


def _string_array(values, null: bytes = b"") -> np.ndarray:
    """A column of ``str``/``bytes``/None (1-D, or ``(n, k)`` for fixed-size lists) as an array ``tf.data``
    converts to ``tf.string`` (None -> ``null``)."""
    shape = values.shape if isinstance(values, np.ndarray) else (len(values),)
    if not len(values):
        return np.zeros(shape, dtype=np.bytes_)
    flat = values.ravel() if isinstance(values, np.ndarray) else values
    return np.array([null if v is None else v for v in flat], dtype=object).reshape(shape)


def _blob_keys(signature: dict[str, Any]) -> dict[str, str]:
    """String columns of ``signature`` -> ``"list"`` for a list of strings per row (a ragged ``tf.string``),
    ``"fixed"`` for a fixed-size list of strings (``[None, k]``), ``"string"`` for one string per row."""
    tf = _tf()
    out = {}
    for k, v in signature.items():
        if v.dtype == tf.string and isinstance(v, tf.RaggedTensorSpec):
            out[k] = "list"
        elif v.dtype == tf.string and v.shape.rank == 1:
            out[k] = "string"
        elif v.dtype == tf.string and v.shape.rank == 2 and v.shape[1] is not None:
            out[k] = "fixed"
    return out


def _components(signature: dict[str, Any], blobs: dict[str, str]) -> dict[str, Any]:
    """The dense ``TensorSpec`` s the generator yields for ``signature``: a ragged column as its flat values
    plus one row-splits vector per ragged level, and a string column in ``blobs`` as one scalar string of all
    its bytes plus their offsets (:func:`_assemble` builds the real tensors in the graph)."""
    tf = _tf()
    out: dict[str, Any] = {}
    for key, spec in signature.items():
        if key in blobs:
            out[key] = tf.TensorSpec([], tf.string)
            out[f"{key}{_BYTES}"] = tf.TensorSpec([None], tf.int64)
            if blobs[key] == "list":
                out[f"{key}{_SPLITS}0"] = tf.TensorSpec([None], tf.int64)
        elif isinstance(spec, tf.RaggedTensorSpec):
            rank = spec.ragged_rank
            out[key] = tf.TensorSpec([None, *spec.shape[rank + 1 :].as_list()], spec.dtype)
            for level in range(rank):
                out[f"{key}{_SPLITS}{level}"] = tf.TensorSpec([None], spec.row_splits_dtype)
        else:
            out[key] = spec
    return out


def _assemble(signature: dict[str, Any], blobs: dict[str, str]) -> Callable[[dict], dict]:
    """A ``Dataset.map`` function from :func:`_components` back to ``signature``: ragged tensors and strings
    are built in the graph, in C++ (through ``from_generator`` a ragged tensor costs about twice the time of
    its parts, and a ``tf.string`` tensor one Python object per string)."""
    tf = _tf()
    ranks = {k: s.ragged_rank for k, s in signature.items() if isinstance(s, tf.RaggedTensorSpec)}

    def build(parts: dict, k: str):
        if k in blobs:
            at = parts[f"{k}{_BYTES}"]
            strings = tf.strings.substr(parts[k], at[:-1], at[1:] - at[:-1])
            if blobs[k] == "fixed":
                return tf.reshape(strings, [-1, signature[k].shape[1]])
            return tf.RaggedTensor.from_row_splits(strings, parts[f"{k}{_SPLITS}0"], validate=False) \
                if blobs[k] == "list" else strings
        if k in ranks:
            return tf.RaggedTensor.from_nested_row_splits(
                parts[k], [parts[f"{k}{_SPLITS}{i}"] for i in range(ranks[k])], validate=False)
        return parts[k]

    return lambda parts: {k: build(parts, k) for k in signature}


def _to_parts(batch: dict[str, np.ndarray], splits: dict[str, int], string_lists: set[str],
              ragged_form: bool, blobs: dict[str, str], nulls: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A reader batch as the dense components of its ``tf.data`` element (see :func:`_components`); ``nulls``
    (:func:`_null_bytes`) gives the keys whose null string is not b"".

    Raises:
        TransformError: A column is no array of a tf type (:func:`loader.tf_signature.column_array`).
    """
    nulls = nulls or {}
    batch = {k: column_array(k, v) for k, v in batch.items()}  # a transform may return lists
    out: dict[str, Any] = {}
    for key, arr in batch.items():
        if _is_split_key(key, splits) or _is_split_key(key, blobs):
            continue
        if arr.dtype.kind in "mM":
            arr = arr.view(np.int64)
        if key in blobs:  # bytes + offsets from the reader: one copy into one Python bytes object
            out[key] = arr.tobytes()
            inner = batch.get(key + ".value_offsets")
            out[f"{key}{_BYTES}"] = batch[key + ".offsets"] if inner is None else inner
            if blobs[key] == "list":
                out[f"{key}{_SPLITS}0"] = batch[key + ".offsets"]
        elif key in splits:
            out[key] = arr
            out[f"{key}{_SPLITS}0"] = batch[key + ".offsets"]
            if splits[key] == 2:
                out[f"{key}{_SPLITS}1"] = batch[key + ".value_offsets"]
        elif arr.dtype.kind == "O" and key in string_lists:
            lengths = np.array([0 if v is None else len(v) for v in arr], dtype=np.int64)
            flat = [x for v in arr if v is not None for x in v.tolist()]
            if ragged_form:
                out[key] = _string_array(flat, nulls.get(key, b""))
                out[f"{key}{_SPLITS}0"] = _offsets(lengths)
            else:
                null = nulls.get(key, b"")
                out[key] = pad(np.array([null if x is None else x for x in flat], dtype=object), lengths, b"")
                out[key + ".lengths"] = lengths
        elif arr.dtype.kind == "O":
            out[key] = _string_array(arr, nulls.get(key, b""))
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
    epoch: int = 0,
    **reader_kwargs,
):
    """A ``tf.data.Dataset`` of batches from a larder cache (``tf.data.Dataset.from_generator``).

    Every iteration of the dataset (each epoch of ``model.fit``, each round of ``.repeat()``, each ``for``
    loop over it) opens a new reader that reads the next epoch: the first iteration reads epoch ``epoch``,
    the k-th (counting from 0, whether or not earlier ones were read to the end) epoch ``epoch + k``, so the
    order changes every epoch and is the same as ``make_reader(..., num_epochs=...)``'s epochs for the same
    ``seed``. With ``num_epochs=n`` one iteration reads n epochs and the k-th starts at epoch ``epoch + k * n``
    (``num_epochs=None``: one endless iteration). ``dataset.set_epoch(e)`` on the returned dataset makes the
    next iteration read epoch ``e`` (later ones continue from there), like ``DistributedSampler.set_epoch``;
    datasets derived from it (``.repeat()``, ``.map()``...) share the counter but not the attribute.

    With ``pool="process"`` the reader of an iteration read to its end reads on and is kept, with its worker
    processes, for the next iteration when that one continues from there (``dataset.close()`` stops it): the
    workers start once per run, not once per epoch (each imports the training script's imports: seconds with
    TensorFlow).

    Sharding: with ``world_size > 1`` larder reads this worker's shard, and the dataset's
    ``tf.data.Options().experimental_distribute.auto_shard_policy`` is ``OFF``, so that
    ``tf.distribute.MultiWorkerMirroredStrategy`` does not shard it again (its default policy would drop
    ``world_size - 1`` of every ``world_size`` batches). Under that strategy pass ``rank`` (the task index) and
    ``world_size`` (the number of workers); without them every worker reads all rows and TensorFlow's own
    auto-sharding splits them.

    Args:
        url: Dataset directory, version directory or remote URL. A dataset directory's ``CURRENT`` is
            followed once, here, and the version's manifest read: every iteration reads that version from that
            manifest, even after a newer one is published (with ``cache_dir``, from the local copies even after
            the version was pruned remotely).
        batch_size: Rows per batch.
        ragged: ``"ragged"`` (``tf.RaggedTensor``) or ``"padded"`` (dense + ``.lengths``).
        strings: ``"string"`` (``tf.string``) or ``"bytes"`` (``uint8`` in the ``ragged`` form).
        output_signature: Override the signature derived from the manifest (needed when a ``transform``
            changes the columns; when omitted with a transform, it is taken from the first batch): a dict of
            column name -> ``tf.TensorSpec`` or ``tf.RaggedTensorSpec``. A transform's columns are numpy arrays,
            or lists numpy turns into one array of numbers, bools or strings (anything else: a ``TransformError``
            naming the column).
        epoch: The epoch the first iteration reads (e.g. the epoch to resume training at).
        **reader_kwargs: Passed to :func:`loader.make_reader` (``columns``, ``shuffle``, ``seed``,
            ``num_epochs``, ``rank``, ``world_size``, ``transform``, ``pool``, ``cache_dir``...).

    Returns:
        The ``tf.data.Dataset``, with a ``set_epoch(epoch: int)`` method that sets the epoch of the next
        iteration (raises :class:`~loader.errors.ConfigError` if ``epoch`` is not a non-negative integer), and
        ``close()``, which stops the reader kept between iterations (``pool="process"``; otherwise a no-op).

    Raises:
        ConfigError: An argument is invalid (names it), e.g. ``output_signature`` not a dict of specs; the reader's
            arguments are checked here (a reader is made and closed) whether or not ``output_signature`` is given.
        ColumnNotFoundError: A requested column is not in the schema.
        TransformError: Deriving the signature from the first batch, a column is no array of a tf type.
        DatasetNotFoundError, ManifestError: The cache cannot be opened.
    """
    tf = _tf()
    from .reader import make_reader

    if output_signature is not None:
        output_signature = check_signature(output_signature)
    pinned = PinnedVersion(url, reader_kwargs)  # one version for every iteration, its manifest read once

    forms = _reader_forms(ragged, strings)
    rank, world_size = reader_kwargs.get("rank", 0), reader_kwargs.get("world_size", 1)
    check_int("world_size", world_size, 1)  # as make_reader (also when no reader is opened here)
    epochs = _EpochCounter(epoch, reader_kwargs.get("num_epochs", 1))
    kwargs = {**pinned.reader_kwargs, "batch_size": batch_size, **forms}
    ragged_form = ragged == "ragged"
    # Without a transform (which sees the batches) strings travel as bytes + offsets, not Python objects,
    # and become tf.string in the graph; the forms the signature describes stay the same.
    blob_strings = ragged_form and strings == "string" and reader_kwargs.get("transform") is None

    def open_reader(num_epochs: int | None = epochs.span):
        """A reader that stops before epoch ``num_epochs`` (it starts at epoch 0 until ``set_epoch``)."""
        blob_form = {"strings": "offsets"} if blob_strings else {}
        return make_reader(pinned.open(), **{**kwargs, "num_epochs": num_epochs, **blob_form})

    if output_signature is None:
        probes = []

        def open_probe():
            probes.append(open_reader())
            return probes[-1]

        try:
            output_signature = _derive_signature(kwargs, open_probe, ragged_form)
        finally:
            for probe in probes:  # and the file cache it was given
                pinned.close_reader(probe)
    else:  # the reader's checks of its arguments (columns, sample, pool...) here, not in the first iteration
        pinned.close_reader(open_reader())
    splits = {k: v.ragged_rank for k, v in output_signature.items()
              if isinstance(v, tf.RaggedTensorSpec) and v.dtype != tf.string}
    string_lists = {k for k, v in output_signature.items() if v.dtype == tf.string and _is_string_list(v)}
    blobs = _blob_keys(output_signature) if blob_strings else {}

    # A process pool's workers take seconds to start (each imports the training script's imports, e.g. TF): its
    # reader reads on into the next epochs and is kept for the next iteration, if that one continues from there.
    # The generator goes into TF's global registry and is never freed: it reaches the kept reader through a weak
    # reference, and the returned dataset owns it, so dropping the dataset stops the reader's workers.
    kept = KeptReader(pinned.close_reader) if reader_kwargs.get("pool") == "process" and epochs.span is not None \
        else None
    kept_ref = weakref.ref(kept) if kept is not None else (lambda: None)

    def generate() -> Iterator[dict[str, Any]]:
        first, end = epochs.take()
        kept = kept_ref()
        reader = None if kept is None else kept.take((rank, world_size, first))
        finished = False
        try:
            if reader is None:
                reader = open_reader(end if kept is None else None)
                reader.set_epoch(first)
            nulls = _null_bytes(reader.dataset.schema, reader.columns)
            batches = reader if end is None else islice(reader, (end - first) * reader.batches_per_epoch)
            for batch in batches:
                yield _to_parts(batch, splits, string_lists, ragged_form, blobs, nulls)
            finished = True
        finally:
            if reader is not None and not (finished and kept is not None and kept.put(reader)):
                pinned.close_reader(reader)

    parts = tf.data.Dataset.from_generator(generate, output_signature=_components(output_signature, blobs))
    if blobs or any(isinstance(v, tf.RaggedTensorSpec) for v in output_signature.values()):
        parts = parts.map(_assemble(output_signature, blobs))
    if world_size > 1:  # sharded by larder: tf.distribute must not shard it again
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        parts = parts.with_options(options)
    parts.set_epoch = epochs.set
    parts.close = kept.close if kept is not None else lambda: None  # (and the dataset owns ``kept``)
    return parts


class _EpochCounter:
    """The epochs of the successive iterations of one dataset: each takes the next ``span`` epochs.

    Args:
        epoch: The first epoch of the first iteration.
        span: Epochs per iteration (the reader's ``num_epochs``; None: one endless iteration).

    Raises:
        ConfigError: ``epoch`` is not a non-negative integer, or ``span`` not a positive integer or None.
    """

    def __init__(self, epoch: int, span: int | None):
        check_int("num_epochs", span, 1, allow_none=True)  # the reader's own checks and messages
        self._lock = threading.Lock()
        self.span = None if span is None else int(span)
        self.set(epoch)

    def set(self, epoch: int) -> None:
        """Make the next iteration start at ``epoch``.

        Raises:
            ConfigError: ``epoch`` is not a non-negative integer.
        """
        check_int("epoch", epoch, 0)  # as Reader.set_epoch
        with self._lock:
            self._next = int(epoch)

    def take(self) -> tuple[int, int | None]:
        """``(first epoch, num_epochs for the reader)`` of a new iteration; the next one starts after it."""
        with self._lock:
            first = self._next
            if self.span is not None:
                self._next += self.span
            return first, None if self.span is None else first + self.span


__all__ = ["make_dataset", "signature_of"]
