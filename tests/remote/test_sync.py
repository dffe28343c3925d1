"""``sync`` / ``python -m loader sync``: a whole version into the local cache, resumable, loud on failure."""

from __future__ import annotations

import os

import loader
from loader.cli import main
from loader.sync import sync
from tests.conftest import read_all


def test_sync_fills_the_cache_the_reader_then_uses(server, remote_cache, remote_table, tmp_path, capsys):
    assert main(["sync", server.url("/caches/demo"), str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"{len(remote_cache.files)} files" in out
    assert "B/s" in err  # the tqdm bar shows bytes and rate
    for f in remote_cache.files:
        assert os.path.getsize(tmp_path / "demo" / remote_cache.version / f.path) == f.size
    server.clear_log()
    ds = loader.open_dataset(server.url("/caches/demo"), cache_dir=tmp_path)
    assert read_all(ds).equals(remote_table)
    assert server.count(node="datanode", path=".parquet") == 0


def test_failed_sync_exits_non_zero_and_resumes(server, remote_cache, tmp_path, capsys):
    victim = remote_cache.files[2]
    server.fail_always(status=503, op="OPEN", path=victim.path)
    code = main(["sync", server.url("/caches/demo"), str(tmp_path), "-o", "retries=2"])
    assert code != 0
    err = capsys.readouterr().err
    assert remote_cache.display(victim) in err and "503" in err
    assert not (tmp_path / "demo" / remote_cache.version / victim.path).exists()
    server.clear_faults()
    done_before = [f for f in remote_cache.files if (tmp_path / "demo" / remote_cache.version / f.path).exists()]
    summary = sync(server.url("/caches/demo"), tmp_path, progress=False)
    assert summary.fetched_files == len(remote_cache.files) - len(done_before)
    assert summary.files == len(remote_cache.files) and summary.fetched_bytes > 0
    assert sync(server.url("/caches/demo"), tmp_path, progress=False).fetched_files == 0


def test_verify_option_off_trusts_markers_and_a_bad_spelling_is_refused(server, remote_cache, tmp_path, capsys):
    url = server.url("/caches/demo")
    assert main(["sync", url, str(tmp_path), "--no-progress", "-o", "verify=OFF"]) == 0
    server.clear_log()
    assert main(["sync", url, str(tmp_path), "--no-progress", "-o", "verify=off"]) == 0
    assert server.count(node="datanode", path=".parquet") == 0  # every copy trusted, none fetched again
    capsys.readouterr()
    assert main(["sync", url, str(tmp_path), "--no-progress", "-o", "verify=nope"]) == 1
    assert "option verify must be one of 1/0, true/false, yes/no, on/off, got 'nope'" in capsys.readouterr().err
    assert server.count(node="datanode", path=".parquet") == 0
