"""Vision Transformer (ViT) as a native Keras 3 functional model.

Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
(Dosovitskiy et al., 2020); weights: "How to train your ViT?" (Steiner et al., 2021).
The computation is, layer for layer, the Flax model behind the Kaggle / TF-Hub checkpoints
`spsayakpaul/vision-transformer`: inputs are RGB in [-1, 1].
"""

import functools
import inspect

import keras
import numpy as np

from vit_hub import compiled, lora, precision
from vit_hub.architecture import Architecture, check_flag, check_kwargs, variant_config
from vit_hub.errors import ConfigError, ImageError
from vit_hub.layers import (
    ClassToken,
    PatchEmbedding,
    PositionEmbedding,
    TokenPooling,
    TransformerBlock,
)
from vit_hub.preprocessing import check_not_files, check_range, check_shape, images_dtype_error
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


def check_images(images, where, image_size):
    """Refuses, before anything is computed, images given to a model that it would
    compute wrongly or fail on deep inside: files or PIL images; integer images (uint8
    0..255, which Keras' input conversion would cast to float32 as they are); a shape
    that is not (B, *image_size, 3); and, for images that hold values now (not symbolic
    or traced), values clearly outside [-1, 1] (pixels 0..255 as floats) or NaN. Costs
    one min and one max over concrete images."""
    if isinstance(images, dict):
        leaves = images.values()
    elif isinstance(images, (list, tuple)):
        leaves = images
    else:
        leaves = (images,)
    for leaf in leaves:
        check_not_files(leaf, image_size, where)
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            continue
        try:
            dtype = keras.backend.standardize_dtype(dtype)
            is_float = keras.backend.is_float_dtype(dtype)
        except (TypeError, ValueError, AttributeError):
            dtype, is_float = str(dtype), False
        if not is_float:
            raise images_dtype_error(where, dtype)
        shape = _static_shape(leaf)
        if shape is not None:
            check_shape(shape, image_size, where)
        if compiled.is_concrete(leaf) and shape and 0 not in shape:
            check_range(*_extremes(leaf), where)


def _static_shape(images):
    """The shape as a tuple (None where a dimension is not known), or None if not even
    the rank is known."""
    try:
        return tuple(None if d is None else int(d) for d in images.shape)
    except (AttributeError, TypeError, ValueError):
        return None


def _extremes(images):
    """(least, greatest) value of concrete images, as Python floats: by numpy where the
    images are in host memory (a view: ~0.1 ms for a 224x224 image, where an eager
    reduction op costs ~2.5 ms on TensorFlow), else by the backend on its device."""
    if not _on_device(images):
        images = keras.ops.convert_to_numpy(images)
        return float(images.min()), float(images.max())
    low, high = keras.ops.min(images), keras.ops.max(images)
    return float(keras.ops.convert_to_numpy(low)), float(keras.ops.convert_to_numpy(high))


def _on_device(images):
    """Whether a tensor lives on an accelerator (GPU, TPU), not in host memory."""
    backend = keras.backend.backend()
    if isinstance(images, np.ndarray) or backend == "openvino":
        return False
    if backend == "tensorflow":
        return "CPU" not in images.device
    if backend == "torch":
        return images.device.type != "cpu"
    return any(device.platform != "cpu" for device in images.devices())  # JAX


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


def _checks_data(method):
    """`method` of keras.Model, first checking its `x` as `check_images` does (arrays and
    tensors; datasets and generators are seen batch by batch by the model's call)."""
    @functools.wraps(method)
    def checked(self, x=None, *args, **kwargs):
        where = f"Model {self.name!r}"
        check_images(x, where, self.image_size)
        validation = kwargs.get("validation_data")  # (fit's (x, y) arrays)
        if isinstance(validation, (tuple, list)) and validation:
            check_images(validation[0], f"{where} (validation_data)", self.image_size)
        if (_static_shape(x) or (1,))[0] == 0:  # (Keras' loops fail on it, unclearly)
            raise ImageError(f"{where}.{method.__name__} got an empty batch (0 images).")
        return method(self, x, *args, **kwargs)

    return checked


@keras.saving.register_keras_serializable(package="vit_hub")
class VisionTransformer(keras.Model):
    """A ViT image model.

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
        image_size=224,
        patch_size=16,
        hidden_dim=768,
        num_layers=12,
        num_heads=12,
        mlp_dim=3072,
        include_top=True,
        num_classes=1000,
        pooling=None,
        dropout=0.0,
        attention_dropout=0.0,
        classifier_activation=None,
        layer_norm_epsilon=1e-6,
        resnet_units=(),
        **kwargs,
    ):
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

        # Plain inference calls `model(images)` run compiled (vit_hub/compiled.py); set
        # False for the op-by-op path (e.g. to step through the layers in a debugger).
        self.compiled_calls = True
        self._inference = compiled.CompiledInference(self, super().__call__)
        if keras.backend.backend() == "openvino":
            # Keras' OpenVINO predict/evaluate compile their own model with no precision
            # hint (bf16 on CPUs that have it) unless a layer does not support jit: then
            # they call `self(x, training=False)`, i.e. the f32-pinned compiled call.
            self.supports_jit = False

    def __call__(self, *args, **kwargs):
        # Every path in goes through here with the images as given: eager calls, and
        # predict/fit/evaluate (their steps call the model on the batches, of the dtype
        # the data had), before Keras's input conversion casts them to float32.
        check_images(args[0] if args else kwargs.get("inputs"), f"Model {self.name!r}",
                     self.image_size)
        if self.compiled_calls and self._inference.usable and compiled.applies(args, kwargs):
            return self._inference(args[0])
        return super().__call__(*args, **kwargs)

    # The data given to Keras' loops is checked whole first: inside them the model is
    # called on symbolic or traced batches (TensorFlow, JAX), whose values are not seen.
    fit = _checks_data(keras.Model.fit)
    evaluate = _checks_data(keras.Model.evaluate)
    predict = _checks_data(keras.Model.predict)
    train_on_batch = _checks_data(keras.Model.train_on_batch)
    test_on_batch = _checks_data(keras.Model.test_on_batch)
    predict_on_batch = _checks_data(keras.Model.predict_on_batch)

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

    def compile(self, *args, jit_compile="auto", **kwargs):
        """As `keras.Model.compile`, but `jit_compile='auto'` on TensorFlow at float32 means
        XLA: Keras leaves it off on CPU-only machines, where a ViT's training step is
        then 1.9x slower (ViT-B/32, batch 16: 6.46 s vs 3.45 s here; see the README). Not
        for bf16: oneDNN's graph path computes it at the CPU's bf16 rate, XLA:CPU does not.
        """
        if (jit_compile == "auto" and keras.backend.backend() == "tensorflow"
                and self.dtype_policy.compute_dtype == "float32"):
            jit_compile = True
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    # === LoRA (vit_hub/lora.py) ===
    def enable_lora(self, rank, target=lora.DEFAULT_TARGET, alpha=None):
        """Low-rank adaptation: freezes the backbone and adds trainable rank-`rank`
        factors to the `target` layers of every encoder block (default the attention's
        query and value; also 'key', 'attention_output', 'mlp_dense_1', 'mlp_dense_2'),
        scaled by `alpha / rank` (default alpha = rank). The model's own head stays
        trainable; outputs are unchanged until training. Compile again after it."""
        lora.enable(self, rank, target, alpha)
        self._inference.reset()

    def save_lora_weights(self, path):
        """Saves the adapters (and the model's own head) alone to `path` (`*.lora.h5`)."""
        return lora.save(self, path)

    def load_lora_weights(self, path):
        """Loads adapters saved by `save_lora_weights`, enabling LoRA with their settings
        if it is not enabled; refused if saved for another architecture, rank or target."""
        lora.load(self, path)
        self._inference.reset()

    def merge_lora(self):
        """Folds the adapters into the kernels and removes them: the model computes the
        same with plain layers (nothing extra for export or inference)."""
        lora.merge(self)
        self._inference.reset()

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
    name,
    image_size=224,
    include_top=True,
    num_classes=1000,
    pooling=None,
    dropout=0.0,
    **kwargs,
):
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
    precision.warn_if_bf16_is_emulated(model.dtype_policy)  # (the policy checked above)
    return model


# One factory per published variant, as timm and keras-hub offer them: visible to help(),
# IDEs and `from vit_hub import create_vit_b16`. Variants registered later are built
# with create_vit(name).


def create_vit_ti16(**kwargs):
    """ViT-Ti/16 (width 192, 12 blocks, 3 heads): `create_vit('vit_ti16', **kwargs)`."""
    return create_vit("vit_ti16", **kwargs)


def create_vit_s16(**kwargs):
    """ViT-S/16 (width 384, 12 blocks, 6 heads): `create_vit('vit_s16', **kwargs)`."""
    return create_vit("vit_s16", **kwargs)


def create_vit_s32(**kwargs):
    """ViT-S/32 (width 384, 12 blocks, 6 heads): `create_vit('vit_s32', **kwargs)`."""
    return create_vit("vit_s32", **kwargs)


def create_vit_b8(**kwargs):
    """ViT-B/8 (width 768, 12 blocks, 12 heads): `create_vit('vit_b8', **kwargs)`."""
    return create_vit("vit_b8", **kwargs)


def create_vit_b16(**kwargs):
    """ViT-B/16 (width 768, 12 blocks, 12 heads): `create_vit('vit_b16', **kwargs)`."""
    return create_vit("vit_b16", **kwargs)


def create_vit_b32(**kwargs):
    """ViT-B/32 (width 768, 12 blocks, 12 heads): `create_vit('vit_b32', **kwargs)`."""
    return create_vit("vit_b32", **kwargs)


def create_vit_l16(**kwargs):
    """ViT-L/16 (width 1024, 24 blocks, 16 heads): `create_vit('vit_l16', **kwargs)`."""
    return create_vit("vit_l16", **kwargs)


def create_vit_l32(**kwargs):
    """ViT-L/32 (width 1024, 24 blocks, 16 heads): `create_vit('vit_l32', **kwargs)`."""
    return create_vit("vit_l32", **kwargs)


def create_vit_h14(**kwargs):
    """ViT-H/14 (width 1280, 32 blocks, 16 heads): `create_vit('vit_h14', **kwargs)`."""
    return create_vit("vit_h14", **kwargs)


def create_vit_h16(**kwargs):
    """ViT-H/16 (width 1280, 32 blocks, 16 heads): `create_vit('vit_h16', **kwargs)`."""
    return create_vit("vit_h16", **kwargs)


def create_vit_r26_s32(**kwargs):
    """R26+S/32, a ResNet-26 stem before ViT-S (width 384, 12 blocks, 6 heads):
    `create_vit('vit_r26_s32', **kwargs)`."""
    return create_vit("vit_r26_s32", **kwargs)


def create_vit_r50_l32(**kwargs):
    """R50+L/32, a ResNet-50 stem before ViT-L (width 1024, 24 blocks, 16 heads):
    `create_vit('vit_r50_l32', **kwargs)`."""
    return create_vit("vit_r50_l32", **kwargs)
