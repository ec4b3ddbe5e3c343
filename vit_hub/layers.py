"""The layers of a Vision Transformer, each shaped like the published checkpoints' tensors.

Every layer is registered for `.keras` loading and its `get_config()` holds exactly its
`__init__` arguments. Sublayers receive the parent's dtype policy so that mixed precision
(`mixed_bfloat16`, `mixed_float16`) applies throughout.
"""

import contextlib
import threading

import keras
from keras import ops

from vit_hub.errors import ConfigError

_PACKAGE = "vit_hub"
_SKIP_INIT = threading.local()


@contextlib.contextmanager
def weights_to_be_loaded():
    """Layers created inside get zero-filled weights instead of random ones: for a model
    whose every weight is assigned right after, as `load_pretrained` does. Drawing ~88M
    random numbers is most of the time it takes to build a ViT-B."""
    _SKIP_INIT.active = True
    try:
        yield
    finally:
        _SKIP_INIT.active = False


def _init(default="truncated_normal"):
    if getattr(_SKIP_INIT, "active", False):
        return "zeros"
    if default == "truncated_normal":
        return keras.initializers.TruncatedNormal(stddev=0.02)
    return default


def _config(layer, **kwargs):
    return {**keras.layers.Layer.get_config(layer), **kwargs}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEmbedding(keras.layers.Layer):
    """Cuts the image into non-overlapping patches and projects each to `hidden_dim`.

    A strided convolution (kernel = stride = patch, VALID, with bias) is the linear patch
    projection of the paper; its HWIO kernel is the checkpoints' `embedding/kernel`.
    Output: (batch, grid_h * grid_w, hidden_dim), patches in row-major order.
    """

    def __init__(self, hidden_dim, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size
        self.projection = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            padding="valid",
            kernel_initializer=_init(),
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, images):
        x = self.projection(images)
        batch, grid_h, grid_w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        return ops.reshape(x, (batch, grid_h * grid_w, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        patches = (height // self.patch_size) * (width // self.patch_size)
        return (batch, patches, self.hidden_dim)

    def get_config(self):
        return _config(self, hidden_dim=self.hidden_dim, patch_size=self.patch_size)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to the patch sequence (checkpoint name: `cls`)."""

    def build(self, input_shape):
        self.token = self.add_weight(
            name="token", shape=(1, 1, input_shape[-1]), initializer="zeros"
        )

    def call(self, tokens):
        token = ops.cast(self.token, tokens.dtype)
        token = ops.repeat(token, ops.shape(tokens)[0], axis=0)
        return ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        batch, length, dim = input_shape
        return (batch, None if length is None else length + 1, dim)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding per token position, class token included.

    Its weight is the checkpoints' `posembed_input/pos_embedding`, (1, tokens, hidden_dim).
    """

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(1, *input_shape[1:]), initializer=_init()
        )

    def call(self, tokens):
        return tokens + ops.cast(self.embeddings, tokens.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLP(keras.layers.Layer):
    """Dense -> GELU (tanh approximation, as `jax.nn.gelu` computes it) -> Dense."""

    def __init__(self, hidden_dim, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        dense = dict(kernel_initializer=_init("glorot_uniform"), dtype=self.dtype_policy)
        self.dense_1 = keras.layers.Dense(mlp_dim, name="dense_1", **dense)
        self.dense_2 = keras.layers.Dense(hidden_dim, name="dense_2", **dense)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense_1.build(input_shape)
        self.dense_2.build((*input_shape[:-1], self.mlp_dim))

    def call(self, x, training=None):
        x = ops.gelu(self.dense_1(x), approximate=True)
        x = self.dropout_layer(x, training=training)
        return self.dropout_layer(self.dense_2(x), training=training)

    def get_config(self):
        return _config(
            self, hidden_dim=self.hidden_dim, mlp_dim=self.mlp_dim, dropout=self.dropout
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """A pre-LayerNorm encoder block: `x += MHA(LN_1(x)); x += MLP(LN_2(x))`.

    Attention is Keras' own `MultiHeadAttention`: its query/key/value kernels are
    (hidden, heads, head_dim) and its output kernel (heads, head_dim, hidden), the
    checkpoints' shapes, and it scales queries by 1/sqrt(head_dim) as Flax does.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_dim,
        dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        if hidden_dim % num_heads:
            raise ConfigError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})."
            )
        policy = self.dtype_policy
        self.layer_norm_1 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="layer_norm_1"
        )
        self.attention = keras.layers.MultiHeadAttention(
            num_heads,
            key_dim=hidden_dim // num_heads,
            dropout=attention_dropout,
            kernel_initializer=_init("glorot_uniform"),
            dtype=policy,
            name="attention",
        )
        self.attention_output_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.layer_norm_2 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="layer_norm_2"
        )
        self.mlp = MLP(hidden_dim, mlp_dim, dropout, dtype=policy, name="mlp")

    def build(self, input_shape):
        self.layer_norm_1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.layer_norm_2.build(input_shape)
        self.mlp.build(input_shape)

    def call(self, x, training=None, return_attention_scores=False):
        y = self.layer_norm_1(x)
        y = self.attention(
            y, y, training=training, return_attention_scores=return_attention_scores
        )
        if return_attention_scores:
            y, scores = y
        x = x + self.attention_output_dropout(y, training=training)
        x = x + self.mlp(self.layer_norm_2(x), training=training)
        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return _config(
            self,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPooling(keras.layers.Layer):
    """Reduces the token sequence to one vector: the class token, or the patch mean."""

    MODES = ("token", "gap")

    def __init__(self, mode="token", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ConfigError(f"pooling must be one of {self.MODES} or None, got {mode!r}.")
        self.mode = mode

    def call(self, tokens):
        if self.mode == "token":
            return tokens[:, 0]
        return ops.mean(tokens[:, 1:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return _config(self, mode=self.mode)
