"""One filesystem interface for the whole project: :class:`pyarrow.fs.FileSystem`.

``resolve(url)`` turns a local path, a ``file://`` URL or a remote URL into a ``(filesystem, path)``
pair. Local paths use :class:`pyarrow.fs.LocalFileSystem`; schemes registered with
:func:`register_scheme` (``webhdfs://`` and ``hdfs://`` by :mod:`loader.webhdfs`) get their own
filesystem; any other scheme goes to pyarrow (``s3://``, ``gs://``...) and then to fsspec if it is
installed. Everything else in larder (manifest, publish, reader, cache) speaks only this interface,
through the few helpers below.

Options reach a filesystem factory (and :func:`loader.sync.sync`) as Python values or as the strings of
``python -m loader ... -o key=value``; :func:`parse_bool` reads a yes/no option the same way for all of them.
"""

from __future__ import annotations

import importlib
import os
import posixpath
import stat
import threading
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from .errors import ConfigError, DatasetNotFoundError, LarderError

FsFactory = Callable[..., "tuple[pafs.FileSystem, str]"]

_SCHEMES: dict[str, FsFactory] = {}
# Modules that register schemes on import; imported lazily so optional dependencies stay optional.
_LAZY_SCHEMES = {"webhdfs": "loader.webhdfs", "hdfs": "loader.webhdfs", "swebhdfs": "loader.webhdfs"}
_lock = threading.Lock()
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: object, option: str) -> bool:
    """Read a yes/no option given as a bool or as text (``-o verify=off``, ``-o kerberos=yes``).

    Args:
        value: ``True``/``False`` (a numpy bool too), the integers 1 and 0, or one of the strings
            ``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off`` (any case, surrounding blanks ignored).
        option: The option's name, for the error message.

    Returns:
        The option's truth value.

    Raises:
        ConfigError: Any other value (naming the option and the value).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"option {option} must be one of 1/0, true/false, yes/no, on/off, got {value!r}")


def register_scheme(scheme: str, factory: FsFactory) -> None:
    """Route URLs of ``scheme`` to ``factory(url, **options) -> (filesystem, path)``."""
    with _lock:
        _SCHEMES[scheme.lower()] = factory


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than ``file``."""
    scheme = urlsplit(str(url)).scheme.lower()
    return len(scheme) > 1 and scheme != "file"  # len > 1: "C:" drive letters are local


def resolve(url: str | os.PathLike, **options) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or URL.

    Args:
        url: A local path, ``file://`` URL, or remote URL (``webhdfs://``, ``hdfs://``, ``s3://``...).
        **options: Passed to the scheme's factory (user name, token, name-node map...).

    Raises:
        ConfigError: No filesystem is known for the URL's scheme, its optional dependency is missing, or the
            filesystem rejects the URL or the options (names the URL without secrets, and the scheme).
        RemoteError: fsspec's filesystem for the scheme failed to connect (an ``OSError``).
    """
    text = os.fspath(url)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not is_remote(text):
        path = parts.path if scheme == "file" else text
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if scheme not in _SCHEMES and scheme in _LAZY_SCHEMES:
        try:
            importlib.import_module(_LAZY_SCHEMES[scheme])
        except ImportError as e:
            raise ConfigError(
                f"{scheme}:// needs the optional dependency {e.name!r}: pip install -e '.[hdfs]' (in the larder "
                "checkout)"
            ) from e
    if scheme in _SCHEMES:
        return _SCHEMES[scheme](text, **options)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path
    # ImportError: pyarrow itself hands some schemes (hf://) to fsspec, whose package may be missing
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ImportError) as arrow_error:
        try:
            import fsspec  # type: ignore[import-not-found]
        except ImportError:
            error, cause = _no_filesystem(text, scheme, options, arrow_error, connect=False)
            raise error from cause
        try:
            fs_impl, path = fsspec.core.url_to_fs(text, **options)
        except (ImportError, ValueError, TypeError, OSError) as e:  # missing dependency, unknown scheme, bad option
            error, cause = _no_filesystem(text, scheme, options, e)
            raise error from cause
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs_impl)), path


_SECRET_OPTION = ("key", "secret", "token", "pass", "credential", "sig")


def _no_filesystem(url: str, scheme: str, options: dict, error: BaseException,
                   connect: bool = True) -> tuple[Exception, Exception]:
    """The error of a URL no filesystem opens, naming the URL and the cause without secrets (passwords in the URL,
    ``token=``-style parameters, the values of options named like a key, secret or token): a :class:`ConfigError`,
    or a :class:`RemoteError` for an ``OSError`` of fsspec's filesystem (``connect``: a failed connection); and
    a secret-free stand-in of ``error`` to chain it to."""
    from .errors import RemoteError
    from .remote import Redactor, redacted_cause

    redact = Redactor(str(v) for k, v in options.items()
                      if isinstance(v, str) and any(w in k.lower() for w in _SECRET_OPTION))
    if connect and isinstance(error, OSError):
        out: Exception = RemoteError(f"cannot open {redact(url)} ({scheme}:// through fsspec): "
                                     f"{type(error).__name__}: {redact(error)}")
    else:
        why = "a dependency is missing: " if isinstance(error, ImportError) else f"{type(error).__name__}: "
        out = ConfigError(f"no filesystem for {scheme}:// URLs ({redact(url)}): {why}{redact(error)}")
    return out, redacted_cause(error, redact)


def display(fs: pafs.FileSystem, path: str) -> str:
    """A printable name for ``path`` on ``fs``: the local path, or a URL without secrets."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    handler = getattr(fs, "handler", None)
    if handler is not None and hasattr(handler, "display_url"):
        return handler.display_url(path)
    return f"{fs.type_name}://{path.lstrip('/')}"


def join(*parts: str) -> str:
    """Join path parts with ``/`` (all pyarrow filesystems use forward slashes)."""
    return posixpath.join(*parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """True if ``path`` is a file or directory on ``fs``."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    """True if ``path`` is a regular file on ``fs``."""
    return fs.get_file_info(path).type == pafs.FileType.File


def listdir(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries directly under ``path`` (empty if it does not exist)."""
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except FileNotFoundError:
        return []


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """Read a whole (small) file.

    Raises:
        DatasetNotFoundError: The file does not exist, or is not a regular file (a directory, a FIFO that would
            block forever, a symlink loop...) or cannot be read; names it. Its ``__cause__`` is a
            :class:`FileNotFoundError` / :class:`NotADirectoryError` only when the file does not exist.
        RemoteError: Remote storage failed (as raised by its filesystem).
    """
    check_regular_file(fs, path)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except LarderError:
        raise  # a remote storage's failure, named already
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"{display(fs, path)} does not exist") from e
    except NotADirectoryError as e:  # a path under a file (a data file given as the dataset)
        raise DatasetNotFoundError(f"{display(fs, path)} does not exist (a parent is a file, not a "
                                   "directory)") from e
    except (OSError, pa.ArrowException) as e:  # a directory, a symlink loop, a name too long, a NUL byte...
        raise DatasetNotFoundError(f"{display(fs, path)} cannot be read ({e})") from e


def check_regular_file(fs: pafs.FileSystem, path: str) -> None:
    """Raise if ``path`` on local disk is there but is no regular file (:func:`irregular_kind`).

    Raises:
        DatasetNotFoundError: ``path`` is a FIFO, a directory, a device or a socket (names it).
    """
    kind = irregular_kind(fs, path)
    if kind is not None:
        raise DatasetNotFoundError(f"{display(fs, path)} is {kind}, not a regular file")


def irregular_kind(fs: pafs.FileSystem, path: str) -> str | None:
    """What ``path`` is when it is on local disk and there, but no regular file (``"a FIFO"``, ``"a directory"``,
    ``"not a regular file"``); None otherwise, and for any other filesystem. One ``stat``: opening a FIFO blocks
    forever, where no signal reaches it. A missing file is left to the open that follows."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a loop, a NUL byte...: the open says which
        return None
    return mode_kind(mode)


def mode_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is no regular file (as :func:`irregular_kind` says it); None
    for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"


def close_connections(fs: pafs.FileSystem) -> None:
    """Close the network connections ``fs`` keeps open for later calls (a WebHDFS filesystem's HTTP sessions); it
    opens new ones if it is used again. Nothing to do for other filesystems."""
    close = getattr(getattr(fs, "handler", None), "close_connections", None)
    if close is not None:
        close()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole (small) file, replacing it."""
    with fs.open_output_stream(path) as f:
        f.write(data)


def replace_file(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Move ``src`` over ``dst`` atomically: readers of ``dst`` see the old file or the new one, never none.

    Local disk uses ``os.replace``; other filesystems use ``fs.move``, which replaces a file by pyarrow's
    contract (on HDFS, :mod:`loader.webhdfs` sends ``RENAME`` with ``renameoptions=OVERWRITE``, Hadoop's atomic
    rename2, and retries it safely). ``dst`` is never deleted first: a failure leaves it as it was.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(src, dst)
        return
    fs.move(src, dst)


def temporary_path(path: str) -> str:
    """A fresh name for a temporary sibling of ``path`` (``.<name>.<8 hex>.tmp``), as :func:`write_bytes_atomic`
    uses; :func:`is_temporary` recognises it."""
    return join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")


def is_temporary(name: str, of: str) -> bool:
    """Whether the file name ``name`` is one :func:`temporary_path` gives a sibling named ``of``."""
    prefix = f".{of}."
    return name.startswith(prefix) and name.endswith(".tmp") and len(name) == len(prefix) + 12


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes,
                       before_replace: Callable[[], bool] | None = None) -> bool:
    """Write ``data`` to a temporary sibling of ``path`` and move it into place.

    Args:
        fs: The filesystem.
        path: The file to replace.
        data: Its new content.
        before_replace: Called once the temporary file is written, just before it is moved into place; when it
            returns False the temporary file is removed and ``path`` is left as it is.

    Returns:
        Whether ``path`` was replaced (False only when ``before_replace`` said no).
    """
    tmp = temporary_path(path)
    write_bytes(fs, tmp, data)
    try:
        if before_replace is not None and not before_replace():
            _delete_quietly(fs, tmp)
            return False
        replace_file(fs, tmp, path)
    except BaseException:
        _delete_quietly(fs, tmp)
        raise
    return True


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
