"""The model's input checks: images that a ViT would compute wrongly, or fail on deep
inside, are refused before anything is computed, with the fix in the message.

`ChecksImages` puts them in front of every way in: `model(x)`, and `fit`, `evaluate`,
`predict` and their `*_on_batch` forms, whose data is checked whole first (inside Keras'
loops the model is called on symbolic or traced batches, whose values are not seen).
"""

import functools

import keras
import numpy as np

from vit_hub import compiled
from vit_hub.errors import ImageError
from vit_hub.preprocessing import check_not_files, check_range, check_shape, images_dtype_error


def _loop(method):
    """`method` of keras.Model, first checking its `x` (and fit's validation arrays)
    as `check_images` does: arrays and tensors; datasets and generators are seen
    batch by batch by the model's call."""
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


class ChecksImages:
    """Mixin for a `keras.Model` with an `image_size`: checks the images of every call and
    loop (`check_images`) before Keras sees them."""

    def __call__(self, *args, **kwargs):
        # Every path in goes through here with the images as given: eager calls, and
        # predict/fit/evaluate (their steps call the model on the batches, of the dtype
        # the data had), before Keras's input conversion casts them to float32.
        check_images(args[0] if args else kwargs.get("inputs"), f"Model {self.name!r}",
                     self.image_size)
        return super().__call__(*args, **kwargs)

    fit = _loop(keras.Model.fit)
    evaluate = _loop(keras.Model.evaluate)
    predict = _loop(keras.Model.predict)
    train_on_batch = _loop(keras.Model.train_on_batch)
    test_on_batch = _loop(keras.Model.test_on_batch)
    predict_on_batch = _loop(keras.Model.predict_on_batch)


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
