"""``webhdfs://`` and ``hdfs://`` as a :class:`pyarrow.fs.FileSystem`, spoken through WebHDFS with HdfsCLI.

Importing this module registers the schemes with :func:`loader.fs.register_scheme`; :func:`loader.fs.resolve`
imports it on first use, so ``import loader`` never needs the optional ``hdfs`` package.

Where an ``hdfs://`` URL goes (first match wins; see :func:`webhdfs_address`):

1. the ``webhdfs_url=`` option (``"http://nn1:9870;http://nn2:9870"`` — ``;`` separates HA name nodes);
2. the ``namenodes=`` option, a mapping of name service (the URL's host) to such an address;
3. the environment variable ``LARDER_WEBHDFS="ns1=http://nn1:9870;http://nn2:9870,ns2=http://other:9870"``;
4. the config file ``$LARDER_HDFS_CONFIG`` or ``~/.config/larder/hdfs.ini``: a section per name service with
   ``url = http://nn1:9870;http://nn2:9870`` and optionally ``user =`` and ``token_file =``;
5. HdfsCLI's own config (``$HDFSCLI_CONFIG`` or ``~/.hdfscli.cfg``): section ``[<ns>.alias]`` with ``url``/``user``;
6. otherwise ``http://<host>:9870`` (Hadoop 3's default name-node HTTP port; an ``hdfs://`` port is the RPC
   port and is not used).

``webhdfs://host:port/path`` goes to ``http://host:port`` (``swebhdfs://`` to ``https://``), port 9870 by default.

Authentication: ``user=`` (default ``$HADOOP_USER_NAME`` or the login name) for simple auth; ``token=`` (or
``$LARDER_HDFS_TOKEN``, or ``token_file``) for a delegation token; ``kerberos=True`` uses HdfsCLI's
``KerberosClient`` (needs ``requests-kerberos``: ``pip install 'larder[kerberos]'``). The token never appears
in ``repr``, error messages, log records or display URLs: it is redacted everywhere it could leak.
"""

from __future__ import annotations

import configparser
import getpass
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import requests
from hdfs import HdfsError, InsecureClient, TokenClient

from . import fs as lfs
from .errors import ConfigError, RemoteError
from .remote import RedactingFilter, Redactor, RetryPolicy, call_with_retries, redacted_cause
from .webhdfs_streams import _RemoteFile, _Upload

DEFAULT_HTTP_PORT = 9870
_READ_CHUNK = 1 << 20


class TransientHTTPError(requests.exceptions.ConnectionError):
    """A 5xx answer: HdfsCLI fails over to the next name node and :func:`call_with_retries` retries it."""


@dataclass(frozen=True)
class WebHdfsConfig:
    """Where and as whom to speak WebHDFS. ``token`` is excluded from ``repr``."""

    urls: str
    scheme: str = "webhdfs"
    authority: str = ""
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    kerberos: bool = False
    timeout: float = 60.0
    retry: RetryPolicy = RetryPolicy()


def _parse_env_map(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ConfigError(f"LARDER_WEBHDFS: entry {item.split('=')[0]!r} must look like name=http://host:port")
        out[name.strip()] = url.strip()
    return out


def _config_file_entry(host: str) -> dict[str, str]:
    path = os.environ.get("LARDER_HDFS_CONFIG") or os.path.expanduser("~/.config/larder/hdfs.ini")
    parser = configparser.ConfigParser()
    if os.path.exists(path):
        try:
            parser.read(path)
        except configparser.Error as e:
            raise ConfigError(f"{path}: cannot parse ({type(e).__name__})") from e
        if parser.has_section(host):
            entry = dict(parser.items(host))
            if "url" not in entry:
                raise ConfigError(f"{path}: section [{host}] needs a key 'url'")
            return entry
    cli_path = os.environ.get("HDFSCLI_CONFIG") or os.path.expanduser("~/.hdfscli.cfg")
    if os.path.exists(cli_path):
        parser = configparser.ConfigParser()
        try:
            parser.read(cli_path)
        except configparser.Error as e:
            raise ConfigError(f"{cli_path}: cannot parse ({type(e).__name__})") from e
        section = f"{host}.alias"
        if parser.has_section(section) and parser.has_option(section, "url"):
            return {k: v for k, v in parser.items(section) if k in ("url", "user")}
    return {}


def _netloc(host: str, port: int | None) -> str:
    """``host:port`` (``host`` alone without a port), an IPv6 literal in brackets."""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def webhdfs_address(url: str, *, webhdfs_url: str | None = None, namenodes: Mapping[str, str] | None = None
                    ) -> tuple[str, dict[str, str]]:
    """The WebHDFS base address(es) of a ``webhdfs://``/``swebhdfs://``/``hdfs://`` URL.

    Returns:
        ``(addresses, settings)``: ``;``-separated ``http(s)://host:port`` addresses, and the extra settings
        (``user``, ``token_file``) from a config file entry, if one matched.
    """
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if webhdfs_url:
        return webhdfs_url, {}
    if scheme in ("webhdfs", "swebhdfs"):
        if not host:
            raise ConfigError(f"{scheme}:// URL needs a host: {scheme}://host:port/path")
        http = "https" if scheme == "swebhdfs" else "http"
        return f"{http}://{_netloc(host, parts.port or DEFAULT_HTTP_PORT)}", {}
    if namenodes and host in namenodes:
        return namenodes[host], {}
    env = _parse_env_map(os.environ.get("LARDER_WEBHDFS", ""))
    if host in env:
        return env[host], {}
    entry = _config_file_entry(host)
    if entry:
        return entry.pop("url"), entry
    if not host:
        raise ConfigError("hdfs:/// URL without a name node: configure one (see loader.webhdfs)")
    return f"http://{_netloc(host, DEFAULT_HTTP_PORT)}", {}


def _read_token_file(path: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"token_file {path!r} cannot be read ({type(e).__name__})") from e


class WebHdfsHandler(pafs.FileSystemHandler):
    """A :class:`pyarrow.fs.FileSystemHandler` over HdfsCLI. Wrap it in :class:`pyarrow.fs.PyFileSystem`.

    The HdfsCLI client (and its HTTP session) is made lazily, once per process, so the handler can be
    pickled to worker processes (its ``__reduce__`` carries the config only); :meth:`close_connections` closes
    its connections (a closed dataset: :meth:`loader.dataset.Dataset.close`).
    """

    def __init__(self, config: WebHdfsConfig):
        self.config = config
        self.redact = Redactor([config.token])
        self._client = None
        self._session: requests.Session | None = None  # the client's
        self._pid = None

    def __reduce__(self):
        return (type(self), (self.config,))

    def __repr__(self) -> str:
        return f"WebHdfsHandler({self.config.scheme}://{self.config.authority}, user={self.config.user!r})"

    # ----------------------------------------------------------------- client and errors
    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            cfg = self.config
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.hooks["response"].append(_raise_on_5xx)
            # Always: a secure name node puts a token of its own in its redirects, even without token= here.
            _install_log_filter(self.redact if cfg.token else _PARAMS_ONLY)
            if cfg.kerberos:
                try:
                    from hdfs.ext.kerberos import KerberosClient
                except ImportError as e:
                    raise ConfigError("kerberos=True needs requests-kerberos: pip install 'larder[kerberos]'") from e
                client = KerberosClient(cfg.urls, timeout=cfg.timeout, session=session)  # user from the ticket
            elif cfg.token:
                client = TokenClient(cfg.urls, cfg.token, timeout=cfg.timeout, session=session)
            else:
                client = InsecureClient(cfg.urls, user=cfg.user, timeout=cfg.timeout, session=session)
            self._client, self._session, self._pid = client, session, os.getpid()
        return self._client

    def close_connections(self) -> None:
        """Close the HTTP connections of the client (its session's pooled sockets); the next call makes a new
        client. Idempotent. Call it when no request of this handler is in flight (a closed dataset)."""
        session, self._client, self._session = self._session, None, None
        if session is not None:
            session.close()

    def display_url(self, path: str) -> str:
        """``scheme://authority/path`` — never holds a secret."""
        return f"{self.config.scheme}://{self.config.authority}{path if path.startswith('/') else '/' + path}"

    def _call(self, op: str, path: str, fn, on_retry=None):
        """Run one WebHDFS call with retries, translating errors to builtins / :class:`RemoteError`."""
        what = f"{op} {self.display_url(path)}"
        try:
            return call_with_retries(fn, what=what, policy=self.config.retry, redact=self.redact, on_retry=on_retry)
        except HdfsError as e:
            error, cause = self._translate(e, what), redacted_cause(e, self.redact)
        # Raised outside the except block: the HdfsError (its text may hold a token) is not even the context.
        raise error from cause

    def _translate(self, e: HdfsError, what: str) -> OSError:
        kind = getattr(e, "exception", None) or ""
        message = self.redact(e.message if hasattr(e, "message") else e)
        if kind == "FileNotFoundException":
            return FileNotFoundError(f"{what}: does not exist ({message})")
        if kind in ("FileAlreadyExistsException",):
            return FileExistsError(f"{what}: already exists ({message})")
        if kind in ("AccessControlException", "SecurityException", "InvalidToken") or "Authentication" in message:
            return RemoteError(f"{what}: permission denied ({kind or 'authentication failure'}; check user/token)")
        return RemoteError(f"{what}: {kind or 'error'}: {message}")

    def _status(self, path: str) -> dict | None:
        """The path's ``FileStatus``, or None if the name node says it does not exist.

        Only a ``FileNotFoundException`` means absent: a denial (``AccessControlException``, an expired
        ``InvalidToken``) or any other refusal raises (HdfsCLI's ``strict=False`` would return None for them).

        Raises:
            RemoteError: The status could not be had (names the path; a denial says so, without the token).
        """

        def status():
            try:
                return self.client.status(path)
            except HdfsError as e:
                if getattr(e, "exception", None) == "FileNotFoundException":
                    return None
                raise

        return self._call("GETFILESTATUS", path, status)

    # ----------------------------------------------------------------- FileSystemHandler
    def get_type_name(self) -> str:
        return self.config.scheme

    def normalize_path(self, path: str) -> str:
        return path

    def equals(self, other) -> bool:
        return isinstance(other, WebHdfsHandler) and other.config == self.config

    def _info(self, path: str, status: dict | None) -> pafs.FileInfo:
        if status is None:
            return pafs.FileInfo(path, pafs.FileType.NotFound)
        if status["type"] == "DIRECTORY":
            return pafs.FileInfo(path, pafs.FileType.Directory, mtime_ns=status["modificationTime"] * 1_000_000)
        return pafs.FileInfo(path, pafs.FileType.File, size=status["length"],
                             mtime_ns=status["modificationTime"] * 1_000_000)

    def get_file_info(self, paths):
        return [self._info(p, self._status(p)) for p in paths]

    def get_file_info_selector(self, selector):
        base = selector.base_dir.rstrip("/") or "/"
        status = self._status(base)
        if status is None:
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(f"{self.display_url(base)} does not exist")
        if status["type"] != "DIRECTORY":
            raise NotADirectoryError(f"{self.display_url(base)} is not a directory")
        out, todo = [], [base]
        while todo:
            here = todo.pop()
            entries = self._call("LISTSTATUS", here, lambda h=here: self.client.list(h, status=True))
            for name, st in entries:
                child = posixpath.join(here, name)
                out.append(self._info(child, st))
                if selector.recursive and st["type"] == "DIRECTORY":
                    todo.append(child)
        return out

    def create_dir(self, path, recursive):
        if not recursive:
            parent = self._status(posixpath.dirname(path.rstrip("/")) or "/")
            if parent is None:
                raise FileNotFoundError(f"{self.display_url(path)}: parent directory does not exist")
        self._call("MKDIRS", path, lambda: self.client.makedirs(path))

    def delete_dir(self, path):
        status = self._status(path)
        if status is None or status["type"] != "DIRECTORY":
            raise FileNotFoundError(f"{self.display_url(path)} is not a directory")
        self._call("DELETE", path, lambda: self.client.delete(path, recursive=True))

    def delete_dir_contents(self, path, missing_dir_ok=False):
        status = self._status(path)
        if status is None and missing_dir_ok:
            return
        if status is None or status["type"] != "DIRECTORY":
            raise FileNotFoundError(f"{self.display_url(path)} is not a directory")
        for name in self._call("LISTSTATUS", path, lambda: self.client.list(path)):
            child = posixpath.join(path, name)
            self._call("DELETE", child, lambda c=child: self.client.delete(c, recursive=True))

    def delete_root_dir_contents(self):
        raise RemoteError(f"refusing to delete everything under {self.display_url('/')}")

    def delete_file(self, path):
        status = self._status(path)
        if status is None or status["type"] != "FILE":
            raise FileNotFoundError(f"{self.display_url(path)} is not a file")
        self._call("DELETE", path, lambda: self.client.delete(path))

    def move(self, src, dest):
        """pyarrow semantics on HDFS: a file replaces a file atomically (``RENAME`` with
        ``renameoptions=OVERWRITE``, Hadoop's rename2); a directory replaces only an empty directory.

        A destination that did not exist is renamed to with ``renameoptions=NONE`` (rename2 again), which
        fails if the destination appeared meanwhile: a plain ``RENAME`` would move the source *into* a
        directory another run created there since it was looked at.

        Safe to retry: after a failure that may have happened after the name node applied the rename (a
        timeout, a 5xx from a gateway, a dropped reply), the source and destination are looked at before
        trying again; if the source is gone and the destination is the source's inode (same ``fileId``), the
        rename landed and the move succeeds. A blind retry would find no source, and fail after succeeding.

        Raises:
            FileNotFoundError: ``src`` does not exist.
            FileExistsError: ``dest`` is a non-empty directory, or appeared since it was looked at.
            RemoteError: The rename failed; its message says when the outcome could not be checked.
        """
        src_status = self._status(src)
        if src_status is None:
            raise FileNotFoundError(f"{self.display_url(src)} does not exist")
        dst_status = self._status(dest)
        if dst_status is not None and dst_status["type"] == "DIRECTORY" and dst_status.get("childrenNum", 0):
            raise FileExistsError(f"cannot move onto non-empty directory {self.display_url(dest)}")
        overwrite = dst_status is not None
        ambiguous = False  # a transient failure: the name node may have applied the rename anyway

        def rename():
            if ambiguous and self._rename_landed(src, dest, src_status):
                return
            self.client._rename(src, destination=dest, renameoptions="OVERWRITE" if overwrite else "NONE")

        def failed(_error):
            nonlocal ambiguous
            ambiguous = True

        try:
            self._call("RENAME", src, rename, on_retry=failed)
            return
        except OSError as e:
            if not ambiguous:
                raise
            error = e
        try:
            if self._rename_landed(src, dest, src_status):
                return
        except OSError as e:
            raise RemoteError(f"RENAME {self.display_url(src)} to {self.display_url(dest)}: outcome unknown: the "
                              f"rename failed ambiguously ({error}) and checking whether it landed failed too "
                              f"({e})") from error
        raise error

    def _rename_landed(self, src: str, dest: str, src_status: dict) -> bool:
        """Whether a rename of ``src`` (whose status before the rename was ``src_status``) to ``dest`` landed."""
        if self._status(src) is not None:
            return False
        after = self._status(dest)
        if after is None or after["type"] != src_status["type"]:
            return False
        if src_status.get("fileId") is not None and after.get("fileId") is not None:
            return after["fileId"] == src_status["fileId"]  # HDFS keeps a file's inode id across a rename
        keys = ("length", "modificationTime") if src_status["type"] == "FILE" else ("modificationTime",)
        return all(after.get(k) == src_status.get(k) for k in keys)

    def copy_file(self, src, dest):
        with self.open_input_stream(src) as f_in, self.open_output_stream(dest, None) as f_out:
            while chunk := f_in.read(_READ_CHUNK):
                f_out.write(chunk)

    def open_input_stream(self, path):
        return pa.PythonFile(_RemoteFile(self, path, sequential=True), mode="r")

    def open_input_file(self, path):
        return pa.PythonFile(_RemoteFile(self, path, sequential=False), mode="r")

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_Upload(self, path, append=False), mode="w")

    def open_append_stream(self, path, metadata):
        return pa.PythonFile(_Upload(self, path, append=True), mode="w")


def _raise_on_5xx(response, *args, **kwargs):
    if response.status_code >= 500:
        status, reason = response.status_code, response.reason
        response.close()
        raise TransientHTTPError(f"HTTP {status} {reason}")
    return response


_filters: set[int] = set()
_PARAMS_ONLY = Redactor()  # no secret of ours to redact: ``delegation=``-style parameters only


def _install_log_filter(redact: Redactor) -> None:
    """Redact this token and ``delegation=``-style parameters from urllib3's and HdfsCLI's log records (urllib3
    logs request URLs, the data nodes' redirect targets included, at DEBUG)."""
    if id(redact) in _filters:
        return
    _filters.add(id(redact))
    for name in ("urllib3.connectionpool", "hdfs.client", "requests"):
        logging.getLogger(name).addFilter(RedactingFilter(redact))


def make_filesystem(url: str, *, user: str | None = None, token: str | None = None, kerberos: bool | str = False,
                    webhdfs_url: str | None = None, namenodes: Mapping[str, str] | None = None,
                    timeout: float | str = 60.0, retries: int | str | None = None, retry: RetryPolicy | None = None,
                    **unknown) -> tuple[pafs.FileSystem, str]:
    """The factory registered for ``webhdfs://``, ``swebhdfs://`` and ``hdfs://``.

    Options may be strings (``python -m loader ... -o timeout=30 -o retries=8``).

    Args:
        url: The URL.
        user: Simple-auth user name (``user.name``).
        token: A delegation token (never shown anywhere).
        kerberos: Authenticate with Kerberos/SPNEGO (needs ``requests-kerberos``); a bool or its text
            (``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off``, see :func:`loader.fs.parse_bool`).
        webhdfs_url: Explicit WebHDFS address(es), ``;``-separated for HA.
        namenodes: Name service -> WebHDFS address(es), for ``hdfs://`` URLs.
        timeout: Seconds to wait for a connection or for data.
        retries: Attempts per operation (shorthand for ``retry=RetryPolicy(attempts=...)``).
        retry: The full retry policy.

    Raises:
        ConfigError: An unknown or malformed option, no usable address, or a URL holding a query or
            fragment (``?``, ``#``) or a password.
    """
    if unknown:
        raise ConfigError(f"unknown option(s) for {urlsplit(url).scheme}:// URLs: {sorted(unknown)}")
    try:
        timeout = float(timeout)
        if retries is not None:
            retry = RetryPolicy(attempts=int(retries))
    except ValueError as e:
        raise ConfigError(f"option timeout or retries of {urlsplit(url).scheme}:// is malformed: {e}") from e
    kerberos = lfs.parse_bool(kerberos, "kerberos")
    parts = urlsplit(url)
    if "?" in url or "#" in url:  # urlsplit cuts them off: another path, or an option silently ignored
        head = urlsplit(re.split(r"[?#]", url, maxsplit=1)[0])  # what comes after may be a secret
        shown = f"{head.netloc.rpartition('@')[2]}{head.path}" if head.path else ""  # a cut authority: no part of it
        raise ConfigError(f"{parts.scheme}:// URL {parts.scheme}://{shown}... must not hold '?' or '#' (a query or "
                          "fragment): pass options as keyword arguments (token=..., user=..., webhdfs_url=...) or "
                          "with -o key=value on the command line; HDFS paths holding these characters cannot be "
                          "named in a URL")
    addresses, settings = webhdfs_address(url, webhdfs_url=webhdfs_url, namenodes=namenodes)
    if parts.password:  # a URL is printed, logged and stored in Dataset.url: it must not carry a secret
        raise ConfigError(f"{parts.scheme}:// URL must not hold a password or token; pass token=... or set "
                          "LARDER_HDFS_TOKEN")
    token = token or os.environ.get("LARDER_HDFS_TOKEN") or (
        _read_token_file(settings["token_file"]) if "token_file" in settings else None)
    user = user or parts.username or settings.get("user") or os.environ.get("HADOOP_USER_NAME") or getpass.getuser()
    authority = _netloc(parts.hostname or "", parts.port)
    config = WebHdfsConfig(urls=addresses, scheme=parts.scheme.lower(), authority=authority, user=user, token=token,
                           kerberos=kerberos, timeout=timeout, retry=retry or RetryPolicy())
    return pafs.PyFileSystem(WebHdfsHandler(config)), parts.path or "/"


for _scheme in ("webhdfs", "swebhdfs", "hdfs"):
    lfs.register_scheme(_scheme, make_filesystem)

__all__ = ["WebHdfsConfig", "WebHdfsHandler", "make_filesystem", "webhdfs_address", "TransientHTTPError"]
