"""Mistakes in what is passed in, each a clear error (its text asserted) raised before any
work: a misspelt keyword argument (VisionTransformer, create_vit, load_pretrained,
load_weights), integer images given to a model (every way into it: call, predict,
extract_features, encode), a cache folder that is a file or cannot be read, and a
VIT_HUB_OFFLINE value that means neither on nor off."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import vit_hub
import vit_hub.conversion.download
import vit_hub.conversion.pipeline
import vit_hub.pretrained
from tests.conftest import TINY, TINY_IMAGE, TINY_NAME
from vit_hub.cache import CacheEntry, is_offline
from vit_hub.errors import (
    ArgumentError,
    CacheError,
    ConfigError,
    ImageTypeError,
    VitHubError,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_KWARGS = ("image_size, patch_size, hidden_dim, num_layers, num_heads, mlp_dim, "
                "include_top, num_classes, pooling, dropout, attention_dropout, "
                "classifier_activation, layer_norm_epsilon, resnet_units")


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any cache read, download or conversion fails the test; the default cache is a
    folder that must not appear."""
    def touched(*args, **kwargs):
        raise AssertionError("the cache, the network or a conversion was touched")

    for module, name in [(vit_hub.pretrained, "CacheEntry"),
                         (vit_hub.pretrained, "cached_weights"),
                         (vit_hub.pretrained, "open_weights_file"),
                         (vit_hub.conversion.pipeline, "convert_into_cache"),
                         (vit_hub.conversion.download, "download")]:
        monkeypatch.setattr(module, name, touched)
    monkeypatch.setenv("VIT_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VIT_HUB_OFFLINE", raising=False)
    yield
    assert not (tmp_path / "cache").exists()


# === Unknown keyword arguments: ArgumentError (a TypeError), the closest valid one ===


def test_vision_transformer_refuses_an_unknown_keyword():
    with pytest.raises(ArgumentError) as err:
        vit_hub.VisionTransformer(imgsize=384, **TINY)
    assert str(err.value) == (
        "VisionTransformer() got an unexpected keyword argument 'imgsize'. Did you mean "
        f"'image_size'? Valid keyword arguments: {MODEL_KWARGS}, name, dtype, trainable.")
    assert isinstance(err.value, TypeError) and isinstance(err.value, VitHubError)


@pytest.mark.parametrize("keyword", ["input_shape", "autocast", "weights", "outputs"])
def test_vision_transformer_refuses_keras_keywords_it_does_not_take(keyword):
    # keras.Model.__init__ would take (or silently ignore) some of them.
    with pytest.raises(ArgumentError, match=rf"^VisionTransformer\(\) got an unexpected "
                                            rf"keyword argument '{keyword}'\. "):
        vit_hub.VisionTransformer(image_size=TINY_IMAGE, **TINY, **{keyword: None})


def test_several_unknown_keywords_are_all_named():
    with pytest.raises(ArgumentError) as err:
        vit_hub.VisionTransformer(imgsize=32, numclasses=3, colour="red")
    assert str(err.value).startswith(
        "VisionTransformer() got unexpected keyword arguments 'imgsize' (did you mean "
        "'image_size'?), 'numclasses' (did you mean 'num_classes'")
    assert "'colour'. Valid keyword arguments: image_size," in str(err.value)


def test_the_keras_keywords_it_takes_round_trip():
    model = vit_hub.VisionTransformer(image_size=TINY_IMAGE, **TINY, name="mine",
                                      dtype="float32", trainable=False)
    assert (model.name, model.trainable) == ("mine", False)
    config = model.get_config()
    assert {"name", "dtype", "trainable"} <= set(config)
    assert vit_hub.VisionTransformer.from_config(config).get_config() == config


def test_create_vit_refuses_an_unknown_keyword():
    with pytest.raises(ArgumentError) as err:
        vit_hub.create_vit("vit_b16", imgsize=384)
    assert str(err.value) == (
        "create_vit() got an unexpected keyword argument 'imgsize'. Did you mean "
        f"'image_size'? Valid keyword arguments: {MODEL_KWARGS}, dtype, trainable.")
    with pytest.raises(ArgumentError, match=r"^create_vit\(\) got an unexpected keyword "
                                            r"argument 'num_class'\. Did you mean 'num_classes'"):
        vit_hub.create_vit_ti16(num_class=10)


def test_load_pretrained_refuses_an_unknown_keyword_before_any_work(no_work):
    with pytest.raises(ArgumentError) as err:
        vit_hub.load_pretrained("vit_b32_fe", imgsize=384)
    assert str(err.value) == (
        "load_pretrained() got an unexpected keyword argument 'imgsize'. Did you mean "
        "'image_size'? It takes cache_dir, offline, verify, weights, runtime, precision, "
        "calibration, min_cosine, threads and the model's keyword arguments: "
        f"{MODEL_KWARGS}, dtype, trainable.")
    assert isinstance(err.value, TypeError)
    with pytest.raises(ArgumentError, match=r"^load_pretrained\(\) got an unexpected "
                                            r"keyword argument 'cachedir'\. Did you mean "
                                            r"'cache_dir'\?"):
        vit_hub.load_pretrained("vit_b32_fe", cachedir="/tmp")


def test_load_weights_refuses_an_unknown_keyword_before_reading(tmp_path):
    with pytest.raises(ArgumentError) as err:
        vit_hub.load_weights(tmp_path / "missing.h5", classifer_activation="softmax")
    assert str(err.value) == (
        "load_weights() got an unexpected keyword argument 'classifer_activation'. Did you "
        f"mean 'classifier_activation'? It takes the model's keyword arguments: "
        f"{MODEL_KWARGS}, name, "
        "dtype, trainable.")


def test_load_pretrained_passes_the_model_keywords_on(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_HUB_OFFLINE", raising=False)
    # Every model keyword gets past the check: what stops this load is the empty cache.
    with pytest.raises(CacheError, match="is not in the vit_hub cache"):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=tmp_path / "empty", offline=True,
                                verify=False, weights=None, image_size=64, num_classes=3,
                                include_top=True, dtype="float32", dropout=0.1,
                                trainable=False, pooling="token")


# === Integer images: refused on every way into the model, floats unchanged ===


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return vit_hub.VisionTransformer(image_size=TINY_IMAGE, **TINY, include_top=True,
                                     num_classes=4, name="tiny")


def _pixels(dtype):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, TINY_IMAGE, TINY_IMAGE, 3)).astype(dtype)


CALLS = {
    "call": lambda m, x: m(x),
    "call-tensor": lambda m, x: m(tf.constant(x)),
    "call-inputs-keyword": lambda m, x: m(inputs=x, training=False),
    "predict": lambda m, x: m.predict(x, verbose=0),
    "predict-dataset": lambda m, x: m.predict(tf.data.Dataset.from_tensor_slices(x).batch(2),
                                              verbose=0),
    "predict_on_batch": lambda m, x: m.predict_on_batch(x),
    "extract_features": lambda m, x: m.extract_features(x),
    "encode": lambda m, x: m.encode(x, return_attention=True),
}
UINT8 = ("Model 'tiny' got uint8 images: the model takes float32 in [-1, 1]; pass them "
         "through vit_hub.preprocess(images) (uint8 0..255 -> [-1, 1]) first.")


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("dtype", ["uint8", "int32"])
def test_integer_images_are_refused(model, call, dtype):
    with pytest.raises(ImageTypeError) as err:
        CALLS[call](model, _pixels(dtype))
    if dtype == "uint8":
        assert str(err.value) == UINT8
    else:
        assert str(err.value) == (
            "Model 'tiny' got int32 images: the model takes float32 in [-1, 1]; pass them "
            "through vit_hub.preprocess(images) (uint8 0..255 -> [-1, 1]) first, cast to "
            "uint8 if they are pixels 0..255 (preprocess takes uint8 0..255 or floats in "
            "[0, 1]).")
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("dtype", ["int64", "uint16", "bool"])
def test_other_non_float_images_are_refused(model, dtype):
    with pytest.raises(ImageTypeError, match=rf"^Model 'tiny' got {dtype} images: the model "
                                             r"takes float32 in \[-1, 1\]; pass them through "
                                             r"vit_hub\.preprocess\(images\)"):
        model(_pixels(dtype))


def test_an_integer_input_in_a_functional_model_is_refused(model):
    with pytest.raises(ImageTypeError, match=re.escape(UINT8)):
        model(keras.Input((TINY_IMAGE, TINY_IMAGE, 3), dtype="uint8"))


def test_float_images_are_unchanged(model):
    floats = vit_hub.preprocess(_pixels("uint8"), image_size=TINY_IMAGE)
    expected = model(floats)
    for call in ("call", "call-tensor", "predict", "predict-dataset", "predict_on_batch"):
        np.testing.assert_allclose(CALLS[call](model, floats), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(model(floats.astype(np.float64)), expected, atol=1e-6, rtol=0)
    features = model.extract_features(floats)
    assert features.shape == (2, TINY["hidden_dim"])
    # ...and a float Input wires through a functional model as before.
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    np.testing.assert_allclose(keras.Model(inputs, model(inputs))(floats), expected,
                               atol=1e-6, rtol=0)


# === A cache folder that is a file, or cannot be read ===


@pytest.fixture
def offline_env(monkeypatch):
    monkeypatch.delenv("VIT_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VIT_HUB_CACHE", raising=False)


def _no_download(monkeypatch):
    def touched(*args, **kwargs):
        raise AssertionError("a download or conversion was started")

    monkeypatch.setattr(vit_hub.conversion.pipeline, "convert_into_cache", touched)
    monkeypatch.setattr(vit_hub.conversion.download, "download", touched)


def _file_message(root, where="it is a file, not a folder"):
    return (f"Cannot use the vit_hub cache at {root}: {where}, so {TINY_NAME} can be "
            f"neither read from it nor converted into it. Move the file away, or pass "
            f"another folder as cache_dir (--cache-dir for convert-weights) or in "
            f"VIT_HUB_CACHE.")


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
@pytest.mark.parametrize("through", ["cache_dir", "VIT_HUB_CACHE"])
def test_cache_folder_that_is_a_file(tmp_path, monkeypatch, offline_env, offline, through):
    _no_download(monkeypatch)
    root = tmp_path / "a_file"
    root.write_text("not a folder\n")
    if through == "VIT_HUB_CACHE":
        monkeypatch.setenv("VIT_HUB_CACHE", str(root))
    with pytest.raises(CacheError) as err:
        vit_hub.load_pretrained(TINY_NAME, offline=offline,
                                cache_dir=root if through == "cache_dir" else None)
    assert str(err.value) == _file_message(root)
    assert root.read_text() == "not a folder\n"


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
@pytest.mark.parametrize("level", ["v1", "entry"])
def test_file_inside_the_cache_where_a_folder_belongs(tmp_path, monkeypatch, offline_env,
                                                      offline, level):
    _no_download(monkeypatch)
    root = tmp_path / "cache"
    in_the_way = root / "v1" / TINY_NAME if level == "entry" else root / "v1"
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("in the way\n")
    with pytest.raises(CacheError) as err:
        vit_hub.load_pretrained(TINY_NAME, cache_dir=root, offline=offline)
    assert str(err.value) == _file_message(
        root, f"{in_the_way} is a file where the cache needs a folder")


# Run where permissions apply: in a child process that, if it runs as root, first drops
# the two capabilities that let root read and enter any folder (Linux: CAP_DAC_OVERRIDE,
# CAP_DAC_READ_SEARCH) from its bounding set and runs itself again without them.
UNREADABLE_SCRIPT = """
import ctypes, json, os, sys
if os.geteuid() == 0 and os.environ.get("VIT_HUB_TEST_NO_DAC") != "1":
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            print(json.dumps({"skip": os.strerror(ctypes.get_errno())}))
            sys.exit(0)
    os.environ["VIT_HUB_TEST_NO_DAC"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, sys.argv[1])
import vit_hub.conversion.download, vit_hub.conversion.pipeline
from vit_hub.pretrained import cached_weights

def touched(*args, **kwargs):
    raise AssertionError("a download or conversion was started")

vit_hub.conversion.pipeline.convert_into_cache = touched
vit_hub.conversion.download.download = touched
results = {}
for mode, offline in (("offline", True), ("online", False)):
    try:
        cached_weights("vit_b32_fe", sys.argv[2], offline=offline)
        results[mode] = "no error"
    except Exception as err:
        results[mode] = f"{type(err).__name__}: {err}"
print(json.dumps(results))
"""


@pytest.mark.parametrize("level", ["root", "v1", "entry"])
def test_cache_folder_that_cannot_be_read(tmp_path, monkeypatch, level):
    monkeypatch.delenv("VIT_HUB_OFFLINE", raising=False)
    script = tmp_path / "load.py"
    script.write_text(UNREADABLE_SCRIPT)
    root = tmp_path / "cache"
    entry = CacheEntry("vit_b32_fe", root)
    os.makedirs(entry.folder)
    locked = {"root": root, "v1": os.path.dirname(entry.folder), "entry": entry.folder}[level]
    os.chmod(locked, 0o000)
    try:
        done = subprocess.run([sys.executable, str(script), REPO, str(root)],
                              capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(locked, 0o755)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    if "skip" in results:
        pytest.skip(f"running as root, which reads folders whatever their permissions, and "
                    f"dropping its capabilities to do so failed: {results['skip']}")
    expected = (
        f"CacheError: Cannot use the vit_hub cache at {root}: the folder {locked} cannot "
        f"be read (Permission denied), so vit_b32_fe cannot be looked up in it. Make it "
        f"readable (chmod u+rwx {locked}, or ask its owner), or pass another folder as "
        f"cache_dir (--cache-dir for convert-weights) or in VIT_HUB_CACHE.")
    assert results == {"offline": expected, "online": expected}


def test_a_readable_cache_is_not_flagged(tmp_path):
    assert CacheEntry(TINY_NAME, tmp_path / "not-yet").folder_problem() is None
    (tmp_path / "c" / "v1").mkdir(parents=True)
    assert CacheEntry(TINY_NAME, tmp_path / "c").folder_problem() is None


# === VIT_HUB_OFFLINE: on, off, or an error ===


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE", " Yes ", "On"])
def test_offline_values(monkeypatch, value):
    monkeypatch.setenv("VIT_HUB_OFFLINE", value)
    assert is_offline() is True


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "", " ", "OFF", "False", None])
def test_online_values(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("VIT_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("VIT_HUB_OFFLINE", value)
    assert is_offline() is False


@pytest.mark.parametrize("value", ["2", "maybe", "offline", "y", "enabled", "1 0"])
def test_other_offline_values_are_an_error(monkeypatch, value):
    monkeypatch.setenv("VIT_HUB_OFFLINE", value)
    with pytest.raises(ConfigError) as err:
        is_offline()
    assert str(err.value) == (
        f"VIT_HUB_OFFLINE={value!r} is not a valid value: use 1, true, yes or on for "
        "offline mode; 0, false, no, off or empty (or leave it unset) for online.")
    assert isinstance(err.value, ValueError)
    # An explicit offline= does not read the variable.
    assert is_offline(True) is True and is_offline(False) is False


def test_load_pretrained_with_a_bad_offline_value_fails_before_any_download(
        tmp_path, monkeypatch):
    _no_download(monkeypatch)
    monkeypatch.setenv("VIT_HUB_OFFLINE", "maybe")
    with pytest.raises(ConfigError, match=r"^VIT_HUB_OFFLINE='maybe' is not a valid value"):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(CacheError, match="is not in the vit_hub cache"):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=tmp_path / "cache", offline=True)
