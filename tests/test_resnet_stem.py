"""The hybrids' ResNet stem (vit_hub.resnet_stem) against the float64 numpy reference
(tests/numpy_reference.py), with the stem's own parameters in the checkpoints' layout.

Tolerances: float64 runs agree to round-off (1e-10). float32 cannot reach 1e-5 absolute
end to end: each bottleneck unit adds ~1e-5..4e-5 of float32 accumulation error on
outputs of size ~10 (the Flax reference shows the same), so float32 is held to 5e-5 of
the output's peak. The deliberately wrong variants of the reference move the output by
far more, and the tests show it.
"""

import inspect

import keras
import numpy as np
import pytest

from tests import numpy_reference as npr
from vit_hub import resnet_stem as rs
from vit_hub.architecture import Architecture
from vit_hub.conversion.name_map import is_group_norm, linen_shapes, stem_names

pytestmark = pytest.mark.backends  # runs on TensorFlow, JAX, PyTorch and OpenVINO

TOL64 = 1e-10
F32_RTOL = 5e-5
R26, R50 = (2, 2, 2, 2), (3, 4, 6, 3)


def stem_shapes(units):
    """{Linen path: checkpoint shape} of the stem alone."""
    arch = Architecture(32, 32, 1, 1, 32, include_top=False, resnet_units=units)
    return {k: v for k, v in linen_shapes(arch).items() if k in stem_names(units)}


def random_params(units, seed=0):
    """Non-trivial Linen-keyed params: kernels with a per-output-channel offset and a
    log-uniform scale in [0.01, 1] (so where epsilon sits matters), GroupNorm scale
    around 1 and random biases, in the published (1, 1, 1, C) layout."""
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in stem_shapes(units).items():
        if path.endswith("kernel"):
            scale = 10.0 ** rng.uniform(-2, 0, size=shape[-1])
            value = rng.normal(size=shape) * scale + rng.normal(0, 0.5, size=shape[-1]) * scale
        elif path.endswith("scale"):
            value = 1.0 + 0.2 * rng.normal(size=shape)
        else:
            value = 0.2 * rng.normal(size=shape)
        params[path] = value.astype(np.float32)
    return params


def random_images(size, batch=2, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def keras_stem(units, params, size, **kwargs):
    stem = rs.ResNetStem(units, name="stem", **kwargs)
    stem.build((None, size, size, 3))
    variables = {v.path.split("stem/", 1)[1]: v for v in stem.weights}
    names = stem_names(units)
    assert sorted(names.values()) == sorted(variables)  # the name map names each once
    for linen, native in names.items():
        value = params[linen].reshape(-1) if is_group_norm(linen) else params[linen]
        variables[native].assign(value)
    return stem


def max_abs(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.inf if a.shape != b.shape else float(np.max(np.abs(a - b)))


def tolerance(want, dtype):
    if dtype == "float64" and keras.backend.backend() == "tensorflow":
        return TOL64  # (Keras' GroupNormalization is float32 on the other backends)
    return F32_RTOL * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("units,size", [((1, 1, 1, 1), 64), (R26, 64), ((1, 1, 1, 1), 96)])
def test_stem_matches_the_numpy_reference(units, size, dtype):
    if dtype == "float64" and keras.backend.backend() == "jax":
        pytest.skip("JAX computes float64 only with jax_enable_x64")
    params, x = random_params(units), random_images(size).astype(dtype)
    got = keras.ops.convert_to_numpy(keras_stem(units, params, size, dtype=dtype)(x))
    want = npr.resnet_stem(params, x, units)
    assert got.shape == (2, size // 32, size // 32, 2048)
    assert max_abs(got, want) <= tolerance(want, dtype), max_abs(got, want)


@pytest.mark.parametrize("variant", [dict(eps_on_var=True), dict(padding="SAME_BEGIN")],
                         ids=["epsilon-on-the-variance", "same-padding-extra-at-the-start"])
def test_a_wrong_reference_is_detected(variant):
    units, size = (1, 1, 1, 1), 64
    params, x = random_params(units), random_images(size)
    got = keras.ops.convert_to_numpy(keras_stem(units, params, size)(x))
    right = npr.resnet_stem(params, x, units)
    assert max_abs(got, right) <= tolerance(right, "float32")
    assert max_abs(got, npr.resnet_stem(params, x, units, **variant)) > 100 * tolerance(
        right, "float32")


@pytest.mark.parametrize("variant", [dict(eps_on_var=True), dict(ddof=1),
                                     dict(padding="SAME_BEGIN"), dict(padding="VALID")],
                         ids=["epsilon-on-the-variance", "sample-std", "pad-start", "valid"])
def test_a_wrong_convolution_is_detected(variant):
    """A strided 3x3 on an even input, where SAME padding is asymmetric. (Inside the stem
    a sample std is hidden: every conv feeds a GroupNorm, which cancels the uniform
    factor but for its 1e-6 epsilon; so it is checked here, on one conv.)"""
    w = random_params((1, 1, 1, 1))["block1/unit1/conv2/kernel"]
    x = random_images(16)[..., :1].repeat(64, -1)
    conv = rs.StandardizedConv2D(64, 3, 2)
    conv.build(x.shape)
    conv.kernel.assign(w)
    got = keras.ops.convert_to_numpy(conv(x))
    want = npr.std_conv(x, w, 2)
    assert max_abs(got, want) <= tolerance(want, "float32")
    assert max_abs(got, npr.std_conv(x, w, 2, **variant)) > 10 * tolerance(want, "float32")


def test_the_pool_pads_with_minus_infinity():
    x = random_images(16)  # signed values: a zero pad would win some maxima
    got = keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(3, 2, padding="same")(x))
    assert max_abs(got, npr.max_pool(x)) == 0.0
    assert max_abs(got, npr.max_pool(x, pad_value=0.0)) > 0.1


@pytest.mark.parametrize("units,params,tensors", [(R26, 13_946_176, 87), (R50, 23_508_032, 159)])
def test_stem_parameter_counts(units, params, tensors):
    stem = rs.ResNetStem(units)
    stem.build((None, 224, 224, 3))
    assert (stem.count_params(), len(stem.weights)) == (params, tensors)
    shapes = stem_shapes(units)
    assert (sum(int(np.prod(s)) for s in shapes.values()), len(shapes)) == (params, tensors)


@pytest.mark.parametrize("layer", [
    lambda: rs.StandardizedConv2D(64, 3, strides=2, epsilon=1e-4),
    lambda: rs.BottleneckUnit(32, strides=2),
    lambda: rs.ResNetStem((1, 2, 1, 1), width=32, name="stem"),
], ids=["conv", "unit", "stem"])
def test_get_config_holds_the_init_arguments(layer):
    layer = layer()
    config = layer.get_config()
    arguments = {p for p in inspect.signature(type(layer).__init__).parameters
                 if p not in ("self", "kwargs")}
    assert set(config) == arguments | {"name", "trainable", "dtype"}
    assert type(layer).from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("vit_hub>")


def test_mixed_bfloat16_standardises_the_float32_kernel():
    units, size = (1, 1, 1, 1), 64
    params, x = random_params(units), random_images(size)
    stem = keras_stem(units, params, size, dtype="mixed_bfloat16")
    assert {v.dtype for v in stem.weights} == {"float32"}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stem.conv_root.standardized_kernel()),
                               npr.standardize(params["conv_root/kernel"]), atol=1e-5)
    out = stem(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    want = npr.resnet_stem(params, x, units)
    got = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    assert max_abs(got, want) < 0.25 * np.abs(want).max()  # bf16: ~3 significant digits
