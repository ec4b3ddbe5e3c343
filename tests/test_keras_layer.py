"""vit_hub.KerasLayer, the drop-in for hub.KerasLayer under Keras 3.

The seed's flow (`tf.keras.Sequential([hub.KerasLayer(URL)])`, Kaggle's ViT-B/8
classifier; in CI a tiny classifier, the full-size one with the slow tests) runs with only
the import changed, on a cache filled from a test-built checkpoint in the published
format: predictions equal the hub model's, a
trainable layer fine-tunes the backbone, and the saved model reloads offline with an
empty cache. The tiny models cover the hub arguments and the frozen default.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import vit_hub
from tests import checkpoints
from tests.conftest import (
    TINY_CLASSIFICATION,
    TINY_IMAGE,
    TINY_NAME,
    needs_training,
    numpy,
    tensorflow_only,
)
from vit_hub.conversion import published_format
from vit_hub.conversion.parity import TOLERANCE, hub_outputs, parity_inputs
from vit_hub.conversion.pipeline import convert_into_cache

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO

SEED_URL = ("https://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/"
            "vit-b8-classification/1")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A cache with the tiny fe/classification models and (on TensorFlow) the full-size
    vit_b8_classification, converted from test-built published-format checkpoints; {name: SavedModel}."""
    names = (TINY_NAME, TINY_CLASSIFICATION)
    cache = checkpoints.cache_copy(tmp_path_factory.mktemp("keras_layer") / "cache", *names)
    return cache, {name: checkpoints.saved_model(name) for name in names}


def _build(root, name, config, kind):
    """A test-built checkpoint of `name` in the published format, converted into the
    cache under `root`; its SavedModel folder."""
    params = published_format.init_params(config, kind, seed=7)
    source = published_format.export_saved_model(params, config, kind, str(root / name))
    convert_into_cache(name, cache_dir=root / "cache", source=source)
    return source


@pytest.fixture
def cache(caches, monkeypatch):
    monkeypatch.setenv("VIT_HUB_CACHE", str(caches[0]))
    monkeypatch.setenv("VIT_HUB_OFFLINE", "1")
    return caches


TINY_SEED_URL = ("https://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/"
                 "vit-tiny8-classification/1")


@tensorflow_only  # the seed's tf.keras code: once is enough
@pytest.mark.parametrize("url,name,size", [
    pytest.param(TINY_SEED_URL, TINY_CLASSIFICATION, TINY_IMAGE, id="tiny"),
    # The seed's own model, full size: ~2 min here, so run with the slow ones.
    pytest.param(SEED_URL, "vit_b8_classification", 224, marks=pytest.mark.slow, id="vit_b8"),
])
def test_the_seeds_sequential_flow_with_only_the_import_changed(cache, tmp_path, url, name,
                                                                size):
    import tensorflow as tf

    import vit_hub as hub  # the one changed line: was `import tensorflow_hub as hub`

    if name not in cache[1]:
        cache[1][name] = _build(cache[0].parent, name, published_format.ARCHS["b8"],
                                "classification")
    images = parity_inputs(size, batch=2)
    model = tf.keras.Sequential([hub.KerasLayer(url)])
    predictions = model.predict(images, verbose=0)
    hub_predictions = hub_outputs(cache[1][name], images)
    assert predictions.shape == (2, 1000)
    assert np.abs(predictions - hub_predictions).max() <= TOLERANCE * max(
        1.0, np.abs(hub_predictions).max())
    assert model.trainable_weights == []  # frozen by default, as hub.KerasLayer

    # Fine-tuning: the classifier itself, which the hub layer cannot train.
    tuned = tf.keras.Sequential([hub.KerasLayer(url, trainable=True)])
    tuned.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel = next(w for w in tuned.trainable_weights if "block_0/attention/query" in w.path)
    before = np.array(kernel.numpy())
    tuned.fit(images, np.array([3, 7]), epochs=1, batch_size=2, verbose=0)
    assert np.abs(kernel.numpy() - before).max() > 0

    # Saved with the fine-tuned weights; reloaded offline in a fresh process, empty cache.
    path = tmp_path / "tuned.keras"
    tuned.save(path)
    np.save(tmp_path / "images.npy", images)
    expected = tuned.predict(images, verbose=0)
    reloaded = reload_elsewhere(path, tmp_path / "images.npy", tmp_path / "empty-cache")
    np.testing.assert_allclose(reloaded, expected, atol=1e-5)
    assert np.abs(reloaded - predictions).max() > 1e-4  # the tuned weights, not the hub's


def reload_elsewhere(model_path, images_path, empty_cache):
    """Predictions of a .keras file loaded in a fresh process, offline, with an empty
    vit_hub cache; the process also checks that the cache stayed empty."""
    out = model_path.with_suffix(".out.npy")
    code = (f"import os, numpy as np, keras, vit_hub\n"
            f"m = keras.saving.load_model({str(model_path)!r})\n"
            f"np.save({str(out)!r}, m.predict(np.load({str(images_path)!r}), verbose=0))\n"
            f"assert not os.path.exists({str(empty_cache)!r}) or not os.listdir({str(empty_cache)!r})\n")
    env = {**os.environ, "VIT_HUB_CACHE": str(empty_cache), "VIT_HUB_OFFLINE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


@pytest.mark.parametrize("kwargs,output", [
    ({}, "tensor"),
    ({"signature": "serving_default", "output_key": "output_0"}, "tensor"),
    ({"signature": "serving_default", "signature_outputs_as_dict": True}, "dict"),
    ({"arguments": {}, "tags": None, "output_shape": [32]}, "tensor"),
])
def test_hub_arguments_with_the_published_values(cache, kwargs, output):
    images = parity_inputs(TINY_IMAGE, batch=2)
    layer = vit_hub.KerasLayer(TINY_NAME, **kwargs)
    result = layer(images)
    tensor = result["output_0"] if output == "dict" else result
    assert isinstance(result, dict) == (output == "dict")
    np.testing.assert_allclose(numpy(tensor), hub_outputs(cache[1][TINY_NAME], images),
                               atol=TOLERANCE)


@pytest.mark.parametrize("kwargs,text", [
    ({"signature": "predict"}, r"signature='predict': the published models have one, "
                               r"'serving_default'"),
    ({"signature": "serving_default"}, r"returns a dict: pass output_key='output_0'"),
    ({"output_key": "output_0"}, r"go with signature='serving_default'"),
    ({"signature": "serving_default", "output_key": "logits"},
     r"output_key='logits': the one output is 'output_0'"),
    ({"arguments": {"training": True}}, r"take no extra call arguments"),
    ({"tags": {"train"}}, r"tags are for TF1 Hub modules"),
    ({"output_shape": [1000]}, r"output_shape \(1000,\) is not what vit_tiny8_fe returns, "
                               r"\(32,\)"),
])
def test_hub_arguments_that_mean_something_else_are_refused(cache, kwargs, text):
    with pytest.raises(vit_hub.errors.ArgumentError, match=text):
        vit_hub.KerasLayer(TINY_NAME, **kwargs)


@needs_training
def test_in_a_functional_model_with_a_new_head(cache, tmp_path):
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    features = vit_hub.KerasLayer(TINY_NAME)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(features))
    assert len(model.trainable_weights) == 2  # the new head only
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
    images = parity_inputs(TINY_IMAGE, batch=4)
    backbone_before = [np.array(w) for w in model.layers[1].weights]
    model.fit(images, np.array([0, 1, 2, 0]), epochs=2, verbose=0)
    for before, after in zip(backbone_before, model.layers[1].weights):
        np.testing.assert_array_equal(before, numpy(after))
    model.save(tmp_path / "head.keras")
    np.save(tmp_path / "images.npy", images)
    np.testing.assert_allclose(
        reload_elsewhere(tmp_path / "head.keras", tmp_path / "images.npy", tmp_path / "none"),
        model.predict(images, verbose=0), atol=1e-6)


def test_a_misspelt_keyword_is_a_type_error_naming_the_valid_ones(cache):
    with pytest.raises(TypeError, match=r"KerasLayer\(\) got an unexpected keyword argument "
                       r"'trainble'\. Did you mean 'trainable'.*\? Valid keyword arguments: "
                       r"handle, trainable, arguments, .*, name, dtype\."):
        vit_hub.KerasLayer(TINY_NAME, trainble=True)


def test_trainable_takes_bools_only(cache):
    layer = vit_hub.KerasLayer(TINY_NAME)
    for value in ("yes", 1, None):
        with pytest.raises(vit_hub.errors.ArgumentError,
                           match=rf"^trainable must be True or False, got {value!r}\.$"):
            layer.trainable = value
    assert layer.trainable is False and not layer.trainable_weights
    layer.trainable = True
    assert layer.trainable_weights


def test_an_unknown_handle_is_one_clear_error(cache):
    with pytest.raises(vit_hub.CatalogueError, match="Did you mean 'vit_b8_classification'"):
        vit_hub.KerasLayer("vit_b8_clasification")


@needs_training
def test_lora_through_a_trainable_keras_layer(cache, tmp_path):
    layer = vit_hub.KerasLayer(TINY_NAME, trainable=True)
    layer.enable_lora(2)
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, name="new_head")(layer(inputs)))
    lora = {w.path for w in layer.trainable_weights}
    assert lora and all("lora_kernel" in path for path in lora)  # the backbone: LoRA only
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(True))
    images = parity_inputs(TINY_IMAGE, batch=4)
    before = {w.path: numpy(w).copy() for w in model.weights}
    model.fit(images, np.array([0, 1, 2, 0]), epochs=2, batch_size=4, verbose=0)
    moved = {w.path for w in model.weights if not np.array_equal(numpy(w), before[w.path])}
    assert moved == lora | {"new_head/kernel", "new_head/bias"}

    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "lora.keras")
    reloaded = keras.saving.load_model(tmp_path / "lora.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-6)
    assert reloaded.layers[1].model.lora == layer.model.lora
    layer.merge_lora()  # plain kernels, same outputs
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
