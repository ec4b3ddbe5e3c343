"""Resizing in numpy, one result on every Keras backend.

`keras.ops.image.resize` is not the same function on each backend: bicubic differs by up
to 0.3 between TensorFlow and PyTorch (PyTorch's cubic uses a = -0.75 and clamps at the
border), and by 2e-3 between TensorFlow and JAX. Preprocessing and position-embedding
resampling must not depend on the backend, so both use this: the sampling of
`jax.image.resize` and of `tf.image.resize(..., antialias=True)` (pixel centres at
i + 0.5, Keys' cubic with a = -0.5, taps outside the image dropped and the rest
renormalised, the kernel widened by the shrink factor when antialiasing), computed as one
dense matrix per axis: two matrix products, in float32, with the weights in float64.
"""

import numpy as np

from vit_hub.architecture import image_hw
from vit_hub.errors import ConfigError, ImageError


def _triangle(x):
    return np.maximum(0.0, 1.0 - x)


def _keys_cubic(x, a=-0.5):
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


KERNELS = {"bilinear": _triangle, "bicubic": _keys_cubic}


def resize(image, size, method="bilinear", antialias=True):
    """(H, W, C) array -> float32 (height, width, C). `size`: an int or (height, width),
    positive (`image_hw`); ImageError for an image that is not (H, W, C) with pixels."""
    if method not in KERNELS:
        raise ConfigError(f"method must be one of {sorted(KERNELS)}, got {method!r}.")
    rows, cols = image_hw(size)
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or not image.size:
        raise ImageError(f"resize takes an (height, width, channels) array with pixels, got "
                         f"shape {image.shape}.")
    old_rows, old_cols, channels = image.shape
    by_rows = resize_matrix(old_rows, rows, method, antialias) @ image.reshape(old_rows, -1)
    return resize_matrix(old_cols, cols, method, antialias) @ by_rows.reshape(
        rows, old_cols, channels)


def resize_matrix(old, new, method, antialias):
    """(new, old) float32: output sample i as a weighted sum of the input samples."""
    scale = old / new
    stretch = max(scale, 1.0) if antialias else 1.0
    centres = (np.arange(new) + 0.5) * scale - 0.5
    weights = KERNELS[method](np.abs(np.arange(old)[None, :] - centres[:, None]) / stretch)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)
