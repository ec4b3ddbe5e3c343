"""Fault injection, processes that die or race: kill -9 at 5 points of a conversion
(during the kagglehub download, after reading the checkpoint, inside the HDF5 write,
before the weights' rename, between the weights and the metadata moving into the entry),
and 4 processes converting/loading at once. 6 of the 24 faults (see
tests/fault_support.py).

Each child runs `tests/fault_driver.py`, which stops at a named point on request so that
the parent can SIGKILL it there; the kill -9 children run in parallel (the imports
dominate).
"""

import json
import os

import pytest

import vit_hub
from tests.conftest import TINY_HANDLE
from tests.fault_support import (
    LIST_FILES,
    NAME,
    Env,
    assert_complete,
    assert_lock_free,
    cli,
    entry_files,
    files,
    kill_9,
    wait_for,
)
from tests.kaggle_server import FakeKaggle, kagglehub_cache_paths
from vit_hub.conversion.pipeline import convert_into_cache
from vit_hub.errors import CacheError

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
    with FakeKaggle({TINY_HANDLE: tiny_saved_model}, via_proxy=True, port=0,
                    set_environ=False) as server:
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
    assert files(env.cache) == ["v1/.locks/vit_tiny8_fe.lock", "v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                "v1/vit_tiny8_fe/vit_tiny8_fe.json"]
    if point == "download":  # kagglehub resumed the partial files (HTTP Range)
        assert any(call["range"] for call in server.calls)
        assert kagglehub_cache_paths(env.kagglehub, TINY_HANDLE)["marker"].exists()
    if prior:
        assert entry.metadata()["created"] >= env.before["created"]


# === Concurrency ===


def test_four_processes_at_once_convert_once(env, monkeypatch, tiny_saved_model):  # noqa: F811
    """Two `load_pretrained` and two `convert-weights` on a cold cache (both caches
    cold: the model comes from the fake Kaggle), started together through a barrier."""
    barrier, log = env.tmp / "barrier", env.tmp / "conversions.log"
    barrier.mkdir()
    jobs = [("load", NAME), ("cli", NAME), ("load", NAME), ("cli", NAME)]
    with env.serve(monkeypatch, {TINY_HANDLE: tiny_saved_model}) as server:
        children = [env.child(*job, FAULT_BARRIER=f"{barrier}:4", FAULT_LOG=str(log))
                    for job in jobs]
        outputs = [child.communicate(timeout=400) for child in children]
    for child, (_, err) in zip(children, outputs):
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
    assert files(env.cache) == ["v1/.locks/vit_tiny8_fe.lock", "v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                "v1/vit_tiny8_fe/vit_tiny8_fe.json"]


def test_a_hit_removes_what_a_killed_writer_staged_unless_a_writer_is_at_work(tmp_path):
    """A writer killed while staging a --force rewrite leaves `.tmp-<name>.*` beside a
    complete entry; loads are hits from then on, so the next load removes it when no
    writer holds the lock, and leaves it while one does (it may be that writer's)."""
    import filelock

    from tests import checkpoints
    from vit_hub.cache import CacheEntry

    cache = checkpoints.cache_copy(tmp_path / "cache", NAME)
    entry = CacheEntry(NAME, cache)
    staged = os.path.join(os.path.dirname(entry.folder), f"{entry.staging_prefix}x1")
    os.makedirs(staged)
    with open(os.path.join(staged, f"{NAME}.h5"), "wb") as f:
        f.write(b"\0" * 1000)
    with filelock.FileLock(entry.lock_path):  # a writer at work: its files stay
        vit_hub.load_pretrained(NAME, cache_dir=cache, offline=True)
        assert os.path.isdir(staged)
    vit_hub.load_pretrained(NAME, cache_dir=cache, offline=True)
    assert not os.path.exists(staged)
