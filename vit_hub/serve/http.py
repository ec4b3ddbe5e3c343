"""What vit-serve checks in a request, and the answer each problem gets: pure functions,
no Ray, no web framework (tests/test_serve_http.py tests them alone).

Every refusal is a `RequestError` with its HTTP status and a message that names the
problem and the fix; the service answers it as JSON {"error": message}. Images are read
as `vit_hub.preprocess` reads them (`decode_image`, then `preprocess`), with its
decompression-bomb limit and a pixel limit read from the header before any decoding.
"""

import numpy as np

from vit_hub.errors import ImageError, ImageTooLargeError, RequestError

BAD_REQUEST, TOO_LARGE, UNSUPPORTED_TYPE, UNPROCESSABLE = 400, 413, 415, 422
UNAVAILABLE = 503
MAX_BYTES = 20 * 2 ** 20  # an upload's size (a 20 MB JPEG is a ~100-megapixel photo)
MAX_PIXELS = 40_000_000  # width x height (decoded as float32: ~0.5 GB)
DEFAULT_TOP_K = 5
# What the service answers, for the 404 and 405 of any other request.
ROUTES = ("GET /v1/model", "POST /v1/embed", "POST /v1/classify?top_k=5", "GET /v1/stats",
          "GET /healthz")
SEND_AN_IMAGE = ("send the image file's bytes as the request body with its type, e.g. "
                 "curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' URL")


def error_body(message):
    return {"error": message}


def check_content_type(content_type):
    """415 unless the body is declared an image (image/*: jpeg, png, webp, ...)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media.startswith("image/") and len(media) > len("image/"):
        return
    found = f"Content-Type {media!r}" if media else "no Content-Type"
    raise RequestError(UNSUPPORTED_TYPE, f"The request has {found}, not an image type "
                       f"(image/jpeg, image/png, image/webp, ...): {SEND_AN_IMAGE}.")


def check_declared_length(content_length, max_bytes):
    """413 for a Content-Length over `max_bytes`, before the body is read; 400 for one
    that is not a number. None (chunked): checked while the body is read (`check_body`)."""
    if content_length is None:
        return
    if not content_length.strip().isdigit():
        raise RequestError(BAD_REQUEST, f"Content-Length {content_length!r} is not a "
                           "number of bytes: send the image file's bytes as they are.")
    if int(content_length) > max_bytes:
        raise _too_many_bytes(int(content_length), max_bytes)


def check_body(size, max_bytes):
    """413 once `size` bytes read are over `max_bytes`; 400 for an empty body."""
    if size > max_bytes:
        raise _too_many_bytes(size, max_bytes, read=True)
    if size == 0:
        raise RequestError(BAD_REQUEST, f"The request body is empty: {SEND_AN_IMAGE}.")


def _too_many_bytes(size, max_bytes, read=False):
    over = "over" if read else ""
    return RequestError(
        TOO_LARGE, f"The image is {f'{over} ' if read else ''}{size:_} bytes, more than this "
        f"service takes ({max_bytes:_} bytes): shrink or recompress it first (the model "
        "sees it resized anyway), or start vit-serve with a larger --max-bytes.")


def read_image(data, image_size, max_pixels):
    """The request's image, preprocessed as `vit_hub.preprocess` does: float32
    (height, width, 3) in [-1, 1]. 400 for bytes that are not a readable image (cut
    short, corrupt, another kind of file), 413 over `max_pixels` or Pillow's
    decompression-bomb limit."""
    from vit_hub.preprocessing import decode_image, preprocess

    name = f"The uploaded image ({len(data):_} bytes)"
    try:
        pixels = decode_image(data, name, max_pixels=max_pixels)
        return preprocess(pixels, image_size)[0]
    except ImageTooLargeError as err:
        raise RequestError(TOO_LARGE, f"{err} (vit-serve's limit: --max-pixels)") from None
    except ImageError as err:
        raise RequestError(BAD_REQUEST, f"{err} {SEND_AN_IMAGE[0].upper()}"
                           f"{SEND_AN_IMAGE[1:]}.") from None


def check_classifier(model):
    """422 for classify on a model that has no classes (a feature extractor)."""
    if not model["classification"]:
        raise RequestError(
            UNPROCESSABLE, f"{model['name']} is a feature extractor: it has no classes to "
            "rank. POST the image to /v1/embed for its features, or serve a classification "
            "model (e.g. vit_b16_classification) for /v1/classify.")


def parse_top_k(text, classes):
    """top_k as an int in 1..`classes` (default DEFAULT_TOP_K); 422 otherwise."""
    if text is None:
        return min(DEFAULT_TOP_K, classes)
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= classes:
        raise RequestError(UNPROCESSABLE, f"top_k={text!r} is not a whole number from 1 to "
                           f"{classes} (the model's classes): e.g. /v1/classify?top_k=5.")
    return int(value)


def labels(logits, top_k):
    """[{"index", "label", "score"}] of one image's `top_k` classes, softmax scores, the
    most probable first; ImageNet class names for a 1000-class head, else 'class N'."""
    from vit_hub.preprocessing import imagenet_classes, top_classes

    logits = np.asarray(logits)
    names = imagenet_classes() if logits.shape[-1] == 1000 else None
    [best] = top_classes(logits[None], top_k)
    return [{"index": i, "label": names[i][1] if names else f"class {i}", "score": p}
            for i, p in best]


def no_route(method, path, status):
    """The message of a 404 (no such path) or 405 (no such method there)."""
    what = "No such path" if status == 404 else f"{method} is not allowed on {path}"
    return (f"{what} ({method} {path}): vit-serve answers {', '.join(ROUTES)}; images are "
            "POSTed as the request body.")


def unavailable(reason, timeout_s=None):
    """The 503 message of a request the model replica did not answer."""
    within = f" within {timeout_s:g} s" if timeout_s else ""
    return (f"The model replica did not answer{within} ({reason}); Ray Serve restarts "
            "replicas that died: retry the request in a moment.")
