"""The error hierarchy of larder.

Every error larder raises on purpose derives from :class:`LarderError`, and each subclass also derives
from the builtin a caller would naturally catch (``FileNotFoundError``, ``ValueError``, ``OSError``...),
so ``except ValueError`` keeps working for code that does not know larder.
"""

from __future__ import annotations


class LarderError(Exception):
    """Root of every error larder raises on purpose."""


class ConfigError(LarderError, ValueError):
    """A configuration key or argument is missing, misspelled or has a bad value."""


class DatasetNotFoundError(LarderError, FileNotFoundError):
    """A dataset, version, CURRENT pointer or manifest does not exist."""


class VersionRemovedError(DatasetNotFoundError):
    """The version being read was removed by a newer publish (``keep_versions``) while a reader still used it.

    Attributes:
        path: The data file found missing.
        version: The removed version's name.
        live: The version ``CURRENT`` names now.
    """

    def __init__(self, message: str, path: str | None = None, version: str | None = None, live: str | None = None):
        super().__init__(message)
        self.path, self.version, self.live = path, version, live

    def __str__(self) -> str:  # OSError's __str__ would otherwise reformat the args
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep the attributes when pickled across a process pool
        return (type(self), (str(self), self.path, self.version, self.live))


class ManifestError(LarderError, ValueError):
    """A manifest cannot be parsed or breaks the cache contract."""


class UnsupportedFormatError(ManifestError):
    """A manifest was written in a format version this larder does not know."""


class CorruptFileError(LarderError, OSError):
    """A data file is truncated, fails its checksum or cannot be decoded.

    Attributes:
        path: The file at fault.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # OSError's __str__ would otherwise reformat the args
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep the path when pickled across a process pool
        return (type(self), (str(self), self.path))


class ColumnNotFoundError(LarderError, ValueError):
    """A requested column is not in the dataset's schema."""


class EmptyDatasetError(LarderError, ValueError):
    """A dataset (or a filter or shard of it) holds no rows."""


class StateError(LarderError, ValueError):
    """A reader state cannot be loaded into this reader (other dataset version or settings)."""


class TransformError(LarderError, RuntimeError):
    """A user transform failed or returned a malformed batch."""


class WorkerError(LarderError, RuntimeError):
    """A pool worker failed; the message carries the worker's original traceback."""


class RemoteError(LarderError, OSError):
    """Remote storage failed after retries; names the URL (never secrets) and the last cause."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CacheError(LarderError, OSError):
    """The local cache directory cannot hold a file (full, read-only, no permission).

    Attributes:
        path: The local file at fault. ``errno`` is the original error number (``ENOSPC``, ``EROFS``...).
    """

    def __init__(self, message: str, path: str | None = None, errno_: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = errno_

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep the path and errno when pickled across a process pool
        return (type(self), (str(self), self.path, self.errno))


class PublishError(LarderError, OSError):
    """A version could not be published; the previous version stays live."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SourceError(LarderError, ValueError):
    """The source table, path, column, partition or type is unknown or unsupported."""
