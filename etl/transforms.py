"""Static transforms, applied once in Spark: pure DataFrame -> DataFrame steps.

``kind: index`` turns a string column into integer ids (``int32``) with a vocabulary stored in the
manifest (``vocabularies[output]``, position = id).

Vocabulary order (deterministic): values already known keep their ids — from the ``vocabulary`` file if
one is given, else from the previous published version's manifest (``reuse_previous``, the default) — and
values seen for the first time are appended by descending frequency, ties broken by value. A fresh
vocabulary is therefore frequency ordered (id 0 is the most common value), and ids are stable across
scheduled runs: a label never changes its id while the previous version is live. Null maps to ``-1``
(never in the vocabulary); every non-null value of the selection is in the vocabulary, so there is no
"unknown" id inside one version.

``kind: python`` calls a user function ``package.module:function`` as ``function(df, **args)``; it must
return a DataFrame.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from loader import fs as lfs
from loader.errors import ConfigError, LarderError, TransformError

from .config import TransformConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

NULL_ID = -1
_VALUE, _ID = "__larder_vocab_value", "__larder_vocab_id"


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
    """Read a vocabulary file: a JSON list, or one value per line.

    Raises:
        ConfigError: The file is missing or malformed (names the key and the file).
    """
    try:
        fs, path = lfs.resolve(url)
        text = lfs.read_bytes(fs, path).decode("utf-8")
    except (OSError, UnicodeDecodeError, LarderError) as e:
        raise ConfigError(f"{where}.vocabulary: cannot read {url}: {e}") from e
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{where}.vocabulary: {url} is not a JSON list ({e})") from e
    else:
        values = [line for line in text.splitlines() if line]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}.vocabulary: {url} must hold a list of strings")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}.vocabulary: {url} lists a value twice")
    return values


def index_column(
    spark: SparkSession, df: DataFrame, column: str, output: str, vocabulary: list[str], drop_input: bool
) -> DataFrame:
    """Map ``column``'s strings to their position in ``vocabulary`` (null -> -1) as ``output`` (int32).

    The mapping is a broadcast join, so row order within partitions is kept. ``output`` replaces
    ``column`` in place when they are equal; otherwise it is added after the last column.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(_VALUE, T.StringType(), False), T.StructField(_ID, T.IntegerType(), False)])
    vocab_df = spark.createDataFrame([(v, i) for i, v in enumerate(vocabulary)], schema)
    joined = df.join(F.broadcast(vocab_df), df[column] == vocab_df[_VALUE], "left")
    ids = F.coalesce(F.col(_ID), F.lit(NULL_ID)).cast("int").alias(output)
    if output == column:
        cols = [ids if c == column else F.col(f"`{c}`") for c in df.columns]
    else:
        cols = [F.col(f"`{c}`") for c in df.columns if not (drop_input and c == column) and c != output] + [ids]
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

    Returns:
        The transformed DataFrame and the vocabularies, output column -> values.

    Raises:
        ConfigError: A transform names a missing column, a non-string column, or an unknown function.
        TransformError: A user function fails or does not return a DataFrame.
    """
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import types as T

    vocabularies: dict[str, list[str]] = {}
    previous = previous_vocabularies or {}
    known = dict(value_counts or {})
    for i, t in enumerate(transforms):
        where = f"transforms.{i}"
        if t.kind == "index":
            output = t.output or t.column
            if t.column not in df.columns:
                raise ConfigError(f"{where}.column: no column {t.column!r} to index (columns: {', '.join(df.columns)})")
            data_type = df.schema[t.column].dataType
            if not isinstance(data_type, T.StringType):
                raise ConfigError(
                    f"{where}.column: {t.column!r} is {data_type.simpleString()}; an index transform needs a string"
                )
            if t.vocabulary:
                base = read_vocabulary_file(t.vocabulary, where)
            elif t.reuse_previous and isinstance(previous.get(output), list):
                base = [str(v) for v in previous[output]]
            else:
                base = []
            if t.column in known:
                counts = dict(known[t.column])
            else:
                counts = {r[0]: r[1] for r in df.groupBy(t.column).count().collect() if r[0] is not None}
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
