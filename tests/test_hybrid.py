"""The hybrid ResNet+ViT models as users use the plain ones: from a cache filled by the
real conversion pipeline (a tiny hybrid checkpoint in the published format, parity
checked), then loaded, resized, re-headed, inspected, run in bf16, saved and exported."""

import os

import keras
import numpy as np
import pytest

import vit_hub
from tests import checkpoints
from tests.conftest import BACKEND, TINY_HYBRID_IMAGE, needs_training
from vit_hub.cache import CacheEntry
from vit_hub.conversion.parity import TOLERANCE, hub_outputs, parity_inputs
from vit_hub.errors import ExportError

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO

FE, CLASSIFICATION = "vit_r14_tiny32_fe", "vit_r14_tiny32_classification"


@pytest.fixture(scope="module")
def hybrid_cache(tmp_path_factory):
    """(cache dir, {kind: SavedModel dir}): both kinds converted, verified and cached."""
    cache = checkpoints.cache_copy(tmp_path_factory.mktemp("hybrid") / "cache", FE,
                                   CLASSIFICATION)
    for name in (FE, CLASSIFICATION):
        metadata = CacheEntry(name, cache).metadata()
        assert metadata["parity"]["max_abs"] <= TOLERANCE
        assert metadata["architecture"]["resnet_units"] == [1, 1, 1, 1]
    return cache, {"fe": checkpoints.saved_model(FE),
                   "classification": checkpoints.saved_model(CLASSIFICATION)}


def load(name, cache, **kwargs):
    return vit_hub.load_pretrained(name, cache_dir=cache, offline=True, **kwargs)


@pytest.mark.parametrize("name,kind,width", [(FE, "fe", 32), (CLASSIFICATION, "classification", 1000)])
def test_loads_and_computes_what_the_hub_model_computes(hybrid_cache, name, kind, width):
    cache, sources = hybrid_cache
    model = load(name, cache)
    inputs = parity_inputs(TINY_HYBRID_IMAGE)
    out = model.predict(inputs, verbose=0)
    assert out.shape == (len(inputs), width)
    assert np.abs(out - hub_outputs(sources[kind], inputs)).max() <= TOLERANCE
    assert isinstance(model.embedding_layers[0], vit_hub.ResNetStem)


def test_another_image_size_resamples_to_the_stems_grid(hybrid_cache):
    cache, _ = hybrid_cache
    with pytest.warns(UserWarning, match=r"resampled from a 2x2 to a 3x4 patch grid"):
        model = load(FE, cache, image_size=(96, 128))
    assert model.grid_size == (3, 4)
    assert model.predict(np.zeros((1, 96, 128, 3), np.float32), verbose=0).shape == (1, 32)


@needs_training
def test_new_heads_and_fine_tuning(hybrid_cache):
    cache, _ = hybrid_cache
    x = parity_inputs(TINY_HYBRID_IMAGE, batch=4)
    classifier = load(CLASSIFICATION, cache, num_classes=3)
    np.testing.assert_array_equal(classifier.predict(x, verbose=0), 0)  # fresh zero head
    backbone = load(FE, cache, include_top=True, num_classes=3)
    backbone.compile(optimizer=keras.optimizers.SGD(0.1),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel = backbone.get_layer("stem").conv_root.kernel
    before = np.array(kernel.numpy())
    # Step 1 trains the zero-initialised head only (it passes no gradient back); from
    # step 2 on the gradients reach the stem.
    backbone.fit(x, np.array([0, 1, 2, 0]), epochs=2, batch_size=4, verbose=0)
    assert np.abs(before - kernel.numpy()).max() > 1e-6


def test_attention_maps_and_rollout(hybrid_cache):
    cache, _ = hybrid_cache
    model = load(FE, cache)
    x = parity_inputs(TINY_HYBRID_IMAGE, batch=2)
    maps = vit_hub.attention_maps(model, x)
    assert [m.shape for m in maps] == [(2, 4, 5, 5)] * 2
    rollout = vit_hub.attention_rollout(maps, model.grid_size)
    assert rollout.shape == (2, 2, 2) and rollout.max() == pytest.approx(1.0)


def test_mixed_bfloat16_agrees_with_float32(hybrid_cache):
    cache, _ = hybrid_cache
    x = parity_inputs(TINY_HYBRID_IMAGE, batch=4)
    a = load(FE, cache).predict(x, verbose=0).astype(np.float64)
    b = np.asarray(load(FE, cache, dtype="mixed_bfloat16").predict(x, verbose=0), np.float64)
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() >= 0.995, cosine  # bf16 through 5 conv stages and 2 blocks


def test_keras_file_round_trip(hybrid_cache, tmp_path):
    cache, _ = hybrid_cache
    model = load(CLASSIFICATION, cache)
    x = parity_inputs(TINY_HYBRID_IMAGE, batch=2)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "hybrid.keras")
    reloaded = keras.saving.load_model(tmp_path / "hybrid.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-6)


def test_saved_model_export(hybrid_cache, tmp_path):
    from vit_hub.export import export_saved_model

    cache, _ = hybrid_cache
    model = load(CLASSIFICATION, cache)
    if BACKEND != "tensorflow":  # export traces into TF ops: a clear error, nothing written
        with pytest.raises(ExportError, match="KERAS_BACKEND=tensorflow"):
            export_saved_model(model, os.fspath(tmp_path / "served"))
        assert not (tmp_path / "served").exists()
        return
    import tensorflow as tf

    x = parity_inputs(TINY_HYBRID_IMAGE, batch=2)
    export_saved_model(model, os.fspath(tmp_path / "served"))
    served = tf.saved_model.load(os.fspath(tmp_path / "served"))
    out = served.signatures["serving_default"](images=tf.constant(x))["output_0"].numpy()
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5)
