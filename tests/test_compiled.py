"""Compiled inference calls (vit_hub/compiled.py): `model(x)` runs a compiled function of
the model that computes what the op-by-op call does, sees new weights and new structure,
and never hides a failure."""

import warnings

import keras
import numpy as np
import pytest

import vit_hub
from tests.conftest import BACKEND, TINY, TINY_IMAGE, numpy
from tests.numpy_reference import vit_forward
from tests.test_model import ATOL, flat, tiny_model, tiny_params
from vit_hub import precision
from vit_hub.conversion.name_map import assign_linen

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO


def test_plain_calls_run_compiled_and_compute_the_same(images, monkeypatch):
    from vit_hub.layers import TransformerBlock

    model = tiny_model(include_top=True, num_classes=5)
    assign_linen(model, flat(tiny_params(num_classes=5)))
    compiled = numpy(model(images))
    model.compiled_calls = False
    eager = numpy(model(images))
    np.testing.assert_allclose(compiled, eager, atol=1e-5)  # float32, fused vs op by op
    model.compiled_calls = True
    calls = []
    original = TransformerBlock.call
    monkeypatch.setattr(TransformerBlock, "call",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    np.testing.assert_allclose(numpy(model(images)), compiled, atol=1e-6)
    compiled_path = BACKEND in ("tensorflow", "jax", "openvino")  # PyTorch: eager
    assert (calls == []) == compiled_path  # a compiled call runs no Python layer code
    model(images, training=True)  # training: the plain path, always
    assert len(calls) == (TINY["num_layers"] if compiled_path else 2 * TINY["num_layers"])
    zeros = [keras.ops.zeros(v.shape, v.dtype) for v in model.trainable_variables]
    with keras.StatelessScope(state_mapping=list(zip(model.trainable_variables, zeros))):
        inside = numpy(model(images))  # in a stateless scope: the scope's values
    np.testing.assert_array_equal(inside, 0)


def test_compiled_calls_see_new_weights_and_give_gradients(images):
    keras.utils.set_random_seed(0)  # unseeded weights failed the gradients' 1e-5 once in ~10
    model = tiny_model(include_top=True, num_classes=3)
    before = numpy(model(images))
    kernel = np.random.default_rng(0).normal(size=model.head.kernel.shape).astype("float32")
    model.head.kernel.assign(kernel)
    after = numpy(model(images))
    assert np.abs(after - before).max() > 1e-2  # the assignment is seen, not a stale trace
    model.compiled_calls = False
    np.testing.assert_allclose(after, numpy(model(images)), atol=1e-5)
    if keras.backend.backend() == "tensorflow":  # gradients through the compiled function
        import tensorflow as tf

        x = tf.constant(images)
        grads = []
        for compiled_calls in (True, False):
            model.compiled_calls = compiled_calls
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(model(x) ** 2)
            grads.append(tape.gradient(loss, x).numpy())
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)  # float32 ulps


openvino_only = pytest.mark.skipif(BACKEND != "openvino", reason="about Keras' openvino backend")


@openvino_only
def test_openvino_inference_is_exact_float32(images, monkeypatch):
    """model(x), predict, predict_on_batch and evaluate, also of a model around it, all
    run the OpenVINO model that vit_hub compiles with INFERENCE_PRECISION_HINT f32, never
    Keras' own unpinned one (bf16 on CPUs that have it, 5e-2 off): equal to the float64
    reference within 1e-5."""
    import openvino as ov

    params = tiny_params(num_classes=5)
    model = tiny_model(include_top=True, num_classes=5)
    assign_linen(model, flat(params))
    _, _, expected, _ = vit_forward(params, images, TINY["patch_size"])
    configs, compile_model = [], ov.compile_model

    def recorded(graph, device, config=None):  # Keras' own compile passes no config
        configs.append(config)
        return compile_model(graph, device, config or {})

    monkeypatch.setattr(ov, "compile_model", recorded)
    for out in (numpy(model(images)), model.predict(images, batch_size=2, verbose=0),
                model.predict_on_batch(images)):
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    model.compile(loss="mse")
    assert model.evaluate(images, expected, verbose=0) < ATOL ** 2
    inputs = keras.Input(images.shape[1:])
    outer = keras.Model(inputs, model(inputs))  # as a layer: called with mask=None
    np.testing.assert_allclose(outer.predict(images, verbose=0), expected, atol=ATOL, rtol=0)
    # Compiled once, pinned; where the CPU has no bf16 f32 is its default too, hence
    # the config check besides the compiled model's own answer.
    assert configs == [{"INFERENCE_PRECISION_HINT": "f32"}]
    compiled = model._inference.function.compiled[images.shape[1:]]
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    for keras_model in (model, outer):  # Keras' own compiled model was never built
        assert getattr(keras_model, "ov_compiled_model", None) is None


@openvino_only
def test_fit_on_openvino_raises_keras_not_implemented_error(images):
    model = tiny_model(include_top=True, num_classes=2)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(NotImplementedError, match="`fit` is not supported with openvino"):
        model.fit(images, np.array([0, 1, 0]), verbose=0)


def test_a_change_of_structure_is_traced_again(images):
    """LoRA adds variables (and merging removes them): the compiled call is traced again,
    so an adapter's effect is seen at once, as on the op-by-op path."""
    model = tiny_model(include_top=False, pooling="token")
    before = numpy(model(images))
    model.enable_lora(2)
    np.testing.assert_allclose(numpy(model(images)), before, atol=1e-6)  # B starts at 0
    layer = model.blocks[0].attention.query_dense
    layer.lora_kernel_b.assign(np.ones(layer.lora_kernel_b.shape, "float32"))
    adapted = numpy(model(images))
    assert np.abs(adapted - before).max() > 1e-3
    model.compiled_calls = False
    np.testing.assert_allclose(adapted, numpy(model(images)), atol=1e-5)
    model.compiled_calls = True
    model.merge_lora()
    np.testing.assert_allclose(numpy(model(images)), adapted, atol=1e-5)


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch calls run eagerly: nothing compiled")
def test_a_compile_failure_is_raised_not_hidden(images, monkeypatch):
    model = tiny_model(include_top=False, pooling="token")

    def broken(self):
        raise RuntimeError("the compiler broke")

    monkeypatch.setattr(type(model._inference), "_build", broken)
    with pytest.raises(RuntimeError, match="the compiler broke"):
        model(images)


def test_float16_where_it_cannot_compile_is_said_up_front(images):
    """JAX's XLA:CPU refuses float16 matmuls with float32 accumulation: there the model
    takes the op-by-op path and create_vit warns once with the fix; elsewhere float16 is
    compiled like any policy. Each branch asserts what is right where it runs."""
    precision._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vit_hub.create_vit("vit_ti16", image_size=TINY_IMAGE, patch_size=8,
                                   num_layers=1, dtype="mixed_float16")
    said = [w for w in caught if "float16" in str(w.message)]
    fails = BACKEND == "jax" and __import__("jax").default_backend() == "cpu"
    if fails:
        assert len(said) == 1 and "'mixed_bfloat16' or 'float32'" in str(said[0].message)
        assert said[0].filename == __file__  # it points at the caller's line
    else:
        assert said == []
    assert model._inference.usable is not fails
    outputs = numpy(model(images)).astype(np.float32)  # computes either way
    assert outputs.shape == (len(images), 1000) and np.isfinite(outputs).all()
