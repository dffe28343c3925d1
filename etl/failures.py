"""Spark task failures as typed errors whose one line says what Spark itself said.

A data error surfaces on the driver wrapped several times (``Py4JJavaError: An error occurred while
calling o580.getResult``, ``PythonException: An exception was thrown from the Python worker:``...); the
useful part is the innermost Spark error class and its message (``[FAILED_READ_FILE.PARQUET_COLUMN_DATA_TYPE_MISMATCH]
... f006.parquet ... column [id]``) or, for Python code run by a task (a ``kind: python`` transform's UDF),
the Python exception line (``ValueError: bad row id=996``). :func:`as_larder_error` digs them out and
maps them to :class:`SourceError` (reading the source failed) or :class:`TransformError` (a user
transform's code failed), so the job exits 1 with that line and the previous version stays live.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from loader.errors import LarderError, PublishError, SourceError, TransformError

if TYPE_CHECKING:
    from .config import TransformConfig

_CLASS_RE = re.compile(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]\s*([^\n]*)")
_SQLSTATE_RE = re.compile(r"\s*SQLSTATE: \w+\.?\s*$")
_PY_EXC_RE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b.*")
_MAX_CHAIN = 30


def _java_chain(throwable) -> list[str]:
    out = []
    depth = 0
    while throwable is not None and depth < _MAX_CHAIN:
        try:
            out.append(str(throwable.toString()))
            throwable = throwable.getCause()
        except Exception:  # a gateway error while walking: keep what was read
            break
        depth += 1
    return out


def failure_text(e: BaseException) -> str:
    """Everything known about ``e``: its text, its Python causes and its Java cause chain, outer first."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        for attr in ("java_exception", "_origin"):  # Py4JJavaError / pyspark's captured exceptions
            java = getattr(current, attr, None)
            if java is not None:
                parts.extend(_java_chain(java))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def root_cause(e: BaseException) -> str | None:
    """The one line that says what failed underneath ``e``: Spark's innermost error class and message, else
    the Python exception line of a task, else None."""
    text = failure_text(e)
    py = python_error(text)
    return spark_error(text) or (py[0] if py else None)


def spark_error(text: str) -> str | None:
    """The innermost ``[ERROR_CLASS] message`` in ``text`` (SQLSTATE left out), or None."""
    found = [m for m in _CLASS_RE.finditer(text) if m.group(2).strip()]
    if not found:
        return None
    last = found[-1]
    return f"[{last.group(1)}] {_SQLSTATE_RE.sub('', last.group(2)).strip()}"


def python_error(text: str) -> tuple[str, str] | None:
    """``(exception line, traceback)`` of the last Python traceback in ``text``, or None."""
    at = text.rfind("Traceback (most recent call last):")
    if at < 0:
        return None
    block = text[at:].splitlines()[1:]
    for i, line in enumerate(block):
        if line and not line[0].isspace() and _PY_EXC_RE.match(line):
            return line.strip(), "\n".join(block[:i])
    return None


def _module_file(spec: str | None) -> str | None:
    if not spec:
        return None
    try:
        return getattr(importlib.import_module(spec.partition(":")[0]), "__file__", None)
    except Exception:  # the transform step reports an unimportable module itself
        return None


def _python_transforms(transforms: tuple[TransformConfig, ...]) -> list[tuple[str, TransformConfig]]:
    return [(f"transforms.{i} ({t.function})", t) for i, t in enumerate(transforms) if t.kind == "python"]


def as_larder_error(e: BaseException, source: str, transforms: tuple[TransformConfig, ...] = ()) -> LarderError | None:
    """A typed error for a Spark failure raised while the job read, transformed or wrote the rows.

    Args:
        e: The exception the driver got.
        source: The source's name (table or path), for the message.
        transforms: The conf's transforms (to name the one whose code failed).

    Returns:
        :class:`TransformError` when a Python task failed inside a ``kind: python`` transform's code (the
        transform and the Python exception line named); :class:`SourceError` for a Spark error class
        (the class and Spark's message, which names the file and column); None when ``e`` is neither.
    """
    text = failure_text(e)
    py = python_error(text)
    if py is not None:
        line, trace = py
        hooks = _python_transforms(transforms)
        named = [name for name, t in hooks if (f := _module_file(t.function)) and f in trace]
        if not named and len(hooks) == 1:
            named = [hooks[0][0]]
        if named:
            return TransformError(f"{', '.join(named)} failed on the executors: {line}")
        if hooks:
            return TransformError(f"a python transform ({', '.join(n for n, _ in hooks)}) failed on the "
                                  f"executors: {line}")
        return None  # larder's own task code: not the user's data, left unexpected
    spark = spark_error(text)
    if spark is None:
        return None
    if spark.startswith("[TASK_WRITE_FAILED"):  # nothing more specific underneath: the destination
        return PublishError(f"writing the cache of {source} failed; the live version is unchanged: {spark}")
    if spark.startswith("[FAILED_READ_FILE"):
        return SourceError(f"reading {source} failed: {spark}")
    return SourceError(f"Spark failed on the rows of {source}: {spark}")
