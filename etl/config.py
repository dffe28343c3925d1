"""Job configuration: frozen, typed dataclasses loaded from YAML and validated before any Spark work.

A conf is a YAML mapping with the sections ``name``, ``source``, ``transforms``, ``output`` and ``spark``
(see ``conf/demo.yaml``). Everything but ``name`` and the source has a default, so a ten-line conf is
enough. ``--set a.b=c`` overrides any key by its dotted path (list items by index: ``transforms.0.column``);
the value is parsed as YAML, so ``--set source.columns=[a,b]`` and ``--set output.shuffle=false`` work,
except for string keys, which take the text as given (``--set source.where=title LIKE '%: %'``;
``null`` or ``~`` unsets an optional one); ``--set spark.conf.spark.executor.memory=4g`` sets the Spark
key ``spark.executor.memory``.

Values are read by the type annotated on their key below (:mod:`etl.overrides`), in the YAML file and in
``--set``: every string key (names, columns, paths, partition values...) keeps the scalar's source text, so
``hour: 07`` is ``"07"`` and ``country: NO`` is ``"NO"`` (YAML would make them 7 and false), and an integer
key reads ``010`` as 10 (YAML 1.1 would read octal 8). Partition values must be strings: a mapping built in
Python must give strings.

Every error names the key at fault; an unknown key also names the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loader.errors import ConfigError

DEFAULT_BLOCK_SIZE = 128 << 20
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1000, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none", "uncompressed")
FORMATS = ("parquet", "orc")
WRITERS = ("auto", "arrow", "spark")
READERS = ("auto", "spark")


class Size(int):
    """A byte count; YAML may write it as ``134217728``, ``"128MiB"``, ``"128m"`` or ``"1.5 GB"``."""


class Text(str):
    """A string that must be given as one (a partition value): numbers and booleans are refused, since
    their source text is lost (``07`` -> 7, ``NO`` -> false); :func:`load` keeps the text instead."""


def parse_size(value: Any, key: str) -> int:
    """Parse a byte size (``"128MiB"``, ``"8 MB"``, ``"64k"``, ``1048576``).

    Raises:
        ConfigError: Naming ``key``, if the value is not a positive size.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like '128MiB', got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = _SIZE_RE.match(str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"{key}: expected a size like '128MiB' or '8MB', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{key}: size must be positive, got {value!r}")
    return size


def format_size(n: int) -> str:
    """``134217728`` -> ``"128MiB"`` (exact binary units when possible)."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B" if n < 1 << 20 else f"{n / (1 << 20):.2f}MiB"


@dataclass(frozen=True)
class SourceConfig:
    """Where the rows come from: a Hive table, or a Parquet/ORC path.

    Attributes:
        table: ``db.table`` in the metastore (exclusive with ``path``).
        path: A Parquet or ORC file/directory URL (exclusive with ``table``).
        format: Format of ``path``: ``parquet`` or ``orc``.
        where: A Spark SQL predicate (partition filter and/or row filter).
        partitions: Partition column -> value or list of values; checked against the table's partitions.
        columns: Columns to select, in order (default: all).
        sample: Fraction of rows to keep, in (0, 1].
        seed: Seed of the sample.
        reader: Who reads the rows for the arrow writer: ``auto`` (default: pyarrow on the executors
            when the selection is all the rows of local Parquet files, see :mod:`etl.direct`; Spark
            otherwise) or ``spark`` (always Spark's scan).
    """

    table: str | None = None
    path: str | None = None
    format: str = "parquet"
    where: str | None = None
    partitions: dict[str, Text | tuple[Text, ...]] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    sample: float = 1.0
    seed: int = 0
    reader: str = "auto"


@dataclass(frozen=True)
class TransformConfig:
    """One static transform.

    ``kind: index`` maps the strings of ``column`` to integer ids in ``output`` (default: replace
    ``column``) with a vocabulary stored in the manifest. ``kind: python`` calls ``function``
    (``"package.module:function"``) as ``function(df, **args)`` -> DataFrame.

    Attributes:
        kind: ``index`` or ``python``.
        column: Input column of ``index``.
        output: Output column of ``index`` (default: ``column``, replaced); never another existing column.
        drop_input: With ``output`` set, drop the input column.
        vocabulary: Optional vocabulary file (JSON list or one value per line) whose ids are kept.
        reuse_previous: Keep the ids of the previous published version's vocabulary.
        function: ``module:function`` of a ``python`` transform.
        args: Keyword arguments of the ``python`` transform.
    """

    kind: str
    column: str | None = None
    output: str | None = None
    drop_input: bool = False
    vocabulary: str | None = None
    reuse_previous: bool = True
    function: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputConfig:
    """Where and how the cache is written.

    Attributes:
        root: Cache root (local path, ``file://``, ``hdfs://`` or ``webhdfs://``); the dataset lives in
            ``<root>/<name>``.
        block_size: Storage block size (default: the destination filesystem's block size on HDFS,
            128MiB elsewhere).
        fill: Row-group target as a fraction of the block size.
        compression: Parquet codec.
        keep_versions: Versions kept after a publish (at least 2).
        shuffle: Decorrelate rows across output files (seeded); ``false`` keeps source order.
        seed: Seed of that shuffle.
        page_size: Parquet page size (default: ``block_size / (64 × columns)`` between 8KiB and 128KiB,
            so the open pages parquet-mr counts against the block stay a small share of it).
        writer: Who encodes the data files: ``arrow`` (pyarrow on the executors, rows exchanged through
            the staging directory as Arrow: :mod:`etl.arrow_write`; local destinations), ``spark`` (a Spark
            exchange, then parquet-mr), or ``auto`` (default: ``arrow`` for local destinations when pandas,
            which PySpark's Arrow path needs, is installed; ``spark`` otherwise).
    """

    root: str = "./cache"
    block_size: Size | None = None
    fill: float = 0.95
    compression: str = "zstd"
    keep_versions: int = 3
    shuffle: bool = True
    seed: int = 0
    page_size: Size | None = None
    writer: str = "auto"


@dataclass(frozen=True)
class SparkConfig:
    """The Spark session (ignored where ``spark-submit`` already decided, e.g. ``--master``).

    Attributes:
        master: Master URL when the job is not launched by ``spark-submit``.
        app_name: Spark application name.
        warehouse_dir: ``spark.sql.warehouse.dir`` (relative paths are relative to the working directory).
        metastore_dir: Directory of the embedded Derby metastore; ``null`` leaves the metastore to
            ``hive-site.xml`` (a cluster's real metastore).
        hive: Enable Hive support (needed for ``source.table``).
        conf: Extra Spark settings.
    """

    master: str | None = "local[*]"
    app_name: str = "larder-materialize"
    warehouse_dir: str | None = "./.larder/warehouse"
    metastore_dir: str | None = "./.larder/metastore"
    hive: bool = True
    conf: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobConfig:
    """A whole job configuration."""

    name: str
    source: SourceConfig
    transforms: tuple[TransformConfig, ...] = ()
    output: OutputConfig = field(default_factory=OutputConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def to_dict(self) -> dict:
        """A JSON-friendly copy (stored in the manifest's ``created_by``)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- loading


def _suggest(key: str, valid: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if close:
        return f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"
    return f"; valid keys: {', '.join(sorted(valid))}"


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) > 1:  # ``Text | tuple[Text, ...]``: a list picks the tuple
            listy = isinstance(value, (list, tuple))
            args = [a for a in args if (typing.get_origin(a) is tuple) == listy] or args
        return _convert(value, args[0], key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is Size:
        return Size(parse_size(value, key))
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(v, item, f"{key}.{i}") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        item = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {str(k): _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is Text:
        if not isinstance(value, str):
            raise ConfigError(
                f"{key}: expected a string, got {value!r} ({type(value).__name__}); quote it in YAML, e.g. '07'"
            )
        return str(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unhandled config type {hint!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'conf'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown key {where!r}{_suggest(str(key), fields, prefix)}")
    values = {}
    for name, f in fields.items():
        where = f"{prefix}.{name}" if prefix else name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name in raw and (raw[name] is not None or required or type(None) in typing.get_args(hints[name])):
            values[name] = _convert(raw[name], hints[name], where)  # null: None where the key admits it...
        elif required:  # ... else the key's default, as if left out ('partitions: ~' is {})
            if dataclasses.is_dataclass(hints[name]):
                values[name] = _build(hints[name], {}, where)
            else:
                raise ConfigError(f"missing key {where!r}")
    return cls(**values)


def from_dict(raw: Mapping, overrides: Iterable[str] = ()) -> JobConfig:
    """Build and validate a :class:`JobConfig` from a mapping plus ``--set`` overrides.

    Raises:
        ConfigError: A key is unknown, missing, of the wrong type, or a value is out of range.
    """
    import copy

    from .overrides import apply_override

    raw = copy.deepcopy(dict(raw or {}))
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = _build(JobConfig, raw, "")
    validate(cfg)
    return cfg


def load(path: str | os.PathLike, overrides: Iterable[str] = ()) -> JobConfig:
    """Load, override and validate a YAML job conf.

    Raises:
        ConfigError: The file is missing, a directory, unreadable, not UTF-8 text or not YAML, gives a key
            twice, or the conf is invalid (the message names the file, and the key and its lines).
    """
    import yaml

    from .overrides import conf_from_yaml

    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"conf file {shown} does not exist") from e
    except IsADirectoryError as e:
        raise ConfigError(f"conf file {shown} is a directory, not a YAML file") from e
    except OSError as e:
        raise ConfigError(f"conf file {shown} cannot be read: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"conf file {shown} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} ({e.reason})"
        ) from e
    try:
        raw = conf_from_yaml(text)  # every value read by its key's type: string keys keep their text
    except yaml.YAMLError as e:
        raise ConfigError(f"conf file {shown} is not valid YAML: {_yaml_problem(e)}") from e
    except ConfigError as e:  # a key given twice
        raise ConfigError(f"conf file {shown}: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"conf file {shown}: expected a mapping at the top level")
    return from_dict(raw, overrides)


def _yaml_problem(e: Exception) -> str:
    """A YAML error on one line: where (line, column) and what, e.g. ``line 3, column 1: found character
    '\\t' that cannot start any token (while scanning for the next token)``."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or not problem:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def _blank_key(section: Any, prefix: str = "") -> tuple[str, str, bool] | None:
    """The first string key of ``section`` (a conf dataclass, its nested sections and lists included) whose
    value is empty or only whitespace: ``(key, value, whether the key is optional)``, or None."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        items = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for i, item in items:
            key = f"{prefix}{f.name}" + ("" if i is None else f".{i}")
            if dataclasses.is_dataclass(item):
                found = _blank_key(item, key + ".")
                if found:
                    return found
            elif isinstance(item, str) and not item.strip():
                return key, item, i is None and f.default is None
    return None


def validate(cfg: JobConfig) -> None:
    """Check values and combinations that types alone cannot.

    Raises:
        ConfigError: Naming the key at fault.
    """
    if not _NAME_RE.match(cfg.name) or cfg.name.startswith("_"):
        raise ConfigError(f"name: {cfg.name!r} must be a plain directory name (letters, digits, _ . -)")
    blank = _blank_key(cfg)
    if blank is not None:  # '' is no path, table, filter or column ('source.path: ""' failed deep in Spark)
        key, value, optional = blank
        raise ConfigError(f"{key}: the value {value!r} is empty" + ("; leave the key out (or set it to null) to "
                                                                    "unset it" if optional else ""))
    s = cfg.source
    if (s.table is None) == (s.path is None):
        raise ConfigError("source: give exactly one of 'source.table' (db.table) or 'source.path' (+ 'source.format')")
    if s.table is not None and not _IDENT_RE.match(s.table):
        raise ConfigError(f"source.table: {s.table!r} is not a table name like 'db.table'")
    if s.format not in FORMATS:
        raise ConfigError(f"source.format: {s.format!r} is not one of {', '.join(FORMATS)}")
    if s.reader not in READERS:
        raise ConfigError(f"source.reader: {s.reader!r} is not one of {', '.join(READERS)}")
    if not 0 < s.sample <= 1:
        raise ConfigError(f"source.sample: must be in (0, 1], got {s.sample}")
    if s.columns is not None:
        if not s.columns:
            raise ConfigError("source.columns: the list is empty; leave the key out to select every column")
        dupes = sorted({c for c in s.columns if s.columns.count(c) > 1})
        if dupes:
            raise ConfigError(f"source.columns: {dupes[0]!r} is listed twice")
    if s.partitions and s.table is None:
        raise ConfigError("source.partitions: only a Hive table has partitions; use 'source.where' with a path")
    problem = empty_partitions(s.partitions)
    if problem:  # '{dt: []}' failed deep in Spark, or next to another key selected every dt
        raise ConfigError(problem)
    # the columns known from the conf alone (source.columns, earlier index outputs), until a python transform
    known: dict[str, str] | None = {c: "listed in source.columns" for c in s.columns or ()}
    for i, t in enumerate(cfg.transforms):
        where = f"transforms.{i}"
        if t.kind == "index":
            if not t.column:
                raise ConfigError(f"{where}.column: an index transform needs the column to index")
            if t.function is not None or t.args:
                raise ConfigError(f"{where}: 'function' and 'args' belong to kind 'python', not 'index'")
            output = t.output or t.column
            if known is not None and output != t.column and output in known:
                raise ConfigError(
                    f"{where}.output: {output!r} would replace the column {output!r} ({known[output]}) with the "
                    f"ids of {t.column!r} (its values would be lost); choose another output name, or leave "
                    f"{where}.output out to replace {t.column!r} itself"
                )
            if known is not None:
                if t.drop_input:
                    known.pop(t.column, None)
                known[output] = f"the output of {where}"
        elif t.kind == "python":
            known = None  # a user function may add, drop or rename columns
            if not t.function or ":" not in t.function:
                raise ConfigError(f"{where}.function: expected 'package.module:function', got {t.function!r}")
            if t.column or t.output or t.vocabulary:
                raise ConfigError(f"{where}: 'column', 'output' and 'vocabulary' belong to kind 'index'")
        else:
            raise ConfigError(
                f"{where}.kind: {t.kind!r} is not one of index, python{_suggest(t.kind, ['index', 'python'])}"
            )
    o = cfg.output
    if not 0.5 <= o.fill <= 1.0:
        raise ConfigError(f"output.fill: must be in [0.5, 1.0], got {o.fill}")
    if o.compression.lower() not in COMPRESSIONS:
        raise ConfigError(f"output.compression: {o.compression!r} is not one of {', '.join(COMPRESSIONS)}")
    if o.writer not in WRITERS:
        raise ConfigError(f"output.writer: {o.writer!r} is not one of {', '.join(WRITERS)}")
    if o.keep_versions < 2:
        raise ConfigError(
            f"output.keep_versions: must be at least 2 (the live one and one to fall back to), got {o.keep_versions}"
        )
    if o.block_size is not None and o.block_size < 64 << 10:
        raise ConfigError(f"output.block_size: {o.block_size} bytes is below the 64KiB minimum")
    if o.page_size is not None and o.page_size > 64 << 20:
        raise ConfigError(f"output.page_size: {o.page_size} bytes is too large (at most 64MiB)")
    check_page_size(o.page_size, o.block_size)
    for key, seed in (("output.seed", o.seed), ("source.seed", s.seed)):
        if not 0 <= seed < 1 << 63:
            raise ConfigError(f"{key}: must be a non-negative integer below 2**63, got {seed}")


def empty_partitions(partitions: Mapping) -> str | None:
    """The error for the first ``source.partitions`` key whose value is null or an empty list, else None."""
    for key, value in partitions.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            what = "no value (null)" if value is None else "the list of values is empty"
            return (f"source.partitions.{key}: {what}; give a value or a list of values, or leave the key out to "
                    f"select every {key}")
    return None


def check_page_size(page_size: int | None, block_size: int | None, block_from: str = "output.block_size") -> None:
    """Refuse a page larger than the block (a row group could never be cut under it).

    Raises:
        ConfigError: Naming both keys.
    """
    if page_size is not None and block_size is not None and page_size > block_size:
        raise ConfigError(
            f"output.page_size: {format_size(page_size)} is larger than {block_from} {format_size(block_size)}"
        )
