"""Images in, answers out: the checkpoints' preprocessing, and ImageNet class names.

The published models take RGB float32 in [-1, 1], `(pixel - 127.5) / 127.5`, at 224x224.
"""

import functools
import importlib.resources
import io
import os

import numpy as np

from vit_hub.architecture import image_hw
from vit_hub.errors import ImageError, ImageTypeError, MissingFileError
from vit_hub.resize import resize


def preprocess(images, image_size=224, crop_fraction=None):
    """Images -> float32 (B, height, width, 3) in [-1, 1], as the checkpoints expect.

    Args:
        images: a file path (JPEG, PNG, GIF, BMP, TIFF, WebP; read with Pillow, every
            pixel format by its own range, see `pil_pixels`) or a list of them; a PIL
            image or a list; an array (H, W, 3) or (B, H, W, 3) of uint8 (0..255) or
            floats in [0, 1]; or a list of such arrays of any sizes.
        image_size: int or (height, width) of the output.
        crop_fraction: if given, keep this central fraction of each image before
            resizing (e.g. 0.875, the classic ImageNet evaluation crop).
    """
    size = image_hw(image_size)
    batch = [_resize(image, size, crop_fraction) for image in _as_images(images)]
    if not batch:
        raise ImageError("preprocess got no images.")
    return (np.stack(batch) * 2.0 - 1.0).astype(np.float32)


def _as_images(images):
    """Yields each image as a float32 (H, W, 3) array in [0, 1]."""
    if isinstance(images, (str, os.PathLike)):
        yield _read(images)
    elif is_pil(images):
        yield pil_pixels(images, "PIL image")
    elif isinstance(images, (list, tuple)):
        for image in images:
            yield from _as_images(image)
    else:
        array = np.asarray(images)
        if array.ndim == 4:
            yield from (_check_array(a, "image batch") for a in array)
        else:
            yield _check_array(array, "image")


def is_pil(obj):
    return hasattr(obj, "convert") and hasattr(obj, "getbands")


def _read(path):
    """An image file as float32 (H, W, 3) in [0, 1] (see `decode_image`)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"No image file at {path}.")
    with open(path, "rb") as file:
        return decode_image(file.read(), path)


def decode_image(data, name):
    """The bytes of an image file as float32 (H, W, 3) in [0, 1]: the first frame of an
    animation, turned upright as its EXIF orientation says (as a photo viewer shows it),
    each pixel format read by its own range (see `pil_pixels`). ImageError, naming
    `name`, for bytes Pillow cannot decode or a pixel format with no defined range."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{name} is not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image "
                         f"({err}).") from None
    return pil_pixels(upright, name, source=image)


# PIL modes of 8-bit (or 1-bit) pixels that PIL converts to RGB as they mean (palette
# looked up, CMYK, YCbCr, LAB and HSV converted, premultiplied alpha undone): 0..255.
# Alpha is dropped, as the checkpoints' own input pipeline (TensorFlow's decode_image
# with 3 channels) dropped it: an RGBA image reads as its RGB twin.
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBX", "RGBA", "RGBa", "LA", "La", "PA", "CMYK",
                   "YCbCr", "LAB", "HSV")


def pil_pixels(image, name, source=None):
    """A PIL image as float32 (H, W, 3) in [0, 1], each mode read by its own range:
    8-bit modes 0..255, 16-bit grayscale (I;16...) 0..65535, 32-bit integer (I)
    0..2**31-1 (0..65535 for a 16-bit PNG or TIFF that Pillow opened as I), 32-bit float
    (F) 0..1 as float arrays are (other values refused). Any other mode is refused by name.
    `source`: the image as opened from its file (its format and TIFF tags), when `image`
    is an upright copy of it."""
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        if mode == "La":  # PIL converts La only to LA, which undoes the premultiplying
            image = image.convert("LA")
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        gray = np.asarray(image).astype(np.float64)
        if gray.size and gray.min() < 0:
            raise ImageError(f"{name} is a 32-bit integer image (PIL mode I) with negative "
                             f"values (down to {gray.min():.0f}): pixels cannot be negative.")
        top = 65535 if mode != "I" or _is_16_bit_file(source or image) else 2 ** 31 - 1
        if gray.size and gray.max() > top:  # (a 16-bit file holds no more)
            raise ImageError(f"{name} has values up to {gray.max():.0f}, beyond its "
                             f"{top.bit_length()}-bit range.")
        gray = (gray / top).astype(np.float32)
    elif mode == "F":  # checked as float arrays are: in [0, 1], finite
        gray = np.asarray(image, np.float32)
        return _check_array(np.repeat(gray[..., None], 3, axis=-1), f"{name} (PIL mode F)")
    else:
        raise ImageError(
            f"{name} has PIL mode {mode!r}, whose pixels have no range vit_hub knows: convert "
            f"it to 'RGB' (8-bit) or 'I;16' (16-bit grayscale) first, e.g. "
            f"image.convert('RGB').")
    return np.repeat(gray[..., None], 3, axis=-1)


def _is_16_bit_file(image):
    """Whether Pillow read a mode-I image from a 16-bit file: a PNG (which has no 32-bit
    pixels) or a TIFF whose BitsPerSample tag (258) says 16."""
    bits = getattr(image, "tag_v2", {}).get(258)
    return image.format == "PNG" or bits in (16, (16,))


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
        hint = (f" (a full-range {array.dtype.itemsize * 8}-bit image: image / "
                f"{np.iinfo(array.dtype).max} gives floats in [0, 1])"
                if array.dtype in (np.uint16, np.uint32) else "")
        raise ImageTypeError(
            f"{what} has dtype {array.dtype}: pass uint8 (0..255) or floats in [0, 1]{hint}."
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


# How far outside [-1, 1] a model input may reach and still be taken for preprocessed
# images. `preprocess` resamples with non-negative weights: 2.4e-7 over, float rounding.
# Images resized elsewhere with filters that have negative lobes overshoot; measured on a
# pixel checkerboard (the worst case), in [-1, 1] units: bicubic 0.56 (PIL) and 0.40
# (tf.image), Lanczos-3 1.09 (PIL), Lanczos-5 1.32 (tf.image). Pixels 0..255 as floats
# reach ~255: only an image darker than 2.5/255 everywhere stays within the bound.
INPUT_MARGIN = 1.5


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


def check_not_files(images, image_size, where):
    """ImageTypeError for file paths or PIL images given where model inputs belong."""
    if isinstance(images, (str, bytes, os.PathLike)) or is_pil(images):
        raise ImageTypeError(
            f"{where} got {type(images).__name__} {images!r:.60}: it takes a float32 batch "
            f"(B, {image_size[0]}, {image_size[1]}, 3) in [-1, 1]; read and scale image "
            f"files with vit_hub.preprocess(paths, image_size={_size_text(image_size)}) first.")


def _size_text(image_size):
    height, width = image_size
    return str(height) if height == width else str((height, width))


def check_shape(shape, image_size, where):
    """ImageError unless `shape` (dimensions None where not known) fits a batch of
    images of `image_size`: said before any compiled function sees the wrong shape."""
    height, width = image_size
    shape = tuple(shape)
    if len(shape) == 4 and all(d is None or d == e for d, e in zip(shape[1:], (height, width, 3))):
        return
    hint = (" (one image: add the batch axis, images[None])"
            if shape == (height, width, 3) else "")
    raise ImageError(
        f"{where} takes a batch (B, {height}, {width}, 3) in [-1, 1], got shape "
        f"{shape}{hint}; vit_hub.preprocess(images, image_size={_size_text(image_size)}) "
        "makes one."
    )


def check_range(low, high, where):
    """ImageError unless the least and greatest values of a model input are within
    [-1, 1] give or take INPUT_MARGIN (NaN fails too)."""
    bound = 1.0 + INPUT_MARGIN
    if low >= -bound and high <= bound:
        return
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageError(f"{where} got images containing NaN or infinite values.")
    hint = (" They look like pixels 0..255: pass them through vit_hub.preprocess(images) "
            "(uint8 0..255 or floats in [0, 1] -> [-1, 1]), or scale them, "
            "images / 127.5 - 1." if low >= -bound else "")
    raise ImageError(
        f"{where} got images with values in [{low:.4g}, {high:.4g}]: the model takes "
        f"float32 in [-1, 1] (values beyond +-{bound:g} are refused).{hint}")


def check_model_images(images, image_size, where):
    """A numpy batch for a compiled model (no Keras in the way to check it): float
    (B, height, width, 3) at `image_size` in [-1, 1], returned as contiguous float32."""
    check_not_files(images, image_size, where)
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.floating):
        raise images_dtype_error(where, str(array.dtype))
    check_shape(array.shape, image_size, where)
    if array.size:
        check_range(array.min(), array.max(), where)
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
