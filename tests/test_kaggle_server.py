"""Tests of tests/kaggle_server.py against the real ``kagglehub.model_download``.

They double as a record of how kagglehub 1.0.2 behaves (exception classes,
what is left in the cache after a failure, timeouts), which a robust loader
has to cope with.  Two wirings are exercised where it matters:

* ``test``  -- KAGGLE_API_ENVIRONMENT=TEST (http://localhost:7777).  kagglesdk
  then runs verbose and reads every response body into memory (to print it)
  before kagglehub writes anything to disk.
* ``proxy`` -- KAGGLE_API_ENVIRONMENT=LOCALHOST + HTTP_PROXY to the fake on an
  ephemeral port.  Not verbose: bodies are streamed to disk as against the
  real (PROD) API, so leftovers of failed downloads are the realistic ones.

kagglehub reads only logging settings and Colab detection from the
environment at import time; everything this needs (KAGGLE_API_ENVIRONMENT,
KAGGLEHUB_CACHE, credentials, HOME) is read per call, so most tests call it
in-process with os.environ set by FakeKaggle; the hang test and one sanity
test use a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

try:
    from tests.kaggle_server import (
        FakeKaggle,
        kaggle_env,
        kagglehub_cache_paths,
        lay_out_kagglehub_cache,
        wait_port_free,
    )
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from kaggle_server import (  # type: ignore[no-redef]
        FakeKaggle,
        kaggle_env,
        kagglehub_cache_paths,
        lay_out_kagglehub_cache,
        wait_port_free,
    )
from kagglehub.exceptions import DataCorruptionError, KaggleApiHTTPError

HANDLE = "spsayakpaul/vision-transformer/tensorFlow2/vit-b32-fe/1"
LIST = ("POST", "/api/v1/models.ModelApiService/ListModelInstanceVersionFiles")
DOWNLOAD = ("POST", "/api/v1/models.ModelApiService/DownloadModelInstanceVersion")
GET_INSTANCE = ("POST", "/api/v1/models.ModelApiService/GetModelInstance")
WIRINGS = ["test", "proxy"]
BIG = 3 * 1024 * 1024  # > kagglehub's 1 MiB read chunk, so a partial file can be written


# ----------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_server_left_behind(test_port):  # (port 7777 held, for the test and the check)
    before = {t for t in threading.enumerate() if t.name == "FakeKaggle"}
    yield
    alive = [t for t in threading.enumerate() if t.name == "FakeKaggle" and t not in before and t.is_alive()]
    assert not alive, "a FakeKaggle server thread is still running"
    assert wait_port_free(7777, timeout=5), "port 7777 is still busy"


def make_model_dir(root: Path, big: bool = False) -> Path:
    src = root / "src_model"
    (src / "variables").mkdir(parents=True)
    (src / "assets").mkdir()
    (src / "saved_model.pb").write_bytes(b"\x08\x01fake saved model\n" * 20)
    (src / "variables" / "variables.index").write_bytes(b"index\x00\x01\x02" * 10)
    size = BIG if big else 5000
    (src / "variables" / "variables.data-00000-of-00001").write_bytes(bytes((i * 7 + 3) % 256 for i in range(size)))
    (src / "assets" / "labels.txt").write_text("cat\ndog\n")
    return src


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "kh_cache"


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(cache_root: Path, handle: str = HANDLE) -> dict[str, int | None]:
    """Everything under .../VARIATION/ (relative path -> size, None for a folder)."""
    parent = kagglehub_cache_paths(cache_root, handle)["folder"].parent
    if not parent.exists():
        return {}
    return {
        p.relative_to(parent).as_posix(): (None if p.is_dir() else p.stat().st_size) for p in sorted(parent.rglob("*"))
    }


def fake(models, cache_dir, wiring="test", **kw) -> FakeKaggle:
    return FakeKaggle(
        models,
        port=7777 if wiring == "test" else 0,
        via_proxy=(wiring == "proxy"),
        cache_dir=cache_dir,
        **kw,
    )


@dataclass
class Outcome:
    path: str | None
    exc: BaseException | None
    elapsed: float


def use_env(monkeypatch, env: dict[str, str]) -> None:
    for k in list(os.environ):
        if k not in env:
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def download(handle: str = HANDLE) -> Outcome:
    import kagglehub

    t0 = time.monotonic()
    try:
        return Outcome(kagglehub.model_download(handle), None, time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - we record the class
        return Outcome(None, e, time.monotonic() - t0)


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.monotonic()
    try:
        import kagglehub
        p = kagglehub.model_download(sys.argv[1])
        out = {"ok": True, "path": p}
    except BaseException as e:
        out = {"ok": False, "exc": type(e).__module__ + "." + type(e).__qualname__,
               "mro": [c.__module__ + "." + c.__qualname__ for c in type(e).__mro__], "message": str(e)[:500]}
    out["elapsed"] = time.monotonic() - t0
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def download_in_subprocess(env: dict[str, str], handle: str = HANDLE, timeout: float = 60) -> dict:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, handle], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"timed_out": True, "elapsed": time.monotonic() - t0}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"child gave no result (rc={proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")


def expected_requests(src: Path, archive: bool) -> list[tuple[str, str]]:
    if archive:
        return sorted([LIST, DOWNLOAD, ("GET", "/_fake_gcs/m0/archive/model.tar.gz")])
    names = sorted(files_of(src))
    return sorted([LIST] + [DOWNLOAD] * len(names) + [("GET", f"/_fake_gcs/m0/files/{n}") for n in names])


# ------------------------------------------------------------- normal path


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("archive", [False, True], ids=["per-file", "archive"])
def test_download_arrives_intact(model_dir, cache, wiring, archive):
    with fake({HANDLE: model_dir}, cache, wiring, archive=archive) as fk:
        out = download()
    assert out.exc is None, repr(out.exc)
    paths = kagglehub_cache_paths(cache, HANDLE)
    assert Path(out.path) == paths["folder"] == cache / "models/spsayakpaul/vision-transformer/tensorFlow2/vit-b32-fe/1"
    assert files_of(paths["folder"]) == files_of(model_dir)
    assert paths["marker"].is_file() and paths["marker"].stat().st_size == 0
    assert not paths["archive"].exists()  # the archive is deleted after extraction
    assert sorted(fk.requests) == expected_requests(model_dir, archive)

    # What kagglehub sends: anonymous JSON POSTs, then GETs of the redirect target.
    list_call = next(c for c in fk.calls if (c["method"], c["path"]) == LIST)
    assert list_call["json"] == {
        "ownerSlug": "spsayakpaul",
        "modelSlug": "vision-transformer",
        "instanceSlug": "vit-b32-fe",
        "framework": "MODEL_FRAMEWORK_TENSOR_FLOW_2",
        "versionNumber": 1,
        "pageSize": 25,
    }
    dl = [c["json"] for c in fk.calls if (c["method"], c["path"]) == DOWNLOAD]
    base = {
        "ownerSlug": "spsayakpaul",
        "modelSlug": "vision-transformer",
        "framework": "MODEL_FRAMEWORK_TENSOR_FLOW_2",
        "instanceSlug": "vit-b32-fe",
        "versionNumber": 1,
    }
    if archive:
        assert dl == [base]
    else:
        assert sorted(d["path"] for d in dl) == sorted(files_of(model_dir))
        assert all({k: v for k, v in d.items() if k != "path"} == base for d in dl)
    assert all(c["authorization"] is None for c in fk.calls)
    # kagglehub names its own version (not imported here: it reads its environment at import)
    version = importlib.metadata.version("kagglehub")
    assert all(c["user_agent"].startswith(f"kagglehub/{version}") for c in fk.calls)


def test_zip_archive_is_extracted_too(model_dir, cache):
    with fake({HANDLE: model_dir}, cache, archive=True, archive_format="zip"):
        out = download()
    assert out.exc is None
    assert files_of(Path(out.path)) == files_of(model_dir)


def test_unversioned_handle_asks_get_model_instance(model_dir, cache):
    with fake({HANDLE: model_dir, HANDLE[:-1] + "3": model_dir}, cache) as fk:
        out = download(HANDLE.rsplit("/", 1)[0])
    assert out.exc is None
    assert Path(out.path) == kagglehub_cache_paths(cache, HANDLE[:-1] + "3")["folder"]
    assert fk.requests[:2] == [GET_INSTANCE, LIST]


def test_subprocess_with_env_only(model_dir, cache):
    """A fresh interpreter that only gets fk.env (kagglehub imported after the env is set)."""
    with FakeKaggle({HANDLE: model_dir}, cache_dir=cache, set_environ=False) as fk:
        res = download_in_subprocess(fk.env)
    assert res["ok"], res
    assert files_of(Path(res["path"])) == files_of(model_dir)


def test_no_credentials_and_no_home_kaggle(model_dir, cache, tmp_path, monkeypatch):
    """Even with credentials in the caller's env and in ~/.kaggle, nothing is sent."""
    real_home = tmp_path / "real_home"
    (real_home / ".kaggle").mkdir(parents=True)
    (real_home / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    (real_home / ".kaggle" / "access_token").write_text("tok")
    monkeypatch.setenv("HOME", str(real_home))
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    env = kaggle_env(cache)
    assert not {"KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"} & set(env)
    assert env["HOME"] != str(real_home)
    with fake({HANDLE: model_dir}, cache) as fk:
        out = download()
    assert out.exc is None
    assert fk.calls and all(c["authorization"] is None for c in fk.calls)
    assert os.environ["HOME"] == str(real_home)  # restored on exit


# ------------------------------------------------------------------ caching


def test_second_call_is_cache_hit_without_server(model_dir, cache, monkeypatch):
    with fake({HANDLE: model_dir}, cache):
        first = download()
    assert first.exc is None
    # Server gone, env still pointing at localhost:7777: any request would be refused.
    use_env(monkeypatch, kaggle_env(cache))
    second = download()
    assert second.exc is None and second.path == first.path

    # Same again with a live server that fails everything: it sees zero requests.
    with fake({HANDLE: model_dir}, cache, fault="http500") as fk:
        third = download()
    assert third.exc is None and third.path == first.path
    assert fk.requests == []


def test_laid_out_cache_is_a_hit_without_server(model_dir, cache, monkeypatch):
    folder = lay_out_kagglehub_cache(cache, HANDLE, model_dir)
    paths = kagglehub_cache_paths(cache, HANDLE)
    assert folder == paths["folder"] and paths["marker"].is_file()
    use_env(monkeypatch, kaggle_env(cache))
    out = download()  # nothing listens on 7777
    assert out.exc is None and Path(out.path) == folder
    assert files_of(folder) == files_of(model_dir)
    with fake({HANDLE: model_dir}, cache, fault="hang", hang_seconds=5) as fk:
        again = download()
    assert again.exc is None and fk.requests == []


def test_folder_without_marker_is_not_a_hit(model_dir, cache):
    lay_out_kagglehub_cache(cache, HANDLE, model_dir)
    kagglehub_cache_paths(cache, HANDLE)["marker"].unlink()
    with fake({HANDLE: model_dir}, cache) as fk:
        out = download()
    assert out.exc is None and LIST in fk.requests


# ------------------------------------------------------------------- faults


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("archive", [False, True], ids=["per-file", "archive"])
def test_http500(model_dir, cache, wiring, archive):
    with fake({HANDLE: model_dir}, cache, wiring, fault="http500", archive=archive) as fk:
        out = download()
    assert type(out.exc) is KaggleApiHTTPError  # subclass of requests.HTTPError
    assert isinstance(out.exc, requests.HTTPError) and out.exc.response.status_code == 500
    assert fk.requests == [LIST]  # first call fails, no retry
    assert leftovers(cache) == {}
    assert not cache.exists() or not any(cache.rglob("*"))


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("archive", [False, True], ids=["per-file", "archive"])
def test_truncated(model_dir, cache, wiring, archive):
    with fake({HANDLE: model_dir}, cache, wiring, fault="truncated", archive=archive):
        out = download()
    assert type(out.exc) is requests.exceptions.ChunkedEncodingError  # NOT a requests.ConnectionError
    assert not isinstance(out.exc, requests.ConnectionError)
    left = leftovers(cache)
    assert "1.complete" not in left
    if archive:
        # proxy/PROD-like: an empty (or partial) VERSION.archive; TEST: nothing at all.
        assert left == ({"1.archive": 0} if wiring == "proxy" else {})
    elif wiring == "proxy":
        # the folder and every file opened "wb": small files are left empty.
        assert left == {
            "1": None,
            "1/assets": None,
            "1/assets/labels.txt": 0,
            "1/saved_model.pb": 0,
            "1/variables": None,
            "1/variables/variables.data-00000-of-00001": 0,
            "1/variables/variables.index": 0,
        }
    else:
        assert left == {"1": None, "1/assets": None, "1/variables": None}  # only the folders

    # A later call against a healthy server recovers on its own.
    with fake({HANDLE: model_dir}, cache, wiring, archive=archive):
        again = download()
    assert again.exc is None
    assert files_of(Path(again.path)) == files_of(model_dir)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_truncated_big_file_is_resumed_with_range(tmp_path, cache, wiring):
    src = make_model_dir(tmp_path, big=True)
    big = "1/variables/variables.data-00000-of-00001"
    with fake({HANDLE: src}, cache, wiring, fault="truncated"):
        out = download()
    assert type(out.exc) is requests.exceptions.ChunkedEncodingError
    left = leftovers(cache)
    if wiring == "proxy":
        assert 0 < left[big] < BIG  # a partial file (whole 1 MiB chunks) stays on disk
    else:
        assert big not in left
    with fake({HANDLE: src}, cache, wiring) as fk:
        again = download()
    assert again.exc is None
    assert files_of(Path(again.path)) == files_of(src)
    ranges = [c["range"] for c in fk.calls if c["range"]]
    if wiring == "proxy":
        # every leftover file (even 0-byte ones) is "resumed" with a Range request
        assert sorted(ranges) == sorted(f"bytes={v}-" for k, v in left.items() if v is not None)
        assert f"bytes={left[big]}-" in ranges and left[big] > 0
    else:
        assert ranges == []


@pytest.mark.parametrize("wiring", WIRINGS)
@pytest.mark.parametrize("archive", [False, True], ids=["per-file", "archive"])
def test_corrupt_with_md5_header(model_dir, cache, wiring, archive):
    with fake({HANDLE: model_dir}, cache, wiring, fault="corrupt", archive=archive):
        out = download()
    assert type(out.exc) is DataCorruptionError  # x-goog-hash md5 mismatch; bad file is deleted
    left = leftovers(cache)
    assert "1.complete" not in left and "1.archive" not in left
    if archive:
        assert left == {}
    else:
        # folders stay; each corrupted file was removed (files not reached yet are absent too)
        assert all(v is None for v in left.values()), left
    with fake({HANDLE: model_dir}, cache, wiring, archive=archive):
        again = download()
    assert again.exc is None and files_of(Path(again.path)) == files_of(model_dir)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_corrupt_without_md5_per_file_is_accepted_silently(model_dir, cache, wiring):
    with fake({HANDLE: model_dir}, cache, wiring, fault="corrupt", send_md5=False):
        out = download()
    assert out.exc is None  # !! kagglehub has nothing to check against
    got = files_of(Path(out.path))
    assert got.keys() == files_of(model_dir).keys()
    assert all(len(got[k]) == len(v) and got[k] != v for k, v in files_of(model_dir).items())
    assert kagglehub_cache_paths(cache, HANDLE)["marker"].is_file()  # and it is marked complete


@pytest.mark.parametrize("wiring", WIRINGS)
def test_corrupt_archive_without_md5_poisons_the_cache(model_dir, cache, wiring):
    with fake({HANDLE: model_dir}, cache, wiring, fault="corrupt", archive=True, send_md5=False) as fk:
        out = download()
        size = fk._instances[0].archive().stat().st_size
    assert type(out.exc) is ValueError and str(out.exc) == "Unsupported archive type."
    assert leftovers(cache) == {"1": None, "1.archive": size}  # empty folder + garbage archive, no marker

    # A healthy server does not help: the leftover archive has the full length, the
    # server says Accept-Ranges: bytes, so kagglehub logs "Download already complete"
    # and extracts the garbage again.
    with fake({HANDLE: model_dir}, cache, wiring, archive=True, send_md5=False):
        again = download()
    assert type(again.exc) is ValueError
    # Deleting VERSION.archive (and the folder) is what it takes.
    paths = kagglehub_cache_paths(cache, HANDLE)
    paths["archive"].unlink()
    paths["folder"].rmdir()
    with fake({HANDLE: model_dir}, cache, wiring, archive=True, send_md5=False):
        third = download()
    assert third.exc is None and files_of(Path(third.path)) == files_of(model_dir)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_hang_is_waited_out_until_the_server_drops_it(model_dir, cache, wiring):
    with fake({HANDLE: model_dir}, cache, wiring, fault="hang", hang_seconds=2) as fk:
        out = download()
    assert isinstance(out.exc, requests.ConnectionError)
    # test: ConnectionError(RemoteDisconnected); proxy: ProxyError (a ConnectionError subclass)
    assert type(out.exc) is (requests.ConnectionError if wiring == "test" else requests.exceptions.ProxyError)
    assert 1.9 <= out.elapsed < 10  # exactly as long as the server held the request
    assert fk.requests == [LIST]
    assert leftovers(cache) == {}


def test_hang_has_no_client_timeout(model_dir, cache):
    """kagglehub's API calls carry no timeout: after 15 s it is still waiting."""
    with FakeKaggle({HANDLE: model_dir}, fault="hang", cache_dir=cache, set_environ=False, hang_seconds=30) as fk:
        res = download_in_subprocess(fk.env, timeout=15)
        assert res.get("timed_out"), res
        assert fk.requests == [LIST]
        assert fk.live_handler_threads == 1  # still holding the request
        t0 = time.monotonic()
    closed_in = time.monotonic() - t0
    assert closed_in < 2, "closing must end a hanging handler at once"
    assert fk.live_handler_threads == 0
    assert leftovers(cache) == {}


def test_hang_handler_stops_at_once_when_server_closes():
    fk = FakeKaggle({}, fault="hang", set_environ=False, hang_seconds=30).start()
    try:
        s = socket.create_connection(("127.0.0.1", fk.port), timeout=10)
        s.sendall(b"POST /api/v1/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        deadline = time.monotonic() + 5
        while fk.live_handler_threads == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fk.live_handler_threads == 1
    finally:
        t0 = time.monotonic()
        fk.close()
    assert time.monotonic() - t0 < 2
    assert s.recv(100) == b""  # dropped, never answered
    s.close()
    assert fk.live_handler_threads == 0
    assert not fk.running


def test_hang_handler_stops_by_itself():
    with FakeKaggle({}, fault="hang", set_environ=False, hang_seconds=0.5) as fk:
        t0 = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{fk.url}/api/v1/x", json={}, timeout=10)
        assert time.monotonic() - t0 < 5


def test_env_is_restored_and_port_reusable(model_dir, cache):
    before = dict(os.environ)
    for _ in range(2):  # same port twice in a row
        with fake({HANDLE: model_dir}, cache) as fk:
            assert os.environ["KAGGLE_API_ENVIRONMENT"] == "TEST"
            assert os.environ["KAGGLEHUB_CACHE"] == str(cache)
            assert requests.post(f"{fk.url}/api/v1/models.ModelApiService/Nope", json={}, timeout=5).status_code == 404
        assert dict(os.environ) == before
