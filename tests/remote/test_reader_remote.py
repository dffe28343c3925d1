"""``make_reader(webhdfs://..., cache_dir=...)``: every pool reads each remote file once over two epochs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import loader
from tests.remote.conftest import FAST_RETRY, data_opens


@pytest.mark.parametrize("pool", ["serial", "thread", "process"])
def test_two_epochs_read_each_remote_file_once_and_every_row_once_per_epoch(server, remote_cache, remote_table,
                                                                            tmp_path, pool):
    server.clear_log()
    ids = []
    with loader.make_reader(server.url("/caches/demo"), columns=["id", "title"], batch_size=64, num_epochs=2,
                            pool=pool, workers=2, cache_dir=tmp_path, seed=7, retry=FAST_RETRY) as reader:
        for batch in reader:
            ids.append(np.asarray(batch["id"]))
    counts = Counter(np.concatenate(ids).tolist())
    assert counts == Counter({i: 2 for i in remote_table.column("id").to_pylist()})
    assert data_opens(server) == Counter({f.path: 1 for f in remote_cache.files})


def test_closing_a_reader_stops_its_downloads_ahead(server, remote_cache, tmp_path):
    import threading

    def io_threads() -> set:
        return {t for t in threading.enumerate() if t.name.startswith("larder-io") and t.is_alive()}

    before = io_threads()  # other tests' caches may still have theirs
    server.slow_next(count=1000, seconds=0.2, op="OPEN", node="datanode")  # downloads ahead stay in flight
    try:
        reader = loader.make_reader(server.url("/caches/demo"), batch_size=64, cache_dir=tmp_path, retry=FAST_RETRY)
        next(reader)
        assert io_threads() - before
        reader.close()
        assert not io_threads() - before
        assert not list(tmp_path.rglob("*.part"))
        with reader:  # still usable: restarted from the next batch
            reader.load_state_dict(reader.state_dict())
            assert len(next(reader)["id"]) == 64
    finally:
        server.clear_faults()
