"""Pieces of the WebHDFS test server: Hadoop's error answers, injected faults, the request log, the link."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

JAVA_CLASSES = {
    "FileNotFoundException": "java.io.FileNotFoundException",
    "IllegalArgumentException": "java.lang.IllegalArgumentException",
    "FileAlreadyExistsException": "org.apache.hadoop.fs.FileAlreadyExistsException",
    "StandbyException": "org.apache.hadoop.ipc.StandbyException",
    "SecurityException": "java.lang.SecurityException",
    "InvalidToken": "org.apache.hadoop.security.token.SecretManager$InvalidToken",
    "IOException": "java.io.IOException",
    "UnsupportedOperationException": "java.lang.UnsupportedOperationException",
    "RetriableException": "org.apache.hadoop.ipc.RetriableException",
}


class RemoteException(Exception):
    """An error answer: HTTP status, Java exception name and message."""

    def __init__(self, status: int, exception: str, message: str):
        super().__init__(message)
        self.status, self.exception, self.message = status, exception, message


@dataclass
class Rule:
    """An injected fault: applies to requests matching ``op``/``path``/``node`` ``count`` times (None: always)."""

    kind: str  # "error", "drop" or "slow"
    count: int | None
    op: str | None = None
    path: str | None = None
    node: str | None = None
    status: int = 503
    after_bytes: int = 0
    seconds: float = 0.0

    def matches(self, node: str, op: str, path: str) -> bool:
        return (
            (self.op is None or self.op == op)
            and (self.path is None or self.path in path)
            and (self.node is None or self.node == node)
        )


@dataclass
class Record:
    """One logged request."""

    node: str
    method: str
    op: str
    path: str
    params: dict
    status: int = 0
    body_bytes: int = 0


class Link:
    """A shared bandwidth limit: a token bucket over all data-node bodies, ``burst`` bytes deep (like tc's tbf)."""

    def __init__(self, burst: int = 256 << 10):
        self.rate: float | None = None
        self.burst = burst
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def wait(self, nbytes: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now - self.burst / self.rate, self._next)  # idle time earns at most `burst` bytes
            self._next = start + nbytes / self.rate
            delay = self._next - now
        if delay > 0:
            time.sleep(delay)
