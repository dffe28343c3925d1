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
_SECRET_PARAMS = re.compile(r"(?i)\b(delegation|token|password|passwd|secret|signature|sig)=([^&\s'\"<>]+)")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([^/@\s:]+):([^/@\s]+)@")


class ShortReadError(OSError):
    """A response ended before the bytes it promised (a dropped connection)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, waiting ``base_delay × 2^k`` (at most ``max_delay``).

    Deterministic (no jitter), so tests and benchmarks behave the same every run.
    """

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 2.0

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
    """True for failures worth retrying: resets, drops mid-read, timeouts, 5xx answers."""
    if isinstance(error, (ConnectionError, TimeoutError, ShortReadError)):
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
                raise RemoteError(
                    f"{what}: failed after {failures} attempts; last cause: {type(e).__name__}: {redact(e)}"
                ) from redacted_cause(e, redact)
            log.info("%s: transient failure %d/%d (%s), retrying", what, failures, policy.attempts, type(e).__name__)
            sleep(policy.delay(failures))


def _crc_of_file(path: str) -> tuple[int, int]:
    crc, total = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = crc32(chunk, crc)
            total += len(chunk)
    return crc, total


def file_checksum(path: str) -> str:
    """The manifest-style checksum (``crc32:<hex>``) of a local file."""
    return crc32_hex(_crc_of_file(path)[0])


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
                    raise ShortReadError(f"{where}: ended at byte {have} of {size}")
                out.write(chunk)
                crc = crc32(chunk, crc)
                have += len(chunk)
                fetched += len(chunk)
                if progress is not None:
                    progress(len(chunk))

    try:
        call_with_retries(copy_rest, what=f"reading {where}", policy=policy)
    except FileNotFoundError as e:
        raise RemoteError(f"{where}: listed in the manifest but missing on the remote storage") from e
    actual = crc32_hex(crc)
    if have != size or actual != checksum:
        os.remove(dest)
        raise CorruptFileError(
            f"{where}: downloaded {have} bytes with checksum {actual}; the manifest says {size} bytes, {checksum}",
            where,
        )
    return fetched
