"""The process-pool reader of a finished pass, kept for the pass that continues from it (:mod:`loader.torch`,
:mod:`loader.tf`): a process pool's workers take seconds to start (each imports the training script's imports),
so a reader that read one epoch to its end reads on and serves the next pass if that pass is the next epoch."""

from __future__ import annotations

import os
import threading
from typing import Any


class KeptReader:
    """At most one kept reader. One inherited through ``fork`` is left alone (its workers and threads are the
    parent's); a copy made by pickling is empty; dropping this object closes the reader."""

    def __init__(self):
        self._lock = threading.Lock()
        self._item: tuple[int, Any] | None = None  # (pid, reader)

    def __reduce__(self):
        return KeptReader, ()

    def take(self, shard: tuple[int, int, int] | None = None):
        """The kept reader if it reads ``shard`` — ``(rank, world_size, epoch)`` — from that epoch's start; else
        None, after closing it (``take()`` closes it)."""
        with self._lock:
            item = self._item
            if item is None or item[0] != os.getpid():
                return None
            self._item = None
        reader = item[1]
        if shard is not None and (reader.rank, reader.world_size, reader.epoch) == shard:
            return reader
        reader.close()
        return None

    def put(self, reader) -> bool:
        """Keep ``reader``; False (not kept: the caller closes it) if another one is kept already."""
        with self._lock:
            if self._item is None:
                self._item = (os.getpid(), reader)
                return True
        return False

    def close(self) -> None:
        """Close the kept reader and stop its workers; idempotent."""
        self.take()

    def __del__(self) -> None:  # its owner was dropped without close()
        self.close()


__all__ = ["KeptReader"]
