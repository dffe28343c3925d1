"""Process-pool audit A: what a consumer keeps of a result pins shared memory in proportion to what it keeps.

A task's result segment holds every changed column of several batches; a small column kept from every batch
(labels for epoch metrics) used to keep every segment mapped, so ``/dev/shm`` grew with the epoch.
"""

from __future__ import annotations

import gc
import os

import numpy as np

import loader
from loader import shm


def _mapped_bytes(prefix: str) -> tuple[int, int]:
    """(mappings, bytes mapped) of the segments whose names start with ``prefix`` in this process."""
    count = total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            if f"/dev/shm/{prefix}" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                count, total = count + 1, total + end - start
    return count, total


def _payload(batches: int = 8) -> tuple:
    rng = np.random.default_rng(0)
    return tuple({"image": rng.integers(0, 255, 128 << 10, dtype=np.uint8),  # large: stays a view
                  "mid": rng.random(10_000),  # 80,000 bytes: over 64 KiB, under a sixteenth of the segment
                  "label": rng.integers(0, 7, 1000).astype(np.int32)}  # 4 KB
                 for _ in range(batches))


def test_kept_small_arrays_of_a_result_do_not_keep_its_segment_mapped():
    sent = _payload()
    names: list[str] = []
    encoded = shm.encode(sent, "lrdtesta", names)
    assert len(names) == 1 and encoded[0].size > 16 * 80_000  # the relative rule decides "mid"
    got = shm.decode(encoded, unlink=True, copy_small=True)
    assert not os.path.exists(f"/dev/shm/{names[0]}")
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for a, b in zip(got, sent, strict=True)
               for k in b)
    assert _mapped_bytes(names[0])[0] == 1  # zero copy for the images: their views map the segment
    kept = [(b["label"], b["mid"]) for b in got]  # what an epoch's metrics keep
    image = got[3]["image"]
    del got
    gc.collect()
    assert _mapped_bytes(names[0])[0] == 1  # one image kept: the segment stays (16x its bytes at most)
    image[0] = 255  # a view of a private mapping: writable
    del image
    gc.collect()
    assert _mapped_bytes(names[0])[0] == 0  # the labels and mids kept are copies: they pin nothing
    for (label, mid), b in zip(kept, sent, strict=True):
        assert np.array_equal(label, b["label"]) and np.array_equal(mid, b["mid"])
        label[0] = -1  # writable too


def test_decoding_without_copy_small_still_views_every_array():
    """A worker decodes its arguments as views (its result leaves out the ones it did not write)."""
    names: list[str] = []
    got = shm.decode(shm.encode(_payload(2), "lrdtesta", names), unlink=True)
    labels = [b["label"] for b in got]
    del got
    gc.collect()
    assert _mapped_bytes(names[0])[0] == 1
    del labels
    gc.collect()
    assert _mapped_bytes(names[0])[0] == 0


def rewrite_with_embedding(batch: dict) -> dict:
    """Changes every column and adds a large one (module level: process workers import it)."""
    out = {k: v.copy() for k, v in batch.items()}
    out["emb"] = np.repeat(batch["id"].astype(np.float32)[:, None], 512, axis=1)  # 2 KB a row
    return out


def test_labels_kept_from_every_batch_of_a_process_pool_pin_no_shared_memory(mixed_cache):
    """The audit's repro: a transform changing every column, a loop keeping ``b["label"]`` of each batch."""
    prefix = f"lrd{os.getpid():x}x"
    with loader.make_reader(mixed_cache, batch_size=50, pool="process", workers=2, transform=rewrite_with_embedding,
                            num_epochs=2, seed=3) as reader:
        labels = [b["label"] for b in reader]
    gc.collect()
    assert len(labels) == 40 and sum(len(x) for x in labels) == 2000
    assert _mapped_bytes(prefix) == (0, 0)  # was one mapping per task, each every column of its batches


def test_large_arrays_kept_from_a_process_pool_stay_zero_copy_and_pin_about_their_own_bytes(mixed_cache):
    prefix = f"lrd{os.getpid():x}x"
    with loader.make_reader(mixed_cache, batch_size=50, pool="process", workers=2, transform=rewrite_with_embedding,
                            num_epochs=1, seed=3) as reader:
        kept = [(b["emb"], b["id"]) for b in reader]
    gc.collect()
    embs = [e for e, _ in kept]
    assert all(np.array_equal(e, np.repeat(i.astype(np.float32)[:, None], 512, axis=1)) for e, i in kept)
    count, mapped = _mapped_bytes(prefix)
    kept_bytes = sum(e.nbytes for e in embs)
    assert count > 0  # views of the result segments, not copies
    assert kept_bytes <= mapped <= shm.VIEW_SHARE * kept_bytes
    del kept, embs
    gc.collect()
    assert _mapped_bytes(prefix) == (0, 0)
