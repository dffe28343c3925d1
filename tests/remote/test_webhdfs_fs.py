"""loader's webhdfs:// filesystem (HdfsCLI under pyarrow.fs) against the WebHDFS test server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import loader
from loader import fs as lfs
from loader.remote import RetryPolicy
from loader.webhdfs import webhdfs_address
from tests.conftest import make_table, read_all
from tests.remote.conftest import FAST_RETRY, TOKEN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_publish_and_read_back_over_webhdfs(server, remote_cache, remote_table):
    ds = loader.open_dataset(server.url("/caches/demo"), retry=FAST_RETRY)
    assert ds.version == remote_cache.version and ds.num_rows == remote_table.num_rows
    assert read_all(ds).equals(remote_table)
    assert (server.local(f"/caches/demo/{ds.version}/_manifest.json"))
    assert open(server.local("/caches/demo/CURRENT")).read().strip() == ds.version


def test_row_group_reads_are_ranged(server, remote_cache):
    ds = loader.open_dataset(server.url("/caches/demo"))
    info = max(ds.files, key=lambda f: f.size)
    server.clear_log()
    table = ds.read_row_group(info, 0, columns=["id"])
    assert table.num_rows == info.row_groups[0].num_rows
    opens = [r for r in server.log if r.node == "datanode" and r.op == "OPEN"]
    assert opens and all("length" in r.params for r in opens)
    assert sum(r.body_bytes for r in opens) < info.size  # footer + one column chunk, not the whole file


def test_transient_503s_and_dropped_connections_are_retried(server, remote_cache, remote_table):
    ds = loader.open_dataset(server.url("/caches/demo"), retry=FAST_RETRY)
    server.fail_next(2, status=503, op="OPEN")
    server.fail_next(1, status=500, op="GETFILESTATUS")
    server.drop_next(2, after_bytes=7)
    assert read_all(ds).equals(remote_table)
    assert server.count(op="OPEN", node="datanode") > 0
    assert sum(1 for r in server.log if r.status == 503) == 2


def test_timeouts_are_retried(server, remote_cache):
    ds = loader.open_dataset(server.url("/caches/demo"), timeout=0.3, retry=FAST_RETRY)
    info = ds.files[0]
    server.slow_next(1, seconds=1.0, op="OPEN", node="datanode", path=info.path)
    assert ds.read_row_group(info, 0).num_rows == info.row_groups[0].num_rows
    assert server.count(op="OPEN", node="datanode", path=info.path) >= 2  # the slow one, then the retry


def test_secret_in_the_url_is_refused_without_echoing_it(server):
    with pytest.raises(loader.ConfigError) as err:
        loader.open_dataset(f"webhdfs://alice:{TOKEN}@127.0.0.1:{server.port}/caches/demo")
    assert TOKEN not in str(err.value) and "token=" in str(err.value)


def test_permanent_fault_names_the_url_and_cause(server, remote_cache):
    ds = loader.open_dataset(server.url("/caches/demo"), retry=RetryPolicy(attempts=3, base_delay=0.01))
    info = ds.files[0]
    server.fail_always(status=503, op="OPEN", path=info.path)
    with pytest.raises(loader.RemoteError) as err:
        ds.read_row_group(info, 0)
    text = str(err.value)
    assert ds.display(info) in text and "503" in text and "3 attempts" in text
    assert isinstance(err.value, OSError)


def test_missing_dataset_is_dataset_not_found(server):
    with pytest.raises(loader.DatasetNotFoundError, match="nothing-here"):
        loader.open_dataset(server.url("/caches/nothing-here"))


def test_high_availability_skips_the_standby(server, remote_cache, remote_table):
    ds = loader.open_dataset(server.url("/caches/demo"), webhdfs_url=server.ha_urls)
    assert read_all(ds, ["id"]).column("id").equals(remote_table.column("id"))
    assert server.count(node="standby") >= 1


def test_hdfs_url_maps_through_namenode_option_env_and_config(server, remote_cache, monkeypatch, tmp_path):
    url = "hdfs://prod-ns/caches/demo"
    ds = loader.open_dataset(url, namenodes={"prod-ns": server.http_url})
    assert ds.version == remote_cache.version
    assert ds.display(ds.files[0]).startswith("hdfs://prod-ns/caches/demo/")
    monkeypatch.setenv("LARDER_WEBHDFS", f"other=http://x:1,prod-ns={server.ha_urls}")
    assert webhdfs_address(url)[0] == server.ha_urls
    monkeypatch.delenv("LARDER_WEBHDFS")
    ini = tmp_path / "hdfs.ini"
    ini.write_text(f"[prod-ns]\nurl = {server.http_url}\nuser = alice\n")
    monkeypatch.setenv("LARDER_HDFS_CONFIG", str(ini))
    assert webhdfs_address(url) == (server.http_url, {"user": "alice"})
    assert loader.open_dataset(url).version == remote_cache.version
    cli_cfg = tmp_path / "hdfscli.cfg"
    cli_cfg.write_text(f"[global]\ndefault.alias = prod\n\n[backup-ns.alias]\nurl = {server.http_url}\n")
    monkeypatch.setenv("HDFSCLI_CONFIG", str(cli_cfg))
    assert webhdfs_address("hdfs://backup-ns/x")[0] == server.http_url
    assert webhdfs_address("hdfs://unknown:8020/x")[0] == "http://unknown:9870"
    assert webhdfs_address("webhdfs://h:50070/x")[0] == "http://h:50070"
    with pytest.raises(loader.ConfigError, match="bogus"):
        lfs.resolve("webhdfs://h/x", bogus=1)
    monkeypatch.setenv("LARDER_WEBHDFS", "broken")
    with pytest.raises(loader.ConfigError, match="LARDER_WEBHDFS"):
        webhdfs_address(url)


def test_delegation_token_works_and_never_leaks(token_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    table = make_table(200)
    ds = loader.write_cache(table, token_server.url("/caches"), "secret", row_group_bytes=3_000, token=TOKEN)
    assert read_all(loader.open_dataset(token_server.url("/caches/secret"), token=TOKEN)).equals(table)
    assert all(r.params.get("delegation") == TOKEN for r in token_server.log)  # it was really sent
    cached = loader.open_dataset(token_server.url("/caches/secret"), token=TOKEN, cache_dir=tmp_path / "c")
    read_all(cached)
    leaks = [repr(ds.fs), repr(getattr(ds.fs, "handler", "")), ds.manifest.to_json(), cached.display(cached.files[0]),
             caplog.text, *(str(p) for p in (tmp_path / "c").rglob("*"))]
    for p in (tmp_path / "c").rglob("*.json"):
        leaks.append(p.read_text())
    with pytest.raises(loader.RemoteError) as wrong:
        loader.open_dataset(token_server.url("/caches/secret"), token=TOKEN[:-1] + "X")
    with pytest.raises(loader.RemoteError) as dead:  # a connection error's text holds the request URL
        loader.open_dataset("webhdfs://127.0.0.1:9/caches/secret", token=TOKEN,
                            retry=RetryPolicy(attempts=2, base_delay=0))
    for err in (wrong.value, dead.value):
        leaks.append("".join(traceback.format_exception(err)))
    assert "permission denied" in str(wrong.value)
    assert "127.0.0.1:9" in str(dead.value)
    for text in leaks:
        assert TOKEN not in text and TOKEN[:-1] not in text
    assert "delegation=***" in caplog.text or "***" in caplog.text  # the request URLs were logged, redacted


def test_pyarrow_filesystem_semantics_on_hdfs(server):
    fs, root = lfs.resolve(server.url("/sem"))
    fs.create_dir(root + "/a/b", recursive=True)
    lfs.write_bytes(fs, root + "/a/b/f", b"one")
    lfs.write_bytes(fs, root + "/a/g", b"two")
    lfs.replace_file(fs, root + "/a/g", root + "/a/b/f")  # rename2 OVERWRITE: atomic replace
    assert lfs.read_bytes(fs, root + "/a/b/f") == b"two" and not lfs.exists(fs, root + "/a/g")
    assert server.count(op="DELETE", path="/sem/a/b/f") == 0
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)))
    assert names == [root + "/a", root + "/a/b", root + "/a/b/f"]
    with pytest.raises(FileExistsError):
        fs.move(root + "/a/b", root + "/a")  # onto a non-empty directory
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream(root + "/missing").read()
    with fs.open_output_stream(root + "/pq.parquet") as out:
        pq.write_table(make_table(10), out)
    assert pq.read_table(root + "/pq.parquet", filesystem=fs).num_rows == 10
    fs.delete_dir(root)
    assert not lfs.exists(fs, root)


def test_kerberos_without_requests_kerberos_names_the_extra(server):
    pytest.importorskip("hdfs")
    try:
        import requests_kerberos  # noqa: F401

        pytest.skip("requests-kerberos is installed")
    except ImportError:
        pass
    with pytest.raises(loader.ConfigError, match=r"larder\[kerberos\]"):
        loader.open_dataset(server.url("/caches/demo"), kerberos="true")


def test_kerberos_option_takes_yes_no_spellings_and_refuses_others(server, remote_cache):
    assert loader.open_dataset(server.url("/caches/demo"), kerberos="Off").version == remote_cache.version
    with pytest.raises(loader.ConfigError, match=r"option kerberos must be one of .*got 'maybe'"):
        loader.open_dataset(server.url("/caches/demo"), kerberos="maybe")


def test_import_loader_needs_no_optional_remote_dependency():
    code = ("import sys, loader, loader.cache, loader.sync, loader.remote; "
            "bad = [m for m in ('hdfs', 'requests', 'tqdm', 'loader.webhdfs') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_file_of_a_pruned_version_says_it_is_gone(server, remote_table):
    import shutil

    ds = loader.write_cache(remote_table, server.url("/caches"), "pruned", row_group_bytes=3_000)
    opened = loader.open_dataset(server.url("/caches/pruned"), retry=FAST_RETRY)
    shutil.rmtree(server.local(f"/caches/pruned/{ds.version}"))  # another run pruned it
    with pytest.raises(loader.CorruptFileError, match="data file listed in the manifest is missing") as err:
        opened.read_row_group(opened.files[0], 0)
    assert "pruned" in str(err.value.__cause__)  # the cause says what probably happened
