"""Vision Transformer (ViT) as a native Keras 3 functional model.

Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
(Dosovitskiy et al., 2020); weights: "How to train your ViT?" (Steiner et al., 2021).
The computation is, layer for layer, the Flax model behind the Kaggle / TF-Hub checkpoints
`spsayakpaul/vision-transformer`: inputs are RGB in [-1, 1].
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal

import keras

from vit_hub import precision
from vit_hub.architecture import Architecture, check_flag, check_kwargs, variant_config
from vit_hub.compiled import CompiledCalls
from vit_hub.errors import ConfigError
from vit_hub.input_checks import ChecksImages, check_images
from vit_hub.layers import (
    ClassToken,
    PatchEmbedding,
    PositionEmbedding,
    TokenPooling,
    TransformerBlock,
)
from vit_hub.lora import LoraMethods
from vit_hub.resnet_stem import ResNetStem

# What `keras.Model.__init__` gets besides the model's own arguments: what get_config()
# records and from_config() passes back.
KERAS_KWARGS = ("name", "dtype", "trainable")


@functools.cache
def model_kwargs():
    """The keyword arguments a `VisionTransformer` takes: those of its __init__, then the
    Keras ones it passes on (name, dtype, trainable)."""
    parameters = inspect.signature(VisionTransformer.__init__).parameters.values()
    own = [p.name for p in parameters if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    return tuple(own) + KERAS_KWARGS


def check_policy(dtype):
    """The Keras dtype policy of `dtype`, or a ConfigError unless it is a float one."""
    try:
        policy = keras.dtype_policies.get(dtype)
    except (TypeError, ValueError):
        policy = None
    if (policy is None or getattr(policy, "quantization_mode", None)
            or not keras.backend.is_float_dtype(policy.compute_dtype)
            or not keras.backend.is_float_dtype(policy.variable_dtype)):
        raise ConfigError(
            f"dtype {dtype!r} is not a float policy: a VisionTransformer computes in "
            "'float32' (the default), 'bfloat16' or 'float16', or in 'mixed_bfloat16' or "
            "'mixed_float16' (float32 weights). Quantized (int8) inference is the OpenVINO "
            "runtime: vit_hub.load_pretrained(name, runtime='openvino', precision='int8'), "
            "or vit_hub.to_openvino(model, precision='int8').")
    return policy


def _check_settings(dropout, attention_dropout, layer_norm_epsilon, classifier_activation):
    """ConfigError naming the first setting that cannot be (Keras' own errors would not
    say which argument of the model it was)."""
    for name, rate in (("dropout", dropout), ("attention_dropout", attention_dropout)):
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                and 0 <= rate < 1):
            raise ConfigError(f"{name} must be a rate in [0, 1), got {rate!r}.")
    if not (isinstance(layer_norm_epsilon, (int, float)) and layer_norm_epsilon > 0):
        raise ConfigError(f"layer_norm_epsilon must be a positive float (1e-6 in the "
                          f"published models), got {layer_norm_epsilon!r}.")
    if classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (TypeError, ValueError):
            raise ConfigError(f"classifier_activation {classifier_activation!r} is not a Keras "
                              "activation: None (logits, as the hub models), 'softmax', "
                              "or a callable.") from None


@keras.saving.register_keras_serializable(package="vit_hub")
class VisionTransformer(ChecksImages, CompiledCalls, LoraMethods, keras.Model):
    """A ViT image model.

    The class holds the network; beside it, each in its own module: the input checks in
    front of every call (`input_checks`), compiled inference calls (`compiled`) and
    LoRA (`lora`).

    Args:
        image_size: int or (height, width), each a multiple of `patch_size`.
        patch_size, hidden_dim, num_layers, num_heads, mlp_dim: the architecture
            (see `vit_hub.architecture`).
        include_top: with a classification head producing logits (B, num_classes).
        num_classes: classes of the head.
        pooling: without top: None gives all tokens (B, 1 + patches, hidden_dim) after
            the final norm, 'token' the class token (B, hidden_dim), 'gap' the mean of
            the patch tokens. With top: which of the two feeds the head (default 'token').
        dropout, attention_dropout: training-time dropout rates.
        classifier_activation: activation of the head; None keeps logits (as the hub).
        layer_norm_epsilon: 1e-6 in the published models.
        resnet_units: () for a plain ViT; for a hybrid ResNet+ViT the bottleneck units
            of the 4 stages of its ResNet stem ((2, 2, 2, 2) in R26+S/32, (3, 4, 6, 3) in
            R50+L/32). The stem downsamples by 32 (`patch_size` must be 32) and each cell
            of its output grid becomes a token through a 1x1 convolution.
        name, dtype, trainable: as for any Keras model (`dtype` is the layers' policy,
            e.g. 'mixed_bfloat16'). Any other keyword is an ArgumentError (a TypeError).

    Images are float32 in [-1, 1] (see `vit_hub.preprocess`); integer images (uint8
    0..255) are refused with an ImageTypeError rather than computed out of range.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        hidden_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        include_top: bool = True,
        num_classes: int = 1000,
        pooling: Literal["token", "gap"] | None = None,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        classifier_activation: str | Callable | None = None,
        layer_norm_epsilon: float = 1e-6,
        resnet_units: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> None:
        check_kwargs(type(self).__name__, kwargs, model_kwargs())
        # The record checks the architecture (positive ints, heads dividing the width,
        # a patch grid that tiles the image) before any layer is made.
        record = Architecture(
            patch_size=patch_size, hidden_dim=hidden_dim, num_layers=num_layers,
            num_heads=num_heads, mlp_dim=mlp_dim, image_size=image_size,
            include_top=include_top, num_classes=num_classes, resnet_units=resnet_units)
        (height, width), resnet_units = record.image_size, record.resnet_units
        _check_settings(dropout, attention_dropout, layer_norm_epsilon, classifier_activation)
        check_flag(kwargs.get("trainable", True), "trainable")
        policy = kwargs.get("dtype")
        if policy is not None:
            check_policy(policy)

        # === Layers ===
        # A hybrid's tokens are the cells of its stem's 1/32 grid, embedded by a 1x1 conv.
        stem = [ResNetStem(resnet_units, dtype=policy, name="stem")] if resnet_units else []
        patch_embedding = PatchEmbedding(
            hidden_dim, 1 if resnet_units else patch_size, dtype=policy,
            name="patch_embedding"
        )
        class_token = ClassToken(dtype=policy, name="class_token")
        position_embedding = PositionEmbedding(dtype=policy, name="position_embedding")
        embedding_dropout = keras.layers.Dropout(
            dropout, dtype=policy, name="embedding_dropout"
        )
        blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                mlp_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        encoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="encoder_norm"
        )
        feature_pooling = TokenPooling(pooling or "token", dtype=policy, name="pooling")
        head = None
        if include_top:
            head = keras.layers.Dense(
                num_classes,
                activation=classifier_activation,
                kernel_initializer="zeros",  # as the paper does for a new head
                dtype=policy,
                name="head",
            )

        # === Functional Model ===
        images = keras.Input((height, width, 3), name="images")
        embedding = [*stem, patch_embedding, class_token, position_embedding,
                     embedding_dropout]
        tokens = _encode(images, embedding, blocks, encoder_norm)
        if include_top:
            outputs = head(feature_pooling(tokens))
        elif pooling:
            outputs = feature_pooling(tokens)
        else:
            outputs = tokens
        super().__init__(inputs=images, outputs=outputs, **kwargs)
        if policy is not None:
            # A functional Model keeps float32 as its own policy whatever `dtype` says;
            # record the one its layers use, so that get_config() round-trips it.
            self.dtype_policy = keras.dtype_policies.get(policy)

        # Direct handles on the layers, for feature extraction and weight mapping.
        self.embedding_layers = embedding
        self.blocks = blocks
        self.encoder_norm = encoder_norm
        self.feature_pooling = feature_pooling
        self.head = head

        # === Config ===
        self.image_size = (height, width)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.include_top = include_top
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.classifier_activation = classifier_activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.resnet_units = resnet_units
        self.lora = None  # {'rank', 'alpha', 'target'} once enable_lora() was called
        self._start_compiled_calls()

    @property
    def num_patches(self):
        rows, columns = self.grid_size
        return rows * columns

    @property
    def grid_size(self):
        """(rows, columns) of the patch grid."""
        height, width = self.image_size
        return height // self.patch_size, width // self.patch_size

    def encode(self, images, training=False, return_attention=False,
               return_intermediates=False):
        """All tokens after the final norm: (B, 1 + patches, hidden_dim).

        With `return_attention`, also a list with every block's attention weights
        (B, heads, tokens, tokens); with `return_intermediates`, a list with every block's
        output tokens (before the final norm). They follow the tokens in that order.
        """
        check_images(images, f"Model {self.name!r}", self.image_size)
        trace = [] if return_attention or return_intermediates else None
        tokens = _encode(
            images, self.embedding_layers, self.blocks, self.encoder_norm, training, trace
        )
        extras = []
        if return_attention:
            extras.append([scores for _, scores in trace])
        if return_intermediates:
            extras.append([x for x, _ in trace])
        return (tokens, *extras) if extras else tokens

    def extract_features(self, images, training=False):
        """One feature vector per image, (B, hidden_dim): the class token after the final
        norm (what the `-fe` hub models return), or the patch mean if pooling='gap'."""
        return self.feature_pooling(self.encode(images, training))

    def get_config(self):
        config = self._architecture_config()
        if not self.lora:
            return config
        return {**config, "lora": {**self.lora, "target": list(self.lora["target"])}}

    def _architecture_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "image_size": list(self.image_size),
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "include_top": self.include_top,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "classifier_activation": keras.activations.serialize(
                keras.activations.get(self.classifier_activation)
            )
            if self.classifier_activation
            else None,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resnet_units": list(self.resnet_units),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        adapters = config.pop("lora", None)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        model = cls(**config)
        if adapters:
            # A `.keras` file holds the kernels with the adapters merged (Keras' own LoRA
            # saving); the model comes back with LoRA enabled, its new factors at zero.
            model.enable_lora(adapters["rank"], adapters["target"], adapters["alpha"])
        return model


def _encode(images, embedding, blocks, encoder_norm, training=None, trace=None):
    """The encoder as one function, so the symbolic graph and eager calls share it.
    If `trace` is a list, each block appends (its output, its attention weights)."""
    x = images
    for layer in embedding:
        x = layer(x, training=training)
    for block in blocks:
        if trace is None:
            x = block(x, training=training)
        else:
            x, scores = block(x, training=training, return_attention_scores=True)
            trace.append((x, scores))
    return encoder_norm(x)


def create_vit(
    name: str,
    image_size: int | tuple[int, int] = 224,
    include_top: bool = True,
    num_classes: int = 1000,
    pooling: Literal["token", "gap"] | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> VisionTransformer:
    """Builds a ViT variant (`vit_ti16` ... `vit_h16`, see `list_variants()`) with fresh
    weights. Extra kwargs override the variant's architecture or go to the model
    (e.g. `attention_dropout`, `classifier_activation`, `dtype`): an unknown one is an
    ArgumentError (a TypeError) naming the closest valid one."""
    # `name` is the variant here; the model is named after it.
    check_kwargs("create_vit", kwargs, tuple(k for k in model_kwargs() if k != "name"))
    config = {**variant_config(name), **kwargs}
    config.setdefault("name", name)
    model = VisionTransformer(
        image_size=image_size,
        include_top=include_top,
        num_classes=num_classes,
        pooling=pooling,
        dropout=dropout,
        **config,
    )
    precision.warn_if_unsuited(model.dtype_policy)  # (the policy checked above)
    return model


# One factory per published variant, as timm and keras-hub offer them: visible to help(),
# IDEs and `from vit_hub import create_vit_b16`. Variants registered later are built
# with create_vit(name).


def create_vit_ti16(**kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 (width 192, 12 blocks, 3 heads): `create_vit('vit_ti16', **kwargs)`."""
    return create_vit("vit_ti16", **kwargs)


def create_vit_s16(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (width 384, 12 blocks, 6 heads): `create_vit('vit_s16', **kwargs)`."""
    return create_vit("vit_s16", **kwargs)


def create_vit_s32(**kwargs: Any) -> VisionTransformer:
    """ViT-S/32 (width 384, 12 blocks, 6 heads): `create_vit('vit_s32', **kwargs)`."""
    return create_vit("vit_s32", **kwargs)


def create_vit_b8(**kwargs: Any) -> VisionTransformer:
    """ViT-B/8 (width 768, 12 blocks, 12 heads): `create_vit('vit_b8', **kwargs)`."""
    return create_vit("vit_b8", **kwargs)


def create_vit_b16(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (width 768, 12 blocks, 12 heads): `create_vit('vit_b16', **kwargs)`."""
    return create_vit("vit_b16", **kwargs)


def create_vit_b32(**kwargs: Any) -> VisionTransformer:
    """ViT-B/32 (width 768, 12 blocks, 12 heads): `create_vit('vit_b32', **kwargs)`."""
    return create_vit("vit_b32", **kwargs)


def create_vit_l16(**kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (width 1024, 24 blocks, 16 heads): `create_vit('vit_l16', **kwargs)`."""
    return create_vit("vit_l16", **kwargs)


def create_vit_l32(**kwargs: Any) -> VisionTransformer:
    """ViT-L/32 (width 1024, 24 blocks, 16 heads): `create_vit('vit_l32', **kwargs)`."""
    return create_vit("vit_l32", **kwargs)


def create_vit_h14(**kwargs: Any) -> VisionTransformer:
    """ViT-H/14 (width 1280, 32 blocks, 16 heads): `create_vit('vit_h14', **kwargs)`."""
    return create_vit("vit_h14", **kwargs)


def create_vit_h16(**kwargs: Any) -> VisionTransformer:
    """ViT-H/16 (width 1280, 32 blocks, 16 heads): `create_vit('vit_h16', **kwargs)`."""
    return create_vit("vit_h16", **kwargs)


def create_vit_r26_s32(**kwargs: Any) -> VisionTransformer:
    """R26+S/32, a ResNet-26 stem before ViT-S (width 384, 12 blocks, 6 heads):
    `create_vit('vit_r26_s32', **kwargs)`."""
    return create_vit("vit_r26_s32", **kwargs)


def create_vit_r50_l32(**kwargs: Any) -> VisionTransformer:
    """R50+L/32, a ResNet-50 stem before ViT-L (width 1024, 24 blocks, 16 heads):
    `create_vit('vit_r50_l32', **kwargs)`."""
    return create_vit("vit_r50_l32", **kwargs)
