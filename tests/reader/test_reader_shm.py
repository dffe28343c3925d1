"""The process pool's shared-memory transport: zero-copy, writable, private, and nothing left behind."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from loader import shm


def _mapped(name: str) -> int:
    """Mappings of segment ``name`` in this process."""
    with open("/proc/self/maps") as f:
        return sum(f"/dev/shm/{name}" in line for line in f)


def _payload() -> tuple:
    table = pa.table({"id": np.arange(1000), "img": [bytes([i % 251]) * 300 for i in range(1000)]})
    arrays = {"x": np.arange(5000, dtype=np.float32).reshape(1000, 5), "n": np.array(["a", "b"], dtype=object)}
    return table, arrays


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "copied"])
def test_decoded_data_is_whole_writable_and_outlives_its_unlinked_segment(monkeypatch, mapped):
    if not mapped:  # a platform whose segments are not files: the bytes are copied out
        monkeypatch.setattr(shm, "_SHM_DIR", "/nonexistent-larder-shm-dir")
    table, arrays = _payload()
    names: list[str] = []
    encoded = shm.encode((table, arrays), "lrdtest", names)
    assert len(names) == 2 and all(os.path.exists(f"/dev/shm/{n}") for n in names)
    got_table, got_arrays = shm.decode(encoded, unlink=True)
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)  # unlinked at once
    assert sum(_mapped(n) for n in names) == (2 if mapped else 0)  # zero copy: views of the segments
    gc.collect()
    assert got_table.equals(table)
    assert np.array_equal(got_arrays["x"], arrays["x"]) and got_arrays["n"].tolist() == ["a", "b"]
    got_arrays["x"][0, 0] = -1.0  # writable
    img = got_table.column("img").chunk(0)
    assert img[999].as_py() == bytes([999 % 251]) * 300
    del got_table, got_arrays, img
    gc.collect()
    assert sum(_mapped(n) for n in names) == 0  # released with the last view


def test_writes_stay_private_to_the_decoded_copy():
    _, arrays = _payload()
    names: list[str] = []
    encoded = shm.encode(arrays, "lrdtest", names)
    first = shm.decode(encoded, unlink=False)
    first["x"][:] = 7.0
    second = shm.decode(encoded, unlink=True)  # the segment itself is untouched by the first reader's writes
    assert np.array_equal(second["x"], arrays["x"]) and (first["x"] == 7.0).all()


def test_a_missing_segment_is_an_error_not_empty_data():
    ref = shm.NumpyRef("lrdtest_missing_segment", 64, (("x", "<f4", (16,), 0),), {})
    with pytest.raises(FileNotFoundError):
        shm.decode(ref, unlink=True)


def test_out_of_mappings_falls_back_to_a_copy(monkeypatch):
    def no_more_maps(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    _, arrays = _payload()
    names: list[str] = []
    encoded = shm.encode(arrays, "lrdtest", names)
    monkeypatch.setattr(shm.mmap, "mmap", no_more_maps)
    got = shm.decode(encoded, unlink=True)
    assert np.array_equal(got["x"], arrays["x"]) and not os.path.exists(f"/dev/shm/{names[0]}")
    got["x"][0, 0] = 1.0


def test_the_numpy_dicts_of_one_payload_share_one_segment():
    rng = np.random.default_rng(0)
    batches = tuple({"x": rng.random(100 + i), "y": np.arange(i + 1)} for i in range(5))
    names: list[str] = []
    encoded = shm.encode(batches, "lrdtest", names)
    assert len(names) == 1  # one segment (one file, one mapping) for the five dicts
    got = shm.decode(encoded, unlink=True)
    assert not os.path.exists(f"/dev/shm/{names[0]}")
    for a, b in zip(got, batches, strict=True):
        assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])


def test_a_result_names_the_argument_arrays_it_returns_unchanged():
    rng = np.random.default_rng(1)
    sent = ({"image": rng.integers(0, 255, 50_000, dtype=np.uint8), "label": np.arange(10)},)
    names: list[str] = []
    encoded_args = shm.encode(sent, "lrdtest", names)
    args = shm.decode(encoded_args, unlink=False, copy=True)  # what a worker's task gets
    known = shm.argument_arrays(args, encoded_args)
    batch = args[0]
    batch["label"] += 1  # changed in place: must travel back
    batch["new"] = np.ones(10)
    result_names: list[str] = []
    encoded = shm.encode(batch, "lrdtest", result_names, known=known)
    assert [k for k, _ in encoded.kept] == ["image"] and [s[0] for s in encoded.specs] == ["label", "new"]
    got = shm.decode(encoded, unlink=True, args=sent)  # back on the consumer's side
    shm.decode(encoded_args, unlink=True)
    assert list(got) == ["image", "label", "new"]  # the transform's key order
    assert got["image"] is sent[0]["image"]  # not sent back: the consumer's own array
    assert np.array_equal(got["label"], np.arange(10) + 1) and np.array_equal(sent[0]["label"], np.arange(10))
    with pytest.raises(ValueError, match="needs the arguments"):
        shm.decode(shm.NumpyRef("x", 0, (), {}, (("image", (0, "image")),), ("image",)), unlink=False)


def test_written_pages_tells_the_pages_a_process_wrote_in_its_private_mapping():
    names: list[str] = []
    encoded = shm.encode({"x": np.zeros(200_000, dtype=np.uint8)}, "lrdtest", names)
    maps: list = []
    got = shm.decode(encoded, unlink=True, maps=maps)
    pages = shm.WrittenPages.open(maps)
    if pages is None:
        pytest.skip("no readable /proc/self/pagemap here")
    x = got["x"]
    assert int(x[::4096].sum()) == 0  # read every page: still the segment's own pages
    x[150_000] = 1  # one write: that page becomes a private copy
    address = x.ctypes.data
    page = shm._PAGE
    first_written = (address + 150_000) // page * page
    assert not pages.written(address, first_written - address)
    assert pages.written(address, x.nbytes) and pages.written(address + 150_000, 1)
    assert not pages.written(first_written + page, address + x.nbytes - first_written - page)
    assert pages.written(12345, 10)  # outside every mapping: counted as written (so it is sent)
    pages.close()


def _set_element(batch):
    batch["x"][123_456] = -1
    return batch


def _reshape_in_place(batch):
    batch["y"].shape = (2, 3)
    return batch


def _keep_all(batch):
    return batch


@pytest.mark.parametrize("pagemap", [True, False], ids=["mapped-args", "copied-args"])
def test_a_task_result_leaves_out_exactly_the_arrays_it_did_not_change(monkeypatch, pagemap):
    from loader import procworker

    monkeypatch.setattr(procworker, "_pagemap", pagemap and procworker._pagemap_readable())
    monkeypatch.setattr(procworker, "_worker_prefix", "lrdtest")
    sent = {"x": np.arange(200_000, dtype=np.int64), "y": np.arange(6.0)}
    for fn, changed in [(_keep_all, set()), (_set_element, {"x"}), (_reshape_in_place, {"y"})]:
        names: list[str] = []
        reply = procworker.process_call(fn, shm.encode((sent,), "lrdtest", names, allocate=None))
        assert reply.busy == ()  # the task kept nothing: the segment could be reused
        got = shm.decode(reply.value, unlink=True, args=(sent,))
        for name in names:
            shm.unlink_quietly(name)
        assert {k for k in got if got[k] is not sent[k]} == changed, fn.__name__
        assert np.array_equal(sent["x"], np.arange(200_000)) and sent["y"].shape == (6,)  # never written
    assert got["y"].shape == (2, 3)
    reply = procworker.process_call(_set_element, shm.encode((sent,), "lrdtest", names))
    assert shm.decode(reply.value, unlink=True, args=(sent,))["x"][123_456] == -1
    for name in names:
        shm.unlink_quietly(name)


def test_a_page_map_that_does_not_tell_written_pages_is_not_trusted(monkeypatch):
    from loader import procworker

    if shm.WrittenPages.open([]) is None:
        pytest.skip("no readable /proc/self/pagemap here")
    assert procworker._probe_pagemap()  # this kernel's page map tells read pages from written ones
    monkeypatch.setattr(shm.WrittenPages, "written", lambda self, address, nbytes: False)  # e.g. all zeros
    assert not procworker._probe_pagemap()  # such a platform gets copied arguments, compared after the task
    monkeypatch.setattr(shm.WrittenPages, "open", classmethod(lambda cls, maps: None))  # no page map at all
    assert not procworker._probe_pagemap()


def test_key_order_survives_object_arrays_and_kept_arrays():
    """Object arrays travel pickled beside the buffers: decoding still gives the sender's key order, also when
    some arrays are kept back (a task's result naming its unchanged arguments)."""
    batch = {"id": np.arange(4), "s": np.array(["a", "bc", "", "d"], dtype=object), "s.valid": np.ones(4, bool),
             "li": np.arange(6, dtype=np.int32), "li.offsets": np.array([0, 1, 3, 3, 6]),
             "t": np.array([b"x", b"", b"yz", b"w"], dtype=object)}
    names: list[str] = []
    encoded = shm.encode((batch,), "lrdtest", names)
    args = shm.decode(encoded, unlink=False, copy=True)
    assert list(args[0]) == list(batch)
    assert all(np.array_equal(args[0][k], v) for k, v in batch.items())
    known = shm.argument_arrays(args, encoded)
    result = dict(args[0])
    result["id"] = result["id"] * 2  # sent back; the other buffers are kept, the object arrays pickled
    result["new"] = np.array(["n"] * 4, dtype=object)
    result_names: list[str] = []
    back = shm.encode(result, "lrdtest", result_names, known=known)
    assert back.kept and back.objects
    got = shm.decode(back, unlink=True, args=(batch,))
    shm.decode(encoded, unlink=True)
    assert list(got) == [*batch, "new"] and np.array_equal(got["id"], np.arange(4) * 2)
    alone = {"o": np.array([None, 1], dtype=object), "x": np.arange(2)}  # nothing kept: the order still holds
    assert list(shm.decode(shm.encode(alone, "lrdtest", []), unlink=True)) == ["o", "x"]


def test_a_process_pool_sweeps_segments_of_killed_readers_and_only_those():
    from loader.process_pool import ProcessPool

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is free (reuse within this test is vanishingly unlikely)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    names = {
        "orphan": f"lrd{dead.pid:x}xab12_{dead.pid:x}_1",  # a reader and its resource tracker killed together
        "live": f"lrd{live.pid:x}xab12_{live.pid:x}_1",  # a running reader's segment
        "worker_alive": f"lrd{dead.pid:x}xab12_{live.pid:x}_2",  # its worker still runs: left for now
        "other": f"psm_{dead.pid:x}_1",  # not larder's
    }
    try:
        for name in names.values():
            with open(f"/dev/shm/{name}", "wb") as f:
                f.write(b"x" * 4096)
        pool = ProcessPool(1)
        try:
            pool.submit(len, "abc").result()
        finally:
            pool.close()
        left = {key for key, name in names.items() if os.path.exists(f"/dev/shm/{name}")}
        assert left == {"live", "worker_alive", "other"}
    finally:
        live.kill()
        live.wait()
        for name in names.values():
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass
