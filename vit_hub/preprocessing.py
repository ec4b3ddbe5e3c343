"""Images in, answers out: the checkpoints' preprocessing, and ImageNet class names.

The published models take RGB float32 in [-1, 1], `(pixel - 127.5) / 127.5`, at 224x224.
"""

import collections.abc
import functools
import importlib.resources
import inspect
import io
import numbers
import os
import re
import warnings

import numpy as np

from vit_hub.architecture import image_hw
from vit_hub.errors import (
    ConfigError,
    ImageError,
    ImageTooLargeError,
    ImageTypeError,
    MissingFileError,
)
from vit_hub.resize import resize


def preprocess(images, image_size=224, crop_fraction=None):
    """Images -> float32 (B, height, width, 3) in [-1, 1], as the checkpoints expect.

    Args:
        images: an image, or a list, tuple or iterator (a generator) of them, each one of:
            a file path (JPEG, PNG, GIF, BMP, TIFF, WebP; read with Pillow, every pixel
            format by its own range, see `pil_pixels`); the encoded bytes of such a file
            (`bytes`, `bytearray`, `memoryview`), or a binary file object to read them
            from (`open(path, "rb")`, `io.BytesIO`, an HTTP upload), decoded as files are;
            a PIL image; an array (H, W, 3) or (B, H, W, 3) of uint8 (0..255) or floats
            in [0, 1], of any size. URLs are refused (vit_hub downloads no images: fetch
            the bytes first and pass them), as are folders (pass their files), and images
            over Pillow's decompression-bomb limit (2 x `PIL.Image.MAX_IMAGE_PIXELS`
            pixels; `PIL.Image.MAX_IMAGE_PIXELS` is read at each call, so raising it lets
            a trusted image through). Bytes that are not an image, or are cut short, raise
            an `ImageError`.
        image_size: int or (height, width) of the output (positive ints, see
            `vit_hub.architecture.image_hw`).
        crop_fraction: None (or 1) to keep the whole image, or a number in (0, 1]: keep
            this central fraction of each image's height and of its width (the box of
            `tf.image.central_crop`), then resize it to `image_size`. 0.875 is the classic
            ImageNet evaluation crop, as timm's `crop_pct=0.875` is for a square image
            (timm keeps the aspect ratio: it resizes the shorter side to
            `image_size / crop_pct` and crops the centre; here each axis is cropped by
            the fraction and the crop resized to `image_size`). Values above 1 are
            refused: the crop would be larger than the image, and timm pads it with
            black; pad the images yourself (`np.pad`) if you want a border. 0, negative
            values, NaN, bools and anything that is not a number are refused too.
    """
    size = image_hw(image_size)
    fraction = check_crop_fraction(crop_fraction)
    batch = [_resize(image, size, fraction) for image in _as_images(images)]
    if not batch:
        raise ImageError("preprocess got no images.")
    return (np.stack(batch) * 2.0 - 1.0).astype(np.float32)


def check_crop_fraction(crop_fraction):
    """`crop_fraction` as a float in (0, 1], or None for no crop (None or 1); ConfigError
    for anything else, naming what it must be and what to do instead."""
    if crop_fraction is None:
        return None
    fix = ("crop_fraction must be None or a number in (0, 1], the central fraction of each "
           "image kept (None or 1 keeps all of it; 0.875 is the classic ImageNet evaluation "
           f"crop), got {crop_fraction!r}")
    if isinstance(crop_fraction, bool) or not isinstance(crop_fraction, numbers.Real):
        raise ConfigError(f"{fix}: a {type(crop_fraction).__name__}, not a number.")
    value = float(crop_fraction)
    if value != value:
        raise ConfigError(f"{fix}.")
    if value > 1:
        raise ConfigError(f"{fix}: above 1 the crop would be larger than the image, and "
                          "vit_hub does not pad; to keep the whole image inside a border, "
                          "pad it first (np.pad) and pass crop_fraction=None.")
    if value <= 0:
        raise ConfigError(f"{fix}: it would keep nothing of the image; crop_fraction=None "
                          "keeps all of it.")
    return None if value == 1 else value


def _as_images(images):
    """Yields each image as a float32 (H, W, 3) array in [0, 1]."""
    if isinstance(images, (str, os.PathLike)):
        yield _read(images)
    elif isinstance(images, (bytes, bytearray, memoryview)):
        data = bytes(images)
        yield decode_image(data, f"image bytes ({len(data)} bytes)")
    elif is_pil(images):
        yield pil_pixels(images, "PIL image")
    elif is_file_object(images):
        yield _read_file_object(images)
    elif isinstance(images, (list, tuple, collections.abc.Iterator)):
        for image in images:  # (a generator as a list: each image it yields)
            yield from _as_images(image)
    else:
        array = np.asarray(images)
        if array.dtype == object or array.ndim == 0:
            raise ImageTypeError(
                f"preprocess got {type(images).__name__} {images!r:.60}: it takes file paths, "
                "encoded image bytes or binary file objects, PIL images, arrays (H, W, 3) or "
                "(B, H, W, 3), or a list or iterator of them.")
        if array.ndim == 4:
            yield from (_check_array(a, "image batch") for a in array)
        else:
            yield _check_array(array, "image")


def is_pil(obj):
    return hasattr(obj, "convert") and hasattr(obj, "getbands")


def is_file_object(obj):
    """Whether `obj` is a file object to read an image's bytes from (has `read`)."""
    return callable(getattr(obj, "read", None)) and not isinstance(obj, (str, os.PathLike))


def _read_file_object(file):
    """The image in a binary file object (read from where it stands), as `decode_image`."""
    name = getattr(file, "name", None)
    name = f"file object {name!r}" if isinstance(name, (str, bytes)) else (
        f"{type(file).__name__} file object")
    try:
        data = file.read()
    except OSError as err:
        raise ImageError(f"{name} cannot be read ({err}).") from None
    if inspect.isawaitable(data):  # e.g. an async framework's upload: its read is a coroutine
        getattr(data, "close", lambda: None)()
        raise ImageTypeError(f"{name} has an async read(): await it and pass the bytes, "
                             "preprocess(await upload.read()).")
    if isinstance(data, str):
        raise ImageTypeError(f"{name} is open in text mode: open image files in binary mode, "
                             "open(path, 'rb'), or pass the path.")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageTypeError(f"{name}.read() gave {type(data).__name__}, not bytes.")
    if not data:
        raise ImageError(f"{name} gave no bytes: it is empty, or already read to its end "
                         "(file.seek(0) first).")
    return decode_image(bytes(data), name)


# scheme://..., the start of a URL (http, https, ftp, s3, gs, file, ...).
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]+://")


def _read(path):
    """An image file as float32 (H, W, 3) in [0, 1] (see `decode_image`). A URL, a
    folder or a missing file is an error naming what to pass instead."""
    if os.path.isfile(path):
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as err:
            raise ImageError(f"{path} cannot be read ({err.strerror or err}).") from None
        return decode_image(data, path)
    text = os.fsdecode(path)
    shown = text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"
    if _URL.match(text) or text.startswith("data:"):
        raise ImageError(
            f"{shown} is a URL: vit_hub does not download images. Fetch the image first and "
            "pass its bytes, e.g. vit_hub.preprocess(urllib.request.urlopen(url).read()) or "
            "vit_hub.preprocess(requests.get(url).content)"
            + ("; for a file: URL, pass the path itself." if text.startswith("file:")
               else "; for a data: URL, base64.b64decode(url.split(',', 1)[1])."
               if text.startswith("data:") else "."))
    if os.path.isdir(path):
        raise ImageError(
            f"{shown} is a folder, not an image file: pass its image files, e.g. "
            f"sorted(glob.glob(os.path.join({text!r}, '*.jpg'))), or embed a whole folder "
            "with the vit-embed command (vit-embed MODEL FOLDER -o OUT).")
    if os.path.exists(path):
        raise ImageError(f"{shown} is not a regular file (a device, socket or pipe): pass "
                         "an image file, or its bytes.")
    where = "" if os.path.isabs(text) else f" (relative to the working folder {os.getcwd()})"
    raise MissingFileError(f"No image file at {shown}{where}: check the path.")


def decode_image(data, name, max_pixels=None):
    """The bytes of an image file as float32 (H, W, 3) in [0, 1]: the first frame of an
    animation, turned upright as its EXIF orientation says (as a photo viewer shows it),
    each pixel format read by its own range (see `pil_pixels`). ImageError, naming
    `name`, for bytes Pillow cannot decode (not an image, cut short, corrupt) or a pixel
    format with no defined range; ImageTooLargeError (an ImageError) for an image over
    Pillow's decompression-bomb limit or, read from its header before any pixel is
    decoded, over `max_pixels` (width x height). Images between
    `PIL.Image.MAX_IMAGE_PIXELS` and twice that are decoded without Pillow's
    DecompressionBombWarning."""
    from PIL import Image, ImageOps

    if not data:
        raise ImageError(f"{name} is empty: not an image.")
    try:
        with warnings.catch_warnings():  # (this call's; PIL.Image.MAX_IMAGE_PIXELS unchanged)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if max_pixels is not None and image.width * image.height > max_pixels:
                    raise _over_max_pixels(name, image, max_pixels)
                image.load()
                upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:
        raise _too_large(name, err) from None
    except (MemoryError, RecursionError, ImageTooLargeError):
        raise
    except Exception as err:  # Pillow's decoders raise OSError mostly, but not only
        raise ImageError(f"{name} is not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image "
                         f"({str(err) or type(err).__name__}){_not_image_hint(data)}.") from None
    return pil_pixels(upright, name, source=image)


def _over_max_pixels(name, image, max_pixels):
    """The ImageTooLargeError for an image over a caller's `max_pixels`."""
    return ImageTooLargeError(
        f"{name} is too large: {image.width}x{image.height} = "
        f"{image.width * image.height:_} pixels, over the limit of {max_pixels:_} pixels; "
        "shrink the image first (the model sees it resized anyway).")


def _too_large(name, err):
    """The ImageTooLargeError for an image over Pillow's decompression-bomb limit."""
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = int(found.group(1)) if found else None
    return ImageTooLargeError(
        f"{name} is too large to decode: "
        f"{f'{pixels:_} pixels, ' if pixels else ''}over the limit of "
        f"{2 * Image.MAX_IMAGE_PIXELS:_} pixels (twice PIL.Image.MAX_IMAGE_PIXELS), which "
        "guards against decompression bombs. If the image is trusted, raise the limit "
        f"before calling preprocess: PIL.Image.MAX_IMAGE_PIXELS = {pixels or 'None'}"
        f"{'' if pixels else ' (no limit)'}; or shrink the image first.")


def _not_image_hint(data):
    """A hint for bytes that look like text (an HTML error page, JSON) or a file path."""
    head = data[:64].lstrip().lower()
    if head.startswith((b"<", b"{", b"[")):
        return ("; the bytes look like text (HTML or JSON), e.g. an error page: check that "
                "the download or upload gave the image itself")
    if len(data) < 4096 and not set(data) & {0, 10, 13} and os.path.isfile(data):
        return "; the bytes are the path of a file: pass the path as a str to read it"
    return ""


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
    if not (image.width and image.height):
        raise ImageError(f"{name} has no pixels (size {image.width}x{image.height}).")
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
    if not array.size:
        raise ImageError(f"{what} has shape {array.shape}: it has no pixels.")
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
    """ImageTypeError for file paths, encoded image bytes, file objects or PIL images given
    where model inputs belong."""
    if (isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or is_pil(images)
            or is_file_object(images)):
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
    """`image` cropped to its central `crop_fraction` (a float in (0, 1), or None for no
    crop; see `check_crop_fraction`) and resized to `size`."""
    if crop_fraction is not None:  # the central box of tf.image.central_crop
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
    classes = imagenet_classes()
    return [[(*classes[i], p) for i, p in best] for best in top_classes(logits, top)]


def top_classes(logits, top=5):
    """Logits (B, C) -> per image, the `top` [(class index, softmax probability)], the
    most probable first."""
    logits = np.asarray(logits, np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return [[(int(i), float(p[i])) for i in np.argsort(-p)[:top]] for p in probabilities]
