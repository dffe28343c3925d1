"""Spark task failures as typed errors whose one line says what Spark itself said.

A data error surfaces on the driver wrapped several times (``Py4JJavaError: An error occurred while
calling o580.getResult``, ``PythonException: An exception was thrown from the Python worker:``...); the
useful part is the innermost Spark error class and its message (``[FAILED_READ_FILE.PARQUET_COLUMN_DATA_TYPE_MISMATCH]
... f006.parquet ... column [id]``) or, for Python code run by a task, the Python exception line
(``ValueError: bad row id=996``, ``OSError: [Errno 28] ... No space left on device``); Spark's generic
``[PYTHON_EXCEPTION]`` wrapper says nothing and is skipped.

:func:`as_larder_error` digs them out and types them by whose code the task's Python traceback runs
through: a ``kind: python`` transform's module (its UDFs) -> :class:`TransformError` naming the
transform; larder's own task code (``etl/``, ``loader/``: the arrow writer's spill and encode tasks, the
pyarrow read of :mod:`etl.direct`) -> :class:`PublishError` naming the destination (or
:class:`SourceError` for a failed pyarrow read of the source); a Spark error class -> :class:`SourceError`
(reading the source failed) or :class:`PublishError` (``TASK_WRITE_FAILED``); an index transform's
check that every value is in its vocabulary (:func:`etl.transforms.index_column`) -> :class:`SourceError`
saying the source changed while the job ran. Two failures that run no larder code are recognised by Spark's or
Derby's own words: an executor's Python worker that died (killed by a signal, most often the OOM killer) ->
:class:`WorkerError` with a hint on memory, and an embedded Derby metastore another process holds ->
:class:`SourceError` naming its directory. The job then exits 1 with that line and the previous version
stays live.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from typing import TYPE_CHECKING

from loader.errors import ConfigError, LarderError, PublishError, SourceError, TransformError, WorkerError

from .transforms import SOURCE_CHANGED

if TYPE_CHECKING:
    from .config import TransformConfig

_CLASS_RE = re.compile(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]\s*([^\n]*)")
_SQLSTATE_RE = re.compile(r"\s*SQLSTATE: \w+\.?\s*$")
_PY_EXC_RE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b.*")
_FRAME_RE = re.compile(r'^\s*File "([^"]+)", line \d+, in ')
_MAX_CHAIN = 30
# Spark's wrapper around any Python task failure: the Python exception line under it says what failed.
_GENERIC_CLASSES = frozenset({"PYTHON_EXCEPTION"})
# larder's modules that read the source on the executors (anything else of larder's there writes the cache).
_READING_MODULES = frozenset({"etl/direct.py", "etl/source.py"})
# OS errors of the destination's filesystem, whoever's code hit them.
_DESTINATION_ERRNO_RE = re.compile(
    r"errno (?:28|27|30|122)\b|No space left on device|Disk quota exceeded|Read-only file system|File too large",
    re.IGNORECASE,
)

# A Python worker Spark could not start (PYSPARK_PYTHON / spark.pyspark.python missing on the executors).
_NO_PROGRAM_RE = re.compile(r'Cannot run program "([^"]+)"(?:[^\n]*?error=\d+, ([^\n]*))?')
# The exception a Spark task was lost to, as the driver's "Job aborted due to stage failure" quotes it.
_TASK_LOST_RE = re.compile(
    r"most recent failure: Lost task [^\n]*?\(TID \d+\) \([^)\n]*\): (?:[\w$]+\.)*([\w$]+: [^\n]+)"
)
# An executor's Python worker that died without a Python exception (SIGKILL, the OOM killer, a segfault).
WORKER_CRASHED = "Python worker exited unexpectedly (crashed)"
# Embedded Derby refusing a database another JVM has booted (it allows one process at a time).
_DERBY_HELD_RE = re.compile(r"XSDB6: Another instance of Derby may have already booted the database (.+?)\.?[ \t]*$",
                            re.MULTILINE)


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
    """The one line that says what failed underneath ``e``: Spark's innermost specific error class and
    message, else the Python exception line of a task (what a ``[PYTHON_EXCEPTION]`` wraps), else the Java
    exception a task was lost to (:func:`task_error`), else Derby's refusal of a metastore another process
    holds, else None."""
    text = failure_text(e)
    py = python_error(text)
    held = _DERBY_HELD_RE.search(text)
    return spark_error(text) or (py[0] if py else None) or task_error(text) or (held.group(0) if held else None)


def task_error(text: str) -> str | None:
    """The Java exception a Spark task was lost to, by its class's simple name (``SparkException: Python worker
    exited unexpectedly (crashed)``; Spark's advice after it left out), or None.

    Only what the task failed with is taken, not its deeper causes: those are the sockets and streams it was
    using when it failed (``java.net.SocketException: Connection reset``).
    """
    m = _TASK_LOST_RE.search(text)
    return m.group(1).split(". Consider setting ", 1)[0].strip() if m else None


def worker_crashed(text: str, source: str, destination: str | None = None) -> WorkerError | None:
    """A :class:`WorkerError` when an executor's Python worker died without a Python exception, or None.

    Spark says only that the worker "exited unexpectedly (crashed)": it was killed by a signal, which on a
    healthy host is most often the kernel's OOM killer. That is a failed run (exit 1; it may pass with more
    memory or less load), not a bug of the job.
    """
    if WORKER_CRASHED not in text:
        return None
    where = destination or f"the cache of {source}"
    return WorkerError(
        f"a Spark task's Python worker crashed while the job read, transformed or wrote the rows of {source} "
        f"({WORKER_CRASHED}); the live version of {where} is unchanged. A worker killed outright is most often "
        "the OOM killer (see the host's kernel log, dmesg): give the executors more memory outside the JVM "
        "(spark.executor.memoryOverhead, spark.executor.pyspark.memory) or run fewer tasks at once "
        "(spark.executor.cores, local[N])"
    )


def metastore_held(text: str) -> SourceError | None:
    """A :class:`SourceError` naming the embedded Derby metastore another process holds, or None.

    Embedded Derby lets one process at a time open a database: a second run started with the same
    ``spark.metastore_dir`` while the first runs cannot reach the catalog (Spark says only ``Unable to
    instantiate ...SessionHiveMetaStoreClient``; Derby's ``XSDB6`` deep in the Java causes names the database).
    It may pass once the other run ends (exit 1).
    """
    m = _DERBY_HELD_RE.search(text)
    if m is None:
        return None
    database = m.group(1).strip()
    directory = os.path.dirname(database) if os.path.basename(database) == "metastore_db" else database
    return SourceError(
        f"the embedded Hive metastore in {directory} (spark.metastore_dir) is held by another process: embedded "
        "Derby lets one process at a time open it, so another run or Spark shell with this metastore is running; "
        "wait for it to end, or give runs that overlap a shared metastore (spark.metastore_dir: null and a "
        "hive-site.xml naming a metastore service)"
    )


def missing_python(text: str) -> ConfigError | None:
    """A :class:`ConfigError` naming the Python interpreter Spark could not start for its tasks, or None.

    A missing executor Python is a setting (``PYSPARK_PYTHON``, ``spark.pyspark.python``, an ``--archives``
    venv) that fails every run the same way until it is fixed: bad conf (exit 2), never retried.
    """
    m = _NO_PROGRAM_RE.search(text)
    if m is None:
        return None
    why = f" ({m.group(2).strip()})" if m.group(2) else ""
    return ConfigError(
        f"Spark could not start the executors' Python {m.group(1)}{why}: install it on every executor host or "
        "point PYSPARK_PYTHON (spark.pyspark.python) at an interpreter that exists there, e.g. a venv shipped "
        "with --spark-opt --archives=venv.tar.gz#venv and PYSPARK_PYTHON=./venv/bin/python"
    )


def spark_error(text: str) -> str | None:
    """The innermost ``[ERROR_CLASS] message`` in ``text`` (SQLSTATE left out), or None.

    Spark's generic ``[PYTHON_EXCEPTION]`` (any Python task failure) does not count: the Python exception
    line under it (:func:`python_error`) is what failed.
    """
    found = [m for m in _CLASS_RE.finditer(text) if m.group(2).strip() and m.group(1) not in _GENERIC_CLASSES]
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


def traceback_files(trace: str) -> list[str]:
    """The source files of a Python traceback's frames, outermost first, with ``/`` separators."""
    return [m.group(1).replace(os.sep, "/") for line in trace.splitlines() if (m := _FRAME_RE.match(line))]


def _module_paths(spec: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The driver's file of the module of ``package.module:function``, and its paths relative to
    ``sys.path`` (``package/module.py``, ``package/module/__init__.py``) as the executors may see it (a zip)."""
    if not spec:
        return None, ()
    name = spec.partition(":")[0]
    rel = name.replace(".", "/")
    try:
        file = getattr(importlib.import_module(name), "__file__", None)
    except Exception:  # the transform step reports an unimportable module itself
        file = None
    return (file.replace(os.sep, "/") if file else None), (f"{rel}.py", f"{rel}/__init__.py")


def _larder_modules() -> frozenset[str]:
    """larder's own modules as ``etl/<name>.py`` and ``loader/<name>.py``."""
    import loader

    out = set()
    for package in (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(loader.__file__))):
        with contextlib.suppress(OSError):
            out.update(f"{os.path.basename(package)}/{n}" for n in os.listdir(package) if n.endswith(".py"))
    return frozenset(out)


def _larder_module(file: str, modules: frozenset[str]) -> str | None:
    """``etl/<name>.py`` when ``file`` (a traceback's, on the driver or in the shipped zip) is larder's."""
    parts = file.rsplit("/", 2)
    tail = "/".join(parts[-2:])
    return tail if tail in modules else None


def _in_module(file: str, driver_file: str | None, relative: tuple[str, ...]) -> bool:
    if driver_file is not None and file == driver_file:
        return True
    if "/pyspark/" in file or "/py4j/" in file:  # a user module named like one of theirs (``worker``)
        return False
    return any(file == r or file.endswith("/" + r) for r in relative)


def _python_transforms(transforms: tuple[TransformConfig, ...]) -> list[tuple[str, TransformConfig]]:
    return [(f"transforms.{i} ({t.function})", t) for i, t in enumerate(transforms) if t.kind == "python"]


def _own_failure(module: str, line: str, source: str, destination: str | None) -> LarderError:
    """The error of larder's own task code failing in ``module`` with the exception ``line``."""
    if module in _READING_MODULES and not _DESTINATION_ERRNO_RE.search(line):
        return SourceError(f"reading {source} with pyarrow failed on the executors: {line}")
    where = destination or f"the cache of {source}"
    return PublishError(f"writing {where} failed on the executors; the live version is unchanged: {line}")


def as_larder_error(
    e: BaseException,
    source: str,
    transforms: tuple[TransformConfig, ...] = (),
    destination: str | None = None,
) -> LarderError | None:
    """A typed error for a Spark failure raised while the job read, transformed or wrote the rows.

    A Python task failure is blamed on a ``kind: python`` transform only when its traceback runs through
    that transform's module (where its UDFs are defined); one that runs through larder's own modules is
    larder's (the destination or the pyarrow read of the source), whatever transforms the conf has.

    Args:
        e: The exception the driver got.
        source: The source's name (table or path), for the message.
        transforms: The conf's transforms (to name the one whose code failed).
        destination: The dataset directory as shown to users, for the message of a failed write (default:
            "the cache of <source>").

    Returns:
        :class:`TransformError` when a Python task failed inside a ``kind: python`` transform's code (the
        transform and the Python exception line named; a traceback through neither larder's nor a known
        transform's module, e.g. a UDF's value refused by PySpark, names every python transform);
        :class:`PublishError` when larder's own task code failed writing the cache (the destination and the
        Python exception line, e.g. ``OSError: [Errno 28] ... No space left on device``), or Spark's
        ``TASK_WRITE_FAILED``; :class:`SourceError` for larder's pyarrow read of the source, a Spark
        error class (the class and Spark's message, which names the file and column), or an embedded Derby
        metastore another process holds (:func:`metastore_held`); :class:`WorkerError` when an executor's Python
        worker crashed (:func:`worker_crashed`); :class:`ConfigError` when Spark could not start the executors'
        Python (:func:`missing_python`); None when ``e`` is none of these.
    """
    text = failure_text(e)
    known = missing_python(text) or metastore_held(text) or worker_crashed(text, source, destination)
    if known is not None:
        return known
    py = python_error(text)
    if py is not None:
        line, trace = py
        files = traceback_files(trace)
        hooks = _python_transforms(transforms)
        named = []
        for name, t in hooks:
            driver_file, relative = _module_paths(t.function)
            if any(_in_module(f, driver_file, relative) for f in files):
                named.append(name)
        if named:
            return TransformError(f"{', '.join(named)} failed on the executors: {line}")
        modules = _larder_modules()
        own = [m for f in files if (m := _larder_module(f, modules))]
        if own:
            return _own_failure(own[-1], line, source, destination)
        if hooks:
            return TransformError(
                f"a python transform ({', '.join(n for n, _ in hooks)}) failed on the executors: {line}"
            )
        return None  # neither larder's nor a transform's code: left unexpected (the line is still shown)
    spark = spark_error(text)
    if spark is None:
        return None
    if spark.startswith("[TASK_WRITE_FAILED"):  # nothing more specific underneath: the destination
        where = destination or f"the cache of {source}"
        return PublishError(f"writing {where} failed; the live version is unchanged: {spark}")
    if spark.startswith("[FAILED_READ_FILE"):
        return SourceError(f"reading {source} failed: {spark}")
    if spark.startswith(f"[USER_RAISED_EXCEPTION] {SOURCE_CHANGED}"):  # etl.transforms.index_column's check
        return SourceError(f"source {source} changed while the job ran{spark.split(SOURCE_CHANGED, 1)[1]}")
    return SourceError(f"Spark failed on the rows of {source}: {spark}")
