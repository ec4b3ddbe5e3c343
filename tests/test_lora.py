"""LoRA on a VisionTransformer: what it trains, what it saves, what merging gives, and the
bad inputs. Tiny models; every backend (training tests skip on OpenVINO, inference-only).
"""

import h5py
import keras
import numpy as np
import pytest

import vit_hub
from tests.conftest import (
    BACKEND,
    TINY,
    TINY_HYBRID,
    TINY_HYBRID_IMAGE,
    TINY_IMAGE,
    needs_training,
    numpy,
)

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO

# float32 throughout: merging adds (alpha / rank) A @ B to the kernel once, where the
# adapted layer adds it at each call; both round once per element (~1e-7 relative).
TOLERANCE = 1e-5
CLASSES = 5


def tiny(seed=0, **kwargs):
    """A tiny classifier; its head random, not the zeros a new head starts with (which
    would make every output 0, and every comparison of outputs pass)."""
    keras.utils.set_random_seed(seed)
    model = vit_hub.VisionTransformer(
        **{"image_size": TINY_IMAGE, "num_classes": CLASSES, **TINY, **kwargs})
    if model.head is not None:
        kernel = model.head.kernel
        kernel.assign(np.random.default_rng(seed).normal(0, 0.5, kernel.shape)
                      .astype("float32"))
    return model


def randomize_adapters(model, seed=1):
    """Non-zero B factors (fresh ones are zero), as training leaves them."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "lora_kernel" in variable.path:
            variable.assign(rng.normal(0, 0.2, variable.shape).astype("float32"))


def size(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_enable_lora_trains_only_adapters_and_the_head(images):
    model = tiny()
    before = numpy(model(images))
    model.enable_lora(4)

    d, heads, depth = TINY["hidden_dim"], TINY["num_heads"], TINY["num_layers"]
    # Keras' EinsumDense factors: A (hidden, heads, rank), B (rank, head_dim).
    per_target = d * heads * 4 + 4 * (d // heads)
    head = d * CLASSES + CLASSES
    assert size(model.trainable_weights) == depth * 2 * per_target + head
    assert all("lora_kernel" in v.path or v.path.startswith("head/")
               for v in model.trainable_weights)
    assert model.lora == {"rank": 4, "alpha": 4, "target": ["query", "value"]}
    np.testing.assert_array_equal(numpy(model(images)), before)  # B starts at zero


def test_a_hybrids_stem_stays_frozen():
    model = tiny(**TINY_HYBRID, image_size=TINY_HYBRID_IMAGE)
    model.enable_lora(2)
    assert all("lora_kernel" in v.path or v.path.startswith("head/")
               for v in model.trainable_weights)
    assert any(v.path.startswith("stem/") for v in model.non_trainable_weights)


def test_lora_targets_and_alpha(images):
    model = tiny()
    model.enable_lora(2, target=("key", "mlp_dense_1", "mlp_dense_2"), alpha=8)
    adapted = {v.path.rsplit("/", 2)[-2] for v in model.trainable_weights
               if "lora_kernel" in v.path}
    assert adapted == {"key", "dense_1", "dense_2"}
    randomize_adapters(model)
    outputs = numpy(model(images))
    model.merge_lora()
    np.testing.assert_allclose(numpy(model(images)), outputs, atol=TOLERANCE, rtol=0)


@needs_training
def test_fit_moves_only_the_adapters_and_the_head(images):
    model = tiny()
    model.enable_lora(4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {v.path: numpy(v).copy() for v in model.weights}
    # Two steps: zero B passes no gradient to A at the first; by the second every
    # adapter factor moves.
    model.fit(images, np.arange(len(images)) % CLASSES, epochs=3, batch_size=len(images),
              verbose=0)
    moved = {v.path for v in model.weights if not np.array_equal(numpy(v), before[v.path])}
    lora = {path for path in before if "lora_kernel" in path}
    assert moved == lora | {"head/kernel", "head/bias"}


def test_merged_outputs_equal_the_adapted_ones(images):
    model = tiny()
    model.enable_lora(4)
    randomize_adapters(model)
    adapted = numpy(model(images))
    plain = numpy(tiny()(images))
    assert np.abs(adapted - plain).max() > 1e-3  # the adapters change the outputs

    model.merge_lora()
    assert model.lora is None
    assert not [v for v in model.weights if "lora" in v.path]
    assert size(model.trainable_weights) == model.count_params()  # a plain model again
    np.testing.assert_allclose(numpy(model(images)), adapted, atol=TOLERANCE, rtol=0)
    model.enable_lora(2)  # and LoRA can start afresh on the merged kernels
    np.testing.assert_allclose(numpy(model(images)), adapted, atol=TOLERANCE, rtol=0)


def test_adapter_round_trip(images, tmp_path):
    model = tiny()
    model.enable_lora(4)
    randomize_adapters(model)
    expected = numpy(model(images))
    path = model.save_lora_weights(tmp_path / "digits.lora.h5")

    fresh = tiny()  # same seed: the same base weights, no LoRA yet
    fresh.load_lora_weights(path)  # enables LoRA with the file's settings
    assert fresh.lora == model.lora
    np.testing.assert_array_equal(numpy(fresh(images)), expected)
    with h5py.File(path) as f:  # the adapters and the head, nothing else
        saved = set()
        f.visititems(lambda name, item: saved.add(name) if isinstance(item, h5py.Dataset)
                     else None)
    assert saved == {v.path for v in model.trainable_weights}


def test_keras_file_round_trip(images, tmp_path):
    model = tiny()
    model.enable_lora(4)
    randomize_adapters(model)
    expected = numpy(model(images))
    model.save(tmp_path / "lora.keras")
    reloaded = keras.saving.load_model(tmp_path / "lora.keras")
    # Keras saves the kernels with the adapters merged; LoRA comes back enabled.
    assert reloaded.lora == model.lora
    assert {v.path for v in reloaded.trainable_weights} == {
        v.path for v in model.trainable_weights}
    np.testing.assert_allclose(numpy(reloaded(images)), expected, atol=TOLERANCE, rtol=0)


def test_a_lora_model_inside_a_functional_model_saves_and_reloads(images, tmp_path):
    backbone = tiny(include_top=False, pooling="token")
    backbone.enable_lora(2)
    randomize_adapters(backbone)
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, name="new_head")(backbone(inputs)))
    expected = numpy(model(images))
    model.save(tmp_path / "wrapped.keras")
    reloaded = keras.saving.load_model(tmp_path / "wrapped.keras")
    np.testing.assert_allclose(numpy(reloaded(images)), expected, atol=TOLERANCE, rtol=0)
    assert reloaded.get_layer(backbone.name).lora == backbone.lora


def test_bad_lora_inputs(tmp_path):
    model = tiny()
    for rank in (0, -1, 2.5, True, "4"):
        with pytest.raises(vit_hub.ConfigError, match="rank must be an int >= 1"):
            model.enable_lora(rank)
    with pytest.raises(vit_hub.ConfigError, match="Did you mean 'query'"):
        model.enable_lora(4, target=["qeury"])
    with pytest.raises(vit_hub.ConfigError, match="alpha must be a positive"):
        model.enable_lora(4, alpha=0)
    assert model.lora is None  # nothing changed
    assert size(model.trainable_weights) == model.count_params()
    with pytest.raises(vit_hub.ConfigError, match="no LoRA enabled"):
        model.save_lora_weights(tmp_path / "none.lora.h5")
    with pytest.raises(vit_hub.ConfigError, match="no LoRA enabled"):
        model.merge_lora()

    model.enable_lora(4)
    with pytest.raises(vit_hub.ConfigError, match="already enabled.*merge_lora"):
        model.enable_lora(8)
    with pytest.raises(vit_hub.ConfigError, match=r"end in '\.lora\.h5'"):
        model.save_lora_weights(tmp_path / "adapters.h5")
    with pytest.raises(vit_hub.ConfigError, match="merge_lora"):
        vit_hub.weights.save_weights_file(model, tmp_path / "weights.h5")
    path = model.save_lora_weights(tmp_path / "r4.lora.h5")

    other_rank = tiny()
    other_rank.enable_lora(8)
    with pytest.raises(vit_hub.WeightsError, match="rank 4.*the model has rank 8"):
        other_rank.load_lora_weights(path)
    deeper = tiny(num_layers=3)
    with pytest.raises(vit_hub.WeightsError, match="another architecture: num_layers 2"):
        deeper.load_lora_weights(path)
    assert deeper.lora is None
    other_head = tiny(num_classes=7)
    with pytest.raises(vit_hub.WeightsError, match="head/kernel"):
        other_head.load_lora_weights(path)
    assert other_head.lora is None  # enabled for the load, and taken back with it
    (tmp_path / "junk.lora.h5").write_bytes(b"not hdf5")
    with pytest.raises(vit_hub.WeightsError, match="Cannot read .*junk.lora.h5.* not a "
                       "vit_hub LoRA weights file. Save the adapters again"):
        tiny().load_lora_weights(tmp_path / "junk.lora.h5")
    with pytest.raises(vit_hub.WeightsError, match="missing.lora.h5 does not exist"):
        tiny().load_lora_weights(tmp_path / "missing.lora.h5")


def test_lora_files_load_only_into_what_they_were_saved_from(tmp_path, images):
    """The same widths are not enough: another patch size, another alpha are refused;
    the same targets in another order are the same adapters."""
    model = tiny()
    model.enable_lora(2, target=("query", "value"), alpha=4)
    randomize_adapters(model)
    path = model.save_lora_weights(tmp_path / "a4.lora.h5")
    other_alpha = tiny()
    other_alpha.enable_lora(2, target=("query", "value"), alpha=16)
    with pytest.raises(vit_hub.WeightsError, match="alpha 4.*the model has rank 2, alpha 16"):
        other_alpha.load_lora_weights(path)
    other_patch = tiny(patch_size=TINY["patch_size"] // 2)
    with pytest.raises(vit_hub.WeightsError, match="another architecture: patch_size"):
        other_patch.load_lora_weights(path)
    reordered = tiny()
    reordered.enable_lora(2, target=("value", "query"), alpha=4)
    reordered.load_lora_weights(path)
    np.testing.assert_allclose(numpy(reordered(images)), numpy(model(images)),
                               atol=TOLERANCE, rtol=0)


def test_a_corrupt_lora_file_is_refused(tmp_path):
    """One flipped exponent bit in an adapter loaded before and gave NaNs: the file's
    checksum refuses it (and a file without one)."""
    model = tiny()
    model.enable_lora(2)
    randomize_adapters(model)
    path = model.save_lora_weights(tmp_path / "a.lora.h5")
    tiny().load_lora_weights(path)  # intact: loads
    with h5py.File(path, "r+") as f:
        dataset = f["block_0/attention/query/lora_kernel_b"]
        values = dataset[()]
        values.view(np.uint32)[0, 0] ^= 1 << 30  # an exponent bit
        dataset[...] = values
    with pytest.raises(vit_hub.WeightsError, match="fails its sha256 check.*Save the "
                       "adapters again"):
        tiny().load_lora_weights(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["sha256"]
    with pytest.raises(vit_hub.WeightsError, match="has no checksum"):
        tiny().load_lora_weights(path)


def test_a_lora_model_freezes_whole(tmp_path):
    """model.trainable = False freezes the adapters too, also inside an outer model and
    in a frozen KerasLayer, as Keras' own Dense.enable_lora does: only the outer head
    trains."""
    model = tiny()
    model.enable_lora(2)
    assert len(model.trainable_weights) == 4 * TINY["num_layers"] + 2  # A, B x2; head
    model.trainable = False
    inputs = keras.Input((TINY_IMAGE, TINY_IMAGE, 3))
    head = keras.layers.Dense(3)
    outer = keras.Model(inputs, head(model(inputs)))
    assert [v.path for v in outer.trainable_weights] == [v.path for v in head.weights]
    saved = tiny()
    saved.enable_lora(2)
    path = saved.save_lora_weights(tmp_path / "a.lora.h5")
    layer = vit_hub.KerasLayer(None, architecture=vit_hub.architecture.Architecture.of(
        saved).to_dict())  # (as a `.keras` file builds it: the network, no cache)
    assert not layer.trainable  # hub.KerasLayer's default
    layer.load_lora_weights(path)
    head = keras.layers.Dense(3)
    outer = keras.Model(inputs, head(layer(inputs)))
    assert [v.path for v in outer.trainable_weights] == [v.path for v in head.weights]


def test_a_rank_above_the_kernels_rank_is_refused():
    with pytest.raises(vit_hub.ConfigError, match="above the full rank"):
        tiny().enable_lora(10**6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the OpenVINO runtime converts on one "
                    "backend; once is enough")
def test_openvino_runtime_runs_a_lora_model(images):
    model = tiny()
    model.enable_lora(4)
    randomize_adapters(model)
    fast = vit_hub.to_openvino(model)  # fp32, held to the parity gate against `model`
    np.testing.assert_allclose(fast(images), numpy(model(images)), atol=1e-4, rtol=0)
