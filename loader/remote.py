"""Remote I/O hygiene shared by every remote filesystem: retries, secret redaction, verified downloads.

* :class:`RetryPolicy` and :func:`call_with_retries` retry *transient* failures (connection reset or
  dropped mid-read, timeouts, HTTP 5xx) with bounded exponential backoff, then raise
  :class:`~loader.errors.RemoteError` naming the URL and the last cause.
* :class:`Redactor` removes secrets (delegation tokens, passwords) from any text before it reaches an
  error message or a log record; errors are chained to a redacted copy of the cause, never to an
  exception whose text holds a token.
* :func:`download` copies a remote file to a local temporary file while computing the manifest's
  ``crc32`` checksum, resuming a partial temporary file, and checks size and checksum before returning.

Only the standard library, pyarrow and the loader's own modules are imported here.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import pyarrow.fs as pafs

from .crc import crc32
from .errors import CorruptFileError, RemoteError
from .manifest import crc32_hex

T = TypeVar("T")
log = logging.getLogger("loader.remote")

_CHUNK = 1 << 20
# Exception class names (anywhere in the MRO) that mean "try again": requests/urllib3/http.client errors
# for resets, drops mid-body and timeouts, plus TransientHTTPError (a 5xx answer) from loader.webhdfs.
_TRANSIENT_NAMES = frozenset(
    {
        "ConnectionError",
        "Timeout",
        "TimeoutError",
        "ChunkedEncodingError",
        "ProtocolError",
        "IncompleteRead",
        "ReadTimeoutError",
        "RemoteDisconnected",
        "TransientHTTPError",
        "ShortReadError",
    }
)
# Java exceptions in a WebHDFS error answer that mean "try again shortly": a name node in standby during an
# HA failover, or one in safe mode (Hadoop's own clients retry these with backoff).
_TRANSIENT_REMOTE_EXCEPTIONS = frozenset({"StandbyException", "RetriableException", "SafeModeException"})
# A query parameter whose name holds one of these words (``token``, ``access_token``, ``api_key``, ``X-Amz-Signature``).
_SECRET_PARAMS = re.compile(
    r"(?i)(?<![\w.-])([\w.-]*(?:delegation|token|password|passwd|secret|signature|sig|key|credential)[\w.-]*)"
    r"=([^&\s'\"<>]+)")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([^/@\s:]+):([^/@\s]+)@")


class ShortReadError(OSError):
    """A response ended before the bytes it promised (a dropped connection)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, waiting ``base_delay × 2^k`` (at most ``max_delay``).

    The default waits 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 4 s, about 10 s in all, before it gives up: long
    enough to ride out a typical name-node failover or a brief outage, short enough that a dead service
    fails a job quickly. Raise ``attempts`` (``-o retries=N``) for slower failovers. Deterministic (no
    jitter), so tests and benchmarks behave the same every run.
    """

    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 4.0

    @property
    def budget(self) -> float:
        """Seconds spent waiting between attempts when every attempt fails."""
        return sum(self.delay(k) for k in range(1, self.attempts))

    def __post_init__(self):
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"bad retry policy {self}: attempts >= 1 and delays >= 0 are required")

    def delay(self, failure: int) -> float:
        """Seconds to wait after the ``failure``-th consecutive failure (1-based)."""
        return min(self.max_delay, self.base_delay * (2 ** (failure - 1)))


class Redactor:
    """Removes known secret values and ``token=``/``delegation=``-style parameters from text."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret in self._secrets:
            out = out.replace(secret, "***")
        out = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}=***", out)
        return _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", out)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


class RedactedCause(Exception):
    """Stands in for an exception whose text may hold a secret: its type name and redacted message."""


def redacted_cause(error: BaseException, redact: Callable[[object], str]) -> RedactedCause:
    """A secret-free copy of ``error`` to chain a raised error to."""
    cause = RedactedCause(f"{type(error).__module__}.{type(error).__name__}: {redact(error)}")
    cause.__suppress_context__ = True
    return cause


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from records (installed on urllib3's and HdfsCLI's loggers)."""

    def __init__(self, redact: Redactor):
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging
            return True
        record.msg, record.args = self.redact(message), None
        return True


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: resets, drops mid-read, timeouts, 5xx answers, and a remote
    ``StandbyException`` / ``RetriableException`` / ``SafeModeException`` (name-node failover, safe mode)."""
    if isinstance(error, (ConnectionError, TimeoutError, ShortReadError)):
        return True
    if getattr(error, "exception", None) in _TRANSIENT_REMOTE_EXCEPTIONS:  # hdfs.HdfsError's Java class name
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__)


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    redact: Callable[[object], str] = str,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient failures per ``policy``.

    Args:
        fn: The operation.
        what: The operation and URL for the error message (already free of secrets).
        policy: How often and how long to retry.
        redact: Removes secrets from the cause's text.
        on_retry: Called with each transient failure before waiting (e.g. to drop a broken response).
        sleep: The wait function.

    Raises:
        RemoteError: Every attempt failed transiently; names ``what`` and the last cause.
        Exception: A non-transient failure is raised at once, unchanged.
    """
    failures = 0
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            failures += 1
            if on_retry is not None:
                on_retry(e)
            if failures >= policy.attempts:
                error = RemoteError(
                    f"{what}: failed after {failures} attempts; last cause: {_name(e)}: {redact(e)}")
                cause = redacted_cause(e, redact)
            else:
                error = None
                log.info("%s: transient failure %d/%d (%s), retrying", what, failures, policy.attempts, _name(e))
        if error is not None:
            # Raised outside the except block, so the original exception (whose text may hold a token) is
            # neither the __cause__ nor the __context__ of the error: only its redacted copy is reachable.
            raise error from cause
        sleep(policy.delay(failures))


def _name(error: BaseException) -> str:
    """The class name of ``error``, with the remote Java exception's name when it carries one."""
    remote = getattr(error, "exception", None)
    return f"{type(error).__name__} ({remote})" if isinstance(remote, str) and remote else type(error).__name__


def _crc_of_file(path: str) -> tuple[int, int]:
    """CRC-32 and length of the file at ``path``."""
    with open(path, "rb") as f:
        return _crc_of_fd(f.fileno())


def _crc_of_fd(fd: int) -> tuple[int, int]:
    """CRC-32 and length of the file open at ``fd``, read with positional reads (the offset is untouched)."""
    crc, total = 0, 0
    while chunk := os.pread(fd, _CHUNK, total):
        crc = crc32(chunk, crc)
        total += len(chunk)
    return crc, total


def fd_checksum(fd: int) -> str:
    """The manifest-style checksum (``crc32:<hex>``) of the file open at ``fd``."""
    return crc32_hex(_crc_of_fd(fd)[0])


def _drop_if_empty(path: str) -> None:
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass


def _check_remote_size(fs: pafs.FileSystem, path: str, size: int, where: str) -> None:
    """Raise :class:`CorruptFileError` if the remote file's size is not the manifest's ``size``.

    A transfer that ends early is retried only when the file really is as long as the manifest says (the
    connection dropped); a file that is shorter on the remote storage is permanently corrupt.
    """
    try:
        actual = fs.get_file_info(path).size
    except OSError:  # cannot tell now: treat the short read as an interrupted transfer
        return
    if actual is not None and actual != size:
        raise CorruptFileError(
            f"{where}: the remote file holds {actual} bytes, the manifest says {size} (truncated or replaced)",
            where,
        )


def download(
    fs: pafs.FileSystem,
    path: str,
    dest: str,
    *,
    size: int,
    checksum: str,
    where: str,
    progress: Callable[[int], None] | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> int:
    """Copy ``fs:path`` to the local file ``dest`` and verify it; resumes a partial ``dest``.

    The filesystem's own stream retries dropped connections (``loader.webhdfs`` does); a stream that
    fails anyway is reopened at the offset reached, within ``policy``.

    Args:
        fs: The remote filesystem.
        path: The file on ``fs``.
        dest: A local temporary path (a partial file there is continued, not restarted).
        size: The size the manifest records.
        checksum: The manifest's ``crc32:<hex>``.
        where: The file's URL without secrets, for errors.
        progress: Called with the number of new bytes after each chunk.
        policy: Retries of the whole stream.

    Returns:
        Bytes transferred over the network.

    Raises:
        CorruptFileError: The copy does not match the manifest's size or checksum (``dest`` is removed).
        RemoteError: The remote file cannot be read.
    """
    crc, have = _crc_of_file(dest) if os.path.exists(dest) else (0, 0)
    if have > size:
        os.remove(dest)
        crc, have = 0, 0
    fetched = 0

    def copy_rest() -> None:
        nonlocal crc, have, fetched
        if have >= size:
            return
        # A fresh copy streams in one request; a resumed one seeks (a ranged request per read on WebHDFS).
        src = fs.open_input_stream(path) if have == 0 else fs.open_input_file(path)
        with src, open(dest, "ab") as out:
            if have:
                src.seek(have)
            while have < size:
                chunk = src.read(min(_CHUNK, size - have))
                if not chunk:
                    _check_remote_size(fs, path, size, where)  # a short file is corrupt, not a drop
                    raise ShortReadError(f"{where}: ended at byte {have} of {size}")
                out.write(chunk)
                crc = crc32(chunk, crc)
                have += len(chunk)
                fetched += len(chunk)
                if progress is not None:
                    progress(len(chunk))

    try:
        try:
            call_with_retries(copy_rest, what=f"reading {where}", policy=policy)
        except BaseException:
            _drop_if_empty(dest)  # a partial download is kept to be resumed, an empty one is litter
            raise
    except FileNotFoundError as e:
        raise RemoteError(f"{where}: listed in the manifest but missing on the remote storage (deleted, e.g. "
                          "its version was pruned?)") from e
    actual = crc32_hex(crc)
    if have != size or actual != checksum:
        os.remove(dest)
        raise CorruptFileError(
            f"{where}: downloaded {have} bytes with checksum {actual}; the manifest says {size} bytes, {checksum}",
            where,
        )
    return fetched
