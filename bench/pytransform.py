"""A pure-Python transform for ``bench/bench_reader.py --only py``: the case ``pool="process"`` is for.

:func:`hash_title_words` does what a trainer's text preprocessing in Python does: for every row, decode the
title, lower-case and split it, and hash each word into one of 30,000 buckets, adding the ids as a ragged
column (``title_ids`` + ``title_ids.offsets``); ``rounds`` repeats the hashing with other salts (a heavier
transform: n-gram features, a real tokenizer). Every step holds the GIL, so thread workers run it one at a
time, while process workers run it side by side. It lives in a module of its own so process-pool workers can
import it (a function of the benchmark script's ``__main__`` would be re-imported by each worker).
"""

from __future__ import annotations

import zlib

import numpy as np

BUCKETS = 30_000


def hash_title_words(batch: dict[str, np.ndarray], *, rounds: int = 1) -> dict[str, np.ndarray]:
    """Add ``title_ids`` (the title's lower-cased words hashed into :data:`BUCKETS`) to a batch.

    Args:
        batch: A reader batch with ``title`` in the offsets form (``title`` bytes, ``title.offsets``).
        rounds: Hashes per word (with different salts); the ids of the last round are kept.

    Returns:
        The batch with ``title_ids`` (int32 ids) and ``title_ids.offsets`` (int64, one more than rows).
    """
    data = batch["title"].tobytes()
    offsets = batch["title.offsets"].tolist()
    ids: list[int] = []
    ends = [0]
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        words = [word.encode() for word in data[a:b].decode().lower().split()]
        for salt in range(rounds):
            hashed = [zlib.crc32(word, salt) % BUCKETS for word in words]
        ids.extend(hashed)
        ends.append(len(ids))
    batch["title_ids"] = np.asarray(ids, dtype=np.int32)
    batch["title_ids.offsets"] = np.asarray(ends, dtype=np.int64)
    return batch
