"""load_pretrained and the cache, through the real kagglehub code.

In-process tests register a tiny catalogue entry (`vit_tiny8_fe`, 2 blocks of width 32),
served from a test-built checkpoint in the published format: from a kagglehub cache laid
out as kagglehub lays it out, or downloaded through kagglehub from a loopback fake of
Kaggle's API. End-to-end tests run the real `vit_b32_fe` in fresh processes.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import vit_hub
from tests import checkpoints
from tests.conftest import TINY, TINY_ENTRY, TINY_HANDLE, TINY_NAME, cache_files
from tests.kaggle_server import FakeKaggle, kaggle_env, lay_out_kagglehub_cache
from vit_hub.cache import CacheEntry
from vit_hub.conversion import published_format
from vit_hub.conversion.parity import hub_outputs, parity_inputs
from vit_hub.errors import CacheError, DownloadError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh caches; kagglehub pointed at loopback port 7777 (nothing listens there
    unless a test starts the fake server), with no credentials."""
    for key, value in kaggle_env(tmp_path / "kagglehub").items():
        monkeypatch.setenv(key, value)
    for key in ("VIT_HUB_OFFLINE", "VIT_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VIT_HUB_CACHE", str(tmp_path / "vit_hub"))
    return tmp_path


def test_cache_hit_in_kagglehub_cache_converts_without_network(env, tiny_saved_model):
    lay_out_kagglehub_cache(env / "kagglehub", TINY_HANDLE, tiny_saved_model)
    model = vit_hub.load_pretrained("vit_tiny8_fe")
    inputs = parity_inputs(32)
    np.testing.assert_allclose(model.predict(inputs, verbose=0),
                               hub_outputs(tiny_saved_model, inputs), atol=1e-5)
    metadata = CacheEntry("vit_tiny8_fe").metadata()
    assert metadata["parity"]["max_abs"] <= 1e-5
    assert metadata["handle"] == TINY_HANDLE
    assert cache_files(env / "vit_hub") == ["v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                            "v1/vit_tiny8_fe/vit_tiny8_fe.json"]


@pytest.mark.usefixtures("test_port")  # (FakeKaggle on port 7777)
def test_download_through_kagglehub_then_cache_hit(env, tiny_saved_model):
    with FakeKaggle({TINY_HANDLE: tiny_saved_model}, set_environ=False) as server:
        model = vit_hub.load_pretrained("vit_tiny8_fe")
        assert ("POST", "/api/v1/models.ModelApiService/ListModelInstanceVersionFiles") in server.requests
        first = len(server.requests)
        again = vit_hub.load_pretrained("vit_tiny8_fe")
        assert len(server.requests) == first  # a hit: no request at all
    inputs = parity_inputs(32)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0), again.predict(inputs, verbose=0))


@pytest.mark.usefixtures("test_port")  # (FakeKaggle on port 7777)
@pytest.mark.parametrize("fault", ["http500", "truncated", "corrupt"])
def test_failing_server_leaves_both_caches_clean(env, tiny_saved_model, fault):
    options = {"send_md5": False} if fault == "corrupt" else {}
    with FakeKaggle({TINY_HANDLE: tiny_saved_model}, fault=fault, set_environ=False, **options):
        with pytest.raises((DownloadError, vit_hub.WeightsError)) as err:
            vit_hub.load_pretrained("vit_tiny8_fe")
    assert "vit-tiny8-fe" in str(err.value) or "tiny" in str(err.value)
    assert cache_files(env / "vit_hub") == []
    assert cache_files(env / "kagglehub") == []
    # ... and the next attempt against a healthy server succeeds.
    with FakeKaggle({TINY_HANDLE: tiny_saved_model}, set_environ=False):
        assert vit_hub.load_pretrained("vit_tiny8_fe").output_shape == (None, 32)


@pytest.mark.usefixtures("test_port")  # (FakeKaggle on port 7777)
def test_hanging_server_is_bounded(env, tiny_saved_model, monkeypatch):
    monkeypatch.setenv("VIT_HUB_DOWNLOAD_TIMEOUT", "2")
    with FakeKaggle({TINY_HANDLE: tiny_saved_model}, fault="hang", set_environ=False):
        with pytest.raises(DownloadError, match="did not finish within 2 s"):
            vit_hub.load_pretrained("vit_tiny8_fe")
    assert cache_files(env / "vit_hub") == []


@pytest.mark.usefixtures("test_port")  # (FakeKaggle on port 7777)
def test_offline_never_touches_the_network(env, tiny_saved_model, monkeypatch):
    monkeypatch.setenv("VIT_HUB_OFFLINE", "1")
    with FakeKaggle({TINY_HANDLE: tiny_saved_model}, set_environ=False) as server:
        with pytest.raises(CacheError) as err:
            vit_hub.load_pretrained("vit_tiny8_fe")
        assert server.requests == []
    assert "offline mode is on" in str(err.value)
    assert "convert-weights vit_tiny8_fe --source DIR" in str(err.value)
    with pytest.raises(CacheError, match="offline mode is on"):
        vit_hub.load_pretrained("vit_tiny8_fe", offline=True)


def test_corrupt_cache_entry_is_detected(env, tiny_saved_model, monkeypatch):
    lay_out_kagglehub_cache(env / "kagglehub", TINY_HANDLE, tiny_saved_model)
    vit_hub.load_pretrained("vit_tiny8_fe")
    entry = CacheEntry("vit_tiny8_fe")
    data = bytearray(open(entry.weights_path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(entry.weights_path, "wb").write(bytes(data))
    assert entry.state() == "corrupt"
    with pytest.raises(CacheError, match="fails its sha256 check"):
        vit_hub.load_pretrained("vit_tiny8_fe", offline=True)
    with pytest.warns(UserWarning, match="Converting again"):
        vit_hub.load_pretrained("vit_tiny8_fe")
    assert entry.state() == "ok"


def test_weights_path_loads_directly(env, tiny_saved_model):
    lay_out_kagglehub_cache(env / "kagglehub", TINY_HANDLE, tiny_saved_model)
    cached = vit_hub.load_pretrained("vit_tiny8_fe")
    path = CacheEntry("vit_tiny8_fe").weights_path
    direct = vit_hub.load_pretrained("vit_tiny8_fe", weights=path, cache_dir=env / "elsewhere")
    inputs = parity_inputs(32)
    np.testing.assert_array_equal(direct.predict(inputs, verbose=0), cached.predict(inputs, verbose=0))
    assert not (env / "elsewhere").exists()


def test_verify_reruns_parity(env, tiny_saved_model):
    lay_out_kagglehub_cache(env / "kagglehub", TINY_HANDLE, tiny_saved_model)
    vit_hub.load_pretrained("vit_tiny8_fe", verify=True)


def test_unknown_name_and_hybrid(env):
    with pytest.raises(ValueError, match="Did you mean 'vit_b32_fe'"):
        vit_hub.load_pretrained("vit_b32_fee")
    # The hybrids have a converter: offline, the only thing missing is the cache entry.
    with pytest.raises(CacheError, match="vit_r50_l32_fe is not in the vit_hub cache"):
        vit_hub.load_pretrained("vit_r50_l32_fe", offline=True)
    assert cache_files(env) == []


# === End to end, as a user runs it: fresh processes ===


# In CI the tiny fe model, registered in each fresh process as a user's own model is
# (tests/conftest.py's catalogue); the real vit_b32_fe, full size, with the slow tests.
REGISTER_TINY = (f"import vit_hub; vit_hub.register_variant('vit_tiny8', **{TINY!r}); "
                 f"vit_hub.register_model({TINY_NAME!r}, {TINY_ENTRY!r})\n")
END_TO_END = [
    pytest.param(TINY_NAME, 32, REGISTER_TINY, id="tiny"),
    pytest.param("vit_b32_fe", 768, "", marks=pytest.mark.slow, id="vit_b32_fe"),
]


def published_checkpoint(name, folder):
    """A checkpoint of catalogue model `name` in the published format (random weights)."""
    entry = vit_hub.get_entry(name)
    config = checkpoints.hub_config(name)
    params = published_format.init_params(config, entry.kind, seed=0)
    return published_format.export_saved_model(params, config, entry.kind, str(folder))


def run(args, env, **kwargs):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIT_HUB", "KAGGLE"))}
    return subprocess.run(args, env={**clean, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
                          capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.parametrize("name,width,register", END_TO_END)
def test_convert_weights_then_offline_load(tmp_path, name, width, register):
    source = published_checkpoint(name, tmp_path / "hub")
    cache = {"VIT_HUB_CACHE": str(tmp_path / "cache")}
    cli = ([sys.executable, "-c", register + "import sys\nfrom vit_hub.cli.convert_weights "
            "import main\nsys.exit(main(sys.argv[1:]))"] if register else
           [os.path.join(os.path.dirname(sys.executable), "convert-weights")])
    converted = run([*cli, name, "--source", source], cache)
    assert converted.returncode == 0, converted.stderr
    assert f"{name}  converted" in converted.stdout
    listed = run([*cli, "--list"], cache)
    assert name in listed.stdout and " ok " in listed.stdout

    # A cache hit in a fresh process. (Every backend, output for output, and that a hit
    # off TensorFlow imports none of it: tests/test_backends.py, on the same cache format.)
    size = vit_hub.get_entry(name).image_size[0]
    script = (register + "import sys, keras, vit_hub, numpy as np; "
              f"m = vit_hub.load_pretrained({name!r}); x = np.random.default_rng(0).uniform("
              f"-1, 1, (2, {size}, {size}, 3)).astype('float32'); "
              "print(keras.ops.convert_to_numpy(m(x)).shape)")
    loaded = run([sys.executable, "-c", script], {**cache, "VIT_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split("\n")[0] == f"(2, {width})"

    load = register + f"import vit_hub; vit_hub.load_pretrained({name!r})"
    empty = run([sys.executable, "-c", load],
                {"VIT_HUB_CACHE": str(tmp_path / "empty"), "VIT_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert empty.returncode == 1
    last = empty.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vit_hub.errors.CacheError: {name} is not in the vit_hub cache")
    assert "tensorflow/python" not in empty.stderr


def test_convert_weights_exit_codes(tmp_path, tiny_saved_model):
    cli = os.path.join(os.path.dirname(sys.executable), "convert-weights")
    cache = {"VIT_HUB_CACHE": str(tmp_path / "cache")}
    assert run([cli], cache).returncode == 2
    unknown = run([cli, "vit_b32_fee"], cache)
    assert unknown.returncode == 2 and "Did you mean 'vit_b32_fe'" in unknown.stderr
    assert run([cli, "vit_b32_fe", "--source", str(tmp_path / "nope")], cache).returncode == 2
    wrong = run([cli, "vit_b32_fe", "--source", tiny_saved_model], cache)
    assert wrong.returncode == 1
    assert "FAILED" in wrong.stdout and "it holds 38 tensors, the model needs 198" in wrong.stderr
    assert ("looks like width 32, patch 8, 17 tokens; the model is width 768, patch 32, "
            "50 tokens") in wrong.stderr
    assert not (tmp_path / "cache" / "v1" / "vit_b32_fe").exists()
    offline = run([cli, "vit_b32_fe"], {**cache, "VIT_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "offline mode is on" in offline.stderr
