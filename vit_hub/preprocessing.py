"""Images in, answers out: the checkpoints' preprocessing, and ImageNet class names.

The published models take RGB float32 in [-1, 1], `(pixel - 127.5) / 127.5`, at 224x224.
"""

import functools
import io
import importlib.resources
import os

import numpy as np

from vit_hub.errors import ImageError, ImageTypeError, MissingFileError
from vit_hub.resize import resize


def preprocess(images, image_size=224, crop_fraction=None):
    """Images -> float32 (B, height, width, 3) in [-1, 1], as the checkpoints expect.

    Args:
        images: a file path (JPEG, PNG, GIF, BMP, WebP; read with Pillow) or a list of
            them; a PIL image or a list; an array (H, W, 3) or (B, H, W, 3) of uint8 (0..255) or floats in
            [0, 1]; or a list of such arrays of any sizes.
        image_size: int or (height, width) of the output.
        crop_fraction: if given, keep this central fraction of each image before
            resizing (e.g. 0.875, the classic ImageNet evaluation crop).
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    batch = [_resize(image, size, crop_fraction) for image in _as_images(images)]
    if not batch:
        raise ImageError("preprocess got no images.")
    return (np.stack(batch) * 2.0 - 1.0).astype(np.float32)


def _as_images(images):
    """Yields each image as a float32 (H, W, 3) array in [0, 1]."""
    if isinstance(images, (str, os.PathLike)):
        yield _read(images)
    elif _is_pil(images):
        yield _check_array(np.asarray(images.convert("RGB")), "PIL image")
    elif isinstance(images, (list, tuple)):
        for image in images:
            yield from _as_images(image)
    else:
        array = np.asarray(images)
        if array.ndim == 4:
            yield from (_check_array(a, "image batch") for a in array)
        else:
            yield _check_array(array, "image")


def _is_pil(obj):
    return hasattr(obj, "convert") and hasattr(obj, "getbands")


def _read(path):
    """An image file as float32 (H, W, 3) in [0, 1] (see `decode_image`)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"No image file at {path}.")
    with open(path, "rb") as file:
        return decode_image(file.read(), path)


def decode_image(data, name):
    """The bytes of an image file as float32 (H, W, 3) in [0, 1]: the first frame of an
    animation, turned upright as its EXIF orientation says (as a photo viewer shows it).
    ImageError, naming `name`, for bytes Pillow cannot decode."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{name} is not a readable JPEG, PNG, GIF, BMP or WebP image "
                         f"({err}).") from None
    return pixels.astype(np.float32) / 255.0


def _check_array(array, what):
    if array.ndim != 3:
        raise ImageError(
            f"{what} has shape {array.shape}: expected (height, width, 3) or a batch "
            "(batch, height, width, 3)."
        )
    if array.shape[-1] != 3:
        hint = ("grayscale: repeat it to 3 channels, np.repeat(image, 3, axis=-1)"
                if array.shape[-1] == 1 else "drop the extra channels, e.g. image[..., :3]"
                if array.shape[-1] == 4 else "images must be RGB, channels last")
        raise ImageError(f"{what} has {array.shape[-1]} channels, expected 3 (RGB): {hint}.")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageTypeError(
            f"{what} has dtype {array.dtype}: pass uint8 (0..255) or floats in [0, 1]."
        )
    if not np.all(np.isfinite(array)):
        raise ImageError(f"{what} contains NaN or infinite values.")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ImageError(
            f"{what} is float with values in [{array.min():.3g}, {array.max():.3g}]: float "
            "images must be in [0, 1] (pass uint8 for 0..255; vit_hub.preprocess does the "
            "scaling to [-1, 1] itself)."
        )
    return array.astype(np.float32)


def images_dtype_error(where, dtype):
    """The ImageTypeError for model inputs that are not floats: integer images (uint8
    0..255) would be computed at 255x the range the model takes."""
    if dtype == "uint8":
        extra = ""
    elif "int" in dtype:
        extra = (", cast to uint8 if they are pixels 0..255 (preprocess takes uint8 "
                 "0..255 or floats in [0, 1])")
    else:
        extra = " (it takes uint8 0..255 or floats in [0, 1])"
    return ImageTypeError(
        f"{where} got {dtype} images: the model takes float32 in [-1, 1]; pass them "
        f"through vit_hub.preprocess(images) (uint8 0..255 -> [-1, 1]) first{extra}."
    )


def check_model_images(images, image_size, where):
    """A batch for a compiled model (no Keras in the way to check it): float
    (B, height, width, 3) at `image_size`, returned as contiguous float32."""
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.floating):
        raise images_dtype_error(where, str(array.dtype))
    height, width = image_size
    if array.ndim != 4 or tuple(array.shape[1:]) != (height, width, 3):
        hint = (" (one image: add the batch axis, images[None])"
                if tuple(array.shape) == (height, width, 3) else "")
        raise ImageError(
            f"{where} takes a batch (B, {height}, {width}, 3) in [-1, 1], got shape "
            f"{tuple(array.shape)}{hint}; vit_hub.preprocess(images, image_size="
            f"{(height, width) if height != width else height}) makes one."
        )
    return np.ascontiguousarray(array, np.float32)


def _resize(image, size, crop_fraction):
    if crop_fraction:  # the central box of tf.image.central_crop
        rows, cols = image.shape[:2]
        top, left = int((rows - rows * crop_fraction) / 2), int((cols - cols * crop_fraction) / 2)
        image = image[top:rows - top, left:cols - left]
    return resize(image, size, "bilinear", antialias=True)


@functools.cache
def imagenet_classes():
    """[(WordNet id, names)] of the 1000 ILSVRC-2012 classes, in the models' order.

    Shipped in the package (vit_hub/data/imagenet_classes.tsv; the list as timm
    distributes it, Apache-2.0), so nothing is downloaded.
    """
    text = importlib.resources.files("vit_hub").joinpath("data/imagenet_classes.tsv").read_text()
    return [tuple(line.split("\t")) for line in text.splitlines()]


def decode_predictions(logits, top=5):
    """Logits (B, 1000) -> per image, the `top` [(WordNet id, class names, probability)]."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[-1] != 1000:
        raise ImageError(
            f"decode_predictions expects ImageNet logits of shape (batch, 1000), got "
            f"{logits.shape}; a model with another head has no ImageNet class names."
        )
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    classes = imagenet_classes()
    return [
        [(*classes[i], float(p[i])) for i in np.argsort(-p)[:top]] for p in probabilities
    ]
