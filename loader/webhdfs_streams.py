"""The byte streams of :mod:`loader.webhdfs`: ranged/sequential reads with ``OPEN`` and spooled uploads.

Kept apart from the filesystem handler so each module has one job; both classes only use the handler's
``client``, ``_call``, ``_status`` and ``display_url``.
"""

from __future__ import annotations

import io
import tempfile

from .remote import ShortReadError


class _RemoteFile(io.RawIOBase):
    """A remote file read with ``OPEN offset/length``; drops and 5xx are retried from the byte reached.

    ``sequential`` streams one response from the current offset to the end (downloads); otherwise every
    read is one bounded ranged request (Parquet footers and column chunks), so nothing extra is fetched.
    """

    def __init__(self, handler, path: str, sequential: bool):
        super().__init__()
        self.h, self.path, self.sequential = handler, path, sequential
        self.pos = 0
        self._size: int | None = None
        self._resp = None
        self._resp_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        if self._size is None:
            status = self.h._status(self.path)
            if status is None:
                raise FileNotFoundError(f"{self.h.display_url(self.path)} does not exist (deleted since it was "
                                        "listed; was its version pruned?)")
            if status["type"] != "FILE":
                raise FileNotFoundError(f"{self.h.display_url(self.path)} is not a file")
            self._size = int(status["length"])
        return self._size

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size() if whence == 2 else 0}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _drop(self, *_):
        if self._resp is not None:
            self._resp.close()
        self._resp, self._resp_pos = None, -1

    def _read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos``: b"" only at end of file."""
        client = self.h.client
        if self.sequential:
            if self._resp is None or self._resp_pos != self.pos:
                self._drop()
                if self._size is not None and self.pos >= self._size:
                    return b""
                self._resp = client._open(self.path, offset=self.pos)
                self._resp_pos = self.pos
            data = self._resp.raw.read(n)
            if not data and (self._size is None or self.pos < self._size):
                self._drop()
                # An empty read at a known end is EOF; verify an unknown end before believing it.
                if self.pos < self.size():
                    raise ShortReadError(f"{self.h.display_url(self.path)}: stream ended at byte {self.pos}")
            self._resp_pos += len(data)
            return data
        resp = client._open(self.path, offset=self.pos, length=n)
        try:
            data = resp.raw.read(n)
            expected = int(resp.headers.get("Content-Length", len(data)))
            if not data and expected:  # dropped before any byte; partial data counts as progress
                raise ShortReadError(f"{self.h.display_url(self.path)}: got 0 of {expected} bytes")
            return data
        finally:
            resp.close()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size() - self.pos)
        parts, want = [], n
        while want > 0:
            data = self.h._call("OPEN", self.path, lambda w=want: self._read_some(min(w, 8 << 20)), self._drop)
            if not data:
                break
            parts.append(data)
            self.pos += len(data)
            want -= len(data)
        return b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()


class _Upload(io.RawIOBase):
    """Bytes written are spooled locally, then sent with a two-step ``CREATE`` (or ``APPEND``) on close,
    retried as a whole on transient failures."""

    def __init__(self, handler, path: str, append: bool):
        super().__init__()
        self.h, self.path, self.append = handler, path, append
        self._spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._spool.write(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            def send():
                self._spool.seek(0)
                self.h.client.write(self.path, data=self._spool, overwrite=not self.append, append=self.append)

            self.h._call("APPEND" if self.append else "CREATE", self.path, send)
        finally:
            self._spool.close()
            super().close()


__all__ = ["_RemoteFile", "_Upload"]
