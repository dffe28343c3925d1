"""What the manifest's JSON holds faithfully: the checks of vocabularies and of free-form values (``source``).

Shared by the manifest parser (:mod:`loader.manifest`) and ``write_cache``'s argument checks
(:mod:`loader.write_checks`); each returns why a value is refused, or None.
"""

from __future__ import annotations

import math
import reprlib


def vocabulary_problem(values) -> str | None:
    """Why ``values`` is not a vocabulary (None if it is).

    A vocabulary is a list of JSON scalars, the value of id ``i`` at position ``i``: strings (what the Spark
    job's ``index`` transform writes), finite numbers, booleans or nulls.
    """
    if not isinstance(values, list):
        return f"is a {type(values).__name__}, not a list of values"
    if set(map(type, values)) <= {str}:  # the usual case, checked in C
        return None
    for i, v in enumerate(values):
        if not (v is None or isinstance(v, (str, int)) or (isinstance(v, float) and math.isfinite(v))):
            return (f"holds {reprlib.repr(v)} ({type(v).__name__}) at position {i}: expected strings, finite "
                    "numbers, booleans or nulls")
    return None


def strict_json(value, where: str):
    """``value`` as the manifest's strict JSON holds it: a float NaN or infinity as the string ``"NaN"``,
    ``"Infinity"`` or ``"-Infinity"`` (as ``inspect --json`` shows them; JSON has no such number), tuples as lists.

    Raises:
        ValueError: ``value`` holds a key that is not a string, or an object other than a dict, list, tuple,
            string, number, boolean or None; the message names its key path from ``where`` (``source['a'][1]``).
        RecursionError: ``value`` contains itself.
    """
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r} ({type(key).__name__}): JSON keys are strings")
        return {key: strict_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{where} is a {type(value).__name__} {reprlib.repr(value)}, which JSON cannot hold")


__all__ = ["strict_json", "vocabulary_problem"]
