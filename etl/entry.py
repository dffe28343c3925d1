"""What every job entry point shares: exit codes, one-line error reporting and where that line goes.

Exit codes: 0 done (or up to date); 1 the job failed on its input or destination (a :class:`LarderError`;
the previous version stays live); 2 bad usage or conf (:class:`ConfigError`); 3 an unexpected error.

Under ``spark-submit`` the driver's Python runs as a child of the JVM, which merges the child's stderr into
its own stdout, so "one line on stderr" would land on stdout. ``./spark-submit.sh`` therefore relays a
FIFO to its own stderr and names it in ``LARDER_STDERR``; :func:`stderr_to_launcher` points the driver's
stderr (error lines, ``--verbose`` tracebacks, progress messages) at it.

PySpark 4 also logs every analysis error it raises (a typo'd column in ``source.where``) as a JSON record
with the Java stack trace on stderr, before the job can report it in one line: :func:`quiet_pyspark_errors`
silences those records unless ``LARDER_SPARK_VERBOSE=1`` (the switch that restores Spark's own logs).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import stat
import sys
import traceback
from collections.abc import Callable

from loader.errors import ConfigError, LarderError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
STDERR_ENV = "LARDER_STDERR"
VERBOSE_ENV = "LARDER_SPARK_VERBOSE"
QUERY_CONTEXT_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")  # pyspark.errors' loggers


def stderr_to_launcher(env: str = STDERR_ENV) -> bool:
    """Point this process's stderr (file descriptor 2) at the FIFO the launcher names in ``$LARDER_STDERR``.

    Does nothing (stderr stays as it is) when the variable is unset, names no FIFO, or nobody reads the FIFO
    (a driver started elsewhere, e.g. in cluster deploy mode); the variable is consumed, so a second call
    does nothing.

    Returns:
        Whether stderr now goes to the launcher.
    """
    path = os.environ.pop(env, None)
    if not path:
        return False
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no one reads it: never blocks
    except OSError:
        return False
    try:
        os.set_blocking(fd, True)
        sys.stderr.flush()
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    # One write per line: unbuffered (python -u, PYTHONUNBUFFERED) a print is two writes, text then newline, and
    # where the launcher's stderr and stdout go to one file another line could land between them.
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(write_through=False, line_buffering=True)
    return True


def quiet_pyspark_errors(env: str = VERBOSE_ENV) -> bool:
    """Silence PySpark's own logging of the analysis errors it raises (``AnalysisException._log_exception``:
    an ERROR record in JSON with the Java stack trace, on stderr), unless ``$LARDER_SPARK_VERBOSE`` is ``1``.

    The exception itself still reaches the job, which reports it in one line.

    Returns:
        Whether the records are silenced (False too with a PySpark that has no such loggers).
    """
    if os.environ.get(env) == "1":
        return False
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:  # PySpark < 4 logs no such records
        return False
    for name in QUERY_CONTEXT_LOGGERS:  # a PySparkLogger: pyspark calls its exception() with extra keywords
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL + 1)
    return True


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one ``larder: error:`` line on stderr (exit code 2), like
    every other error of a job (``--help`` still prints the full usage)."""

    def error(self, message: str):  # noqa: D102 - argparse hook
        sys.stderr.flush()
        print(f"larder: error: {message} (usage: {self.format_usage().split(':', 1)[1].strip()})",
              file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


def guarded(body: Callable[[], str], verbose: bool = False) -> int:
    """Run ``body``; print its summary line on success, or ``larder: error: <one line>`` on stderr on failure.

    Stderr is first pointed at the launcher's (:func:`stderr_to_launcher`), and PySpark's records of the
    errors it raises are silenced (:func:`quiet_pyspark_errors`).

    Returns:
        The process exit code.
    """
    stderr_to_launcher()
    quiet_pyspark_errors()
    try:
        summary = body()
    except ConfigError as e:
        print(f"larder: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except LarderError as e:
        print(f"larder: error: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except Exception as e:  # one line for schedulers; --verbose adds the traceback
        if verbose:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        from .failures import root_cause

        cause = root_cause(e)  # what Spark or a Python task reported, if anything
        detail = f"{first} ({cause})" if cause and cause not in first else first
        print(f"larder: error: unexpected {type(e).__name__}: {detail}", file=sys.stderr, flush=True)
        return EXIT_INTERNAL
    print(summary, flush=True)
    return EXIT_OK
