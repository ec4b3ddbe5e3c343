"""Build ViT checkpoints in the format of the published Kaggle / TF-Hub models.

For machines that cannot reach Kaggle (the demo, the benchmarks) and for the tests:
a Flax Linen ViT written from the equations, independently of vit_hub's Keras layers
(the model code uses nothing of vit_hub, so it stays an independent reference), plus
the export recipe of the sayakpaul/ViT-jax2tf ``conversion.ipynb`` notebook that
produced ``spsayakpaul/vision-transformer``, and the original google-research ``.npz``
layout, read and named by vit_hub's own npz reader and name map (plumbing: a file's key
names say nothing about the equations). Needs the ``hub-format`` extra (jax, flax):
``pip install vit_hub[hub-format]``. Importing it sets nothing outside it: TensorFlow's
log level is for the entry points to choose.

Functions: ``init_params``, ``export_saved_model``, ``flax_apply``, ``write_npz``,
``read_npz``, ``config_from_params``. The script ``converters/build_hub_checkpoint.py``
is their command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from vit_hub.conversion import npz
from vit_hub.conversion.name_map import linen_to_original
from vit_hub.errors import ConfigError
from vit_hub.weights import flatten

KINDS = ("fe", "classification")


@dataclasses.dataclass(frozen=True)
class HubConfig:
    """Shape of one ViT; the published ones are in ARCHS (all at 224)."""

    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_classes: int = 1000
    image_size: int = 224
    # Hybrids: bottleneck units of the 4 ResNet stages; patch_size is then the stem's
    # stride, 32, and the embedding a 1x1 conv on the stem's output.
    resnet_units: tuple = ()

    @property
    def num_tokens(self) -> int:
        # Patches on the grid plus the class token.
        return (self.image_size // self.patch_size) ** 2 + 1


# The table in hub-format.md.
ARCHS = {
    "s16": HubConfig(16, 384, 12, 6, 1536),
    "b8": HubConfig(8, 768, 12, 12, 3072),
    "b16": HubConfig(16, 768, 12, 12, 3072),
    "b32": HubConfig(32, 768, 12, 12, 3072),
    "l16": HubConfig(16, 1024, 24, 16, 4096),
    "r26_s32": HubConfig(32, 384, 12, 6, 1536, resnet_units=(2, 2, 2, 2)),
    "r50_l32": HubConfig(32, 1024, 24, 16, 4096, resnet_units=(3, 4, 6, 3)),
}


# --------------------------------------------------------------------------
# The Flax Linen model. Module and parameter names must come out as the Linen
# auto-names of google-research/vision_transformer, because the SavedModel's
# variable order is the sorted order of exactly these names.
# --------------------------------------------------------------------------


class AddPositionEmbs(nn.Module):
    """Learned position embedding, param ``pos_embedding`` (1, N+1, D)."""

    @nn.compact
    def __call__(self, x):
        pe = self.param("pos_embedding", nn.initializers.normal(0.02),
                        (1, x.shape[1], x.shape[2]))
        return x + pe


class MlpBlock(nn.Module):
    """Dense -> GELU (tanh approximation, jax default) -> Dense."""

    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.mlp_dim)(x)  # Dense_0
        y = jax.nn.gelu(y, approximate=True)
        return nn.Dense(x.shape[-1])(y)  # Dense_1


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHA(LN_0(x)), then x + MLP(LN_1(x))."""

    mlp_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)  # LayerNorm_0, epsilon 1e-6
        # Self-attention; dropout off, so deterministic does not matter.
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads,
                                            deterministic=True)(y, y)
        x = x + y
        y = nn.LayerNorm()(x)  # LayerNorm_1
        return x + MlpBlock(self.mlp_dim)(y)  # MlpBlock_0


class Encoder(nn.Module):
    """Named ``Transformer`` by the parent, as in the original code."""

    num_layers: int
    mlp_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        x = AddPositionEmbs(name="posembed_input")(x)
        for i in range(self.num_layers):
            x = Encoder1DBlock(self.mlp_dim, self.num_heads,
                               name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


# --------------------------------------------------------------------------
# The hybrids' ResNet stem (vit_jax/models_resnet.py and the root block of
# vit_jax/models.py, 2021): weight-standardised convs, GroupNorm(32, eps 1e-6).
# --------------------------------------------------------------------------


class StdConv(nn.Conv):
    """nn.Conv whose kernel is standardised each time it is read: per output channel,
    population std, epsilon 1e-5 added to the std."""

    def param(self, name, init_fn, *init_args, **init_kwargs):
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != "kernel":
            return value
        value = value - jnp.mean(value, axis=(0, 1, 2), keepdims=True)
        return value / (jnp.std(value, axis=(0, 1, 2), keepdims=True) + 1e-5)


def _std_conv(features, kernel, strides, name):
    return StdConv(features, (kernel, kernel), (strides, strides), use_bias=False, name=name)


def _group_norm(name):
    # Current flax keeps the 2021 defaults (32 groups, epsilon 1e-6, variance as
    # E[x^2] - E[x]^2); spelled out because the checkpoints depend on them.
    return nn.GroupNorm(num_groups=32, epsilon=1e-6, name=name)


class ResidualUnit(nn.Module):
    """Bottleneck unit; the projection depends on the traced input shape."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            residual = _std_conv(4 * self.features, 1, self.strides, "conv_proj")(x)
            residual = _group_norm("gn_proj")(residual)
        y = nn.relu(_group_norm("gn1")(_std_conv(self.features, 1, 1, "conv1")(x)))
        y = nn.relu(_group_norm("gn2")(_std_conv(self.features, 3, self.strides, "conv2")(y)))
        y = _group_norm("gn3")(_std_conv(4 * self.features, 1, 1, "conv3")(y))
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    units: int
    features: int
    first_strides: int

    @nn.compact
    def __call__(self, x):
        for u in range(1, self.units + 1):
            strides = self.first_strides if u == 1 else 1
            x = ResidualUnit(self.features, strides, name=f"unit{u}")(x)
        return x


def _resnet_stem(x, units, width=64):
    """Root and stages, created in the caller's scope: as in the 2021 VisionTransformer,
    `conv_root`, `gn_root` and `block1`..`block4` are its direct children."""
    x = nn.relu(_group_norm("gn_root")(_std_conv(width, 7, 2, "conv_root")(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, count in enumerate(units, start=1):
        x = ResNetStage(count, width * 2 ** (stage - 1), 1 if stage == 1 else 2,
                        name=f"block{stage}")(x)
    return x


def _map_group_norm(tree, fn, module=""):
    """`tree` with `fn` applied to every GroupNorm scale and bias."""
    if not isinstance(tree, dict):
        return tree
    return {k: fn(v) if module.startswith("gn") and k in ("scale", "bias")
            else _map_group_norm(v, fn, k) for k, v in tree.items()}


def to_published_layout(params):
    """GroupNorm scale/bias as (1, 1, 1, C), as flax 0.3.3 stored them in the published
    checkpoints (current flax stores (C,))."""
    return _map_group_norm(params, lambda a: a.reshape((1, 1, 1, -1)))


def to_current_flax(params):
    """GroupNorm scale/bias as (C,), what current flax's GroupNorm applies."""
    return _map_group_norm(params, lambda a: jnp.reshape(a, (-1,)))


class VisionTransformer(nn.Module):
    """ViT with class token; ``num_classes=None`` gives the fe model; ``resnet_units``
    puts the hybrids' ResNet stem before a 1x1 patch embedding."""

    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_classes: int | None = None
    resnet_units: tuple = ()

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        del train  # No dropout at all: the exported models are inference graphs.
        x, p = inputs, self.patch_size
        if self.resnet_units:
            x, p = _resnet_stem(x, self.resnet_units), 1
        # Patch embedding as one conv, kernel = stride = patch (HWIO kernel).
        x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), padding="VALID",
                    name="embedding")(x)
        n, h, w, c = x.shape
        x = jnp.reshape(x, (n, h * w, c))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        # Class token prepended, position embedding added inside the encoder.
        x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
        x = Encoder(self.num_layers, self.mlp_dim, self.num_heads,
                    name="Transformer")(x)
        x = x[:, 0]
        if self.num_classes:
            x = nn.Dense(self.num_classes, name="head")(x)  # logits, no softmax
        return x


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")


def make_model(config: HubConfig, kind: str) -> VisionTransformer:
    """The fe model has no head, as the notebook's ``num_classes=None``."""
    _check_kind(kind)
    return VisionTransformer(
        patch_size=config.patch_size, hidden_dim=config.hidden_dim,
        num_layers=config.num_layers, num_heads=config.num_heads,
        mlp_dim=config.mlp_dim,
        num_classes=config.num_classes if kind == "classification" else None,
        resnet_units=tuple(config.resnet_units))


def _kind_of(params) -> str:
    return "classification" if "head" in params else "fe"


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


def _random_leaf(rng: np.random.Generator, path: tuple, shape) -> np.ndarray:
    """A non-trivial value for one tensor, at a scale that keeps the net sane.

    Everything is random (no zeros, no ones) so that a tensor loaded into the
    wrong slot, or transposed, changes the output.
    """
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    if name == "scale":  # LayerNorm scale around 1
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name == "bias":
        return 0.1 * rng.standard_normal(shape)
    if name == "kernel":
        # q/k/v kernels are (D, H, D/H): fan-in is D alone. Dense, conv and
        # attention-out kernels have fan-in = product of all but the last dim.
        if parent in ("query", "key", "value"):
            fan_in = shape[0]
        else:
            fan_in = int(np.prod(shape[:-1]))
        return rng.standard_normal(shape) / np.sqrt(fan_in)
    # pos_embedding and cls: small but clearly non-zero.
    return 0.1 * rng.standard_normal(shape)


def param_shapes(config: HubConfig, kind: str) -> dict:
    """Nested dict of ``jax.ShapeDtypeStruct`` from ``model.init``, no compute."""
    model = make_model(config, kind)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy))
    return _to_dict(shapes["params"])


def init_params(config: HubConfig, kind: str, seed: int = 0) -> dict:
    """Random float32 params as a nested dict with the Linen names.

    The tree comes from ``model.init`` (so the names are flax's own); values
    come from a numpy RNG walked in sorted-key order, so the result is
    deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)

    def fill(tree, path):
        if isinstance(tree, jax.ShapeDtypeStruct):
            return _random_leaf(rng, path, tree.shape).astype(np.float32)
        return {k: fill(tree[k], path + (k,)) for k in sorted(tree)}

    return to_published_layout(fill(param_shapes(config, kind), ()))


def _to_dict(tree) -> Any:
    """Plain nested dicts (flax may hand back FrozenDict)."""
    if hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def flax_apply(params: dict, config: HubConfig, images) -> np.ndarray:
    """The reference forward pass: fe (B, D) or classification logits."""
    model = make_model(config, _kind_of(params))
    out = model.apply({"params": to_current_flax(params)},
                      jnp.asarray(images, jnp.float32), train=False)
    return np.asarray(out)


# --------------------------------------------------------------------------
# SavedModel export: the notebook's recipe, step by step.
# --------------------------------------------------------------------------


def export_saved_model(params: dict, config: HubConfig, kind: str, out_dir: str,
                       signature_batch: int | None = None,
                       platforms: tuple | None = None,
                       variable_order: list | None = None) -> str:
    """Write ``params`` as a SavedModel laid out like the published models.

    ``signature_batch`` is the batch dimension of the ``serving_default``
    signature: None (default, as hub-format.md states) or 1 (what the stored
    notebook literally writes). ``platforms`` is passed to jax2tf as
    ``native_serialization_platforms``: today's jax2tf always serializes
    StableHLO into one XlaCallModule op, and None lowers it for the JAX
    default backend only (the 2021 artifacts were device-independent TF
    graphs of Xla* ops); ("cpu", "cuda") makes a model that runs on both.
    """
    _check_kind(kind)
    if (kind == "classification") != ("head" in params):
        raise ConfigError(f"params do not match kind={kind!r}")
    fe = kind == "fe"
    size = config.image_size
    model = make_model(config, kind)

    def predict_fn(p, inputs):  # p in the published layout, as the variables hold it
        return model.apply({"params": to_current_flax(p)}, inputs, train=False)

    # Only the batch is polymorphic; fe keeps gradients for fine-tuning.
    tf_fn = jax2tf.convert(
        predict_fn, with_gradient=fe,
        polymorphic_shapes=[None, f"b, {size}, {size}, 3"],
        native_serialization_platforms=platforms)
    param_vars = tf.nest.map_structure(
        lambda p: tf.Variable(p, trainable=fe), params)
    # The argument must be called ``inputs``: that becomes the signature key.
    tf_graph = tf.function(lambda inputs: tf_fn(param_vars, inputs),
                           autograph=False, jit_compile=True)
    spec = tf.TensorSpec([signature_batch, size, size, 3], tf.float32)
    signatures = {
        tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY:
            tf_graph.get_concrete_function(spec)}
    wrapper = _ReusableSavedModelWrapper(tf_graph, param_vars, variable_order)
    options = (tf.saved_model.SaveOptions(experimental_custom_gradients=True)
               if fe else None)
    tf.saved_model.save(wrapper, out_dir, signatures=signatures, options=options)
    return out_dir


class _ReusableSavedModelWrapper(tf.train.Checkpoint):
    """The notebook's wrapper (from the jax2tf examples' saved_model_lib).

    Attribute order matters: ``variables`` comes first, so each variable is
    stored under the checkpoint key ``variables/<i>``; fe's
    ``trainable_variables/<i>`` are object-graph references to those same
    objects, not extra keys.
    """

    def __init__(self, tf_graph, param_vars, variable_order=None):
        super().__init__()
        # tf.nest.flatten sorts dict keys: this is the index order.
        flat = tf.nest.flatten(param_vars)
        order = variable_order if variable_order is not None else range(len(flat))
        self.variables = [flat[i] for i in order]
        # Empty for classification (its variables are not trainable).
        self.trainable_variables = [v for v in self.variables if v.trainable]
        self.regularization_losses = []
        self.__call__ = tf_graph


# --------------------------------------------------------------------------
# The original npz layout (pre-Linen names, flat '/'-joined keys).
# --------------------------------------------------------------------------

def write_npz(params: dict, path: str) -> None:
    """Save as the original checkpoints: flat keys, pre-Linen block names."""
    np.savez(path, **{linen_to_original(key): np.asarray(value, np.float32)
                      for key, value in flatten(params).items()})


def read_npz(path: str) -> dict:
    """Inverse of write_npz; also reads the real google-research files (GroupNorm
    scale/bias in the published (1, 1, 1, C) layout, whichever the file stores)."""
    params: dict = {}
    for key, value in npz.read_npz(path, include_top=True).items():
        *parents, leaf = key.split("/")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return params


def config_from_params(params: dict, image_size: int, num_heads: int) -> HubConfig:
    """Shapes give everything but the head count (q/k/v kernel carries it too)."""
    enc = params["Transformer"]
    blocks = [k for k in enc if k.startswith("encoderblock_")]
    block0 = enc["encoderblock_0"]
    heads = block0["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape[1]
    if num_heads and num_heads != heads:
        raise ConfigError(f"--num-heads {num_heads} but the npz has {heads}")
    kernel = params["embedding"]["kernel"]
    # A hybrid's stem: units per stage `block{s}`; its embedding is a 1x1 conv.
    units = tuple(len(params[f"block{s}"]) for s in range(1, 5) if f"block{s}" in params)
    return HubConfig(
        patch_size=32 if units else kernel.shape[0], hidden_dim=kernel.shape[-1],
        num_layers=len(blocks), num_heads=heads,
        mlp_dim=block0["MlpBlock_0"]["Dense_0"]["kernel"].shape[-1],
        num_classes=params["head"]["kernel"].shape[-1] if "head" in params else 1000,
        image_size=image_size, resnet_units=units)
