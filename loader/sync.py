"""``python -m loader sync URL CACHE_DIR``: copy a whole published version into a local disk cache.

The copy is the same cache :func:`loader.open_dataset` uses with ``cache_dir=``, so a synced node starts
training at local-disk speed. Files already cached and verified are skipped, and a file interrupted halfway
is resumed from its partial download, so running ``sync`` again after an interruption finishes the job.

Every copy already in the cache is checksummed again (its ``.ok`` marker is not trusted): ``sync`` is the
command that makes a node's cache good, and a copy that rotted on disk without changing its size or mtime
would pass the marker. That costs one local read of the cached bytes; ``verify=False`` (``-o verify=false``)
trusts the markers instead.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from .cache import FileCache
from .dataset import open_dataset
from .errors import ConfigError
from .fs import parse_bool


@dataclass(frozen=True)
class SyncSummary:
    """What a :func:`sync` did."""

    dataset: str
    version: str
    cache_dir: str
    files: int
    fetched_files: int
    fetched_bytes: int
    total_bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second over the network."""
        return self.fetched_bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def summary(self) -> str:
        """One line for the command line."""
        return (f"synced {self.dataset} {self.version}: {self.files} files, {self.total_bytes} bytes "
                f"in {self.cache_dir}; fetched {self.fetched_files} files, {self.fetched_bytes} bytes "
                f"in {self.seconds:.1f}s ({self.rate / 1e6:.1f} MB/s)")

    def __str__(self) -> str:
        return self.summary


def sync(url: str, cache_dir: str | os.PathLike, *, workers: int | str = 8, progress: bool = True,
         verify: bool | str = True, **fs_options) -> SyncSummary:
    """Copy every data file of the version at ``url`` into ``cache_dir``, verified against the manifest.

    Args:
        url: A dataset or version directory (remote or local).
        cache_dir: The local cache directory (layout of :mod:`loader.cache`).
        workers: Parallel downloads.
        progress: Show a tqdm progress bar with bytes and rate (if tqdm is installed).
        verify: Recompute the checksum of every copy already cached (a bad one is fetched again): a bool,
            or ``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off`` (:func:`loader.fs.parse_bool`).
        **fs_options: Options of the URL's filesystem (user, token...).

    Returns:
        A :class:`SyncSummary`.

    Raises:
        ConfigError: ``workers`` is not a positive integer or ``verify`` not a yes/no value.
        RemoteError: A file could not be read after retries (files done so far stay cached).
        CorruptFileError: A remote file does not match its manifest.
    """
    try:
        workers = int(workers)
    except ValueError as e:
        raise ConfigError(f"workers must be an integer, got {workers!r}") from e
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    verify = parse_bool(verify, "verify")
    ds = open_dataset(url, **fs_options)
    cache = FileCache(cache_dir, io_threads=workers, auto_prefetch=False)
    bar = _progress_bar(ds.total_bytes, f"{ds.name} {ds.version}") if progress else None
    lock = threading.Lock()

    def advance(n: int) -> None:
        if bar is not None:
            with lock:
                bar.update(n)

    start = time.perf_counter()
    fetched_files = fetched_bytes = 0
    futures: dict = {}
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="larder-sync") as pool:
            futures = {pool.submit(cache.fetch, ds, info, advance, verify): info for info in ds.files}
            for future in as_completed(futures):
                got = future.result()  # the first failure is raised here; the rest are cancelled
                info = futures[future]
                if got:
                    fetched_files += 1
                    fetched_bytes += got
                advance(info.size - got)  # files found in the cache count as done
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()
    return SyncSummary(ds.name, ds.version, cache.cache_dir, len(ds.files), fetched_files, fetched_bytes,
                       ds.total_bytes, time.perf_counter() - start)


def _progress_bar(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)


__all__ = ["SyncSummary", "sync"]
