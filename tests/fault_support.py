"""Shared by the fault-injection tests (not a test file): the cache under kill -9,
concurrency, corruption, a full disk, no network, and bad inputs. Fast by default (a tiny
model; the kill -9 children run in parallel).

24 faults: kill -9 at 5 points (during the kagglehub download, after reading the
checkpoint, inside the HDF5 write, before the weights' rename, between the weights and
the metadata moving into the entry) and 4 processes converting/loading at once
(tests/test_faults_kill.py); 8 corruptions (bit flip, truncation, empty file, deleted
weights, garbage / non-object / wrong-sha metadata, a truncated file given by path;
tests/test_faults_corruption.py); 5 full disks (patched ENOSPC in the weights and in the
metadata, a real 48 kB tmpfs for the cache and for --output, a disk that fills up
mid-write; tests/test_faults_disk.py); 4 network cases (no network and HTTP 500 with a
warm cache, a warm kagglehub cache, a cold cache) and a read-only shared cache
(tests/test_faults_network.py). Plus 44 bad inputs (tests/test_bad_inputs.py), each
asserting its error class and text and that no file changed.

Child processes run `tests/fault_driver.py` (the tiny catalogue of tests/conftest.py
registered through the public API, then `convert-weights` or `load_pretrained`), which
stops at a named point on request so the parent can SIGKILL it there. Kaggle is
`tests/kaggle_server.FakeKaggle`, wired through an HTTP proxy on an ephemeral port
(streamed downloads, as against the real API; port 7777 is not used).

The fixtures here (`env`, `warm_cache`) are imported by name into the test modules that
use them.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vit_hub
import vit_hub.cli.convert_weights
from tests import checkpoints
from tests.conftest import CATALOGUE, TINY_HANDLE, TINY_IMAGE, TINY_NAME
from tests.kaggle_server import FakeKaggle, kaggle_env, lay_out_kagglehub_cache
from vit_hub.cache import CacheEntry
from vit_hub.conversion.parity import hub_outputs, parity_inputs

NAME = TINY_NAME
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST_FILES = ("POST", "/api/v1/models.ModelApiService/ListModelInstanceVersionFiles")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    """Fresh caches under `root`; Kaggle behind a proxy port where nothing listens (a
    network that does not answer) until `serve` starts the fake there."""

    def __init__(self, root, port=None):
        self.tmp = Path(root)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cache = self.tmp / "vit_hub"
        self.kagglehub = self.tmp / "kagglehub"
        self.vars = {}
        self.point_at(port or free_port())
        for key in ("VIT_HUB_OFFLINE", "VIT_HUB_DOWNLOAD_TIMEOUT"):
            self.vars.pop(key, None)
        self.vars.update(VIT_HUB_CACHE=str(self.cache), TF_CPP_MIN_LOG_LEVEL="3")

    def point_at(self, port):
        self.vars = kaggle_env(self.kagglehub, port, via_proxy=True,
                               home=self.tmp / "home", base=self.vars or None)

    def activate(self, monkeypatch):
        """os.environ := these variables, for in-process calls."""
        for key in set(os.environ) - set(self.vars):
            monkeypatch.delenv(key)
        for key, value in self.vars.items():
            monkeypatch.setenv(key, value)

    @contextlib.contextmanager
    def serve(self, monkeypatch, models, **options):
        closed = self.vars["HTTP_PROXY"]
        with FakeKaggle(models, via_proxy=True, port=0, set_environ=False, **options) as server:
            self.point_at(server.port)
            self.activate(monkeypatch)
            try:
                yield server
            finally:
                self.point_at(int(closed.rsplit(":", 1)[1]))
                self.activate(monkeypatch)

    def lay_out(self, saved_model):
        return lay_out_kagglehub_cache(self.kagglehub, TINY_HANDLE, saved_model)

    def entry(self):
        return CacheEntry(NAME, self.cache)

    def child(self, mode, *args, pause=None, **extra):
        """Starts the driver in a fresh process (the tiny catalogue registered there);
        with `pause`, it stops there and creates `self.tmp / 'reached'`."""
        env = dict(self.vars, FAULT_CATALOGUE=json.dumps(CATALOGUE), **extra)
        if pause:
            env.update(FAULT_PAUSE=pause, FAULT_SIGNAL=str(self.tmp / "reached"))
        return subprocess.Popen([sys.executable, "-m", "tests.fault_driver", mode, *args],
                                env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


# === Fixtures (import them by name into the test modules that use them) ===


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh, empty caches and a network that does not answer, as os.environ."""
    env = Env(tmp_path)
    env.activate(monkeypatch)
    return env


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory, tiny_saved_model):
    """A cache holding a complete entry of the tiny model (copy it before changing it)."""
    root = checkpoints.cache_copy(tmp_path_factory.mktemp("warm") / "vit_hub", NAME)
    assert CacheEntry(NAME, root).state() == "ok"
    return root


# === Helpers ===


def files(root):
    """Every file under `root`, relative, sorted."""
    return sorted(os.path.relpath(os.path.join(folder, f), root)
                  for folder, _, names in os.walk(root) for f in names)


def snapshot(*roots):
    """{path: (size, mtime)} of every file and folder under `roots` (and whether each
    root exists), to prove that nothing changed."""
    state = {}
    for root in map(os.fspath, roots):
        state[root] = os.path.exists(root)
        for folder, dirs, names in os.walk(root):
            for name in dirs + names:
                path = os.path.join(folder, name)
                stat = os.lstat(path)
                state[path] = (stat.st_size if name in names else "dir", stat.st_mtime_ns)
    return state


def entry_files(entry):
    return sorted(os.listdir(entry.folder)) if os.path.isdir(entry.folder) else []


_HUB_OUTPUTS = {}


def assert_complete(entry, saved_model=None):
    """The entry is 'ok', holds exactly its two files (no temporary left), and loads
    with the hub model's outputs."""
    assert entry.state() == "ok", entry.problem()
    assert entry_files(entry) == [f"{NAME}.h5", f"{NAME}.json"]
    if saved_model:
        model = vit_hub.load_pretrained(NAME, cache_dir=entry.root, offline=True)
        inputs = parity_inputs(TINY_IMAGE, batch=2)
        if saved_model not in _HUB_OUTPUTS:
            _HUB_OUTPUTS[saved_model] = hub_outputs(saved_model, inputs)
        np.testing.assert_allclose(model.predict(inputs, verbose=0),
                                   _HUB_OUTPUTS[saved_model], atol=1e-5)


def assert_lock_free(entry):
    import filelock

    lock = filelock.FileLock(entry.lock_path, timeout=5)
    lock.acquire()  # the kernel released the killed holder's lock
    lock.release()


def wait_for(path, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the child ended ({process.returncode}) before {path}:"
                                 f"\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the child did not reach {path} within {timeout} s")
        time.sleep(0.05)


def kill_9(process):
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def cli(capsys, *args):
    """`convert-weights ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        code = vit_hub.cli.convert_weights.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@contextlib.contextmanager
def mounted(target, *options):
    """A mount over `target` for the block (root only): skips the test where mounting is
    not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", *options, str(target)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and mount(8) for a real small or read-only file system")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def tiny_tmpfs(target, size="48k"):
    return mounted(target, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")


@contextlib.contextmanager
def read_only(target):
    """`target` (a folder) not writable: a read-only bind mount as root (root ignores
    permissions), else its write permission removed."""
    if os.geteuid() != 0:
        folders = [Path(folder) for folder, _, _ in os.walk(target)]
        modes = {folder: folder.stat().st_mode for folder in folders}
        for folder in folders:
            folder.chmod(0o555)
        try:
            yield target
        finally:
            for folder in reversed(folders):
                folder.chmod(modes[folder])
        return
    with mounted(target, "--bind", str(target)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        yield target
