"""larder's trainer-side reader: pyarrow + numpy only, never Spark.

Public names: :func:`open_dataset`, :func:`pin_version`, :func:`write_cache`, :func:`make_reader`, :func:`mix`, and the
errors in :mod:`loader.errors`.
"""

from . import _alloc  # noqa: F401, I001 - first, before pyarrow loads: see loader/_alloc.py
from .dataset import Dataset, open_dataset, pin_version
from .errors import (
    CacheError,
    ColumnNotFoundError,
    ConfigError,
    CorruptFileError,
    DatasetNotFoundError,
    EmptyDatasetError,
    LarderError,
    ManifestError,
    PublishError,
    RemoteError,
    SourceError,
    StateError,
    TransformError,
    UnsupportedFormatError,
    VersionRemovedError,
    WorkerError,
)
from .mix import MixedReader, mix
from .reader import Reader, make_reader
from .writer import write_cache

__all__ = [
    "CacheError",
    "ColumnNotFoundError",
    "ConfigError",
    "CorruptFileError",
    "Dataset",
    "DatasetNotFoundError",
    "EmptyDatasetError",
    "LarderError",
    "ManifestError",
    "MixedReader",
    "PublishError",
    "Reader",
    "RemoteError",
    "SourceError",
    "StateError",
    "TransformError",
    "UnsupportedFormatError",
    "VersionRemovedError",
    "WorkerError",
    "make_reader",
    "mix",
    "open_dataset",
    "pin_version",
    "write_cache",
]
