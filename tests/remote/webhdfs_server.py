"""A WebHDFS server for tests, written to the Hadoop WebHDFS REST API, backed by a local directory.

It speaks the protocol a real cluster speaks (``/webhdfs/v1/<path>?op=...``): a name node answers metadata
operations itself and answers ``OPEN``, ``CREATE`` and ``APPEND`` with a ``307`` redirect to a separate
data-node port, which streams or receives the bytes (two-step ``CREATE``; ``OPEN`` with ``offset`` and
``length``). Errors are JSON ``RemoteException`` bodies with Hadoop's status codes; ``FileStatus`` carries a
``blockSize``. Supported ops: OPEN, GETFILESTATUS, LISTSTATUS, LISTSTATUS_BATCH, GETCONTENTSUMMARY,
GETFILECHECKSUM, GETFILEBLOCKLOCATIONS, GETHOMEDIRECTORY, GETSERVERDEFAULTS, CREATE, APPEND, MKDIRS, RENAME (with
``renameoptions=NONE`` or ``OVERWRITE``, Hadoop's rename2: it fails on an existing destination, or replaces a
file or an empty directory), DELETE, SETPERMISSION, SETOWNER, SETTIMES, SETREPLICATION.

Switches for tests and benchmarks: ``latency`` (seconds before every answer), ``bandwidth`` (bytes/s for
data-node bodies, shared by all connections like one network link), :meth:`WebHdfs.drop_next` (close the
connection after N body bytes), :meth:`WebHdfs.slow_next` (answer late), :meth:`WebHdfs.fail_next` /
:meth:`WebHdfs.fail_always` (error answers, any Hadoop exception: ``StandbyException`` and ``RetriableException``
come with HTTP 403 as a name node in standby or safe mode sends them), :meth:`WebHdfs.lose_reply_next` (the
operation is applied, its answer lost: a gateway's 504, a reply after the client's timeout, or a dropped
connection) and a request log (:attr:`WebHdfs.log`, :meth:`WebHdfs.count`).
``token`` makes every request need ``delegation=<token>``; ``redirect_token`` is the token a secure name node
mints for the data node and puts in its redirects (as Hadoop's ``NamenodeWebHdfsMethods.redirectURI`` does when
security is on), which the data node then requires; extra name nodes in standby answer ``StandbyException`` (HA).

Request paths are percent-decoded once, as a name node decodes them: HDFS names are literal, so a file created
as ``a%2541`` in the URL is named ``a%41``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from tests.remote.webhdfs_faults import JAVA_CLASSES, FaultSwitches, Link, Record, RemoteException, Rule

PREFIX = "/webhdfs/v1"


class _Server(ThreadingHTTPServer):
    """Keeps the errors of its request threads: a client that hangs up (a timed-out or cancelled read, as a
    real data node sees) is expected and ignored; anything else is recorded in ``errors`` for the tests
    (and printed), instead of surfacing as stray output between tests."""

    daemon_threads = True

    def __init__(self, *args, errors: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.errors = errors

    def handle_error(self, request, client_address) -> None:
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        self.errors.append(error)
        super().handle_error(request, client_address)


@dataclass
class WebHdfs(FaultSwitches):
    """The server: a store directory, one data node, one active name node and optional standbys.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    root: str
    block_size: int = 128 << 20
    token: str | None = None
    redirect_token: str | None = None
    standby_namenodes: int = 0
    latency: float = 0.0
    chunk: int = 64 << 10
    # False omits Content-Type from JSON answers: Spark's shaded Hadoop client cannot parse a media type
    # (its shaded Jersey RuntimeDelegateImpl is missing), and skips the check when the header is absent.
    content_type: bool = True
    log: list[Record] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)  # unexpected errors in request threads
    _rules: list[Rule] = field(default_factory=list)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _link: Link = field(default_factory=Link)

    # ----------------------------------------------------------------- life cycle and addresses
    def start(self) -> WebHdfs:
        os.makedirs(self.root, exist_ok=True)
        self.datanode = self._serve("datanode")
        self.namenode = self._serve("namenode")
        self.standbys = [self._serve("standby") for _ in range(self.standby_namenodes)]
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> WebHdfs:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, role: str) -> ThreadingHTTPServer:
        handler = type(f"{role.title()}Handler", (_Handler,), {"server_state": self, "role": role})
        server = _Server(("127.0.0.1", 0), handler, errors=self.errors)
        threading.Thread(target=server.serve_forever, args=(0.05,), name=f"webhdfs-{role}", daemon=True).start()
        self._servers.append(server)
        return server

    @staticmethod
    def _address(server: ThreadingHTTPServer) -> str:
        return f"http://127.0.0.1:{server.server_address[1]}"

    @property
    def port(self) -> int:
        """The active name node's port."""
        return self.namenode.server_address[1]

    @property
    def http_url(self) -> str:
        """The active name node's WebHDFS base address."""
        return self._address(self.namenode)

    @property
    def ha_urls(self) -> str:
        """Standby name nodes first, then the active one, ``;``-separated (as HdfsCLI takes them)."""
        return ";".join([self._address(s) for s in self.standbys] + [self.http_url])

    def url(self, path: str = "/") -> str:
        """A ``webhdfs://`` URL of ``path`` on this server."""
        return f"webhdfs://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def local(self, path: str) -> str:
        """The backing file of an HDFS path (decoded already: its ``%`` signs are literal)."""
        clean = os.path.normpath("/" + path.lstrip("/"))
        return os.path.join(self.root, clean.lstrip("/"))

    # ----------------------------------------------------------------- switches
    @property
    def bandwidth(self) -> float | None:
        return self._link.rate

    @bandwidth.setter
    def bandwidth(self, rate: float | None) -> None:
        self._link.rate = rate

    # ----------------------------------------------------------------- file system model
    def status(self, path: str, suffix: str = "") -> dict:
        local = self.local(path)
        try:
            st = os.stat(local)
        except (FileNotFoundError, NotADirectoryError):  # a path under a file does not exist either
            raise RemoteException(404, "FileNotFoundException", f"File does not exist: {path}") from None
        is_dir = os.path.isdir(local)
        return {
            "accessTime": 0 if is_dir else int(st.st_atime * 1000),
            "blockSize": 0 if is_dir else self.block_size,
            "childrenNum": len(os.listdir(local)) if is_dir else 0,
            "fileId": st.st_ino,
            "group": "supergroup",
            "length": 0 if is_dir else st.st_size,
            "modificationTime": int(st.st_mtime * 1000),
            "owner": "larder",
            "pathSuffix": suffix,
            "permission": "755" if is_dir else "644",
            "replication": 0 if is_dir else 3,
            "storagePolicy": 0,
            "type": "DIRECTORY" if is_dir else "FILE",
        }

    def listing(self, path: str) -> list[dict]:
        local = self.local(path)
        if not os.path.isdir(local):
            return [self.status(path)]
        return [self.status(path.rstrip("/") + "/" + name, name) for name in sorted(os.listdir(local))]

    def rename(self, src: str, dst: str, overwrite: bool | None) -> bool | None:
        """HDFS rename (``overwrite`` None) returns a boolean; rename2 (OVERWRITE or NONE) raises instead."""
        s, d = self.local(src), self.local(dst)
        if overwrite is None:  # FileSystem.rename: false on any refusal; into an existing directory
            if not os.path.exists(s) or not os.path.isdir(os.path.dirname(d)):
                return False
            if os.path.isdir(d):
                d = os.path.join(d, os.path.basename(s))
            if os.path.exists(d) or (d + "/").startswith(s + "/"):
                return False
            os.rename(s, d)
            return True
        if not os.path.exists(s):
            raise RemoteException(404, "FileNotFoundException", f"rename source {src} is not found.")
        if not os.path.isdir(os.path.dirname(d)):
            raise RemoteException(404, "FileNotFoundException", f"rename destination parent {dst} not found.")
        if os.path.exists(d):
            if not overwrite:
                raise RemoteException(403, "FileAlreadyExistsException", f"rename destination {dst} already exists.")
            if os.path.isdir(d) != os.path.isdir(s):
                raise RemoteException(403, "IOException", f"Source {src} and destination {dst} must both be "
                                      "directories or files")
            if os.path.isdir(d) and os.listdir(d):
                raise RemoteException(403, "IOException", f"rename destination directory is not empty: {dst}")
        os.replace(s, d)  # atomic, like the name node's rename2
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server_state: WebHdfs
    role: str

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ----------------------------------------------------------------- plumbing
    def _dispatch(self, method: str) -> None:
        st = self.server_state
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        op = params.get("op", "").upper()
        path = unquote(parts.path[len(PREFIX):]) or "/" if parts.path.startswith(PREFIX) else parts.path
        record = Record(self.role, method, op, path, params)
        with st._lock:
            st.log.append(record)
        try:
            if st.latency:
                time.sleep(st.latency)
            if not parts.path.startswith(PREFIX):
                raise RemoteException(404, "IllegalArgumentException", f"Invalid path {parts.path}")
            self._authorize(params)
            if self.role == "standby":
                raise RemoteException(403, "StandbyException",
                                      "Operation category READ is not supported in state standby")
            slow = st._take_rule("slow", self.role, op, path)
            if slow is not None:
                time.sleep(slow.seconds)
            rule = st._take_rule("error", self.role, op, path)
            if rule is not None:
                raise RemoteException(rule.status, rule.exception, f"injected fault {rule.status} on {op}")
            lost = st._take_rule("lose", self.role, op, path)
            if lost is not None:
                return self._lose_reply(method, op, path, params, record, lost)
            if self.role == "datanode":
                self._datanode(method, op, path, params, record)
            else:
                self._namenode(method, op, path, params, record)
        except RemoteException as e:
            self._drain()
            body = {"RemoteException": {"exception": e.exception, "javaClassName": JAVA_CLASSES.get(e.exception, ""),
                                        "message": e.message}}
            self._json(e.status, body, record)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _lose_reply(self, method: str, op: str, path: str, params: dict, record: Record, rule: Rule) -> None:
        """Apply the operation with its answer going nowhere, then answer as ``rule`` says (or not at all)."""
        real, self.wfile = self.wfile, io.BytesIO()
        try:
            if self.role == "datanode":
                self._datanode(method, op, path, params, record)
            else:
                self._namenode(method, op, path, params, record)
        except RemoteException:
            pass  # the operation failed; its answer is lost all the same
        finally:
            self.wfile = real
        if rule.seconds:
            time.sleep(rule.seconds)
        if rule.status:
            raise RemoteException(rule.status, "IOException", f"injected: the answer to {op} was lost")
        self.close_connection = True  # no answer at all: the client sees the connection close
        record.status = 0

    def _authorize(self, params: dict) -> None:
        st = self.server_state
        token = st.redirect_token if self.role == "datanode" and st.redirect_token else st.token
        if token is None:
            return
        given = params.get("delegation")
        if given is None:
            raise RemoteException(401, "SecurityException", "Authentication required")
        if given != token:
            raise RemoteException(403, "InvalidToken", "token is expired or invalid")

    def _drain(self) -> None:
        """Consume an unread request body so a kept-alive connection stays in sync."""
        if self.command in ("PUT", "POST") and not getattr(self, "_body_read", False):
            try:
                self._read_body()
            except (OSError, ValueError):
                self.close_connection = True

    def _read_body(self) -> bytes:
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, record: Record, ctype: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        if self.server_state.content_type:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        record.status = status

    def _json(self, status: int, doc, record: Record, headers: dict | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), record, headers=headers)

    def _redirect(self, method: str, op: str, path: str, params: dict, record: Record) -> None:
        st = self.server_state
        query = {k: v for k, v in params.items() if k not in ("noredirect",)}
        query["namenoderpcaddress"] = f"127.0.0.1:{st.port}"
        if st.redirect_token:
            query["delegation"] = st.redirect_token
        location = f"{st._address(st.datanode)}{PREFIX}{quote(path)}?{urlencode(query)}"
        self._drain()
        if params.get("noredirect", "false").lower() == "true":
            self._json(200, {"Location": location}, record)
        else:
            self._send(307, b"", record, headers={"Location": location})

    # ----------------------------------------------------------------- name node
    def _namenode(self, method: str, op: str, path: str, params: dict, record: Record) -> None:
        st = self.server_state
        if method == "GET" and op == "OPEN":
            if st.status(path)["type"] != "FILE":
                raise RemoteException(404, "FileNotFoundException", f"Path is not a file: {path}")
            return self._redirect(method, op, path, params, record)
        if (method == "PUT" and op == "CREATE") or (method == "POST" and op == "APPEND"):
            return self._redirect(method, op, path, params, record)
        if method == "GET" and op == "GETFILESTATUS":
            return self._json(200, {"FileStatus": st.status(path)}, record)
        if method == "GET" and op == "LISTSTATUS":
            return self._json(200, {"FileStatuses": {"FileStatus": st.listing(path)}}, record)
        if method == "GET" and op == "LISTSTATUS_BATCH":
            after = params.get("startafter", "")
            items = [s for s in st.listing(path) if s["pathSuffix"] > after]
            doc = {"DirectoryListing": {"partialListing": {"FileStatuses": {"FileStatus": items}},
                                        "remainingEntries": 0}}
            return self._json(200, doc, record)
        if method == "GET" and op == "GETCONTENTSUMMARY":
            return self._json(200, {"ContentSummary": self._summary(path)}, record)
        if method == "GET" and op == "GETFILECHECKSUM":
            with open(st.local(path), "rb") as f:
                digest = hashlib.md5(f.read()).hexdigest()
            doc = {"FileChecksum": {"algorithm": "MD5-of-0MD5-of-512CRC32C", "bytes": digest, "length": 16}}
            return self._json(200, doc, record)
        if method == "GET" and op == "GETFILEBLOCKLOCATIONS":
            return self._json(200, {"BlockLocations": {"BlockLocation": self._blocks(path, params)}}, record)
        if method == "GET" and op == "GETHOMEDIRECTORY":
            return self._json(200, {"Path": f"/user/{params.get('user.name', 'larder')}"}, record)
        if method == "GET" and op == "GETSERVERDEFAULTS":
            doc = {"FsServerDefaults": {"blockSize": st.block_size, "bytesPerChecksum": 512, "writePacketSize": 65536,
                                        "replication": 3, "fileBufferSize": 4096, "encryptDataTransfer": False,
                                        "trashInterval": 0, "checksumType": "CRC32C", "keyProviderUri": "",
                                        "defaultStoragePolicyId": 7}}
            return self._json(200, doc, record)
        if method == "PUT" and op == "MKDIRS":
            local = st.local(path)
            if os.path.isfile(local):
                raise RemoteException(403, "FileAlreadyExistsException", f"Path is not a directory: {path}")
            os.makedirs(local, exist_ok=True)
            return self._json(200, {"boolean": True}, record)
        if method == "PUT" and op == "RENAME":
            dst = params.get("destination")
            if not dst or not dst.startswith("/"):
                raise RemoteException(400, "IllegalArgumentException", f"Invalid value for destination: {dst}")
            options = params.get("renameoptions")
            if not options:  # Hadoop's default, an empty option set: FileSystem.rename
                return self._json(200, {"boolean": st.rename(path, dst, None)}, record)
            st.rename(path, dst, "OVERWRITE" in options.upper())
            return self._send(200, b"", record)
        if method == "DELETE" and op == "DELETE":
            return self._json(200, {"boolean": self._delete(path, params)}, record)
        if method == "PUT" and op in ("SETPERMISSION", "SETOWNER", "SETTIMES"):
            st.status(path)
            return self._send(200, b"", record)
        if method == "PUT" and op == "SETREPLICATION":
            return self._json(200, {"boolean": st.status(path)["type"] == "FILE"}, record)
        raise RemoteException(400, "IllegalArgumentException", f"Invalid value for webhdfs parameter \"op\": {op}")

    def _blocks(self, path: str, params: dict) -> list[dict]:
        st = self.server_state
        length = st.status(path)["length"]
        start = int(params.get("offset", 0))
        end = min(length, start + int(params.get("length", length) or length))
        dn = f"127.0.0.1:{st.datanode.server_address[1]}"
        out = []
        for offset in range(start - start % st.block_size, end, st.block_size):
            out.append({"cachedHosts": [], "corrupt": False, "hosts": ["127.0.0.1"], "names": [dn],
                        "offset": offset, "length": min(st.block_size, length - offset), "storageTypes": ["DISK"],
                        "topologyPaths": [f"/default-rack/{dn}"]})
        return out

    def _summary(self, path: str) -> dict:
        local = self.server_state.local(path)
        self.server_state.status(path)
        dirs, files, length = 0, 0, 0
        for dirpath, _subdirs, fnames in os.walk(local):
            dirs += 1
            files += len(fnames)
            length += sum(os.path.getsize(os.path.join(dirpath, n)) for n in fnames)
        return {"directoryCount": dirs, "fileCount": files, "length": length, "quota": -1,
                "spaceConsumed": length * 3, "spaceQuota": -1}

    def _delete(self, path: str, params: dict) -> bool:
        local = self.server_state.local(path)
        if os.path.normpath(local) == os.path.normpath(self.server_state.root):
            raise RemoteException(403, "IOException", "Cannot delete root")
        if not os.path.exists(local):
            return False
        try:  # another DELETE may remove it meanwhile: a name node answers false for a path already gone
            if os.path.isdir(local):
                if os.listdir(local) and params.get("recursive", "false").lower() != "true":
                    raise RemoteException(403, "PathIsNotEmptyDirectoryException", f"{path} is non empty")
                shutil.rmtree(local)
            else:
                os.remove(local)
        except FileNotFoundError:
            return False
        return True

    # ----------------------------------------------------------------- data node
    def _datanode(self, method: str, op: str, path: str, params: dict, record: Record) -> None:
        st = self.server_state
        local = st.local(path)
        if method == "GET" and op == "OPEN":
            return self._open(local, path, params, record)
        if method == "PUT" and op == "CREATE":
            if os.path.isdir(local):
                raise RemoteException(403, "FileAlreadyExistsException", f"{path} is a directory")
            if os.path.exists(local) and params.get("overwrite", "false").lower() != "true":
                raise RemoteException(403, "FileAlreadyExistsException", f"{path} for client already exists")
            data = self._read_body()
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = f"{local}.{uuid.uuid4().hex}.dn-tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, local)
            record.body_bytes = len(data)
            return self._send(201, b"", record, headers={"Location": f"hdfs://127.0.0.1:{st.port}{quote(path)}"})
        if method == "POST" and op == "APPEND":
            if not os.path.isfile(local):
                raise RemoteException(404, "FileNotFoundException", f"File does not exist: {path}")
            data = self._read_body()
            with open(local, "ab") as f:
                f.write(data)
            record.body_bytes = len(data)
            return self._send(200, b"", record)
        raise RemoteException(400, "IllegalArgumentException", f"op {op} is not a data-node operation")

    def _open(self, local: str, path: str, params: dict, record: Record) -> None:
        st = self.server_state
        if not os.path.isfile(local):
            raise RemoteException(404, "FileNotFoundException", f"File does not exist: {path}")
        size = os.path.getsize(local)
        try:
            offset = int(params.get("offset", 0))
            length = params.get("length")
            length = None if length in (None, "", "null") else int(length)
        except ValueError as e:
            raise RemoteException(400, "IllegalArgumentException", f"Invalid offset or length: {e}") from e
        if offset < 0 or (length is not None and length < 0):
            raise RemoteException(400, "IllegalArgumentException", "offset and length must be >= 0")
        if offset > size:
            raise RemoteException(403, "IOException", f"Offset={offset} out of the range [0, {size}); path={path}")
        count = size - offset if length is None else min(length, size - offset)
        drop = st._take_rule("drop", self.role, "OPEN", path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.end_headers()
        record.status = 200
        limit = count if drop is None else min(count, drop.after_bytes)
        with open(local, "rb") as f:
            f.seek(offset)
            sent = 0
            while sent < limit:
                piece = f.read(min(st.chunk, limit - sent))
                if not piece:
                    break
                st._link.wait(len(piece))
                record.body_bytes += len(piece)  # before the write: the client may look as soon as it has them
                self.wfile.write(piece)
                sent += len(piece)
        if drop is not None:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
