"""Mistakes in what is passed in, each a clear error (its text asserted) raised before any
work: a misspelt keyword argument (VisionTransformer, create_vit, load_pretrained,
load_weights); images given to a model that it would compute wrongly (integers, floats
0..255, NaN, files, a wrong shape, on every way into it: call, predict, fit, evaluate,
the *_on_batch methods, extract_features, encode, attention maps); image files whose
pixels are not 8-bit, read by their own range or refused by mode; architecture fields and
settings that cannot be; dtypes that are not float policies; flags that are not bools; a
cache folder that is a file or cannot be read; and a VIT_HUB_OFFLINE value that means
neither on nor off. The model-input tests run on every backend."""

import io
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
from tests.conftest import BACKEND, TINY, TINY_IMAGE, TINY_NAME
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


# === Images whose pixels are not 8-bit: each PIL mode read by its own range ===


GRADIENT = np.linspace(0, 1, 48 * 64).reshape(48, 64)  # (H, W) in [0, 1]


def _saved(tmp_path, name, pixels):
    """`pixels` written to an image file of the mode their dtype gives (uint16: I;16,
    int32: I, float32: F)."""
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


def test_a_16_bit_png_reads_as_its_8_bit_twin(tmp_path):
    sixteen = _saved(tmp_path, "g16.png", np.round(GRADIENT * 65535).astype(np.uint16))
    eight = _saved(tmp_path, "g8.png", np.round(GRADIENT * 255).astype(np.uint8))
    full = vit_hub.preprocess(str(sixteen), image_size=(48, 64))
    assert full.min() == -1.0 and full.max() == 1.0
    # 8-bit rounding apart (1/255 of the range is 2/255 in [-1, 1]), the same image.
    np.testing.assert_allclose(full, vit_hub.preprocess(str(eight), image_size=(48, 64)),
                               atol=1 / 255, rtol=0)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_pil_images_use_the_16_bit_range(mode):
    from PIL import Image

    order = ">" if mode == "I;16B" else "<"  # (PIL's convert() clips them to 8 bits)
    pixels = np.round(GRADIENT * 65535).astype(f"{order}u2")
    image = Image.frombytes(mode, (64, 48), pixels.tobytes())
    out = vit_hub.preprocess(image, image_size=(48, 64))
    np.testing.assert_allclose(out[0, ..., 0], GRADIENT * 2 - 1, atol=1e-4, rtol=0)


def test_a_float_tiff_in_0_1_reads_as_its_values(tmp_path):
    path = _saved(tmp_path, "f.tiff", GRADIENT.astype(np.float32))
    out = vit_hub.preprocess(str(path), image_size=(48, 64))
    np.testing.assert_allclose(out[0, ..., 1], GRADIENT * 2 - 1, atol=1e-6, rtol=0)


def test_a_float_tiff_outside_0_1_is_refused(tmp_path):
    path = _saved(tmp_path, "f255.tiff", (GRADIENT * 255).astype(np.float32))
    with pytest.raises(vit_hub.ImageError, match=r"\(PIL mode F\) is float with values in "
                                                r"\[0, 255\]: float images must be in \[0, 1\]"):
        vit_hub.preprocess(str(path))


def test_a_32_bit_integer_tiff_uses_the_32_bit_range(tmp_path):
    top = 2 ** 31 - 1
    path = _saved(tmp_path, "i32.tiff", np.round(GRADIENT * top).astype(np.int32))
    out = vit_hub.preprocess(str(path), image_size=(48, 64))
    np.testing.assert_allclose(out[0, ..., 2], GRADIENT * 2 - 1, atol=1e-6, rtol=0)
    negative = _saved(tmp_path, "neg.tiff", np.full((4, 4), -5, np.int32))
    with pytest.raises(vit_hub.ImageError, match=r"neg\.tiff is a 32-bit integer image \(PIL "
                                                r"mode I\) with negative values"):
        vit_hub.preprocess(str(negative))


# White, as each 8-bit mode writes it (CMYK: no ink; YCbCr, LAB: full luma, neutral
# chroma; HSV: no saturation, full value); with alpha, opaque and transparent alike.
WHITE = {"1": 1, "L": 255, "P": 0, "RGB": (255,) * 3, "RGBX": (255,) * 4,
         "RGBA": (255, 255, 255, 0), "RGBa": (255, 255, 255, 255), "LA": (255, 128),
         "La": (255, 255), "PA": (0, 200), "CMYK": (0, 0, 0, 0), "YCbCr": (255, 128, 128),
         "LAB": (255, 128, 128), "HSV": (0, 0, 255)}


@pytest.mark.parametrize("mode", list(WHITE))
def test_every_8_bit_mode_reads_white_as_white(mode):
    from PIL import Image

    image = Image.new(mode, (16, 16), WHITE[mode])
    if mode in ("P", "PA"):
        image.putpalette([255, 255, 255] * 256)
    out = vit_hub.preprocess(image, image_size=16)
    np.testing.assert_allclose(out, 1.0, atol=0.01)  # LAB's conversion: 1 level off


def test_alpha_is_dropped_as_the_checkpoints_pipeline_dropped_it():
    from PIL import Image

    rgb = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    alpha = np.random.default_rng(1).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], -1), mode="RGBA")
    np.testing.assert_array_equal(vit_hub.preprocess(rgba, image_size=8),
                                  vit_hub.preprocess(rgb, image_size=8))


def test_a_mode_with_no_known_range_is_refused_by_name():
    from PIL import Image

    image = Image.new("RGB", (4, 4))
    image._mode = "BGR;15"  # (no such image can be made any more; one may be read)
    with pytest.raises(vit_hub.ImageError, match=r"^PIL image has PIL mode 'BGR;15', whose "
                                                r"pixels have no range vit_hub knows"):
        vit_hub.preprocess(image)


def test_16_bit_arrays_are_refused_with_the_scaling_to_use():
    with pytest.raises(ImageTypeError, match=r"has dtype uint16: pass uint8 \(0\.\.255\) or "
                                             r"floats in \[0, 1\] \(a full-range 16-bit image: "
                                             r"image / 65535 gives floats in \[0, 1\]\)"):
        vit_hub.preprocess(np.zeros((8, 8, 3), np.uint16))


# === Model inputs: 0..255 floats, NaN, the wrong shape, files: refused before work ===


def _floats_0_255():
    return np.random.default_rng(0).uniform(0, 255, (2, TINY_IMAGE, TINY_IMAGE, 3)).astype(
        np.float32)


FLOAT_CALLS = {
    **{key: CALLS[key] for key in ("call", "predict", "predict_on_batch", "extract_features",
                                   "encode")},
    "call-tensor": lambda m, x: m(keras.ops.convert_to_tensor(x)),
    "call-training": lambda m, x: m(x, training=True),
    "attention_maps": lambda m, x: vit_hub.attention_maps(m, x),
}
TRAINING_CALLS = {
    "fit": lambda m, x: m.fit(x, np.zeros((len(x), 4)), verbose=0),
    "evaluate": lambda m, x: m.evaluate(x, np.zeros((len(x), 4)), verbose=0),
    "train_on_batch": lambda m, x: m.train_on_batch(x, np.zeros((len(x), 4))),
    "test_on_batch": lambda m, x: m.test_on_batch(x, np.zeros((len(x), 4))),
    "fit-validation_data": lambda m, x: m.fit(x / 255, np.zeros((len(x), 4)), verbose=0,
                                              validation_data=(x, np.zeros((len(x), 4)))),
}
PIXELS_0_255 = (r"^Model 'tiny'( \(validation_data\))? got images with values in "
                r"\[0\.\d+, 255\]: the model takes float32 in \[-1, 1\] \(values beyond "
                r"\+-2\.5 are refused\)\. They look like pixels 0\.\.255: pass them through "
                r"vit_hub\.preprocess\(images\)")


@pytest.mark.backends
@pytest.mark.parametrize("call", list(FLOAT_CALLS) + list(TRAINING_CALLS))
def test_float_pixels_0_255_are_refused(model, call):
    if call in TRAINING_CALLS:
        if BACKEND == "openvino":
            pytest.skip("Keras' openvino backend does inference only")
        model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(vit_hub.ImageError, match=PIXELS_0_255):
        {**FLOAT_CALLS, **TRAINING_CALLS}[call](model, _floats_0_255())


@pytest.mark.backends
def test_the_margin_takes_resampling_overshoot_and_no_more(model):
    from PIL import Image

    # A sharp edge enlarged with Lanczos (PIL) rings beyond [-1, 1]; still taken.
    edge = np.zeros((8, 8), np.float32)
    edge[:, 4:] = 1
    lanczos = np.asarray(Image.fromarray(edge).resize((TINY_IMAGE, TINY_IMAGE),
                                                      Image.LANCZOS)) * 2 - 1
    lanczos = np.repeat(lanczos[None, ..., None], 3, axis=-1)
    assert lanczos.max() > 1.1 and lanczos.min() < -1.1  # (it does overshoot)
    model(lanczos.astype(np.float32))
    edge = np.full((1, TINY_IMAGE, TINY_IMAGE, 3), 2.5, np.float32)
    model(edge)
    model(-edge)
    with pytest.raises(vit_hub.ImageError, match=r"values in \[-2\.6, -2\.6\]"):
        model(-edge - 0.1)
    with pytest.raises(vit_hub.ImageError, match=r"values in \[2\.6, 2\.6\]"):
        model(edge + 0.1)


@pytest.mark.backends
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_refused(model, value):
    images = np.zeros((1, TINY_IMAGE, TINY_IMAGE, 3), np.float32)
    images[0, 3, 4, 1] = value
    with pytest.raises(vit_hub.ImageError, match=r"^Model 'tiny' got images containing NaN "
                                                r"or infinite values\.$"):
        model(images)


@pytest.mark.backends
@pytest.mark.parametrize("shape,hint", [
    ((1, 2 * TINY_IMAGE, 2 * TINY_IMAGE, 3), ""),
    ((1, TINY_IMAGE, TINY_IMAGE, 1), ""),
    ((TINY_IMAGE, TINY_IMAGE, 3), " (one image: add the batch axis, images[None])"),
    ((1, 1, TINY_IMAGE, TINY_IMAGE, 3), ""),
])
@pytest.mark.parametrize("call", ["call", "predict", "predict_on_batch", "encode"])
def test_a_batch_of_the_wrong_shape_names_the_expected_one(model, shape, hint, call):
    with pytest.raises(vit_hub.ImageError) as err:
        CALLS[call](model, np.zeros(shape, np.float32))
    assert str(err.value) == (
        f"Model 'tiny' takes a batch (B, {TINY_IMAGE}, {TINY_IMAGE}, 3) in [-1, 1], got shape "
        f"{shape}{hint}; vit_hub.preprocess(images, image_size={TINY_IMAGE}) makes one.")


WRONG_SHAPE = """
import sys
import numpy as np, vit_hub
model = vit_hub.VisionTransformer(image_size=32, patch_size=8, hidden_dim=32, num_layers=1,
                                  num_heads=4, mlp_dim=64, name="tiny")
model(np.zeros((1, 32, 32, 3), np.float32))  # compiled once, at the right shape
sys.stderr.write("-- calls --\\n")
sys.stderr.flush()
for shape in [(1, 64, 64, 3), (2, 32, 32, 1), (3, 40, 32, 3)]:
    for call in (model, model.predict_on_batch):
        try:
            call(np.zeros(shape, np.float32))
        except vit_hub.ImageError as err:
            print(err)
"""


@pytest.mark.backends
def test_a_wrong_shape_writes_nothing_to_stderr():
    done = subprocess.run([sys.executable, "-c", WRONG_SHAPE], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.split("-- calls --\n", 1)[1] == ""
    assert done.stdout.count("Model 'tiny' takes a batch (B, 32, 32, 3)") == 6


@pytest.mark.backends
@pytest.mark.parametrize("images", ["photo.jpg", ["a.jpg", "b.png"], "pil", b"\x89PNG\r\n",
                                    "file object"])
def test_files_given_to_the_model_say_to_preprocess(model, images):
    from PIL import Image

    images = {"pil": Image.new("RGB", (8, 8)), "file object": io.BytesIO(b"\x89PNG\r\n")
              }.get(images, images) if isinstance(images, str) else images
    with pytest.raises(ImageTypeError, match=r"it takes a float32 batch \(B, 32, 32, 3\) in "
                                             r"\[-1, 1\]; read and scale image files with "
                                             r"vit_hub\.preprocess\(paths, image_size=32\)"):
        model(images)


@pytest.mark.backends
def test_attention_maps_take_what_preprocess_takes(model, tmp_path):
    from PIL import Image

    pixels = (np.random.default_rng(2).random((2, 40, 50, 3)) * 255).astype(np.uint8)
    paths = [str(_saved(tmp_path, f"{i}.png", p)) for i, p in enumerate(pixels)]
    expected = vit_hub.attention_maps(model, vit_hub.preprocess(paths, TINY_IMAGE))
    for given in (paths, [Image.open(p) for p in paths], pixels[0:1], paths[0]):
        maps = vit_hub.attention_maps(model, given)
        np.testing.assert_allclose(maps[0], expected[0][:len(maps[0])], atol=1e-5, rtol=0)
    outputs = vit_hub.intermediate_outputs(model, paths)
    assert outputs[0].shape == (2, (TINY_IMAGE // TINY["patch_size"]) ** 2 + 1,
                                TINY["hidden_dim"])


# === Architecture fields that cannot be: ConfigError naming the field ===


TINY_FIELDS = dict(image_size=TINY_IMAGE, **TINY)
FIELD_ERROR = ("{field}={value!r}: patch_size, hidden_dim, num_layers, num_heads, mlp_dim "
               "and num_classes must be positive ints")
BUILDERS = {
    "VisionTransformer": lambda **fields: vit_hub.VisionTransformer(**fields),
    "create_vit": lambda **fields: vit_hub.create_vit("vit_ti16", **fields),
    "register_variant": lambda **fields: vit_hub.register_variant(
        "vit_bad", overwrite=True, **{k: v for k, v in fields.items() if k != "image_size"}),
}


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize("field,value", [
    ("patch_size", 0), ("num_heads", 0), ("hidden_dim", 0), ("mlp_dim", 0),
    ("num_layers", 0), ("num_layers", -1), ("patch_size", -8), ("hidden_dim", 32.0),
    ("num_heads", True), ("mlp_dim", "64"), ("num_layers", None),
])
def test_impossible_architecture_fields_are_a_config_error(builder, field, value):
    with pytest.raises(ConfigError) as err:
        BUILDERS[builder](**{**TINY_FIELDS, field: value})
    assert str(err.value).startswith(FIELD_ERROR.format(field=field, value=value))
    assert field not in vit_hub.list_variants() and "vit_bad" not in vit_hub.list_variants()


@pytest.mark.parametrize("field,value,text", [
    ("num_classes", 0, FIELD_ERROR.format(field="num_classes", value=0)),
    ("num_heads", 3, "hidden_dim (32) must be divisible by num_heads (3)."),
    ("dropout", 1.0, "dropout must be a rate in [0, 1), got 1.0."),
    ("attention_dropout", -0.1, "attention_dropout must be a rate in [0, 1), got -0.1."),
    ("layer_norm_epsilon", 0, "layer_norm_epsilon must be a positive float"),
    ("classifier_activation", "softmaxx", "classifier_activation 'softmaxx' is not a Keras "
                                          "activation"),
    ("image_size", 0, "image_size must be a positive int"),
])
def test_other_impossible_model_settings_are_a_config_error(field, value, text):
    for builder in ("VisionTransformer", "create_vit"):
        with pytest.raises(ConfigError) as err:
            BUILDERS[builder](**{**TINY_FIELDS, field: value})
        assert str(err.value).startswith(text)


# === dtype policies, flags ===


@pytest.mark.parametrize("dtype", ["int8", "int4", "float8", "uint8", "int32", "float31",
                                   "mixed_int8"])
def test_a_dtype_that_is_not_a_float_policy_says_where_int8_lives(dtype, tmp_path):
    text = (f"dtype {dtype!r} is not a float policy: a VisionTransformer computes in "
            "'float32' (the default), 'bfloat16' or 'float16', or in 'mixed_bfloat16' or "
            "'mixed_float16' (float32 weights). Quantized (int8) inference is the OpenVINO "
            "runtime: vit_hub.load_pretrained(name, runtime='openvino', precision='int8'), "
            "or vit_hub.to_openvino(model, precision='int8').")
    with pytest.raises(ConfigError) as err:
        vit_hub.VisionTransformer(**TINY_FIELDS, dtype=dtype)
    assert str(err.value) == text
    # load_pretrained: refused before anything is downloaded (an empty cache, online).
    with pytest.raises(ConfigError) as err:
        vit_hub.load_pretrained(TINY_NAME, cache_dir=tmp_path / "cache", offline=True,
                                dtype=dtype)
    assert str(err.value) == text


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "mixed_bfloat16",
                                   "mixed_float16"])
def test_float_policies_are_taken(dtype):
    model = vit_hub.VisionTransformer(**TINY_FIELDS, dtype=dtype)
    assert model.dtype_policy.name == dtype


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "False", np.float32(1)])
def test_flags_that_are_not_bools_are_a_type_error(value, no_work):
    for build, name in [
            (lambda: vit_hub.KerasLayer(TINY_NAME, trainable=value), "trainable"),
            (lambda: vit_hub.VisionTransformer(**TINY_FIELDS, trainable=value), "trainable"),
            (lambda: vit_hub.VisionTransformer(**TINY_FIELDS, include_top=value),
             "include_top"),
            (lambda: vit_hub.load_pretrained(TINY_NAME, verify=value), "verify")]:
        with pytest.raises(ArgumentError, match=rf"^{name} must be True or False, got "
                                                rf"{re.escape(repr(value))}\.$"):
            build()
    if value is not None:
        with pytest.raises(ArgumentError, match=r"^offline must be True or False or None"):
            vit_hub.load_pretrained(TINY_NAME, offline=value)
    assert isinstance(ArgumentError(""), TypeError)


def test_the_openvino_runtime_refuses_them_too(model):
    fast = vit_hub.to_openvino(model)
    in_openvino = PIXELS_0_255.replace("Model", "OpenVINO model")
    with pytest.raises(vit_hub.ImageError, match=in_openvino):
        fast(_floats_0_255())
    with pytest.raises(vit_hub.ImageError, match=r"takes a batch \(B, 32, 32, 3\)"):
        fast.predict(np.zeros((2, 64, 64, 3), np.float32))
