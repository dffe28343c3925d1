"""``--set key=value`` overrides, and YAML values read by the type of the conf key that receives them.

What a value becomes follows the type hints of the conf dataclasses (:mod:`etl.config`), never a list of
key paths, so a string field added there needs nothing here:

* a ``str`` key (``name``, ``source.where``, ``source.columns`` items, ``transforms.0.column``, partition
  values...) keeps the YAML scalar's source text, in the conf file and in ``--set``: ``07`` is ``"07"``,
  ``NO`` is ``"NO"``, ``1.10`` is ``"1.10"``, ``2026-11-23`` is ``"2026-11-23"``; a null (``~``, ``null``,
  nothing) stays None. With ``--set``, a key whose whole value is one string takes the text as given, not
  parsed as YAML at all (``--set source.where=title LIKE '%: %'`` would not even parse); ``null`` or ``~``
  unsets an optional one;
* an ``int`` key (and a byte size) reads a plain run of decimal digits as a decimal integer: ``010`` is 10,
  not YAML 1.1's octal 8; a ``float`` key also takes ``1e-3``;
* lists, mappings and conf sections are read item by item with the item's type;
* anything else (``bool``, ``Any``: the ``args`` of a python transform, ``spark.conf`` values, unknown keys)
  is parsed as YAML.

A value of the wrong type is not refused here: :func:`etl.config.from_dict` refuses it with a message that
names the key. A key given twice in one mapping is refused here (:func:`check_unique_keys`), naming both
lines: YAML itself would keep the last one silently.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from loader.errors import ConfigError

from .config import JobConfig, Size, Text

_DECIMAL_RE = re.compile(r"^[-+]?[0-9][0-9_]*$")
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$")
_TEXT = (str, Text)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to the raw conf mapping (value read by the key's type).

    Raises:
        ConfigError: The assignment is malformed, its value is not valid YAML, or it walks into a
            non-mapping.
    """
    import yaml

    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. output.block_size=8MiB")
    parts = key.split(".")
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:  # Spark's own keys are dotted: one map key
        parts = parts[:2] + [".".join(parts[2:])]
    try:
        value = value_from_text(text, _hint_at(parts))
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({e})") from e
    except ConfigError as e:  # a key given twice in the value
        raise ConfigError(f"--set {key}: {e}") from e
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {where!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])!r} is not a mapping")


def value_from_text(text: str, hint: Any) -> Any:
    """The value of ``--set key=text`` for a key annotated ``hint`` (None: unknown, parsed as YAML).

    Raises:
        yaml.YAMLError: The text is not valid YAML (for a key that is not a single string).
        ConfigError: A mapping in the text gives a key twice.
    """
    import yaml

    optional, bare = _optional(hint)
    if bare in _TEXT:  # a string key takes the text as given
        return None if optional and text.strip() in ("null", "~") else text
    if not text.strip():
        return ""
    node = yaml.compose(text)
    check_unique_keys(node, lines=False)
    return _from_node(node, hint)


def conf_from_yaml(text: str, hint: Any = JobConfig) -> Any:
    """Parse a YAML document as plain data, each value read by the type of its key in ``hint``.

    Args:
        text: The YAML text (a conf file).
        hint: The type of the document (default: the job conf).

    Returns:
        Plain dicts, lists and scalars for :func:`etl.config.from_dict` (None for an empty document).

    Raises:
        yaml.YAMLError: The text is not one valid YAML document.
        ConfigError: A mapping gives a key twice (YAML would keep the last silently); names the key's
            dotted path and both lines.
    """
    import yaml

    node = yaml.compose(text)
    check_unique_keys(node)
    return _from_node(node, hint)


def check_unique_keys(node: Any, path: str = "", lines: bool = True) -> None:
    """Refuse a mapping anywhere under ``node`` (a composed YAML node) that gives a key twice.

    A key a merge (``<<: *defaults``) brings in may be given again: that is how a merge is overridden.

    Args:
        node: The composed document (None for an empty one).
        path: The dotted key path of ``node``, for the message.
        lines: Name the lines of both occurrences (a file; not a one-line ``--set`` value).

    Raises:
        ConfigError: Naming the key's dotted path and the lines of both occurrences.
    """
    import yaml

    seen_nodes: set[int] = set()
    stack = [(node, path)]
    while stack:
        current, where = stack.pop()
        if current is None or id(current) in seen_nodes:  # an alias: checked where its anchor is
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.SequenceNode):
            stack.extend((item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(current.value))
        elif isinstance(current, yaml.MappingNode):
            first: dict[str, Any] = {}
            for k, v in current.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    stack.append((v, where))
                    continue
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                key = f"{where}.{name}" if where else str(name)
                if name is not None and name in first:
                    both = f" (lines {first[name].start_mark.line + 1} and {k.start_mark.line + 1})" if lines else ""
                    raise ConfigError(f"key {key!r} is given twice{both}; YAML would keep the last one silently")
                if name is not None:
                    first[name] = k
                stack.append((v, key))


def _optional(hint: Any) -> tuple[bool, Any]:
    """``(whether hint admits None, hint without None)``; a union of several types is returned whole."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return optional, args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return False, hint


def _hint_at(parts: list[str]) -> Any:
    """The annotated type of the conf key at the dotted path ``parts`` (None if there is none)."""
    hint: Any = JobConfig
    for part in parts:
        hint = _optional(hint)[1]
        if dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(part)
        elif typing.get_origin(hint) is tuple and part.isdigit():
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) is dict:
            hint = typing.get_args(hint)[1]
        else:
            return None
    return hint


def _from_node(node: Any, hint: Any) -> Any:
    """A composed YAML node as plain data, its scalars read by the type ``hint`` (see the module docstring)."""
    import yaml

    if node is None or _is_null(node):
        return None
    hint = _optional(hint)[1]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # ``Text | tuple[Text, ...]``: a list: the tuple
        listy = isinstance(node, yaml.SequenceNode)
        args = typing.get_args(hint)
        hint = next((a for a in args if (typing.get_origin(a) is tuple) == listy), args[0])
    origin = typing.get_origin(hint)
    if isinstance(node, yaml.MappingNode) and (dataclasses.is_dataclass(hint) or hint is dict or origin is dict):
        _flatten(node)  # YAML merge keys (``<<: *defaults``)
        fields = typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else None
        item = typing.get_args(hint)[1] if fields is None and typing.get_args(hint) else Any
        out = {}
        for k, v in node.value:
            key = _key(k)
            out[key] = _from_node(v, item if fields is None else fields.get(key))
        return out
    if isinstance(node, yaml.SequenceNode) and origin is tuple:
        item = typing.get_args(hint)[0]
        return [_from_node(n, item) for n in node.value]
    if isinstance(node, yaml.ScalarNode):
        plain = node.style is None  # not quoted, not a block scalar
        if hint in _TEXT:
            return node.value
        if hint in (int, Size, float) and plain and _DECIMAL_RE.match(node.value):
            number = int(node.value.replace("_", ""))
            return float(number) if hint is float else number
        if hint is float and plain and _FLOAT_RE.match(node.value):
            return float(node.value.replace("_", ""))
    return _construct(node)


def _is_null(node: Any) -> bool:
    import yaml

    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _key(node: Any) -> Any:
    """A mapping key: its source text when it is a scalar (keys name fields, partitions, Spark settings)."""
    import yaml

    return node.value if isinstance(node, yaml.ScalarNode) and not _is_null(node) else _construct(node)


def _construct(node: Any) -> Any:
    """A node as ``yaml.safe_load`` would build it."""
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _flatten(node: Any) -> None:
    """Resolve the merge keys of a mapping node in place, as ``yaml.safe_load`` does."""
    import yaml

    loader = yaml.SafeLoader("")
    try:
        loader.flatten_mapping(node)
    finally:
        loader.dispose()
