"""What the torch and tf adapters (:mod:`loader.torch`, :mod:`loader.tf`) keep from one pass to the next.

* :class:`PinnedVersion`: the version they read, opened once when they are made. Every pass (in this process or
  in a DataLoader worker, which gets a pickled or forked copy) reads from that manifest, so it never reads
  ``CURRENT`` or the manifest again: with ``cache_dir`` a later pass reads the local copies even after the job
  pruned the version remotely, as one ``make_reader(num_epochs=n)`` does.
* :class:`KeptReader`: the process-pool reader of a finished pass, kept for the pass that continues from it: a
  process pool's workers take seconds to start (each imports the training script's imports), so a reader that
  read one epoch to its end reads on and serves the next pass if that pass is the next epoch.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

from . import fs as lfs
from .dataset import Dataset, pinned
from .errors import ConfigError
from .reader import fs_options_of


class PinnedVersion:
    """The version an adapter reads on every pass, and its manifest, read once (here).

    Args:
        url: Dataset directory (its ``CURRENT`` is followed now), version directory, remote URL or a
            :class:`~loader.dataset.Dataset`.
        reader_kwargs: The adapter's keywords for :func:`loader.make_reader`: the filesystem options among them
            open the version, ``cache_dir`` (with ``max_cache_bytes``, ``cache_options``) gives each pass a local
            file cache.

    Attributes:
        url: The version's path or URL (:func:`loader.pin_version`), or the Dataset given.
        dataset: The opened version (no file cache of its own unless the Dataset given had one).
        reader_kwargs: ``reader_kwargs`` for ``make_reader(self.open(), ...)``: without the filesystem options and
            ``cache_dir``, which the opened version carries.

    Raises:
        ConfigError: ``reader_kwargs`` has keywords that are neither :func:`loader.make_reader`'s nor options of a
            remote URL's filesystem.
        DatasetNotFoundError, ManifestError: As :func:`loader.open_dataset`.
    """

    def __init__(self, url: Any, reader_kwargs: dict):
        options = fs_options_of(reader_kwargs)
        if options and (isinstance(url, Dataset) or not lfs.is_remote(os.fspath(url))):
            raise ConfigError(f"make_reader got unexpected keyword arguments {sorted(options)} (extra keywords are "
                              "options of a remote URL's filesystem)")  # as make_reader says it
        if isinstance(url, Dataset):
            self.url, self.dataset = url, url
        else:
            self.url, self.dataset = pinned(url, **options)  # one open: a publish cannot come between
        self.cache_dir = reader_kwargs.get("cache_dir")
        self._cache_options = {"max_cache_bytes": options.get("max_cache_bytes"),
                               **(options.get("cache_options") or {})}
        self.reader_kwargs = {k: v for k, v in reader_kwargs.items() if k not in options and k != "cache_dir"}

    def open(self) -> Dataset:
        """The version for one pass's reader: with ``cache_dir``, a copy with a file cache of its own (closed by
        :meth:`close_reader`, as a reader closes the cache of a dataset it opened itself)."""
        if self.cache_dir is None:
            return self.dataset
        from .cache import attach_cache

        ds = dataclasses.replace(self.dataset, file_cache=None)
        attach_cache(ds, self.cache_dir, **self._cache_options)
        return ds

    def close_reader(self, reader) -> None:
        """Close a reader made on :meth:`open` and the file cache :meth:`open` gave it; idempotent."""
        reader.close()
        cache = reader.dataset.file_cache
        if cache is not None and cache is not self.dataset.file_cache:
            cache.close()


class KeptReader:
    """At most one kept reader. One inherited through ``fork`` is left alone (its workers and threads are the
    parent's); a copy made by pickling is empty; dropping this object closes the reader.

    Args:
        close: Closes a reader that is not handed out again (default: its ``close()``), e.g.
            :meth:`PinnedVersion.close_reader`.
    """

    def __init__(self, close: Callable[[Any], None] | None = None):
        self._lock = threading.Lock()
        self._item: tuple[int, Any] | None = None  # (pid, reader)
        self._close = close

    def __reduce__(self):
        return KeptReader, (self._close,)

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
        if self._close is None:
            reader.close()
        else:
            self._close(reader)
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


__all__ = ["KeptReader", "PinnedVersion"]
