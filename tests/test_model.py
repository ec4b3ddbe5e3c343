"""The native ViT on tiny configs: numerics against a numpy reference, shapes, saving,
training, freezing, XLA and errors."""

import keras
import numpy as np
import pytest

import vit_hub
from tests.conftest import BACKEND, TINY, TINY_IMAGE, needs_training, numpy
from tests.numpy_reference import random_params, vit_forward
from vit_hub.conversion.name_map import assign_linen
from vit_hub.weights import WeightsError

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO

# float32 against a float64 reference: accumulated rounding over 2 blocks of width 32 is
# ~1e-6; 1e-5 leaves room, while any wrong equation (exact GELU, epsilon 1e-5, missing
# 1/sqrt(d) scaling) moves outputs by 1e-3 or more (checked in test_reference_detects...).
ATOL = 1e-5


def tiny_model(**kwargs):
    return vit_hub.VisionTransformer(**{"image_size": TINY_IMAGE, **TINY, **kwargs})


def tiny_params(seed=0, num_classes=None, image_size=TINY_IMAGE):
    tokens = (image_size // TINY["patch_size"]) ** 2 + 1
    return random_params(
        np.random.default_rng(seed),
        patch=TINY["patch_size"], hidden=TINY["hidden_dim"], layers=TINY["num_layers"],
        heads=TINY["num_heads"], mlp=TINY["mlp_dim"], num_tokens=tokens,
        num_classes=num_classes,
    )


def flat(params):
    from vit_hub.weights import flatten

    return flatten(params)


@pytest.mark.parametrize(
    "include_top,pooling",
    [(True, None), (False, None), (False, "token"), (False, "gap"), (True, "gap")],
)
def test_matches_numpy_reference(images, include_top, pooling):
    params = tiny_params(num_classes=7 if include_top else None)
    model = tiny_model(include_top=include_top, num_classes=7, pooling=pooling)
    assign_linen(model, flat(params))
    tokens, features, logits, _ = vit_forward(params, images, TINY["patch_size"], pooling or "token")
    expected = logits if include_top else (features if pooling else tokens)
    out = numpy(model(images))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(numpy(model.extract_features(images)), features, atol=ATOL, rtol=0)


@pytest.mark.parametrize("include_top", [True, False])
def test_hybrid_matches_numpy_reference(include_top):
    """A ResNet+ViT hybrid (one bottleneck unit per stage, the published stem widths)
    against the float64 reference: float32 through the stem drifts ~1e-5 per unit (see
    tests/test_resnet_stem.py), so 5e-5 here."""
    from vit_hub.conversion.published_format import HubConfig, init_params

    config = HubConfig(32, 32, 2, 4, 64, num_classes=7, image_size=64,
                       resnet_units=(1, 1, 1, 1))
    params = init_params(config, "classification" if include_top else "fe", seed=4)
    model = vit_hub.VisionTransformer(image_size=64, **{**TINY, "patch_size": 32},
                                      resnet_units=(1, 1, 1, 1), include_top=include_top,
                                      num_classes=7, pooling="token")
    assign_linen(model, flat(params))
    x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    _, features, logits, maps = vit_forward(params, x, 32)
    np.testing.assert_allclose(numpy(model(x)), logits if include_top else features,
                               atol=5e-5, rtol=0)
    _, attention = model.encode(x, return_attention=True)
    assert [tuple(a.shape) for a in attention] == [(2, 4, 5, 5)] * 2
    np.testing.assert_allclose(numpy(attention[-1]), maps[-1], atol=5e-5)


@pytest.mark.parametrize("change", ["exact_gelu", "epsilon", "no_scaling"])
def test_reference_detects_wrong_numerics(images, change, monkeypatch):
    """The reference comparison above would fail if any pinned detail were different."""
    from tests import numpy_reference as ref

    params = tiny_params()
    model = tiny_model(include_top=False, pooling="token")
    assign_linen(model, flat(params))
    if change == "exact_gelu":
        from math import erf

        monkeypatch.setattr(ref, "gelu_tanh", np.vectorize(lambda x: 0.5 * x * (1 + erf(x / 2**0.5))))
    elif change == "epsilon":
        original = ref.layer_norm
        monkeypatch.setattr(ref, "layer_norm", lambda x, p, eps=1e-6: original(x, p, eps=1e-2))
    else:
        original_attention = ref.attention
        scaled = lambda p: {**p, "query": {**p["query"], "kernel": p["query"]["kernel"] * 8, "bias": p["query"]["bias"] * 8}}
        monkeypatch.setattr(ref, "attention", lambda x, p: original_attention(x, scaled(p)))
    _, features, _, _ = ref.vit_forward(params, images, TINY["patch_size"])
    assert np.abs(numpy(model.extract_features(images)) - features).max() > 10 * ATOL


def test_variable_batch_size_and_jit(images):
    model = tiny_model(include_top=False, pooling="token")
    assign_linen(model, flat(tiny_params()))
    eager = numpy(model(images))
    for batch in (1, 3):
        np.testing.assert_allclose(numpy(model(images[:batch])), eager[:batch], atol=1e-6)
    if BACKEND == "torch":
        return  # jit there is torch.compile: ~2 min of Inductor's C++ builds on 2 CPU cores
    model.compile(jit_compile=True)
    # On openvino the model declines jit (see `supports_jit` in vit_hub/model.py).
    assert model.jit_compile == (BACKEND != "openvino")
    np.testing.assert_allclose(model.predict(images, batch_size=2, verbose=0), eager, atol=1e-5)


def test_other_and_non_square_image_sizes(images):
    for size, tokens in [(48, 37), ((32, 48), 25)]:
        model = tiny_model(image_size=size, include_top=False)
        h, w = (size, size) if isinstance(size, int) else size
        out = model(np.zeros((2, h, w, 3), np.float32))
        assert out.shape == (2, tokens, TINY["hidden_dim"])




@pytest.mark.parametrize("size,text", [(30, "multiple of the patch size 8"),
                                       ((32, 36), "multiple of the patch size 8"),
                                       (0, "must be a positive int"), (-32, "positive")])
def test_image_size_not_divisible_is_a_clear_error(size, text):
    with pytest.raises(vit_hub.ConfigError, match=text):
        tiny_model(image_size=size)


def test_unknown_variant_names_closest():
    with pytest.raises(ValueError, match="Did you mean 'vit_b32'"):
        vit_hub.create_vit("vit_b23")
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        vit_hub.create_vit("resnet50")


def test_bad_pooling_and_heads():
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_model(include_top=False, pooling="max")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny_model(num_heads=5)


def test_config_round_trip(images):
    model = tiny_model(include_top=True, num_classes=5, pooling="gap", dropout=0.1,
                       classifier_activation="softmax")
    config = model.get_config()
    clone = vit_hub.VisionTransformer.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(numpy(clone(images)), numpy(model(images)), atol=1e-6)


@pytest.mark.parametrize(
    "layer",
    [
        vit_hub.PatchEmbedding(16, 4),
        vit_hub.ClassToken(),
        vit_hub.PositionEmbedding(),
        vit_hub.MLP(16, 32, dropout=0.1),
        vit_hub.TransformerBlock(16, 2, 32, dropout=0.1, attention_dropout=0.2, layer_norm_epsilon=1e-5),
        vit_hub.TokenPooling("gap"),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_is_its_init_args(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_keras_file_round_trip(tmp_path, images):
    model = tiny_model(include_top=True, num_classes=3)
    assign_linen(model, flat(tiny_params(num_classes=3)))
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode stays on: layers are registered
    assert isinstance(loaded, vit_hub.VisionTransformer)
    np.testing.assert_allclose(numpy(loaded(images)), numpy(model(images)), atol=1e-6, rtol=0)
    np.testing.assert_allclose(numpy(loaded.extract_features(images)),
                               numpy(model.extract_features(images)), atol=1e-6)


def stripes(n, seed=0):
    """A two-class dataset a tiny ViT can learn: horizontal vs vertical stripes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    grid = np.arange(TINY_IMAGE)[None, :, None] * np.ones((1, 1, TINY_IMAGE))
    waves = np.sin(grid * 0.8 + phase)
    images = np.where(labels[:, None, None] == 0, waves, waves.transpose(0, 2, 1))
    noise = rng.normal(0, 0.3, (n, TINY_IMAGE, TINY_IMAGE, 3))
    return np.clip(images[..., None] + noise, -1, 1).astype(np.float32), labels


@needs_training
def test_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    x, y = stripes(256)
    model = tiny_model(include_top=True, num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    x_test, y_test = stripes(128, seed=1)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9


@needs_training
def test_frozen_backbone_keeps_its_weights():
    keras.utils.set_random_seed(0)
    backbone = tiny_model(include_top=False, pooling="token")
    backbone.trainable = False
    assert backbone.trainable_weights == []
    before = [w.copy() for w in backbone.get_weights()]
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    outputs = keras.layers.Dense(2)(backbone(inputs, training=False))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert len(model.trainable_weights) == 2
    model.fit(*stripes(64), epochs=1, verbose=0)
    for old, new in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_assign_rejects_a_mismatched_checkpoint():
    model = tiny_model(include_top=False)
    params = flat(tiny_params())
    params["Transformer/encoder_norm/scale"] = np.ones(16, np.float32)
    del params["cls"]
    params["pre_logits/kernel"] = np.ones((32, 32), np.float32)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(WeightsError) as err:
        assign_linen(model, params)
    text = str(err.value)
    assert "missing from the checkpoint: cls" in text
    assert "not in the model: pre_logits/kernel" in text
    assert "encoder_norm/scale: checkpoint has shape (16,), the model expects (32,)" in text
    for old, new in zip(before, model.get_weights()):  # nothing was assigned
        np.testing.assert_array_equal(old, new)


def test_weights_to_be_loaded_skips_random_initialisation_only_inside():
    from vit_hub.layers import weights_to_be_loaded

    with weights_to_be_loaded():
        blank = tiny_model(include_top=False)
    assert all(not np.any(w) for w in blank.get_weights() if w.ndim > 1)
    fresh = tiny_model(include_top=False)
    assert np.any(fresh.blocks[0].mlp.dense_1.kernel.numpy())
