"""A small fake of Kaggle's Models API, for tests (standard library only).

It speaks the subset of the API that ``kagglehub.model_download`` (kagglehub
1.0.2 / kagglesdk) uses, as read from their source:

* every API call is ``POST /api/v1/models.ModelApiService/<Method>`` with a
  JSON body (camelCase field names, the framework as an enum name such as
  ``"MODEL_FRAMEWORK_TENSOR_FLOW_2"``); no credentials are needed;
* ``ListModelInstanceVersionFiles`` -> ``{"files": [{"name", "size"}, ...],
  "nextPageToken": ""}``.  kagglehub asks for ``pageSize: 25``; when the answer
  has a non-empty ``nextPageToken`` it downloads one archive of the whole
  instance, otherwise it downloads every listed file on its own (8 threads);
* ``DownloadModelInstanceVersion`` (optional ``"path"``) -> ``302`` to a
  storage URL, like Kaggle's redirect to a signed GCS URL.  That URL is served
  here under ``GET /_fake_gcs/...`` with ``Content-Length``,
  ``Accept-Ranges: bytes`` (``Range: bytes=N-`` answers ``206``) and, like
  GCS, ``x-goog-hash: md5=<base64>`` (turn off with ``send_md5=False``);
* ``GetModelInstance`` -> ``{"versionNumber": <latest>, ...}`` (only used by
  kagglehub for handles without a version).

Usage::

    with FakeKaggle({"o/m/tensorFlow2/v/1": src_dir}, cache_dir=tmp / "cache") as fk:
        path = kagglehub.model_download("o/m/tensorFlow2/v/1")   # in-process
        # or: subprocess.run([...], env=fk.env)                   # subprocess
        assert fk.requests == [("POST", "/api/v1/models.ModelApiService/ListModelInstanceVersionFiles"), ...]

On enter the server starts on 127.0.0.1:<port> and ``os.environ`` is updated
with :func:`kaggle_env` (``KAGGLE_API_ENVIRONMENT=TEST`` makes kagglesdk use
``http://localhost:7777``, so the default port must stay 7777; credentials,
``~/.kaggle``, notebook/Colab detection and HTTP proxies are switched off).
On exit the server is shut down and ``os.environ`` restored.  The same
variables are in ``fk.env`` (a full environment for ``subprocess``).

``via_proxy=True`` is an alternative wiring: ``KAGGLE_API_ENVIRONMENT=LOCALHOST``
plus ``HTTP_PROXY=http://127.0.0.1:<port>`` (any port, 0 = ephemeral).  Use it
when the streaming behaviour matters: in the TEST environment kagglesdk turns
``verbose`` on and prints every response *body* (``response.text``), so each
download is read fully into memory before kagglehub writes a byte to disk,
unlike against the real (PROD) API where the body is streamed to the file.

Fault modes (``fault=``):

* ``None``        normal service;
* ``"http500"``   every request is answered ``500`` with a JSON error body;
* ``"truncated"`` storage downloads send the full ``Content-Length`` but only
  about half the bytes, then close the connection (API calls are normal);
* ``"hang"``      every request is accepted and never answered; the handler
  gives up after ``hang_seconds`` (default 30) and at once when the server is
  closed, then drops the connection;
* ``"corrupt"``   storage downloads send the right number of bytes, but
  garbage (the ``x-goog-hash`` md5 still names the real content).

``archive=True`` makes the listing claim there is another page, so kagglehub
takes its "whole archive" branch even for a small directory; the archive is a
``tar.gz`` (``archive_format="zip"`` for a zip) of the directory's contents,
paths relative to the directory, built lazily in a temporary folder.

:func:`lay_out_kagglehub_cache` writes a completed kagglehub cache entry
without any server.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

__all__ = ["FakeKaggle", "FAULTS", "kaggle_env", "lay_out_kagglehub_cache", "kagglehub_cache_paths"]

FAULTS = (None, "http500", "truncated", "hang", "corrupt")
API_PREFIX = "/api/v1/models.ModelApiService/"
BLOB_PREFIX = "/_fake_gcs/"
TEST_PORT = 7777  # kagglesdk: KaggleEnv.TEST -> "http://localhost:7777"


@contextlib.contextmanager
def holding_test_port():
    """One process at a time serves on TEST_PORT, or checks that it is free: pytest-xdist
    runs tests of any module side by side on its workers."""
    import filelock

    with filelock.FileLock(os.path.join(tempfile.gettempdir(),
                                        f"vit_hub-tests-port-{TEST_PORT}.lock")):
        yield
_CHUNK = 64 * 1024

# Variables that would make kagglehub/kagglesdk use credentials, a notebook or
# Colab cache, or send traffic through a proxy.  They are removed.
_UNSET = (
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "KAGGLE_API_V1_TOKEN",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_DATA_PROXY_URL",
    "KAGGLE_DATA_PROXY_TOKEN",
    "KAGGLE_USER_SECRETS_TOKEN",
    "KAGGLE_IAP_TOKEN",
    "TBE_RUNTIME_ADDR",
    "KAGGLE_LOGGING_ENABLED",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


# --------------------------------------------------------------------------- env


def kaggle_env(
    cache_dir: os.PathLike | str | None,
    port: int = TEST_PORT,
    *,
    via_proxy: bool = False,
    home: os.PathLike | str | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Return a full environment (copy of ``base`` or ``os.environ``) for kagglehub.

    * ``KAGGLEHUB_CACHE=<cache_dir>`` (left alone when ``cache_dir`` is None);
    * ``KAGGLE_API_ENVIRONMENT=TEST`` (kagglesdk -> ``http://localhost:7777``),
      or with ``via_proxy`` ``LOCALHOST`` + ``HTTP_PROXY=http://127.0.0.1:<port>``;
    * ``HOME=<home>`` and ``KAGGLE_CONFIG_DIR=<home>/.kaggle``: kagglesdk reads
      ``~/.kaggle/kaggle.json`` and ``~/.kaggle/access_token`` through
      ``expanduser`` whatever ``KAGGLE_CONFIG_DIR`` says, so HOME is moved to an
      empty folder (default: ``<cache_dir>/../fake-kaggle-home``, created);
    * credentials / notebook / Colab / proxy variables removed,
      ``DISABLE_KAGGLE_CACHE=1``, ``DISABLE_COLAB_CACHE=1``,
      ``NO_PROXY=localhost,127.0.0.1`` (unless ``via_proxy``).
    """
    env = dict(os.environ if base is None else base)
    for name in _UNSET:
        env.pop(name, None)
    if home is None:
        anchor = Path(cache_dir).parent if cache_dir is not None else Path(tempfile.gettempdir())
        home = anchor / "fake-kaggle-home"
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["KAGGLE_CONFIG_DIR"] = str(home / ".kaggle")
    if cache_dir is not None:
        env["KAGGLEHUB_CACHE"] = str(cache_dir)
    env["DISABLE_KAGGLE_CACHE"] = "1"
    env["DISABLE_COLAB_CACHE"] = "1"
    if via_proxy:
        # kagglesdk LOCALHOST -> "http://localhost" (port 80); requests sends it
        # to the proxy, i.e. to us, in absolute form.  verbose stays off.
        env["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
        env["HTTP_PROXY"] = env["http_proxy"] = f"http://127.0.0.1:{port}"
    else:
        if port != TEST_PORT:
            raise ValueError(f"KAGGLE_API_ENVIRONMENT=TEST always uses port {TEST_PORT}; use via_proxy=True for another port")
        env["KAGGLE_API_ENVIRONMENT"] = "TEST"
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    return env


# ------------------------------------------------------------------------ cache


def _parse_versioned_handle(handle: str) -> tuple[str, str, str, str, int]:
    parts = handle.strip("/").split("/")
    if len(parts) != 5:
        raise ValueError(f"expected owner/model/framework/variation/version, got {handle!r}")
    owner, model, framework, variation, version = parts
    return owner, model, framework, variation, int(version)


def kagglehub_cache_paths(cache_root: os.PathLike | str, handle: str) -> dict[str, Path]:
    """Where kagglehub 1.0.2 keeps a full-instance download of ``handle``
    (kagglehub/cache.py: _get_model_path, _get_model_archive_path,
    _get_models_completion_marker_filepath).  Framework keeps the handle's spelling.

    ``folder``  <root>/models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION
    ``marker``  <root>/models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION.complete
    ``archive`` <root>/models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION.archive (temporary)
    """
    owner, model, framework, variation, version = _parse_versioned_handle(handle)
    parent = Path(cache_root) / "models" / owner / model / framework / variation
    return {
        "folder": parent / str(version),
        "marker": parent / f"{version}.complete",
        "archive": parent / f"{version}.archive",
    }


def lay_out_kagglehub_cache(cache_root: os.PathLike | str, handle: str, src_dir: os.PathLike | str) -> Path:
    """Copy ``src_dir`` to where kagglehub 1.0.2 puts a completed download of
    ``handle`` (a versioned handle) and create the ``VERSION.complete`` marker
    next to it (an empty file, as kagglehub's ``Path.touch()``).  kagglehub's
    cache check (``Cache.load_from_cache``) only tests that the marker and the
    folder exist.  Returns the folder."""
    p = kagglehub_cache_paths(cache_root, handle)
    if p["folder"].exists():
        shutil.rmtree(p["folder"])
    p["folder"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src_dir, p["folder"])
    p["marker"].touch()
    return p["folder"]


# ----------------------------------------------------------------------- server


def _norm_framework(s: str) -> str:
    s = s.upper()
    if s.startswith("MODEL_FRAMEWORK_"):
        s = s[len("MODEL_FRAMEWORK_") :]
    return "".join(ch for ch in s if ch.isalnum())


class _Instance:
    def __init__(self, index: int, handle: str, src: Path, archive_format: str, workdir: Path) -> None:
        self.index = index
        self.handle = handle
        self.owner, self.model, self.framework, self.variation, self.version = _parse_versioned_handle(handle)
        self.src = Path(src)
        if not self.src.is_dir():
            raise ValueError(f"{src} is not a directory")
        self.files = sorted(p.relative_to(self.src).as_posix() for p in self.src.rglob("*") if p.is_file())
        self.archive_format = archive_format
        self.archive_name = "model.tar.gz" if archive_format == "tar.gz" else "model.zip"
        self._workdir = workdir
        self._archive: Path | None = None
        self._md5: dict[str, str] = {}
        self._lock = threading.Lock()

    def key(self) -> tuple[str, str, str, str]:
        return (self.owner.lower(), self.model.lower(), _norm_framework(self.framework), self.variation.lower())

    def archive(self) -> Path:
        with self._lock:
            if self._archive is None:
                out = self._workdir / f"m{self.index}" / self.archive_name
                out.parent.mkdir(parents=True, exist_ok=True)
                if self.archive_format == "tar.gz":
                    with tarfile.open(out, "w:gz") as tf:
                        for name in self.files:
                            tf.add(self.src / name, arcname=name, recursive=False)
                else:
                    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
                        for name in self.files:
                            zf.write(self.src / name, arcname=name)
                self._archive = out
            return self._archive

    def blob(self, rel: str) -> Path | None:
        if rel == "archive/" + self.archive_name:
            return self.archive()
        if rel.startswith("files/") and rel[len("files/") :] in self.files:
            return self.src / rel[len("files/") :]
        return None

    def md5_b64(self, path: Path) -> str:
        k = str(path)
        with self._lock:
            if k not in self._md5:
                h = hashlib.md5()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(_CHUNK), b""):
                        h.update(chunk)
                self._md5[k] = base64.b64encode(h.digest()).decode()
            return self._md5[k]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeKaggle


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 35  # idle keep-alive connections are dropped after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self.server.fake._dispatch(self)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET


class FakeKaggle:
    """Fake Kaggle Models API on 127.0.0.1 (see the module docstring).

    Attributes after ``__enter__``: ``port``, ``url``, ``env`` (full environment
    for a subprocess), ``requests`` (list of ``(method, path)``), ``calls``
    (list of dicts: method, path, json body, selected headers).
    """

    def __init__(
        self,
        models: dict[str, Path],
        fault: str | None = None,
        port: int = TEST_PORT,
        *,
        cache_dir: os.PathLike | str | None = None,
        via_proxy: bool = False,
        set_environ: bool = True,
        archive: bool = False,
        archive_format: str = "tar.gz",
        send_md5: bool = True,
        accept_ranges: bool = True,
        hang_seconds: float = 30.0,
        max_lifetime: float = 600.0,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        if not via_proxy and port != TEST_PORT:
            raise ValueError(f"KAGGLE_API_ENVIRONMENT=TEST always uses port {TEST_PORT}; use via_proxy=True for another port")
        if archive_format not in ("tar.gz", "zip"):
            raise ValueError("archive_format must be 'tar.gz' or 'zip'")
        self.models_arg = dict(models)
        self.fault = fault
        self.port = port
        self.cache_dir = cache_dir
        self.via_proxy = via_proxy
        self.set_environ = set_environ
        self.archive = archive
        self.archive_format = archive_format
        self.send_md5 = send_md5
        self.accept_ranges = accept_ranges
        self.hang_seconds = hang_seconds
        self.max_lifetime = max_lifetime

        self.requests: list[tuple[str, str]] = []
        self.calls: list[dict] = []
        self.env: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._httpd: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._instances: list[_Instance] = []
        self._saved_env: dict[str, str | None] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeKaggle:
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-kaggle-")
        work = Path(self._tmp.name)
        self._instances = [
            _Instance(i, h, Path(src), self.archive_format, work) for i, (h, src) in enumerate(self.models_arg.items())
        ]
        self._closing.clear()
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeKaggle", daemon=True
        )
        self._serve_thread.start()
        if self.max_lifetime:
            self._timer = threading.Timer(self.max_lifetime, self.close)
            self._timer.daemon = True
            self._timer.start()
        self.env = kaggle_env(self.cache_dir, self.port, via_proxy=self.via_proxy)
        return self

    def close(self) -> None:
        """Stop serving, drop open connections, end hanging handlers, free the port."""
        self._closing.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        if self._serve_thread is not None and self._serve_thread is not threading.current_thread():
            self._serve_thread.join(timeout=5)
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def live_handler_threads(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def __enter__(self) -> FakeKaggle:
        self.start()
        if self.set_environ:
            self._saved_env = {k: os.environ.get(k) for k in set(self.env) | set(os.environ)}
            for k in list(os.environ):
                if k not in self.env:
                    del os.environ[k]
            os.environ.update(self.env)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            if self._saved_env is not None:
                for k, v in self._saved_env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                self._saved_env = None

    # -- plumbing ----------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
                self._threads.add(threading.current_thread())
            else:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _find(self, body: dict, *, need_version: bool) -> _Instance | None:
        key = (
            str(body.get("ownerSlug", "")).lower(),
            str(body.get("modelSlug", "")).lower(),
            _norm_framework(str(body.get("framework", ""))),
            str(body.get("instanceSlug", "")).lower(),
        )
        found = [m for m in self._instances if m.key() == key]
        if not found:
            return None
        if need_version:
            v = body.get("versionNumber")
            found = [m for m in found if m.version == v]
            return found[0] if found else None
        return max(found, key=lambda m: m.version)

    def _dispatch(self, h: _Handler) -> None:
        path = unquote(urlsplit(h.path).path)
        method = h.command
        length = int(h.headers.get("Content-Length") or 0)
        # Hang before reading anything else: the request is accepted, never answered.
        with self._lock:
            self.requests.append((method, path))
        if self.fault == "hang":
            self._closing.wait(self.hang_seconds)
            h.close_connection = True
            return
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw[:200].decode("latin-1")}
        with self._lock:
            self.calls.append(
                {
                    "method": method,
                    "path": path,
                    "json": body,
                    "range": h.headers.get("Range"),
                    "authorization": h.headers.get("Authorization"),
                    "user_agent": h.headers.get("User-Agent"),
                }
            )
        if self.fault == "http500":
            return self._json(h, 500, {"code": 500, "message": "Internal Server Error (FakeKaggle fault=http500)"})
        if method == "POST" and path.startswith(API_PREFIX):
            return self._api(h, path[len(API_PREFIX) :], body)
        if method in ("GET", "HEAD") and path.startswith(BLOB_PREFIX):
            return self._blob(h, path[len(BLOB_PREFIX) :])
        return self._json(h, 404, {"code": 404, "message": f"FakeKaggle: no route for {method} {path}"})

    def _json(self, h: _Handler, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _api(self, h: _Handler, name: str, body: dict) -> None:
        not_found = {"code": 404, "message": "Not found"}
        if name == "GetModelInstance":
            m = self._find(body, need_version=False)
            if m is None:
                return self._json(h, 404, not_found)
            return self._json(
                h,
                200,
                {
                    "id": 1000 + m.index,
                    "slug": m.variation,
                    "framework": body.get("framework", ""),
                    "versionId": 2000 + m.index,
                    "versionNumber": m.version,
                    "url": f"/models/{m.owner}/{m.model}/{m.framework}/{m.variation}",
                },
            )
        if name == "ListModelInstanceVersionFiles":
            m = self._find(body, need_version=True)
            if m is None:
                return self._json(h, 404, not_found)
            size = int(body.get("pageSize") or 25)
            start = int(body.get("pageToken") or 0)
            page = m.files[start : start + size]
            nxt = start + size
            token = str(nxt) if nxt < len(m.files) else ""
            if self.archive and not token:
                token = str(max(nxt, 1))  # claim there is more: kagglehub downloads the archive
            return self._json(
                h,
                200,
                {
                    "files": [{"name": f, "size": (m.src / f).stat().st_size} for f in page],
                    "nextPageToken": token,
                },
            )
        if name == "DownloadModelInstanceVersion":
            m = self._find(body, need_version=True)
            if m is None:
                return self._json(h, 404, not_found)
            rel = body.get("path")
            if rel:
                if rel not in m.files:
                    return self._json(h, 404, not_found)
                target = f"m{m.index}/files/{quote(rel)}"
            else:
                target = f"m{m.index}/archive/{m.archive_name}"
            host = h.headers.get("Host") or f"127.0.0.1:{self.port}"
            h.send_response(302)
            h.send_header("Location", f"http://{host}{BLOB_PREFIX}{target}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        return self._json(h, 404, {"code": 404, "message": f"FakeKaggle: unknown method {name}"})

    def _blob(self, h: _Handler, rest: str) -> None:
        idx, _, rel = rest.partition("/")
        m = next((x for x in self._instances if f"m{x.index}" == idx), None)
        src = m.blob(rel) if m is not None else None
        if src is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        total = src.stat().st_size
        start, end = 0, total  # [start, end)
        status = 200
        rng = h.headers.get("Range")
        if rng and self.accept_ranges and rng.startswith("bytes="):
            a, _, b = rng[len("bytes=") :].partition("-")
            try:
                start = int(a) if a else 0
                end = int(b) + 1 if b else total
            except ValueError:
                start, end = 0, total
            end = min(end, total)
            if start >= total or start >= end:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{total}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        if self.accept_ranges:
            h.send_header("Accept-Ranges", "bytes")
        if self.send_md5:
            h.send_header("x-goog-hash", f"md5={m.md5_b64(src)}")
        h.end_headers()
        if h.command == "HEAD":
            return
        limit = end - start
        if self.fault == "truncated":
            limit = max(1, limit // 2) if limit > 1 else 0
        rnd = random.Random(f"{idx}/{rel}/{start}")
        sent = 0
        with open(src, "rb") as f:
            f.seek(start)
            while sent < limit and not self._closing.is_set():
                chunk = f.read(min(_CHUNK, limit - sent))
                if not chunk:
                    break
                if self.fault == "corrupt":
                    chunk = (b"GARBAGE!" + rnd.randbytes(len(chunk)))[: len(chunk)]
                try:
                    h.wfile.write(chunk)
                except OSError:
                    h.close_connection = True
                    return
                sent += len(chunk)
        if sent < end - start:
            # Short body: drop the connection so the client sees the truncation.
            h.close_connection = True
            try:
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def wait_port_free(port: int, timeout: float = 5.0) -> bool:
    """True once 127.0.0.1:port can be bound again (helper for tests)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        finally:
            s.close()
