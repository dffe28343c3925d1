"""The checks of :func:`loader.make_reader`'s arguments (and its adapters'), done before any data is read.

Every check raises :class:`~loader.errors.ConfigError` (or :class:`~loader.errors.ColumnNotFoundError`,
:class:`~loader.errors.EmptyDatasetError`) naming the argument, column, dataset or rank at fault.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Callable

import numpy as np

from . import tasks
from .convert import check_options, check_schema
from .dataset import Dataset
from .errors import ColumnNotFoundError, ConfigError, EmptyDatasetError
from .plan import num_batches
from .pools import POOL_KINDS


def check_importable(transform: Callable) -> None:
    """A process pool ships the transform by reference: fail here, not in a worker, if it cannot go.

    Raises:
        ConfigError: The transform cannot be pickled (lambda, closure, bound to local state: as
            :func:`loader.tasks.pickled_transform`) or lives in an interactive ``__main__`` that worker processes
            cannot import.
    """
    tasks.pickled_transform(transform)
    name = getattr(transform, "__qualname__", type(transform).__name__)
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and not os.path.isfile(main_file):  # e.g. "<stdin>": workers would fail to import it
        raise ConfigError(
            f"pool='process' cannot start workers from a main script that is not a file ({main_file!r}: workers "
            "import the main module); run the script from a file (or use pool='thread')"
        )
    if getattr(transform, "__module__", None) == "__main__" and not main_file:
        raise ConfigError(
            f"pool='process' cannot import transform {name!r} from an interactive session's __main__; "
            "define it in a module (or use pool='thread')"
        )


def check_arguments(*, batch_size, seed, num_epochs, world_size, rank, pool, workers, shuffle_buffer, prefetch,
                     memory_budget, sample, transform, ragged, strings) -> None:
    """Validate every argument that needs no I/O.

    Raises:
        ConfigError: An argument is out of range (named with its value).
    """
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("num_epochs", num_epochs, 1, allow_none=True)
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ConfigError(f"rank {rank} is outside [0, {world_size}) for world_size {world_size}")
    if pool not in POOL_KINDS:
        raise ConfigError(f"pool must be one of {POOL_KINDS}, got {pool!r}")
    check_int("workers", workers, 1, allow_none=True)
    check_int("shuffle_buffer", shuffle_buffer, 1, allow_none=True)
    check_int("prefetch", prefetch, 1, allow_none=True)
    check_int("memory_budget", memory_budget, 1, allow_none=True)
    if sample is not None and (isinstance(sample, (bool, np.bool_)) or not isinstance(sample, numbers.Real)
                               or not 0 < sample <= 1 or math.isnan(sample)):
        raise ConfigError(f"sample must be a fraction in (0, 1], got {sample!r}")
    if transform is not None and not callable(transform):
        raise ConfigError(f"transform must be callable, got {type(transform).__name__}")
    if transform is not None:
        tasks.rng_parameter(transform)  # refuses an ``rng`` parameter the RNG cannot reach
    if transform is not None and pool == "process":
        check_importable(transform)
    check_options(ragged, strings)


def select_columns(ds: Dataset, columns, with_row_ids: bool = False) -> list[str]:
    """The columns to read, checked against the schema.

    Raises:
        ColumnNotFoundError: A column is not in the schema (the available ones are listed).
        ConfigError: Not a name or a list of names, no column, a column twice, a clash with the row-id columns
            (``_row_group``, ``_row``) when ``with_row_ids`` adds them, or a type without a numpy form.
    """
    if columns is None:
        columns = list(ds.columns)
    elif isinstance(columns, str):
        columns = [columns]
    kind = "columns must be a column name or a list of column names"
    try:
        columns = list(columns)
    except TypeError as e:
        raise ConfigError(f"{kind}, got {type(columns).__name__}") from e
    for c in columns:
        if not isinstance(c, str):
            raise ConfigError(f"{kind}, got {type(c).__name__} {c!r} in {columns!r}")
    if not columns:
        raise ConfigError("columns must name at least one column")
    for c in columns:
        if c not in ds.columns:
            raise ColumnNotFoundError(
                f"column {c!r} is not in dataset {ds.name!r} (version {ds.version}); "
                f"available: {', '.join(ds.columns)}"
            )
    if len(set(columns)) != len(columns):
        raise ConfigError(f"columns lists a column twice: {columns}")
    clash = {tasks.ROW_GROUP_COLUMN, tasks.ROW_COLUMN} & set(columns) if with_row_ids else set()
    if clash:
        raise ConfigError(f"columns {sorted(clash)} clash with the reader's row-id columns (with_row_ids=True); "
                          "select other columns (columns=) or read without row ids")
    check_schema(ds.schema, columns)
    return columns


def check_not_empty(ds: Dataset, total: int, rank: int, world_size: int, batch_size: int, drop_last: bool,
                     sample: float | None) -> None:
    """Refuse a dataset, or a rank's share of an epoch, that holds no rows or no batch.

    Raises:
        EmptyDatasetError: Names the dataset, or the rank and the numbers that leave it empty.
    """
    if ds.num_rows == 0:
        raise EmptyDatasetError(f"dataset {ds.name!r} (version {ds.version}) holds no rows")
    if total // world_size == 0:
        raise EmptyDatasetError(
            f"rank {rank} of {world_size} would get no rows: the epoch holds {total} rows "
            f"(dataset {ds.name!r}{'' if sample is None else f', sample={sample}'})"
        )
    if num_batches(total, world_size, batch_size, drop_last) == 0:
        raise EmptyDatasetError(
            f"rank {rank} would yield no batch: {total // world_size} rows per rank < batch_size "
            f"{batch_size} with drop_last=True"
        )


def check_int(name: str, value, minimum: int, *, allow_none: bool = False) -> None:
    """Refuse ``value`` unless it is an integer (numpy's too, not a bool) of at least ``minimum`` (or None
    with ``allow_none``): the one check of every integer argument of the reader and its adapters.

    Raises:
        ConfigError: Naming the argument and the value.
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


__all__ = ["check_arguments", "check_importable", "check_int", "check_not_empty", "select_columns"]
