"""WebHDFS bad inputs found by an audit: denied and expired access, files gone while read, concurrent
publishes, names and URLs holding '#', '?' or '%', secrets in logs, a failing clean-up and IPv6 hosts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
import types

import pyarrow.fs as pafs
import pytest
import requests

import loader
from loader import fs as lfs
from loader.webhdfs import webhdfs_address
from tests.conftest import make_table, read_all
from tests.remote.conftest import FAST_RETRY, TOKEN


def _text(error: BaseException) -> str:
    """An error with its whole chain, as a traceback prints it."""
    return "".join(traceback.format_exception(error))


# --- a denied or expired access is not a missing file --------------------------------------------------------


@pytest.mark.parametrize("status, exception", [(403, "AccessControlException"), (403, "InvalidToken"),
                                               (400, "IllegalArgumentException")])
def test_a_refused_status_is_a_remote_error_not_a_missing_path(server, remote_cache, status, exception):
    fs, path = lfs.resolve(server.url("/caches/demo"), retry=FAST_RETRY)
    assert fs.get_file_info(path + "/nothing-here").type == pafs.FileType.NotFound  # really absent: still absent
    server.fail_always(status=status, exception=exception, op="GETFILESTATUS")
    with pytest.raises(loader.RemoteError) as err:
        fs.get_file_info(path)
    assert f"GETFILESTATUS {server.url('/caches/demo')}" in str(err.value)
    assert exception in str(err.value) and not isinstance(err.value, FileNotFoundError)


def test_a_denied_data_file_is_reported_as_denied(server, remote_cache):
    ds = loader.open_dataset(server.url("/caches/demo"), retry=FAST_RETRY)
    info = ds.files[0]
    server.fail_always(status=403, exception="AccessControlException", op="GETFILESTATUS", path=info.path)
    with pytest.raises(loader.RemoteError, match="permission denied .AccessControlException") as err:
        ds.read_row_group(info, 0)
    assert ds.display(info) in str(err.value) and "pruned" not in str(err.value)


@pytest.mark.parametrize("cached", [False, True])
def test_a_token_that_expires_while_reading_is_a_permission_error(token_server, tmp_path, cached):
    name = f"expiring{int(cached)}"
    loader.write_cache(make_table(300), token_server.url("/caches"), name, row_group_bytes=3_000, token=TOKEN)
    reader = loader.make_reader(token_server.url(f"/caches/{name}"), token=TOKEN, retry=FAST_RETRY, batch_size=50,
                                cache_dir=tmp_path / "c" if cached else None)
    token_server.token = "renewed-" + TOKEN[::-1]  # the reader's token is no longer valid
    try:
        with reader, pytest.raises(loader.RemoteError, match=r"permission denied \(InvalidToken") as err:
            for _ in reader:
                pass
    finally:
        token_server.token = TOKEN
    assert f"/caches/{name}/v" in str(err.value) and ".parquet" in str(err.value)
    assert "pruned" not in str(err.value) and TOKEN not in _text(err.value)


# --- a data file gone between open_dataset and the read ------------------------------------------------------


def test_a_pruned_file_read_without_a_cache_is_a_typed_error_naming_it(server):
    ds = loader.write_cache(make_table(300), server.url("/caches"), "prunedreader", row_group_bytes=3_000)
    reader = loader.make_reader(server.url("/caches/prunedreader"), batch_size=50, retry=FAST_RETRY)
    shutil.rmtree(server.local(f"/caches/prunedreader/{ds.version}"))  # a later publish pruned it
    with reader, pytest.raises(loader.CorruptFileError, match="data file listed in the manifest is missing") as err:
        for _ in reader:
            pass
    assert server.url(f"/caches/prunedreader/{ds.version}/part-") in str(err.value)
    assert "pruned" in _text(err.value)  # the cause says what probably happened


# --- a rename never lands inside a directory that appeared meanwhile -----------------------------------------


def test_move_fails_when_its_destination_appears_after_the_check(server):
    fs, root = lfs.resolve(server.url("/mvrace"), retry=FAST_RETRY)
    lfs.write_bytes(fs, root + "/src/f", b"mine")
    server.slow_next(1, seconds=1.0, op="RENAME", path="/mvrace/src")
    outcome: list[BaseException | None] = []

    def move():
        try:
            fs.move(root + "/src", root + "/dst")
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    mover = threading.Thread(target=move)
    mover.start()
    deadline = time.monotonic() + 10
    while not server.count(op="RENAME", path="/mvrace/src") and time.monotonic() < deadline:
        time.sleep(0.01)  # the RENAME is sent, its destination checked absent before: another run takes it now
    os.makedirs(server.local("/mvrace/dst"))
    open(server.local("/mvrace/dst/theirs"), "wb").close()
    mover.join()
    assert isinstance(outcome[0], FileExistsError), outcome
    assert os.listdir(server.local("/mvrace/dst")) == ["theirs"] and os.listdir(server.local("/mvrace/src")) == ["f"]


def test_concurrent_publishes_get_distinct_versions(server):
    # A (stale, empty) version dated in the future: both runs name their version one second after it.
    os.makedirs(server.local("/race/d/v20990101T000000Z-00000000"))
    first, second = make_table(200, seed=1), make_table(300, seed=2)
    published: dict[str, loader.Dataset | BaseException] = {}

    def publish_first():
        try:
            published["first"] = loader.write_cache(first, server.url("/race"), "d", row_group_bytes=4_000,
                                                    fingerprint="0badcafe", keep_versions=10)
        except BaseException as e:
            published["first"] = e

    # Hold the first run's two renames (its manifest into place, then its staging directory to the version).
    server.slow_next(2, seconds=1.5, op="RENAME", path="/race/d/_staging-")
    runner = threading.Thread(target=publish_first)
    runner.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            r.op == "RENAME" and "/" not in r.path.split("/_staging-", 1)[-1] for r in list(server.log)):
        time.sleep(0.01)
    # The first run has named its version and sent the rename; the second publishes that very name first.
    published["second"] = loader.write_cache(second, server.url("/race"), "d", row_group_bytes=4_000,
                                             fingerprint="0badcafe", keep_versions=10)
    runner.join()
    a, b = published["first"], published["second"]
    assert isinstance(a, loader.Dataset), a
    assert a.version != b.version
    for ds, table in ((a, first), (b, second)):
        names = os.listdir(server.local(f"/race/d/{ds.version}"))
        assert not [n for n in names if n.startswith("_staging")], names  # no run's staging inside a version
        opened = loader.open_dataset(server.url(f"/race/d/{ds.version}"))
        assert opened.version == ds.version and read_all(opened).equals(table)
    assert loader.open_dataset(server.url("/race/d")).version == max(a.version, b.version)


# --- names and URLs -------------------------------------------------------------------------------------------


def test_a_manifest_naming_another_place_never_writes_outside_the_cache(server, tmp_path):
    ds = loader.write_cache(make_table(100), server.url("/caches"), "escape", row_group_bytes=3_000)
    manifest = server.local(f"/caches/escape/{ds.version}/_manifest.json")
    with open(manifest) as f:
        doc = json.load(f)
    with open(manifest, "w") as f:
        json.dump({**doc, "dataset": "../outside", "version": "."}, f)
    cache = tmp_path / "cache"
    with pytest.raises(loader.ManifestError, match="key 'dataset'") as err:
        loader.make_reader(server.url("/caches/escape"), cache_dir=cache, batch_size=50)
    assert f"/caches/escape/{ds.version}/_manifest.json" in str(err.value)
    assert set(os.listdir(tmp_path)) <= {"cache"}  # nothing beside the cache directory


@pytest.mark.parametrize("suffix", ["#1", "?delegation=" + TOKEN, "?", "#"])
def test_a_query_or_fragment_in_a_webhdfs_url_is_refused(server, suffix):
    with pytest.raises(loader.ConfigError, match="token=") as err:
        loader.write_cache(make_table(20), server.url("/caches/team") + suffix, "demo", row_group_bytes=3_000)
    assert "'?' or '#'" in str(err.value) and TOKEN not in _text(err.value)
    assert not os.path.exists(server.local("/caches/team"))  # nothing published under the cut-off path
    for url in (server.url("/caches/demo") + suffix, f"hdfs://ns/caches/demo{suffix}"):
        with pytest.raises(loader.ConfigError) as err:
            loader.open_dataset(url, token=TOKEN, namenodes={"ns": server.http_url})
        assert TOKEN not in _text(err.value)


@pytest.mark.parametrize("name", ["team#1", "what?", "a\\b", "nul\x00"])
def test_a_dataset_name_no_url_can_name_is_refused(server, name):
    with pytest.raises(loader.PublishError, match="plain directory name"):
        loader.write_cache(make_table(20), server.url("/caches"), name, row_group_bytes=3_000)
    cut = name.split("#")[0].split("?")[0]  # where a URL would have cut it off
    assert not {name, cut} & set(os.listdir(server.local("/caches")))


def test_names_holding_percent_signs_are_literal_hdfs_names(server):
    fs, root = lfs.resolve(server.url("/pct"))
    lfs.write_bytes(fs, root + "/a%41", b"one")  # an HDFS file literally named 'a%41'
    assert [i.base_name for i in fs.get_file_info(pafs.FileSelector(root))] == ["a%41"]
    assert not lfs.exists(fs, root + "/aA") and lfs.read_bytes(fs, root + "/a%41") == b"one"
    assert os.listdir(server.local("/pct")) == ["a%41"]
    table = make_table(50)
    ds = loader.write_cache(table, server.url("/pct"), "100%", row_group_bytes=3_000)
    assert os.path.isdir(os.path.join(server.root, "pct", "100%", ds.version))
    for url in (ds.url, server.url("/pct/100%")):
        assert read_all(loader.open_dataset(url)).equals(table)


def test_server_decodes_a_request_path_once(server):
    base = f"{server.http_url}/webhdfs/v1/once"
    first = requests.put(f"{base}/a%2541", params={"op": "CREATE"}, allow_redirects=False)
    assert requests.put(first.headers["Location"], data=b"x").status_code == 201
    assert os.listdir(server.local("/once")) == ["a%41"]
    names = requests.get(base, params={"op": "LISTSTATUS"}).json()["FileStatuses"]["FileStatus"]
    assert [s["pathSuffix"] for s in names] == ["a%41"]
    assert requests.get(f"{base}/aA", params={"op": "GETFILESTATUS"}).status_code == 404


def test_rename_options_none_refuses_an_existing_destination(server):
    fs, root = lfs.resolve(server.url("/ren"))
    lfs.write_bytes(fs, root + "/a", b"a")
    lfs.write_bytes(fs, root + "/b/c", b"c")
    url = f"{server.http_url}/webhdfs/v1/ren/a"
    refused = requests.put(url, params={"op": "RENAME", "destination": "/ren/b", "renameoptions": "NONE"})
    assert refused.status_code == 403
    assert refused.json()["RemoteException"]["exception"] == "FileAlreadyExistsException"
    assert sorted(os.listdir(server.local("/ren"))) == ["a", "b"] and os.listdir(server.local("/ren/b")) == ["c"]
    moved = requests.put(url, params={"op": "RENAME", "destination": "/ren/d", "renameoptions": "NONE"})
    assert moved.status_code == 200 and sorted(os.listdir(server.local("/ren"))) == ["b", "d"]


# --- secrets and failures of clean-up -------------------------------------------------------------------------


DN_TOKEN = "HAAEaGRmcwRoZGZzAIoBjWZ3ZXJrZXktc2VjcmV0"


@pytest.fixture
def kerberos_stub(monkeypatch):
    """``requests_kerberos`` as an auth that adds nothing (a real one adds SPNEGO headers the test server does
    not check); HdfsCLI's Kerberos module is imported afresh with it and forgotten afterwards."""
    stub = types.ModuleType("requests_kerberos")
    stub.HTTPKerberosAuth = type("HTTPKerberosAuth", (requests.auth.AuthBase,), {
        "__init__": lambda self, **kwargs: None, "__call__": lambda self, r: r})
    stub.REQUIRED, stub.OPTIONAL, stub.DISABLED = 1, 2, 3
    monkeypatch.setitem(sys.modules, "requests_kerberos", stub)
    monkeypatch.delitem(sys.modules, "hdfs.ext.kerberos", raising=False)
    yield
    sys.modules.pop("hdfs.ext.kerberos", None)


def test_kerberos_data_node_token_is_not_logged(server, remote_cache, remote_table, kerberos_stub, caplog):
    caplog.set_level(logging.DEBUG)
    server.redirect_token = DN_TOKEN  # a secure name node mints a token for the data node into its redirects
    try:
        ds = loader.open_dataset(server.url("/caches/demo"), kerberos=True, retry=FAST_RETRY)
        assert read_all(ds).equals(remote_table)
    finally:
        server.redirect_token = None
    assert any(r.node == "datanode" and r.params.get("delegation") == DN_TOKEN for r in server.log)
    assert "GET /webhdfs/v1/caches/demo" in caplog.text  # urllib3 logged the data-node requests...
    assert DN_TOKEN not in caplog.text  # ...without the token


def test_a_failed_publish_whose_clean_up_fails_too_still_says_the_old_version_stays_live(server):
    old = loader.write_cache(make_table(100, seed=1), server.url("/caches"), "abortfails", row_group_bytes=3_000)
    server.fail_always(status=503, op="RENAME", path="/caches/abortfails/_staging")  # the publish fails...
    server.fail_always(status=503, op="DELETE", path="/caches/abortfails/_staging")  # ...and so does its clean-up
    with pytest.raises(loader.PublishError, match="previous version stays live") as err:
        loader.write_cache(make_table(200, seed=2), server.url("/caches"), "abortfails", row_group_bytes=3_000,
                           retry=FAST_RETRY)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "clean" in notes and "DELETE" in notes and "_staging-" in notes
    server.clear_faults()
    assert loader.open_dataset(server.url("/caches/abortfails")).version == old.version


# --- IPv6 literal hosts ---------------------------------------------------------------------------------------


def test_ipv6_hosts_keep_their_brackets(server, remote_cache, remote_table):
    assert webhdfs_address("webhdfs://[::1]:50070/caches/demo") == ("http://[::1]:50070", {})
    assert webhdfs_address("swebhdfs://[fd00::5]/x") == ("https://[fd00::5]:9870", {})
    assert webhdfs_address("hdfs://[fd00::5]:8020/caches/demo") == ("http://[fd00::5]:9870", {})
    # The address is given (the server listens on 127.0.0.1 only); the URL's IPv6 authority is kept for display.
    ds = loader.open_dataset("webhdfs://[::1]:50070/caches/demo", webhdfs_url=server.http_url)
    assert ds.display(ds.files[0]).startswith("webhdfs://[::1]:50070/caches/demo/v")
    assert read_all(ds, ["id"]).column("id").equals(remote_table.column("id"))
