"""``--set key=value`` overrides, and YAML scalars kept as their source text where a key wants text.

A string key given with ``--set`` takes the text as given (``--set source.where=title LIKE '%: %'``
would not even parse as YAML); ``null`` or ``~`` unsets an optional one. Partition values
(``source.partitions``), in the conf file and in ``--set``, keep the YAML scalar's source text: ``07``
is ``"07"``, ``NO`` is ``"NO"``, ``1.10`` is ``"1.10"``. Every other value is parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from loader.errors import ConfigError

from .config import JobConfig, Text


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to the raw conf mapping (value parsed as YAML).

    Raises:
        ConfigError: The assignment is malformed or walks into a non-mapping.
    """
    import yaml

    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. output.block_size=8MiB")
    parts = key.split(".")
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:  # Spark's own keys are dotted: one map key
        parts = parts[:2] + [".".join(parts[2:])]
    hint = _hint_at(parts)
    try:
        if parts[:2] == ["source", "partitions"]:  # the values' source text, never YAML-typed
            value = _plain_text(yaml.compose(text)) if text.strip() else ""
        elif hint in (str, Text):  # a string key takes the text as given
            value = text
        elif hint == str | None:
            value = None if text.strip() in ("null", "~") else text
        else:
            value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({e})") from e
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


def _hint_at(parts: list[str]) -> Any:
    """The annotated type of the conf key at the dotted path ``parts`` (None if there is none)."""
    hint: Any = JobConfig
    for part in parts:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
            hint = args[0]
        if dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(part)
        elif typing.get_origin(hint) is tuple and part.isdigit():
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) is dict:
            hint = typing.get_args(hint)[1]
        else:
            return None
    return hint


def _plain_text(node: Any) -> Any:
    """A composed YAML node as plain data whose scalars keep their source text (``07`` stays ``"07"``,
    ``NO`` stays ``"NO"``); a null stays None."""
    import yaml

    if node is None:
        return None
    if isinstance(node, yaml.SequenceNode):
        return [_plain_text(n) for n in node.value]
    if isinstance(node, yaml.MappingNode):
        return {_plain_text(k): _plain_text(v) for k, v in node.value}
    return None if node.tag == "tag:yaml.org,2002:null" else node.value


def keep_partition_text(text: str, raw: dict) -> None:
    """Replace ``raw['source']['partitions']`` with the same mapping built from the YAML source text."""
    import yaml

    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode) or not isinstance(raw.get("source"), dict):
        return
    for k, source in root.value:
        if k.value == "source" and isinstance(source, yaml.MappingNode):
            for k2, parts in source.value:
                if k2.value == "partitions" and isinstance(parts, yaml.MappingNode):
                    raw["source"]["partitions"] = _plain_text(parts)
