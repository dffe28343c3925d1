"""The test server speaks the WebHDFS REST protocol (checked with plain HTTP, no HdfsCLI)."""

from __future__ import annotations

import requests

from tests.remote.conftest import TOKEN

V1 = "/webhdfs/v1"


def _put_file(server, path: str, data: bytes) -> requests.Response:
    first = requests.put(f"{server.http_url}{V1}{path}", params={"op": "CREATE", "overwrite": "true"},
                         allow_redirects=False)
    assert first.status_code == 307 and first.content == b""
    location = first.headers["Location"]
    assert f":{server.datanode.server_address[1]}/" in location  # the data node, not the name node
    return requests.put(location, data=data)


def test_two_step_create_then_ranged_open_through_datanode(server):
    second = _put_file(server, "/proto/a.bin", bytes(range(256)) * 4)
    assert second.status_code == 201
    redirect = requests.get(f"{server.http_url}{V1}/proto/a.bin", params={"op": "OPEN", "offset": 10, "length": 5},
                            allow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["Location"].startswith(f"http://127.0.0.1:{server.datanode.server_address[1]}/")
    body = requests.get(redirect.headers["Location"]).content
    assert body == bytes(range(10, 15))
    whole = requests.get(f"{server.http_url}{V1}/proto/a.bin", params={"op": "OPEN", "offset": 1000}).content
    assert whole == (bytes(range(256)) * 4)[1000:]


def test_status_listing_and_block_size(server):
    _put_file(server, "/proto/list/x", b"12345")
    requests.put(f"{server.http_url}{V1}/proto/list/sub", params={"op": "MKDIRS"})
    st = requests.get(f"{server.http_url}{V1}/proto/list/x", params={"op": "GETFILESTATUS"}).json()["FileStatus"]
    assert st["type"] == "FILE" and st["length"] == 5 and st["blockSize"] == server.block_size
    listing = requests.get(f"{server.http_url}{V1}/proto/list", params={"op": "LISTSTATUS"}).json()
    names = {s["pathSuffix"]: s["type"] for s in listing["FileStatuses"]["FileStatus"]}
    assert names == {"sub": "DIRECTORY", "x": "FILE"}


def test_errors_are_json_remote_exceptions(server):
    missing = requests.get(f"{server.http_url}{V1}/proto/nope", params={"op": "GETFILESTATUS"})
    assert missing.status_code == 404
    assert missing.json()["RemoteException"]["exception"] == "FileNotFoundException"
    bad_op = requests.get(f"{server.http_url}{V1}/proto", params={"op": "FROB"})
    assert bad_op.status_code == 400
    assert bad_op.json()["RemoteException"]["exception"] == "IllegalArgumentException"
    _put_file(server, "/proto/exists", b"1")
    again = requests.put(f"{server.http_url}{V1}/proto/exists", params={"op": "CREATE"})  # overwrite=false
    assert again.status_code == 403
    assert again.json()["RemoteException"]["exception"] == "FileAlreadyExistsException"


def test_rename_is_boolean_and_refuses_existing_file_unless_overwrite(server):
    _put_file(server, "/proto/r/a", b"a")
    _put_file(server, "/proto/r/b", b"b")
    url = f"{server.http_url}{V1}/proto/r/a"
    refused = requests.put(url, params={"op": "RENAME", "destination": "/proto/r/b"}).json()
    assert refused == {"boolean": False}
    replaced = requests.put(url, params={"op": "RENAME", "destination": "/proto/r/b", "renameoptions": "OVERWRITE"})
    assert replaced.status_code == 200
    body = requests.get(f"{server.http_url}{V1}/proto/r/b", params={"op": "OPEN"}).content
    assert body == b"a"
    deleted = requests.delete(f"{server.http_url}{V1}/proto/r", params={"op": "DELETE", "recursive": "true"}).json()
    assert deleted == {"boolean": True}


def test_standby_namenode_answers_standby_exception(server):
    standby = server.ha_urls.split(";")[0]
    answer = requests.get(f"{standby}{V1}/", params={"op": "GETFILESTATUS"})
    assert answer.status_code == 403
    assert answer.json()["RemoteException"]["exception"] == "StandbyException"


def test_token_required_and_checked(token_server):
    url = f"{token_server.http_url}{V1}/"
    assert requests.get(url, params={"op": "GETFILESTATUS"}).status_code == 401
    wrong = requests.get(url, params={"op": "GETFILESTATUS", "delegation": "wrong"})
    assert wrong.status_code == 403 and TOKEN not in wrong.text
    assert requests.get(url, params={"op": "GETFILESTATUS", "delegation": TOKEN}).status_code == 200


def test_fault_switches_and_log(server):
    _put_file(server, "/proto/f", b"x" * 1000)
    server.clear_log()
    server.fail_next(2, status=503, op="GETFILESTATUS")
    url = f"{server.http_url}{V1}/proto/f"
    codes = [requests.get(url, params={"op": "GETFILESTATUS"}).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    server.drop_next(1, after_bytes=100)
    resp = requests.get(url, params={"op": "OPEN"}, stream=True)
    try:
        got = resp.raw.read(1000)
        dropped = len(got) < 1000
    except Exception:
        dropped = True
    assert dropped
    assert server.count(op="GETFILESTATUS") == 3
    assert server.count(op="OPEN", node="datanode") == 1


def test_failover_answers_and_lost_replies(server):
    _put_file(server, "/proto/g", b"y" * 10)
    url = f"{server.http_url}{V1}/proto/g"
    server.fail_next(1, status=403, op="GETFILESTATUS", exception="StandbyException")
    first = requests.get(url, params={"op": "GETFILESTATUS"})
    assert first.status_code == 403 and first.json()["RemoteException"]["exception"] == "StandbyException"
    assert first.json()["RemoteException"]["javaClassName"] == "org.apache.hadoop.ipc.StandbyException"
    server.lose_reply_next(1, op="RENAME", status=504)  # applied, then a gateway's timeout answer
    lost = requests.put(url, params={"op": "RENAME", "destination": "/proto/h"})
    assert lost.status_code == 504
    assert server.status("/proto/h")["length"] == 10  # the rename did happen
    server.lose_reply_next(1, op="RENAME", status=0)  # applied, then the connection closes unanswered
    try:
        requests.put(f"{server.http_url}{V1}/proto/h", params={"op": "RENAME", "destination": "/proto/g"})
        answered = True
    except requests.exceptions.ConnectionError:
        answered = False
    assert not answered and server.status("/proto/g")["length"] == 10
