"""The checks of :func:`loader.write_cache`'s arguments, done before anything is written.

Each raises :class:`~loader.errors.ConfigError` naming the argument (and the key or column) at fault, so a bad
argument never leaves a published version behind, nor a manifest a reader would refuse.
"""

from __future__ import annotations

import numbers
import os
import reprlib

import numpy as np

from .arguments import check_int
from .encoding import CODECS, Encoding
from .errors import ConfigError
from .json_values import strict_json, vocabulary_problem


def check_write_arguments(*, root, name, row_group_bytes, block_size, fill, row_groups_per_file, compression,
                          encoding, shuffle, seed, keep_versions, fingerprint) -> None:
    """Validate every argument of ``write_cache`` that needs no look at the data.

    Raises:
        ConfigError: An argument has the wrong type or is out of range (named with its value).
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"write_cache: root must be a path or URL string, got {_shown(root)}")
    if not isinstance(name, str):
        raise ConfigError(f"write_cache: name must be a string (the dataset's directory name), got {_shown(name)}")
    if not isinstance(compression, str) or compression.lower() not in CODECS:
        raise ConfigError(f"compression must be one of {', '.join(CODECS)} (any case), got {compression!r}")
    check_int("block_size", block_size, 1)
    check_int("seed", seed, 0)  # numpy integers too, as make_reader
    check_int("row_groups_per_file", row_groups_per_file, 1)
    check_int("keep_versions", keep_versions, 1)
    if row_group_bytes is not None:
        if isinstance(row_group_bytes, bool) or not isinstance(row_group_bytes, (int, np.integer)):
            raise ConfigError(f"row_group_bytes must be an integer number of bytes (or None), got {row_group_bytes!r}")
        if row_group_bytes <= 0:
            raise ConfigError(f"row_group_bytes must be positive, got {row_group_bytes}")
    if isinstance(fill, (bool, np.bool_)) or not isinstance(fill, numbers.Real) or not 0 < fill <= 1:  # NaN too
        raise ConfigError(f"fill must be a number in (0, 1], got {fill!r}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ConfigError(f"write_cache: shuffle must be True or False, got {shuffle!r}")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ConfigError(f"write_cache: fingerprint must be a string (or None), got {_shown(fingerprint)}")
    if encoding is not None:
        _check_encoding(encoding)


def _check_encoding(encoding) -> None:
    if not isinstance(encoding, Encoding):
        raise ConfigError(f"write_cache: encoding must be a loader.encoding.Encoding (or None), got {_shown(encoding)}")
    if not isinstance(encoding.codec, str) or encoding.codec.lower() not in CODECS:
        raise ConfigError(f"write_cache: encoding.codec must be one of {', '.join(CODECS)} (any case), "
                          f"got {encoding.codec!r}")
    for key, paths, none_ok in (("dictionary", encoding.dictionary, True),
                                ("uncompressed", encoding.uncompressed, False)):
        if (paths is None and none_ok) or (isinstance(paths, (tuple, list)) and all(isinstance(p, str) for p in paths)):
            continue
        raise ConfigError(f"write_cache: encoding.{key} must be {'None or ' if none_ok else ''}a tuple of column "
                          f"paths, got {paths!r}")


def check_vocabularies(vocabularies, columns: list[str]) -> dict[str, list]:
    """``vocabularies`` as the manifest stores them (column -> list of values), checked against ``columns``.

    A vocabulary is a list (or tuple) of JSON scalars, the value of id ``i`` at position ``i``: strings (what
    the Spark job's ``index`` transform writes), finite numbers, booleans or nulls.

    Raises:
        ConfigError: ``vocabularies`` is not a dict, names a column the data does not have, or holds a
            vocabulary that is not a list of such values (names the column, and the position of the value).
    """
    if vocabularies is None:
        return {}
    if not isinstance(vocabularies, dict):
        raise ConfigError(f"write_cache: vocabularies must be a dict of column -> list of values, got "
                          f"{_shown(vocabularies)}")
    checked = {}
    for column, values in vocabularies.items():
        if column not in columns:
            raise ConfigError(f"write_cache: vocabularies names column {column!r}, which is not in the data "
                              f"(columns: {', '.join(columns)})")
        values = list(values) if isinstance(values, tuple) else values
        problem = vocabulary_problem(values)
        if problem:
            raise ConfigError(f"write_cache: vocabularies[{column!r}] {problem}")
        checked[column] = values
    return checked


def json_source(source: dict | None) -> dict:
    """``source`` as the manifest stores it (:func:`loader.json_values.strict_json`: a NaN or infinity as the
    string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``).

    Raises:
        ConfigError: ``source`` is not a dict (or None), or holds a key that is not a string, an object JSON
            cannot hold (a set, a numpy integer...), or itself; names the key path (e.g. ``source['a'][1]``).
    """
    if source is None:
        return {}
    if not isinstance(source, dict):
        raise ConfigError(f"write_cache: source must be a dict (or None), got {_shown(source)}")
    try:
        return strict_json(source, "source")
    except ValueError as e:
        raise ConfigError(f"write_cache: {e}") from e
    except RecursionError as e:
        raise ConfigError("write_cache: source is nested too deeply (or contains itself)") from e


def _shown(value) -> str:
    """``value``'s type and a short repr, for messages."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


__all__ = ["check_vocabularies", "check_write_arguments", "json_source"]
