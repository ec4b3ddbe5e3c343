"""The ResNet stem of the hybrid ViTs (R26+S/32, R50+L/32) as native Keras 3 layers.

Architecture of google-research/vision_transformer (`vit_jax/models.py`,
`vit_jax/models_resnet.py`, 2021): a BiT-style ResNet v1.5 with weight-standardised
convolutions and GroupNorm(32). Only `keras.layers` / `keras.ops`, so the layers are
backend-independent. Variable paths map one-to-one to the checkpoints' Linen paths
(`vit_hub.conversion.name_map`).
"""

import keras
from keras import ops

from vit_hub.architecture import RESNET_EXPANSION, RESNET_WIDTH, needs_projection, resnet_plan

_PACKAGE = "vit_hub"
_GN_GROUPS = 32  # fixed by the architecture (flax nn.GroupNorm default)
_GN_EPSILON = 1e-6  # flax nn.GroupNorm default, used by the checkpoints
_WS_EPSILON = 1e-5  # added to the std (not the variance) in the reference


def _group_norm(name, dtype, gamma_initializer="ones"):
    # Keras' GroupNormalization matches flax's GroupNorm(32, eps=1e-6) to float32
    # round-off (see test_resnet_stem.py), and it computes in float32 under mixed
    # precision, so no custom layer is needed.
    return keras.layers.GroupNormalization(
        groups=_GN_GROUPS,
        axis=-1,
        epsilon=_GN_EPSILON,
        gamma_initializer=gamma_initializer,
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StandardizedConv2D(keras.layers.Conv2D):
    """Bias-free SAME conv whose raw HWIO kernel is standardised at every call.

    `w = (w - mean(w)) / (std(w) + epsilon)` over (H, W, I) per output channel,
    population std, epsilon on the std: exactly the reference's StdConv.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        epsilon=_WS_EPSILON,
        kernel_initializer="lecun_normal",
        **kwargs,
    ):
        super().__init__(
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding="same",
            data_format="channels_last",
            use_bias=False,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.epsilon = epsilon
        self._init_args = dict(
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            epsilon=epsilon,
            kernel_initializer=kernel_initializer,
        )

    def add_weight(self, *args, **kwargs):
        # The kernel must reach `convolution_op` in its storage dtype: autocasting
        # it to bfloat16 first would standardise already-rounded weights.
        if kwargs.get("name") == "kernel":
            kwargs["autocast"] = False
        return super().add_weight(*args, **kwargs)

    def standardized_kernel(self, kernel=None):
        """The kernel actually convolved with, in at least float32."""
        w = self._kernel if kernel is None else kernel
        # Not keras.backend.result_type: off TensorFlow it maps float64 to float32.
        if keras.backend.standardize_dtype(w.dtype) in ("float16", "bfloat16"):
            w = ops.cast(w, "float32")
        w = w - ops.mean(w, axis=(0, 1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(w), axis=(0, 1, 2), keepdims=True))
        return w / (std + self.epsilon)

    def convolution_op(self, inputs, kernel):
        kernel = ops.cast(self.standardized_kernel(kernel), self.compute_dtype)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        # Skip Conv2D.get_config: padding/use_bias/... are fixed, not arguments.
        config = keras.layers.Layer.get_config(self)
        config.update(self._init_args)
        if isinstance(config["kernel_initializer"], keras.initializers.Initializer):
            config["kernel_initializer"] = keras.initializers.serialize(
                config["kernel_initializer"]
            )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BottleneckUnit(keras.layers.Layer):
    """Post-activation bottleneck: 1x1 -> 3x3 (strided, as in ResNet v1.5) -> 1x1 (4x filters).

    The projection shortcut (`conv_proj`, `gn_proj`) exists only when the input
    channels differ from 4 * filters or the unit is strided, decided in `build`
    from the input shape as the reference decides it at trace time.
    """

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        d = self.dtype_policy
        self.conv1 = StandardizedConv2D(filters, 1, name="conv1", dtype=d)
        self.gn1 = _group_norm("gn1", d)
        self.conv2 = StandardizedConv2D(filters, 3, strides, name="conv2", dtype=d)
        self.gn2 = _group_norm("gn2", d)
        self.conv3 = StandardizedConv2D(RESNET_EXPANSION * filters, 1, name="conv3", dtype=d)
        # Reference initialises gn3's scale to zero (a fresh unit passes only its shortcut).
        self.gn3 = _group_norm("gn3", d, gamma_initializer="zeros")
        self.conv_proj = None
        self.gn_proj = None

    def build(self, input_shape):
        if needs_projection(input_shape[-1], self.filters, self.strides):
            d = self.dtype_policy
            self.conv_proj = StandardizedConv2D(
                RESNET_EXPANSION * self.filters, 1, self.strides, name="conv_proj", dtype=d
            )
            self.gn_proj = _group_norm("gn_proj", d)
            _build_chain([self.conv_proj, self.gn_proj], input_shape)
        chain = [self.conv1, self.gn1, self.conv2, self.gn2, self.conv3, self.gn3]
        _build_chain(chain, input_shape)

    def call(self, inputs):
        residual = inputs
        if self.conv_proj is not None:
            residual = self.gn_proj(self.conv_proj(inputs))
        y = ops.relu(self.gn1(self.conv1(inputs)))
        y = ops.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return ops.relu(residual + y)

    def compute_output_shape(self, input_shape):
        return self.conv2.compute_output_shape(input_shape)[:-1] + (RESNET_EXPANSION * self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides)
        return config


def _build_chain(layers, shape):
    """Builds layers in sequence; returns the final output shape."""
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResNetStem(keras.layers.Layer):
    """Root (7x7/2 StdConv, GN, ReLU, 3x3/2 max pool) + bottleneck stages.

    Downsamples by 32 (2 root + 3 strided stages): a 224x224 input gives a
    7x7 grid of `width * 2**(len(block_units)+1)` channels (2048 for width 64).
    `width` is 64 in every published model; smaller multiples of 32 exist for
    tests only (GroupNorm needs 32 groups to divide every width).
    """

    def __init__(self, block_units=(2, 2, 2, 2), width=RESNET_WIDTH, **kwargs):
        super().__init__(**kwargs)
        self.block_units = tuple(int(n) for n in block_units)
        self.width = int(width)
        d = self.dtype_policy
        self.conv_root = StandardizedConv2D(width, 7, 2, name="conv_root", dtype=d)
        self.gn_root = _group_norm("gn_root", d)
        # Padding counts as -inf (TF/flax SAME max pool); after the ReLU a
        # zero pad would give the same result anyway.
        self.pool = keras.layers.MaxPooling2D(
            3, 2, padding="same", data_format="channels_last", name="pool", dtype=d
        )
        self.units = [
            BottleneckUnit(n, stride, name=f"block{s}_unit{u}", dtype=d)
            for s, u, n, stride in resnet_plan(self.block_units, self.width)
        ]

    def build(self, input_shape):
        _build_chain([self.conv_root, self.gn_root, self.pool, *self.units], input_shape)

    def call(self, inputs):
        x = ops.relu(self.gn_root(self.conv_root(inputs)))
        x = self.pool(x)
        for unit in self.units:
            x = unit(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in [self.conv_root, self.pool, *self.units]:
            shape = layer.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update(block_units=list(self.block_units), width=self.width)
        return config
