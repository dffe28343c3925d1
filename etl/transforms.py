"""Static transforms, applied once in Spark: pure DataFrame -> DataFrame steps.

``kind: index`` turns a string column into integer ids (``int32``) with a vocabulary stored in the
manifest (``vocabularies[output]``, position = id).

Vocabulary order (deterministic): values already known keep their ids, and values seen for the first
time are appended by descending frequency, ties broken by value. What is known (:func:`base_vocabulary`):
the ``vocabulary`` file's entries in its order, then the values the previous published version appended
after them, in their ids (``reuse_previous``, the default); without a file, the previous version's whole
vocabulary. A fresh vocabulary is therefore frequency ordered (id 0 is the most common value), and ids
are stable across scheduled runs: a label never changes its id while the previous version is live. A
file that contradicts the live ids (reordered, or a new entry where the live version appended another
value) is refused with :class:`ConfigError` unless the run is forced (``--force``: the file's ids win,
the live version's other values follow in their order, and the changed ids are logged) or the transform
sets ``reuse_previous: false``. Null maps to ``-1`` (never in the vocabulary); every non-null value of
the selection is in the vocabulary, so there is no "unknown" id inside one version: a non-null value the
vocabulary lacks when the rows are written (the source changed after its values were counted) fails the
task that meets it (:func:`unknown_value`), and nothing is published.

``kind: python`` calls a user function ``package.module:function`` as ``function(df, **args)``; it must
return a DataFrame.

:func:`check_transforms` checks what the transforms need of the selection (columns, types, functions)
from its schema alone, so the job reports a vanished column before it decides the cache is up to date.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from loader import fs as lfs
from loader.errors import ConfigError, LarderError, TransformError

from .config import TransformConfig
from .source import quote_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

NULL_ID = -1
SOURCE_CHANGED = "the source changed while the job ran"
_VALUE, _ID = "__larder_vocab_value", "__larder_vocab_id"
SHOWN_CHARS = 200  # of a value quoted in an error


def unknown_value(column: str, output: str) -> tuple[str, str]:
    """The error of a non-null value of ``column`` that the vocabulary of ``output`` lacks, as the text before
    and after the quoted value: the vocabulary holds every value counted at the start of the run, so the rows
    read later are not those counted."""
    return (f"{SOURCE_CHANGED}: column {column!r} holds ",
            f", which is not in the vocabulary of {output!r} counted from it at the start of the run (or a "
            "python transform before the index is not deterministic); nothing published, the live version is "
            "unchanged")


def extend_vocabulary(base: list[str], counts: Mapping[str, int]) -> list[str]:
    """Keep ``base`` in order, then append unseen values by descending count, then by value.

    Args:
        base: Values whose ids (positions) must not change.
        counts: Value -> frequency in the current selection (nulls excluded).

    Returns:
        The new vocabulary; ``vocab[i]`` is the value of id ``i``.
    """
    known = set(base)
    fresh = sorted((v for v in counts if v not in known), key=lambda v: (-counts[v], v))
    return list(base) + fresh


def read_vocabulary_file(url: str, where: str) -> list[str]:
    """Read a vocabulary file (UTF-8; a leading byte order mark, as some editors save it, is not part of
    the first value). Its name tells its form: ``*.json`` is a JSON list of strings; ``*.txt`` holds one
    value per line; any other name is a JSON list when its text starts with ``[``, else one value per line.
    Lines end at ``\\n`` (or ``\\r\\n``) only, so a value may hold any other character (``\\u2028``,
    ``\\x0c``...); empty lines are skipped.

    Raises:
        ConfigError: The file is missing or malformed, or a ``*.txt`` file holds a JSON list, which
            earlier versions read as one (names the key and the file).
    """
    try:
        fs, path = lfs.resolve(url)
        text = lfs.read_bytes(fs, path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, LarderError) as e:
        raise ConfigError(f"{where}.vocabulary: cannot read {url}: {e}") from e
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if suffix == "json" or (suffix != "txt" and text.lstrip().startswith("[")):
        try:
            values = json.loads(text)
        except ValueError as e:
            hint = "" if suffix == "json" else " (name a file of one value per line *.txt)"
            raise ConfigError(f"{where}.vocabulary: {url} is not a JSON list ({e}){hint}") from e
    else:
        values = [line.removesuffix("\r") for line in text.split("\n")]
        values = [v for v in values if v]
        if text.lstrip().startswith("[") and _is_json_list(text):
            raise ConfigError(f"{where}.vocabulary: {url} holds a JSON list, but a *.txt file is read one value "
                              "per line; name it *.json")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}.vocabulary: {url} must hold a list of strings")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}.vocabulary: {url} lists a value twice")
    return values


def _is_json_list(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


def base_vocabulary(
    t: TransformConfig,
    where: str,
    previous: list | None,
    *,
    force: bool = False,
    log: Callable[[str], None] = lambda _m: None,
    live: str | None = None,
) -> list[str]:
    """The values whose ids an index transform must keep, in id order.

    Args:
        t: The index transform.
        where: Its conf key (``transforms.<i>``), for messages.
        previous: The live version's vocabulary of the transform's output, if any.
        force: Let the ``vocabulary`` file's ids win over conflicting live ids (with a warning).
        log: Progress messages (the warning of a forced conflict).
        live: The live version's name, for messages.

    Returns:
        Without a file: ``previous`` (``reuse_previous``) or nothing. With a file: its entries, then
        the values ``previous`` appended after them, in their ids; when one of the file and
        ``previous`` is a prefix of the other, the longer one (entries dropped from the file keep
        their ids too).

    Raises:
        ConfigError: The file cannot be read, or it gives a live value another id (reordered, or a
            new entry at an id the live version gave another value) and ``force`` is not set; names
            the file, the key and the first values that would move.
    """
    prev = [str(v) for v in previous] if t.reuse_previous and isinstance(previous, list) else None
    if not t.vocabulary:
        return prev or []
    pinned = read_vocabulary_file(t.vocabulary, where)
    if prev is None:
        return pinned
    shared = min(len(prev), len(pinned))
    if prev[:shared] == pinned[:shared]:
        return prev if len(prev) >= len(pinned) else pinned
    in_file = set(pinned)
    merged = pinned + [v for v in prev if v not in in_file]
    new_id = {v: i for i, v in enumerate(merged)}
    moved = [f"{v!r} {i} -> {new_id[v]}" for i, v in enumerate(prev) if new_id[v] != i]
    detail = ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else "")
    output = t.output or t.column
    what = (
        f"{where}.vocabulary: {t.vocabulary} gives {len(moved)} value(s) of {output!r} other ids than the live "
        f"version{' ' + live if live else ''} ({detail})"
    )
    if not force:
        raise ConfigError(
            f"{what}; nothing published, the live version is unchanged. Restore the file (keep its entries in "
            f"order, add new values at the end), or publish the file's ids with --force or {where}.reuse_previous: "
            "false (models trained on the live ids then read wrong labels)"
        )
    log(f"warning: {what}; --force: the file's ids win, these values change ids")
    return merged


def base_vocabularies(
    transforms: tuple[TransformConfig, ...],
    previous_vocabularies: Mapping[str, list] | None,
    *,
    force: bool = False,
    log: Callable[[str], None] = lambda _m: None,
    live: str | None = None,
) -> dict[int, list[str]]:
    """:func:`base_vocabulary` of every index transform, by its position in ``transforms``.

    Cheap (reads the vocabulary files only), so the job calls it before any Spark work.

    Raises:
        ConfigError: See :func:`base_vocabulary`.
    """
    previous = previous_vocabularies or {}
    return {
        i: base_vocabulary(t, f"transforms.{i}", previous.get(t.output or t.column), force=force, log=log, live=live)
        for i, t in enumerate(transforms)
        if t.kind == "index"
    }


def index_column(
    spark: SparkSession, df: DataFrame, column: str, output: str, vocabulary: list[str], drop_input: bool
) -> DataFrame:
    """Map ``column``'s strings to their position in ``vocabulary`` (null -> -1) as ``output`` (int32).

    The mapping is a broadcast join, so row order within partitions is kept. ``output`` replaces
    ``column`` in place when they are equal; otherwise it is added after the last column (it must not
    name another column of ``df``: :func:`check_index_output`). A non-null value that ``vocabulary`` lacks
    fails the task that computes its row (Spark's ``raise_error``, :func:`unknown_value`): the vocabulary
    holds every value counted, so such a value means the rows changed since (no extra pass over the rows).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(_VALUE, T.StringType(), False), T.StructField(_ID, T.IntegerType(), False)])
    vocab_df = spark.createDataFrame([(v, i) for i, v in enumerate(vocabulary)], schema)
    value = df[quote_name(column)]
    joined = df.join(F.broadcast(vocab_df), value == vocab_df[_VALUE], "left")
    head, tail = unknown_value(column, output)
    unknown = F.raise_error(F.concat(F.lit(head + "'"), F.substring(value, 1, SHOWN_CHARS), F.lit("'" + tail)))
    ids = F.when(F.col(_ID).isNull() & value.isNotNull(), unknown).otherwise(
        F.coalesce(F.col(_ID), F.lit(NULL_ID))).cast("int").alias(output)
    if output == column:
        cols = [ids if c == column else df[quote_name(c)] for c in df.columns]
    else:
        cols = [df[quote_name(c)] for c in df.columns if not (drop_input and c == column)] + [ids]
    return joined.select(*cols)


def _resolve_function(spec: str, where: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}.function: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}.function: {module_name!r} has no function {attr!r}")
    return fn


def _check_index_column(t: TransformConfig, where: str, schema: Mapping, source: str | None) -> None:
    """Raise :class:`ConfigError` unless ``schema`` (column -> Spark type) has ``t.column`` as a string and
    ``t.output`` names no other of its columns (:func:`check_index_output`)."""
    from pyspark.sql import types as T

    if t.column not in schema:
        found = f" in {source}" if source else ""
        raise ConfigError(f"{where}.column: no column {t.column!r} to index{found} (columns: {', '.join(schema)})")
    data_type = schema[t.column]
    if not isinstance(data_type, T.StringType):
        kind = data_type.simpleString()
        raise ConfigError(f"{where}.column: {t.column!r} is {kind}; an index transform needs a string")
    check_index_output(t, where, schema, source)


def check_index_output(t: TransformConfig, where: str, columns, source: str | None = None) -> None:
    """Raise :class:`ConfigError` if the index transform ``t``'s ``output`` names another of ``columns``
    (it would silently replace that column's values by the ids); ``output`` equal to ``t.column``
    (replace the indexed column itself) is allowed."""
    output = t.output or t.column
    if output != t.column and output in columns:
        found = f" of the selection from {source}" if source else ""
        raise ConfigError(
            f"{where}.output: {output!r} would replace the column {output!r}{found} with the ids of "
            f"{t.column!r} (its values would be lost); choose another output name, or leave {where}.output "
            f"out to replace {t.column!r} itself"
        )


def check_transforms(df: DataFrame, transforms: tuple[TransformConfig, ...], source: str | None = None) -> None:
    """Check the transforms against the selection's schema, without running anything.

    Index transforms are checked up to the first python transform (the columns a user function returns
    are known only once it runs; :func:`apply_transforms` checks those); every python transform's
    function must import.

    Args:
        df: The selection.
        transforms: The conf's ``transforms``.
        source: The table or path, for messages.

    Raises:
        ConfigError: An index transform names a column the selection lacks (a column dropped or renamed
            in the table) or one that is not a string, or its output names another column of the selection,
            or a function cannot be imported.
    """
    from pyspark.sql import types as T

    schema = {f.name: f.dataType for f in df.schema.fields}
    opaque = False
    for i, t in enumerate(transforms):
        where = f"transforms.{i}"
        if t.kind != "index":
            _resolve_function(t.function, where)
            opaque = True
        elif not opaque:
            _check_index_column(t, where, schema, source)
            output = t.output or t.column
            if t.drop_input and output != t.column:
                schema.pop(t.column)
            schema.pop(output, None)
            schema[output] = T.IntegerType()


def precountable_columns(df: DataFrame, transforms: tuple[TransformConfig, ...]) -> list[str] | None:
    """The columns whose value counts can be taken on the selection itself, before any transform runs.

    That holds when every transform is an index transform reading a string column of ``df`` that no
    earlier transform replaced (index transforms keep rows and partitions as they are). Otherwise None:
    the counts are taken inside :func:`apply_transforms`, which also reports what is wrong.
    """
    from pyspark.sql import types as T

    replaced: set[str] = set()
    columns = []
    for t in transforms:
        if t.kind != "index" or t.column in replaced or t.column not in df.columns:
            return None
        if not isinstance(df.schema[t.column].dataType, T.StringType):
            return None
        columns.append(t.column)
        replaced.add(t.output or t.column)
    return columns


def apply_transforms(
    spark: SparkSession,
    df: DataFrame,
    transforms: tuple[TransformConfig, ...],
    previous_vocabularies: Mapping[str, list] | None = None,
    log: Callable[[str], None] = lambda _m: None,
    value_counts: Mapping[str, Mapping[str, int]] | None = None,
    bases: Mapping[int, list[str]] | None = None,
    source: str | None = None,
) -> tuple[DataFrame, dict[str, list[str]]]:
    """Apply the conf's transforms in order.

    Args:
        spark: The session.
        df: The selection.
        transforms: The conf's ``transforms``.
        previous_vocabularies: The live version's vocabularies (kept stable when ``reuse_previous``).
        log: Progress messages.
        value_counts: Value counts of the selection's columns already taken (see
            :func:`precountable_columns`); used for a column until a transform replaces it.
        bases: :func:`base_vocabularies` already computed (the job computes them before any Spark
            work); by default computed here from ``previous_vocabularies``, unforced.
        source: The table or path, for messages.

    Returns:
        The transformed DataFrame and the vocabularies, output column -> values.

    Raises:
        ConfigError: A transform names a missing column, a non-string column, or an unknown function, an
            index output names another column, or a vocabulary file contradicts the previous ids
            (:func:`base_vocabulary`).
        TransformError: A user function fails or does not return a DataFrame.
    """
    from pyspark.sql import DataFrame as SparkDataFrame

    if bases is None:
        bases = base_vocabularies(transforms, previous_vocabularies, log=log)
    vocabularies: dict[str, list[str]] = {}
    known = dict(value_counts or {})
    for i, t in enumerate(transforms):
        where = f"transforms.{i}"
        if t.kind == "index":
            output = t.output or t.column
            _check_index_column(t, where, {f.name: f.dataType for f in df.schema.fields}, source)
            base = bases[i]
            if t.column in known:
                counts = dict(known[t.column])
            else:
                counts = {r[0]: r[1] for r in df.groupBy(df[quote_name(t.column)]).count().collect()
                          if r[0] is not None}
            known.pop(output, None)
            vocab = extend_vocabulary(base, counts)
            log(f"index {t.column} -> {output}: {len(vocab)} values ({len(vocab) - len(base)} new)")
            df = index_column(spark, df, t.column, output, vocab, t.drop_input)
            vocabularies[output] = vocab
        else:
            fn = _resolve_function(t.function, where)
            try:
                result = fn(df, **t.args)
            except LarderError:
                raise
            except Exception as e:
                raise TransformError(f"{where} ({t.function}) failed: {type(e).__name__}: {e}") from e
            if not isinstance(result, SparkDataFrame):
                raise TransformError(f"{where} ({t.function}) returned {type(result).__name__}, not a DataFrame")
            df = result
            known.clear()
            log(f"python transform {t.function}: columns {', '.join(df.columns)}")
    return df, vocabularies
