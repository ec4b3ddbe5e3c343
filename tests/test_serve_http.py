"""vit-serve's request checks alone (vit_hub/serve/http.py): each bad request gets its
status and a message naming the problem and the fix; a good image is read exactly as
`vit_hub.preprocess` reads it. No Ray, no web framework: tests/test_serve.py sends the
same requests over HTTP."""

import io

import numpy as np
import pytest

import vit_hub
from vit_hub.errors import RequestError
from vit_hub.serve import http


def png(width, height, mode="RGB"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def photo_bytes(seed=0, size=(48, 40), fmt="JPEG"):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def refused(function, *args):
    with pytest.raises(RequestError) as raised:
        function(*args)
    return raised.value.status, str(raised.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_image_is_read_as_preprocess_reads_it(fmt):
    data = photo_bytes(size=(61, 37), fmt=fmt)
    image = http.read_image(data, (32, 32), http.MAX_PIXELS)
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image, vit_hub.preprocess(data, image_size=32)[0])


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png; q=1", "IMAGE/WEBP",
                                          "image/x-anything"])
def test_image_content_types_pass(content_type):
    http.check_content_type(content_type)


@pytest.mark.parametrize("content_type, found", [
    ("text/plain", "Content-Type 'text/plain'"),
    ("application/json", "Content-Type 'application/json'"),
    ("multipart/form-data; boundary=x", "Content-Type 'multipart/form-data'"),
    ("image/", "Content-Type 'image/'"),
    (None, "no Content-Type"),
    ("", "no Content-Type"),
])
def test_other_content_types_are_415(content_type, found):
    status, message = refused(http.check_content_type, content_type)
    assert status == 415 and found in message
    assert "Content-Type: image/jpeg" in message  # the fix


def test_sizes_over_the_limit_are_413_and_empty_or_malformed_400():
    assert refused(http.check_declared_length, "1001", 1000)[0] == 413
    status, message = refused(http.check_body, 1001, 1000)
    assert status == 413 and "--max-bytes" in message and "1_000 bytes" in message
    assert refused(http.check_body, 0, 1000)[0] == 400
    assert refused(http.check_declared_length, "12x", 1000)[0] == 400
    http.check_declared_length(None, 1000)  # chunked: checked while read
    http.check_declared_length("1000", 1000)
    http.check_body(1000, 1000)


@pytest.mark.parametrize("case", ["not an image", "truncated", "text", "empty"])
def test_unreadable_bytes_are_400(case):
    data = {"not an image": b"\x00\x01 definitely not pixels" * 10,
            "truncated": photo_bytes()[:200],
            "text": b"<html><body>502 Bad Gateway</body></html>",
            "empty": b""}[case]
    status, message = refused(http.read_image, data, (32, 32), http.MAX_PIXELS)
    assert status == 400, message
    assert "The uploaded image" in message and "Content-Type: image/jpeg" in message
    if case == "text":
        assert "look like text (HTML or JSON)" in message


def test_too_many_pixels_and_decompression_bombs_are_413():
    status, message = refused(http.read_image, png(400, 300), (32, 32), 100_000)
    assert status == 413 and "400x300 = 120_000 pixels" in message
    assert "--max-pixels" in message
    from PIL import Image

    bomb = png(2 * Image.MAX_IMAGE_PIXELS // 10_000 + 1, 10_000, mode="1")
    status, message = refused(http.read_image, bomb, (32, 32), None)
    assert status == 413 and "decompression bombs" in message


def test_top_k_and_the_classifier_check_are_422():
    assert http.parse_top_k(None, 1000) == 5 and http.parse_top_k("1000", 1000) == 1000
    for text in ("0", "-1", "1001", "abc", "2.5", ""):
        status, message = refused(http.parse_top_k, text, 1000)
        assert status == 422 and "from 1 to 1000" in message, text
    status, message = refused(http.check_classifier,
                              {"name": "vit_b32_fe", "classification": False})
    assert status == 422 and "/v1/embed" in message
    http.check_classifier({"name": "vit_b16_classification", "classification": True})


def test_labels_are_imagenet_names_with_softmax_scores():
    logits = np.zeros(1000, np.float32)
    logits[[1, 7, 3]] = [5.0, 4.0, 3.0]
    found = http.labels(logits, 3)
    assert [row["index"] for row in found] == [1, 7, 3]
    assert found[0]["label"] == vit_hub.decode_predictions(logits[None], top=1)[0][0][1]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([row["score"] for row in found], probabilities[[1, 7, 3]],
                               rtol=1e-6)
    assert http.labels(np.array([0.0, 2.0]), 1) == [
        {"index": 1, "label": "class 1", "score": pytest.approx(0.8808, abs=1e-4)}]


def test_routes_and_unavailable_messages_name_the_fix():
    message = http.no_route("GET", "/v2/embed", 404)
    assert "No such path (GET /v2/embed)" in message and "POST /v1/embed" in message
    assert "GET is not allowed on /v1/embed" in http.no_route("GET", "/v1/embed", 405)
    assert "retry the request" in http.unavailable("ActorDiedError", 60)
