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
    "AccessControlException": "org.apache.hadoop.security.AccessControlException",
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

    kind: str  # "error", "drop", "slow" or "lose" (perform the operation, then lose its answer)
    count: int | None
    op: str | None = None
    path: str | None = None
    node: str | None = None
    status: int = 503
    after_bytes: int = 0
    seconds: float = 0.0
    exception: str = "IOException"  # the Java exception of an error answer

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


class FaultSwitches:
    """The fault and log switches of :class:`tests.remote.webhdfs_server.WebHdfs` (which holds ``_rules``,
    ``_lock`` and ``log``)."""

    _rules: list[Rule]
    _lock: threading.Lock
    log: list[Record]

    def fail_next(self, count: int = 1, status: int = 503, op: str | None = None, path: str | None = None,
                  node: str | None = None, exception: str = "IOException") -> None:
        """Answer the next ``count`` matching requests with ``status`` and a ``RemoteException`` of ``exception``
        (e.g. ``status=403, exception="StandbyException"``: a name node in standby during a failover)."""
        with self._lock:
            self._rules.append(Rule("error", count, op, path, node, status, exception=exception))

    def fail_always(self, status: int = 503, op: str | None = None, path: str | None = None,
                    node: str | None = None, exception: str = "IOException") -> None:
        """Answer every matching request with ``status`` until :meth:`clear_faults`."""
        with self._lock:
            self._rules.append(Rule("error", None, op, path, node, status, exception=exception))

    def lose_reply_next(self, count: int = 1, op: str | None = None, path: str | None = None,
                        node: str | None = None, status: int = 504, seconds: float = 0.0) -> None:
        """Apply the next ``count`` matching operations but lose their answers: wait ``seconds`` (past a client's
        timeout, say), then answer ``status`` as a gateway that gave up would, or with ``status=0`` close the
        connection without an answer."""
        with self._lock:
            self._rules.append(Rule("lose", count, op, path, node, status, seconds=seconds))

    def drop_next(self, count: int = 1, after_bytes: int = 0, path: str | None = None) -> None:
        """Close the connection of the next ``count`` data-node OPENs after ``after_bytes`` body bytes."""
        with self._lock:
            self._rules.append(Rule("drop", count, "OPEN", path, "datanode", after_bytes=after_bytes))

    def slow_next(self, count: int = 1, seconds: float = 1.0, op: str | None = None, path: str | None = None,
                  node: str | None = None) -> None:
        """Hold the next ``count`` matching requests for ``seconds`` before answering (client timeouts)."""
        with self._lock:
            self._rules.append(Rule("slow", count, op, path, node, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def count(self, op: str | None = None, path: str | None = None, node: str | None = None) -> int:
        """How many logged requests match (``path`` is a substring)."""
        with self._lock:
            return sum(1 for r in self.log if (op is None or r.op == op) and (path is None or path in r.path)
                       and (node is None or r.node == node))

    def _take_rule(self, kind: str, node: str, op: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and rule.matches(node, op, path):
                    if rule.count is not None:
                        rule.count -= 1
                        if rule.count <= 0:
                            self._rules.remove(rule)
                    return rule
        return None
