"""Fault injection: the cache under kill -9, concurrency, corruption, a full disk, no
network, and bad inputs. Fast by default (a tiny model; the kill -9 children run in
parallel).

24 faults: kill -9 at 5 points (during the kagglehub download, after reading the
checkpoint, inside the HDF5 write, before the weights' rename, between the weights and
the metadata moving into the entry); 4 processes converting/loading at once; 8
corruptions (bit flip, truncation, empty file, deleted weights, garbage / non-object /
wrong-sha metadata, a truncated file given by path); 5 full disks (patched ENOSPC in the
weights and in the metadata, a real 48 kB tmpfs for the cache and for --output, a disk
that fills up mid-write); 4 network cases (no network and HTTP 500 with a warm cache, a
warm kagglehub cache, a cold cache); a read-only shared cache. Plus 44 bad inputs
(BAD_INPUTS), each asserting its error text and that no file changed.

Child processes run `tests/fault_driver.py` (the tiny catalogue registered, then
`convert-weights` or `load_pretrained`), which stops at a named point on request so the
parent can SIGKILL it there. Kaggle is `tests/kaggle_server.FakeKaggle`, wired through
an HTTP proxy on an ephemeral port (streamed downloads, as against the real API; port
7777 is not used).
"""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import converters.cli
import converters.download
import vit_hub
from converters.download import DownloadError
from converters.pipeline import convert_into_cache
from converters.parity import hub_outputs, parity_inputs
from tests import hub_export
from tests.kaggle_server import FakeKaggle, kaggle_env, kagglehub_cache_paths, lay_out_kagglehub_cache
from tests.test_pretrained import TINY_CONFIG, TINY_ENTRY, TINY_HANDLE
from vit_hub import manifest, variants
from vit_hub.cache import CacheEntry, CacheError
from vit_hub.manifest import ManifestError
from vit_hub.weights import WeightsError

NAME = "vit_tiny8_fe"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST_FILES = ("POST", "/api/v1/models.ModelApiService/ListModelInstanceVersionFiles")
CATALOGUE = {
    "models": {NAME: TINY_ENTRY},
    "widths": {"tiny": [32, 2, 4, 64]},
    "variants": {"vit_tiny8": ["tiny", 8]},
}


# === Fixtures and helpers ===


@pytest.fixture(scope="module")
def tiny_saved_model(tmp_path_factory):
    params = hub_export.init_params(TINY_CONFIG, "fe", seed=3)
    return hub_export.export_saved_model(params, TINY_CONFIG, "fe",
                                         str(tmp_path_factory.mktemp("tiny") / "hub"))


def register(monkeypatch):
    for size, widths in CATALOGUE["widths"].items():
        monkeypatch.setitem(variants._WIDTHS, size, tuple(widths))
    for variant, spec in CATALOGUE["variants"].items():
        monkeypatch.setitem(variants._VARIANTS, variant, tuple(spec))
    models = {**manifest.load_manifest(), **CATALOGUE["models"]}
    monkeypatch.setattr(manifest, "load_manifest", lambda: models)
    return models


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
        """Starts the driver in a fresh process; with `pause`, it stops there and
        creates `self.tmp / 'reached'`."""
        env = dict(self.vars, FAULT_CATALOGUE=json.dumps(CATALOGUE), **extra)
        if pause:
            env.update(FAULT_PAUSE=pause, FAULT_SIGNAL=str(self.tmp / "reached"))
        return subprocess.Popen([sys.executable, "-m", "tests.fault_driver", mode, *args],
                                env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def env(tmp_path, monkeypatch):
    register(monkeypatch)
    env = Env(tmp_path)
    env.activate(monkeypatch)
    return env


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory, tiny_saved_model):
    """A cache holding a complete entry of the tiny model (copy it before changing it)."""
    root = tmp_path_factory.mktemp("warm") / "vit_hub"
    with pytest.MonkeyPatch.context() as mp:
        register(mp)
        convert_into_cache(NAME, cache_dir=root, source=tiny_saved_model, verify=False)
    assert CacheEntry(NAME, root).state() == "ok"
    return root


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
        inputs = parity_inputs(32, batch=2)
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
        code = converters.cli.main([str(a) for a in args])
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


# === kill -9 at each point of a conversion ===

# id: (where the child is killed, whether a complete entry exists before: the killed
#      run is then `convert-weights --force` over it, and the state expected after)
SCENARIOS = {
    "download": ("download", False, "missing"),  # kagglehub has half of each file
    "convert": ("convert", True, "ok"),  # checkpoint read, nothing written
    "write": ("write", False, "missing"),  # HDF5 file half written
    "rename": ("rename", True, "ok"),  # weights complete in their temporary file
    "publish": ("publish", True, "missing"),  # new weights in the entry, metadata not
}


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_saved_model):
    """Runs every scenario at once (one fresh process each, in parallel: the imports
    dominate), kills each child with SIGKILL where it stopped, and yields {id: Env}
    and the fake Kaggle the download scenario used (still serving)."""
    root = tmp_path_factory.mktemp("killed")
    children = {}
    with pytest.MonkeyPatch.context() as mp, FakeKaggle(
            {TINY_HANDLE: tiny_saved_model}, via_proxy=True, port=0, set_environ=False) as server:
        register(mp)
        envs = {}
        try:
            for scenario, (point, prior, _) in SCENARIOS.items():
                env = envs[scenario] = Env(root / scenario, server.port)
                if point != "download":
                    env.lay_out(tiny_saved_model)
                if prior:
                    convert_into_cache(NAME, cache_dir=env.cache, source=tiny_saved_model,
                                       verify=False)
                    env.before = env.entry().metadata()
                args = [NAME, "--no-verify"] + (["--force"] if prior else [])
                children[scenario] = env.child("cli", *args, pause=point)
            for scenario, child in children.items():
                wait_for(envs[scenario].tmp / "reached", child)
                kill_9(child)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        yield envs, server


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_9_leaves_no_half_entry_and_the_next_run_completes(
        killed, scenario, monkeypatch, capsys, tiny_saved_model):
    envs, server = killed
    env, (point, prior, expected) = envs[scenario], SCENARIOS[scenario]
    register(monkeypatch)
    env.activate(monkeypatch)
    entry = env.entry()

    # Never a half: the old entry as it was, or 'missing'.
    assert entry.state() == expected, (entry.problem(), entry_files(entry))
    if expected == "ok":
        assert entry.metadata() == env.before
    else:
        assert not os.path.exists(entry.metadata_path)
    assert not [f for f in entry_files(entry) if f.startswith(".tmp-")]
    staged = [f for f in os.listdir(os.path.dirname(entry.folder)) if f.startswith(".tmp-")]
    assert bool(staged) == (point not in ("download", "convert")), staged
    assert_lock_free(entry)
    if point == "download":  # kagglehub's partial download: files, no completion marker
        paths = kagglehub_cache_paths(env.kagglehub, TINY_HANDLE)
        assert files(paths["folder"]) and not paths["marker"].exists()
        with pytest.raises(CacheError, match="offline mode is on"):
            vit_hub.load_pretrained(NAME, offline=True)

    # The next run completes, removes what the killed one left, and leaves one entry.
    code, out, err = cli(capsys, NAME, *(["--force"] if prior else []))
    assert code == 0, err
    assert f"{NAME}  converted" in out
    assert_complete(entry, tiny_saved_model)
    assert files(env.cache) == ["v1/vit_tiny8_fe.lock", "v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                "v1/vit_tiny8_fe/vit_tiny8_fe.json"]
    if point == "download":  # kagglehub resumed the partial files (HTTP Range)
        assert any(call["range"] for call in server.calls)
        assert kagglehub_cache_paths(env.kagglehub, TINY_HANDLE)["marker"].exists()
    if prior:
        assert entry.metadata()["created"] >= env.before["created"]


# === Concurrency ===


def test_four_processes_at_once_convert_once(env, monkeypatch, tiny_saved_model):
    """Two `load_pretrained` and two `convert-weights` on a cold cache (both caches
    cold: the model comes from the fake Kaggle), started together through a barrier."""
    barrier, log = env.tmp / "barrier", env.tmp / "conversions.log"
    barrier.mkdir()
    jobs = [("load", NAME), ("cli", NAME), ("load", NAME), ("cli", NAME)]
    with env.serve(monkeypatch, {TINY_HANDLE: tiny_saved_model}) as server:
        children = [env.child(*job, FAULT_BARRIER=f"{barrier}:4", FAULT_LOG=str(log))
                    for job in jobs]
        outputs = [child.communicate(timeout=400) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    assert open(log).read().count("convert ") == 1  # one conversion ...
    assert server.requests.count(LIST_FILES) == 1  # ... from one download
    for (mode, _), (out, _) in zip(jobs, outputs):
        if mode == "load":
            assert json.loads(out.strip().splitlines()[-1])["output_shape"] == [None, 32]
        else:
            assert f"{NAME}  converted" in out or f"{NAME}  cached" in out
    assert sum(f"{NAME}  converted" in out for out, _ in outputs) <= 1
    assert_complete(env.entry(), tiny_saved_model)
    assert files(env.cache) == ["v1/vit_tiny8_fe.lock", "v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                "v1/vit_tiny8_fe/vit_tiny8_fe.json"]


# === Corruption: detected by checksum, never loaded ===


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "bit-flip": (lambda w, m: _flip(w), "fail their sha256 check"),
    "truncated": (lambda w, m: os.truncate(w, w.stat().st_size // 2), "fail their sha256 check"),
    "empty": (lambda w, m: os.truncate(w, 0), "fail their sha256 check"),
    "weights-deleted": (lambda w, m: w.unlink(), "is missing"),
    "metadata-garbage": (lambda w, m: m.write_text('{"sha256": "ab'), "is unreadable"),
    "metadata-not-an-object": (lambda w, m: m.write_text("[1, 2]"), "is unreadable"),
    "metadata-other-sha": (lambda w, m: m.write_text(json.dumps({"sha256": "0" * 64})),
                           "fail their sha256 check"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_entry_is_detected_by_checksum_and_not_loaded(
        env, monkeypatch, warm_cache, tiny_saved_model, corruption):
    shutil.copytree(warm_cache, env.cache)
    entry = env.entry()
    damage, problem = CORRUPTIONS[corruption]
    damage(Path(entry.weights_path), Path(entry.metadata_path))
    assert entry.state() == "corrupt"
    before = snapshot(env.cache)
    reads = []
    monkeypatch.setattr(vit_hub.pretrained, "read_weights_file",
                        lambda path: reads.append(path))
    with pytest.raises(CacheError) as err:
        vit_hub.load_pretrained(NAME, offline=True)
    message = str(err.value)
    assert problem in message and entry.folder in message and "is not loaded" in message
    assert f"convert-weights {NAME} --force" in message
    assert reads == []  # never parsed
    assert snapshot(env.cache) == before
    if corruption in ("bit-flip", "metadata-garbage"):
        monkeypatch.undo()
        register(monkeypatch)
        env.activate(monkeypatch)
        # Online, it is converted again (here from kagglehub's cache) and replaced.
        env.lay_out(tiny_saved_model)
        with pytest.warns(UserWarning, match="Converting again"):
            vit_hub.load_pretrained(NAME)
        assert_complete(entry)


def test_corrupt_weights_given_by_path_are_not_loaded(tmp_path, warm_cache, monkeypatch):
    register(monkeypatch)
    copy = tmp_path / "copy"
    shutil.copytree(CacheEntry(NAME, warm_cache).folder, copy)
    weights = copy / f"{NAME}.h5"
    os.truncate(weights, weights.stat().st_size - 100)
    reads = []
    monkeypatch.setattr(vit_hub.pretrained, "read_weights_file", lambda p: reads.append(p))
    with pytest.raises(WeightsError, match="does not match the sha256 in .*corrupt"):
        vit_hub.load_pretrained(NAME, weights=weights)
    assert reads == []


# === A full disk ===


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_weights(env, monkeypatch, tiny_saved_model):
    import h5py

    env.lay_out(tiny_saved_model)
    original = h5py.Group.create_dataset
    calls = []

    def create_dataset(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # some tensors are written, then the disk fills up
            _enospc()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    with pytest.raises(CacheError) as err:
        convert_into_cache(NAME, verify=False)  # from kagglehub's cache
    entry = env.entry()
    assert str(err.value).startswith(f"Cannot write the vit_hub cache at {entry.folder}: "
                                     "the disk is full (No space left on device).")
    assert "Nothing partial was left there" in str(err.value)
    assert "--cache-dir or VIT_HUB_CACHE" in str(err.value)
    assert files(env.cache) == ["v1/vit_tiny8_fe.lock"] and entry.state() == "missing"
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    convert_into_cache(NAME, verify=False)  # space again: it completes
    assert_complete(entry)


def test_disk_full_while_writing_metadata(env, monkeypatch, tiny_saved_model, capsys):
    import vit_hub.files

    def write_text(path, text):  # half the JSON reaches the disk, then ENOSPC
        with vit_hub.files.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write(text[: len(text) // 2])
            _enospc()

    monkeypatch.setattr(vit_hub.files, "write_text", write_text)
    code, out, err = cli(capsys, NAME, "--source", tiny_saved_model, "--no-verify")
    entry = env.entry()
    assert code == 1 and "FAILED" in out
    assert (f"convert-weights: {NAME}: Cannot write the vit_hub cache at {entry.folder}: the "
            "disk is full") in err
    assert files(env.cache) == ["v1/vit_tiny8_fe.lock"]  # the weights written too: gone


def test_disk_full_on_a_real_small_file_system(env, monkeypatch, tiny_saved_model, capsys):
    with tiny_tmpfs(env.tmp / "small") as small:
        with pytest.raises(CacheError) as err:
            convert_into_cache(NAME, cache_dir=small, source=tiny_saved_model, verify=False)
        entry = CacheEntry(NAME, small)
        assert re.match(rf"Cannot write the vit_hub cache at {re.escape(entry.folder)}: the "
                        r"disk is full \(No space left on device; the weights need \d+ kB, "
                        r"\d+ kB is free\)\. Nothing partial was left there\.", str(err.value))
        assert files(small) == ["v1/vit_tiny8_fe.lock"]  # the empty lock file only
        # --output on the full disk: the cache entry is complete, the copy is not made.
        code, out, stderr = cli(capsys, NAME, "--source", tiny_saved_model, "--no-verify",
                                "--output", small / "out" / "w.h5")
        assert code == 1
        assert f"Cannot write the --output copy at {small / 'out' / 'w.h5'}: the disk is full" in stderr
        assert files(small / "out") == []
        assert_complete(env.entry())


def test_disk_filling_up_mid_write_leaves_no_half_entry(env, tiny_saved_model, capsys):
    """The free-space check passes, then the disk fills up (another process) while the
    weights are being written. HDF5 then raises, or crashes the process (SIGSEGV: seen
    with h5py 3.14 / HDF5 1.14.6); either way no half entry, and the next run, with
    space again, completes and removes what the crashed one left."""
    with tiny_tmpfs(env.tmp / "small", size="1m") as small:
        resume = env.tmp / "resume"
        args = [NAME, "--no-verify", "--source", tiny_saved_model, "--cache-dir", small]
        child = env.child("cli", *args, pause="write", FAULT_RESUME=str(resume))
        wait_for(env.tmp / "reached", child)
        filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError) as full:
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
        assert full.value.errno == errno.ENOSPC
        resume.touch()
        out, err = child.communicate(timeout=180)
        assert child.returncode in (1, -signal.SIGSEGV), err[-3000:]
        if child.returncode == 1:
            assert "the disk is full (No space left on device)" in err
        entry = CacheEntry(NAME, small)
        assert entry.state() == "missing" and entry_files(entry) == []
        (small / "filler").unlink()
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        assert files(small) == ["v1/vit_tiny8_fe.lock", "v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                "v1/vit_tiny8_fe/vit_tiny8_fe.json"]


# === No network ===


def test_no_network_with_warm_cache_still_loads(env, monkeypatch, warm_cache, tiny_saved_model):
    shutil.copytree(warm_cache, env.cache)
    vit_hub.load_pretrained(NAME)  # nothing listens on the Kaggle port
    with env.serve(monkeypatch, {TINY_HANDLE: tiny_saved_model}, fault="http500") as server:
        vit_hub.load_pretrained(NAME)
        assert server.requests == []  # a hit never asks the network
    assert_complete(env.entry())


def test_no_network_with_warm_kagglehub_cache_converts(env, tiny_saved_model):
    env.lay_out(tiny_saved_model)
    vit_hub.load_pretrained(NAME)  # pinned version: kagglehub resolves it locally
    assert_complete(env.entry(), tiny_saved_model)


def test_no_network_with_cold_cache_is_one_clear_error(env, capsys):
    with pytest.raises(DownloadError) as err:
        vit_hub.load_pretrained(NAME)
    message = str(err.value)
    assert message.startswith(f"Downloading {TINY_HANDLE} from Kaggle failed: Kaggle could "
                              "not be reached (ProxyError: [Errno 111] Connection refused;")
    assert "\n" not in message and message.count("Kaggle could not be reached") == 1
    assert "convert-weights NAME --source DIR" in message
    assert files(env.cache) == ["v1/vit_tiny8_fe.lock"]
    assert files(env.kagglehub) == []
    code, out, stderr = cli(capsys, NAME)
    assert code == 1 and "FAILED" in out
    errors = [line for line in stderr.splitlines() if line.startswith("convert-weights")]
    assert errors == [f"convert-weights: {NAME}: {message}"]  # (the rest: progress bars)


def test_read_only_shared_cache_still_loads(env, warm_cache, capsys):
    shutil.copytree(warm_cache, env.cache)
    with read_only(env.cache):
        before = snapshot(env.cache)
        vit_hub.load_pretrained(NAME)
        code, out, _ = cli(capsys, NAME)
        assert code == 0 and f"{NAME}  cached" in out
        code, out, err = cli(capsys, NAME, "--force")
        assert code == 1
        assert re.search(rf"Cannot write the vit_hub cache at {re.escape(str(env.cache))}: "
                         r"\[Errno (30|13)\] (Read-only file system|Permission denied)", err)
        assert snapshot(env.cache) == before


# === Bad inputs: a clear error naming the problem, and no file changed ===


class Failed(Exception):
    """A `convert-weights` run that exited non-zero: its status and stderr."""

    def __init__(self, code, stderr):
        super().__init__(f"exit status {code}: {stderr}")
        self.code = code


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_saved_model, warm_cache):
    """A warm cache and a folder of bad input files, shared by the bad-input cases (each
    proves it changed none of them)."""
    root = tmp_path_factory.mktemp("bad")
    env = Env(root)
    shutil.copytree(warm_cache, env.cache)
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not a checkpoint, not an image\n")
    (inputs / "a_file").write_text("a file where a folder is expected\n")
    (inputs / "garbage.h5").write_bytes(b"\x89HDF-not-really" * 100)
    (inputs / "read_only_cache").mkdir()
    shutil.copytree(tiny_saved_model, inputs / "hub")
    truncated = shutil.copytree(tiny_saved_model, inputs / "truncated_hub")
    data = next((truncated / "variables").glob("variables.data-*"))
    os.truncate(data, data.stat().st_size // 3)
    no_variables = shutil.copytree(tiny_saved_model, inputs / "no_variables_hub")
    (no_variables / "variables" / "variables.index").unlink()
    np.savez(inputs / "pickled.npz", head=np.array([{"__reduce__": "os.system"}], object))
    np.savez(inputs / "unrelated.npz", foo=np.zeros((3, 3), np.float32))
    (inputs / "truncated.npz").write_bytes((inputs / "unrelated.npz").read_bytes()[:100])
    source = CacheEntry(NAME, env.cache)
    for folder in ("weights", "tampered", "garbage_sidecar"):
        (inputs / folder).mkdir()
        shutil.copy(source.weights_path, inputs / folder)
        shutil.copy(source.metadata_path, inputs / folder)
    metadata = json.loads((inputs / "tampered" / f"{NAME}.json").read_text())
    metadata["sha256"] = "0" * 64
    (inputs / "tampered" / f"{NAME}.json").write_text(json.dumps(metadata))
    (inputs / "garbage_sidecar" / f"{NAME}.json").write_text("{{{ not json")
    return env, inputs


def _run_cli(c, *args):
    code, out, err = cli(c.capsys, *args)
    if code:
        raise Failed(code, err)


def _add_model(c, name, **fields):
    c.monkeypatch.setitem(c.models, name, {**TINY_ENTRY, **fields})


def _bad_timeout(c):
    c.monkeypatch.setenv("VIT_HUB_DOWNLOAD_TIMEOUT", "abc")
    _run_cli(c, NAME, "--force")


def _read_only_cache(c):
    with read_only(c.inputs / "read_only_cache") as folder:
        vit_hub.load_pretrained(NAME, cache_dir=folder)


def _image(shape, dtype=np.uint8, value=0):
    return np.full(shape, value, dtype)


CLASSIFICATION = "vit_tiny8_classification"
UNPINNED = "spsayakpaul/vision-transformer/tensorFlow2/vit-tiny8-fe"

# id: (the call, the error class (or the exit status of convert-weights), its text)
BAD_INPUTS = {
    # images
    "image-rank-2": (lambda c: vit_hub.preprocess(_image((32, 32))), ValueError,
                     r"^image has shape \(32, 32\): expected \(height, width, 3\) or a batch"),
    "image-rank-5": (lambda c: vit_hub.preprocess(_image((1, 2, 32, 32, 3))), ValueError,
                     r"^image has shape \(1, 2, 32, 32, 3\): expected"),
    "image-4-channels": (lambda c: vit_hub.preprocess(_image((32, 32, 4))), ValueError,
                         r"^image has 4 channels, expected 3 \(RGB\): drop the extra"),
    "image-1-channel": (lambda c: vit_hub.preprocess(_image((2, 32, 32, 1))), ValueError,
                        r"^image batch has 1 channels, expected 3 \(RGB\): grayscale"),
    "image-dtype-int64": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.int64)),
                          TypeError, r"^image has dtype int64: pass uint8 \(0\.\.255\) or floats"),
    "image-dtype-bool": (lambda c: vit_hub.preprocess(_image((32, 32, 3), bool)), TypeError,
                         r"^image has dtype bool"),
    "image-nan": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.float32, np.nan)),
                  ValueError, r"^image contains NaN or infinite values"),
    "image-inf": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.float32, np.inf)),
                  ValueError, r"^image contains NaN or infinite values"),
    "image-floats-0-255": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.float32, 200)),
                           ValueError, r"values in \[200, 200\]: float images must be in \[0, 1\]"),
    "image-file-not-an-image": (lambda c: vit_hub.preprocess(c.inputs / "notes.txt"),
                                ValueError, r"notes\.txt is not a readable JPEG, PNG, GIF or BMP"),
    "image-file-missing": (lambda c: vit_hub.preprocess(c.inputs / "nope.png"),
                           FileNotFoundError, r"^No image file at .*nope\.png"),
    "logits-of-another-head": (lambda c: vit_hub.decode_predictions(np.zeros((2, 10))),
                               ValueError, r"shape \(batch, 1000\), got \(2, 10\)"),
    # model names, handles, the manifest
    "unknown-name": (lambda c: vit_hub.load_pretrained("vit_b32_fee"), ValueError,
                     r"^Unknown pretrained model 'vit_b32_fee'\. Did you mean 'vit_b32_fe'"),
    "name-with-dotdot": (lambda c: vit_hub.load_pretrained(f"../{NAME}"), ValueError,
                         r"^'\.\./vit_tiny8_fe' is not a model name: .*\(no '/', '\\' or '\.\.'\)\. "
                         r"Did you mean 'vit_tiny8_fe'"),
    "name-absolute-path": (lambda c: vit_hub.load_pretrained(str(c.inputs / "x")), ValueError,
                           r"is not a model name"),
    "cache-entry-with-dotdot": (lambda c: CacheEntry("../../etc"), ValueError,
                                r"^'\.\./\.\./etc' is not a model name"),
    "cli-name-with-dotdot": (lambda c: _run_cli(c, f"../{NAME}"), 2,
                             r"convert-weights: '\.\./vit_tiny8_fe' is not a model name"),
    "download-handle-with-dotdot": (
        lambda c: converters.download.download("spsayakpaul/../../tmp/x/1"), DownloadError,
        r"'spsayakpaul/\.\./\.\./tmp/x/1' is not a pinned Kaggle model handle"),
    "manifest-bad-fields": (
        lambda c: (_add_model(c, "vit_bad_fe", image_size="224", kind="detector"),
                   vit_hub.load_pretrained("vit_bad_fe")), ManifestError,
        r"^Manifest entry 'vit_bad_fe' is invalid: 'image_size' must be a int, got '224'; "
        r"'kind' must be 'fe' or 'classification', got 'detector'\.$"),
    "manifest-handle-with-dotdot": (
        lambda c: (_add_model(c, "vit_evil_fe", handle="spsayakpaul/../../../tmp/1"),
                   vit_hub.load_pretrained("vit_evil_fe")), ManifestError,
        r"'handle' 'spsayakpaul/\.\./\.\./\.\./tmp/1' is not owner/model/framework/variation"),
    "manifest-unpinned-handle": (
        lambda c: (_add_model(c, "vit_latest_fe", handle=UNPINNED),
                   vit_hub.load_pretrained("vit_latest_fe")), ManifestError,
        r"is not owner/model/framework/variation/version with a pinned numeric version"),
    "manifest-name-with-separator": (
        lambda c: manifest.validate_entry("vit/../../x", TINY_ENTRY), ManifestError,
        r"the name must be lower-case letters, digits and '_' \(no path separators"),
    "model-without-converter": (lambda c: vit_hub.load_pretrained("vit_r50_l32_fe"),
                                NotImplementedError, r"hybrid ResNet\+ViT"),
    # checkpoints and weights files
    "wrong-checkpoint-for-the-model": (
        lambda c: _run_cli(c, CLASSIFICATION, "--source", c.inputs / "hub"), 1,
        r"it holds 38 tensors, the model needs 40 \(2 fewer: an fe checkpoint, without "
        r"head, asked for as classification\?\)"),
    "truncated-saved-model": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "truncated_hub", "--force"), 1,
        r"truncated_hub.*Cannot read the variables of .* truncated or corrupt"),
    "saved-model-without-variables": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "no_variables_hub", "--force"), 1,
        r"no_variables_hub is not a SavedModel directory: .*variables\.index is missing"),
    "source-neither-saved-model-nor-npz": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "notes.txt", "--force"), 1,
        r"notes\.txt is neither a SavedModel directory nor an \.npz file"),
    "npz-with-pickled-objects": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "pickled.npz", "--force",
                           "--no-verify"), 1,
        r"pickled\.npz holds pickled Python objects .*pickles are not loaded because they "
        r"can run code"),
    "truncated-npz": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "truncated.npz", "--force",
                           "--no-verify"), 1,
        r"Cannot read .*truncated\.npz as an \.npz archive .*truncated or not an npz"),
    "npz-of-another-model": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "unrelated.npz", "--force",
                           "--no-verify"), 1,
        r"unrelated\.npz does not match .*\n  - missing from the checkpoint: embedding/kernel"
        r".*\n  - in the checkpoint but not in the model: foo"),
    "weights-file-missing": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "nope.h5"), WeightsError,
        r"^No weights file at .*nope\.h5: pass the \.h5 file"),
    "weights-path-is-a-folder": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "hub"), WeightsError,
        r"^No weights file at .*hub \(it is a folder\)"),
    "weights-file-not-hdf5": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "garbage.h5"), WeightsError,
        r"^Cannot read weights file .*garbage\.h5: .*truncated or corrupt"),
    "weights-of-another-model": (
        lambda c: vit_hub.load_pretrained("vit_s16_fe", weights=c.inputs / "weights" / f"{NAME}.h5"),
        WeightsError,
        r"holds another network than vit_s16_fe: patch_size 8, hidden_dim 32, num_layers 2, "
        r"num_heads 4, mlp_dim 64, without head; vit_s16_fe is patch_size 16, hidden_dim 384"),
    "weights-of-the-other-kind": (
        lambda c: vit_hub.load_pretrained(CLASSIFICATION, weights=c.inputs / "weights" / f"{NAME}.h5"),
        WeightsError, r"mlp_dim 64, without head; vit_tiny8_classification is .* with head"),
    "weights-sidecar-sha-mismatch": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "tampered" / f"{NAME}.h5"),
        WeightsError, r"does not match the sha256 in .*tampered/vit_tiny8_fe\.json"),
    "weights-sidecar-garbage": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "garbage_sidecar" / f"{NAME}.h5"),
        WeightsError, r"The metadata .*garbage_sidecar/vit_tiny8_fe\.json beside .* is "
                      r"unreadable .*they are not loaded"),
    # options, folders, environment
    "image-size-not-a-multiple-of-the-patch": (
        lambda c: vit_hub.load_pretrained(NAME, image_size=30), ValueError,
        r"image_size 30x30 is not a positive multiple of the patch size 8"),
    "non-writable-cache-dir": (_read_only_cache, CacheError,
                               r"^Cannot write the vit_hub cache at .*read_only_cache: "
                               r"\[Errno (30|13)\] .*Choose a writable folder"),
    "cache-dir-is-a-file": (
        lambda c: vit_hub.load_pretrained(NAME, cache_dir=c.inputs / "a_file"), CacheError,
        r"^Cannot write the vit_hub cache at .*a_file: \[Errno 20\] a file is in the way"),
    "cli-cache-dir-is-a-file": (
        lambda c: _run_cli(c, NAME, "--cache-dir", c.inputs / "a_file"), 2,
        r"--cache-dir .*a_file is a file, not a folder"),
    "cli-output-is-a-folder": (
        lambda c: _run_cli(c, NAME, "--output", c.inputs), 2,
        r"--output .*inputs is a folder: give the path of the weights file"),
    "bad-download-timeout": (_bad_timeout, 1,
                             r"VIT_HUB_DOWNLOAD_TIMEOUT='abc' is not a number of seconds > 0"),
    "offline-and-not-cached": (
        lambda c: vit_hub.load_pretrained(NAME, cache_dir=c.inputs / "no_cache", offline=True),
        CacheError, r"is not in the vit_hub cache .* and offline mode is on"),
}


def test_bad_inputs_count():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_changes_no_file(bad, case, monkeypatch, capsys,
                                                           recwarn):
    env, inputs = bad
    models = register(monkeypatch)
    monkeypatch.setitem(models, CLASSIFICATION, {
        **TINY_ENTRY, "kind": "classification",
        "handle": "spsayakpaul/vision-transformer/tensorFlow2/vit-tiny8-classification/1"})
    env.activate(monkeypatch)
    context = types.SimpleNamespace(inputs=inputs, capsys=capsys, monkeypatch=monkeypatch,
                                    models=models)
    call, expected, text = BAD_INPUTS[case]
    before = snapshot(env.tmp)
    with pytest.raises(Failed if isinstance(expected, int) else expected) as err:
        call(context)
    assert re.search(text, str(err.value), re.S), str(err.value)
    if isinstance(expected, int):
        assert err.value.code == expected
    assert snapshot(env.tmp) == before
    assert CacheEntry(NAME, env.cache).state() == "ok"
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    """A cache shared by a group must be readable by the group: atomic writes get the
    mode a plain open() would give (0666 & ~umask), not mkstemp's private 0600."""
    import stat

    from vit_hub.files import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "shared.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "shared.json").st_mode) == 0o644
