"""The ``torch.distributed`` helpers of :mod:`loader.torch`: this process's rank and world size, and one dataset
version for every rank."""

from __future__ import annotations

import os

import torch

from .dataset import pin_version
from .errors import LarderError


def _default_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pin_version_across_ranks(url: str | os.PathLike, **fs_options) -> str:
    """:func:`loader.pin_version` on rank 0 of ``torch.distributed``'s default group, sent to every rank.

    A :class:`~loader.torch.LarderIterableDataset` follows a dataset directory's ``CURRENT`` by itself, when made:
    under DDP, a version published while the ranks start gives ranks different versions (overlapping shards, and
    batch counts that differ and hang the job in its next collective). Open a changing dataset with
    ``make_dataloader(pin_version_across_ranks(url), ...)`` instead: every rank reads the version rank 0 found.
    A collective (``broadcast_object_list``): call it on every rank. Without an initialised process group it is
    :func:`loader.pin_version`.

    Args:
        url: Dataset directory, version directory or remote URL.
        **fs_options: Filesystem options, as for :func:`loader.make_reader`.

    Returns:
        The version's path or URL, the same on every rank.

    Raises:
        DatasetNotFoundError, ManifestError: As :func:`loader.pin_version`, on rank 0; the other ranks raise a
            :class:`~loader.errors.LarderError` with rank 0's error (instead of waiting for a version).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return pin_version(url, **fs_options)
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, pin_version(url, **fs_options))
        except Exception as e:
            dist.broadcast_object_list([(False, f"{type(e).__name__}: {e}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, text = box[0]
    if not ok:
        raise LarderError(f"rank 0 could not pin the version: {text}")
    return text

__all__ = ["pin_version_across_ranks"]
