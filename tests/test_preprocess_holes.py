"""`vit_hub.preprocess` on what a user (or a web server) hands it that it used to get
wrong: crop fractions outside (0, 1] (a corner kept, 0 taken as no crop), encoded image
bytes, binary file objects and generators ("image has shape ()"), URLs and folders, image
sizes that are not positive ints, empty images, and images over Pillow's
decompression-bomb limit (its warning printed, or its own error raised). No model is
built: these are numpy and Pillow only."""

import asyncio
import io
import os
import re
import warnings

import numpy as np
import PIL.Image
import pytest

import vit_hub
from vit_hub.errors import ConfigError, ImageError, ImageTypeError, MissingFileError
from vit_hub.preprocessing import check_not_files
from vit_hub.resize import resize


def _quarter():
    """40x40, black but for a white top-left quarter."""
    image = np.zeros((40, 40, 3), np.uint8)
    image[:20, :20] = 255
    return image


def _encoded(pixels, format="PNG", **options):
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format, **options)
    return buffer.getvalue()


@pytest.fixture
def photo():
    return np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8)


# === 1. crop_fraction: a number in (0, 1], or None ===


@pytest.mark.parametrize("fraction", [1.5, 2.0, 1.0001, float("inf")])
def test_a_crop_fraction_above_1_is_refused_not_a_corner(fraction):
    with pytest.raises(ConfigError, match=r"^crop_fraction must be None or a number in "
                                          r"\(0, 1\].*above 1 the crop would be larger than "
                                          r"the image.*pad it first \(np\.pad\)"):
        vit_hub.preprocess(_quarter(), image_size=8, crop_fraction=fraction)


@pytest.mark.parametrize("fraction", [0, 0.0, -0.5, -1, float("-inf")])
def test_a_crop_fraction_of_0_or_below_is_refused_not_taken_as_no_crop(fraction):
    with pytest.raises(ConfigError, match=r"must be None or a number in \(0, 1\].*got "
                                          r".*it would keep nothing of the image; "
                                          r"crop_fraction=None keeps all of it"):
        vit_hub.preprocess(_quarter(), image_size=8, crop_fraction=fraction)


@pytest.mark.parametrize("fraction,text", [
    (True, r"got True: a bool, not a number"), (False, r"got False: a bool, not a number"),
    ("0.875", r"got '0\.875': a str, not a number"), ([0.5], r"a list, not a number"),
    (float("nan"), r"got nan\.$"), (np.float64("nan"), r"got np\.float64\(nan\)\.$|got nan\.$"),
])
def test_crop_fractions_that_are_not_numbers_are_refused(fraction, text):
    with pytest.raises(ConfigError, match=r"^crop_fraction must be None or a number in "
                                          rf"\(0, 1\].*{text}"):
        vit_hub.preprocess(_quarter(), image_size=8, crop_fraction=fraction)


def test_a_bad_crop_fraction_is_refused_before_any_image_is_read():
    read = []

    def images():
        read.append(1)
        yield _quarter()

    with pytest.raises(ConfigError):
        vit_hub.preprocess(images(), image_size=8, crop_fraction=0)
    assert read == []


@pytest.mark.parametrize("fraction", [1, 1.0, np.float32(1.0), np.int64(1)])
def test_a_crop_fraction_of_1_keeps_the_whole_image(fraction):
    np.testing.assert_array_equal(
        vit_hub.preprocess(_quarter(), image_size=8, crop_fraction=fraction),
        vit_hub.preprocess(_quarter(), image_size=8))


@pytest.mark.parametrize("fraction", [0.5, np.float32(0.5), np.float64(0.5)])
def test_a_crop_fraction_keeps_the_centre(fraction):
    out = vit_hub.preprocess(_quarter(), image_size=20, crop_fraction=fraction)
    np.testing.assert_allclose(out[0], _quarter()[10:30, 10:30] / 127.5 - 1, atol=1e-5)
    assert out[0, :10, :10].min() == 1.0 and out[0, 10:, 10:].max() == -1.0


# === 2. Encoded bytes, binary file objects, generators ===


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("wrap", ["bytes", "bytearray", "memoryview", "BytesIO", "open"])
def test_encoded_bytes_and_binary_files_read_as_the_file(photo, tmp_path, format, wrap):
    data = _encoded(photo, format)
    path = tmp_path / f"photo.{format.lower()}"
    path.write_bytes(data)
    expected = vit_hub.preprocess(str(path), image_size=16)
    if wrap == "open":
        with open(path, "rb") as file:
            out = vit_hub.preprocess(file, image_size=16)
    else:
        given = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data),
                 "BytesIO": io.BytesIO(data)}[wrap]
        out = vit_hub.preprocess(given, image_size=16)
    np.testing.assert_array_equal(out, expected)


def test_a_list_of_bytes_and_files_is_a_batch(photo):
    data = _encoded(photo)
    out = vit_hub.preprocess([data, io.BytesIO(data), photo], image_size=16)
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)


@pytest.mark.parametrize("data,text", [
    (b"hello, not an image", r"^image bytes \(19 bytes\) is not a readable JPEG, PNG, GIF, "
                             r"BMP, TIFF or WebP image \(cannot identify image file"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
     r"the bytes look like text \(HTML or JSON\), e\.g\. an error page"),
    (b'{"error": "unauthorized"}', r"the bytes look like text \(HTML or JSON\)"),
    (b"", r"^image bytes \(0 bytes\) is empty: not an image"),
])
def test_bytes_that_are_not_an_image_are_an_image_error(data, text):
    with pytest.raises(ImageError, match=text) as err:
        vit_hub.preprocess(data, image_size=8)
    assert not isinstance(err.value, OSError)  # (not PIL's UnidentifiedImageError)
    assert err.value.__context__ is None or err.value.__suppress_context__


# (Pillow warns of a corrupt TIFF's tags as it reads them; the error is what counts.)
@pytest.mark.filterwarnings("ignore:Tag data larger than file:UserWarning")
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_truncated_and_corrupt_images_are_an_image_error(photo, format):
    data = _encoded(photo, format)
    rng = np.random.default_rng(1)
    broken = [data[:n] for n in range(1, len(data), max(1, len(data) // 25))]
    for _ in range(25):
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), 4):
            flipped[i] ^= 0xFF
        broken.append(bytes(flipped))
    for case in broken:
        for given in (case, io.BytesIO(case)):
            try:
                out = vit_hub.preprocess(given, image_size=8)
            except ImageError as err:
                assert "is not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image" in str(err)
                assert not isinstance(err, OSError)
            else:  # (a flipped byte in the pixels decodes, to other pixels)
                assert np.isfinite(out).all()


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_an_image_cut_short_says_so(photo, format):
    data = _encoded(photo, format)
    with pytest.raises(ImageError, match=r"^image bytes \(\d+ bytes\) is not a readable JPEG, "
                                         r"PNG, GIF, BMP, TIFF or WebP image \(.*truncated"):
        vit_hub.preprocess(data[:len(data) * 2 // 3], image_size=8)


def test_a_file_object_read_to_its_end_says_to_seek(photo):
    file = io.BytesIO(_encoded(photo))
    file.read()
    with pytest.raises(ImageError, match=r"^BytesIO file object gave no bytes: it is empty, "
                                         r"or already read to its end \(file\.seek\(0\) first\)"):
        vit_hub.preprocess(file, image_size=8)
    file.seek(0)
    assert vit_hub.preprocess(file, image_size=8).shape == (1, 8, 8, 3)


def test_a_text_mode_file_says_to_open_it_in_binary_mode(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with open(path) as file, pytest.raises(
            ImageTypeError, match=r"^file object '.*notes\.txt' is open in text mode: open "
                                  r"image files in binary mode, open\(path, 'rb'\)"):
        vit_hub.preprocess(file, image_size=8)


def test_a_named_binary_file_is_named_in_errors(tmp_path):
    path = tmp_path / "upload.jpg"
    path.write_bytes(b"GIF89a-but-not-really")
    with open(path, "rb") as file, pytest.raises(
            ImageError, match=r"^file object '.*upload\.jpg' is not a readable"):
        vit_hub.preprocess(file, image_size=8)


def test_an_async_upload_says_to_await_its_bytes(photo, recwarn):
    class Upload:  # the shape of an async web framework's uploaded file
        async def read(self):
            return _encoded(photo)

    with pytest.raises(ImageTypeError, match=r"^Upload file object has an async read\(\): "
                                             r"await it and pass the bytes"):
        vit_hub.preprocess(Upload(), image_size=8)
    assert vit_hub.preprocess(asyncio.run(Upload().read()), image_size=8).shape == (1, 8, 8, 3)
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_generator_is_taken_as_the_list_of_what_it_yields(photo):
    listed = vit_hub.preprocess([photo, photo[:20], _encoded(photo)], image_size=16)
    generated = vit_hub.preprocess((x for x in [photo, photo[:20], _encoded(photo)]),
                                   image_size=16)
    np.testing.assert_array_equal(generated, listed)
    mapped = vit_hub.preprocess(map(np.copy, [photo, photo[:20]]), image_size=16)
    np.testing.assert_array_equal(mapped, listed[:2])
    np.testing.assert_array_equal(vit_hub.preprocess(iter([photo]), image_size=16), listed[:1])


def test_an_empty_generator_is_no_images():
    with pytest.raises(ImageError, match=r"^preprocess got no images\.$"):
        vit_hub.preprocess(x for x in [])


@pytest.mark.parametrize("images,kind", [
    (None, "NoneType"), ({"a.jpg"}, "set"), ({"image": 1}, "dict"), (object(), "object"),
    (7, "int"),
])
def test_what_is_not_an_image_is_named(images, kind):
    with pytest.raises(ImageTypeError, match=rf"^preprocess got {kind} .*: it takes file paths, "
                                             r"encoded image bytes or binary file objects, PIL "
                                             r"images, arrays"):
        vit_hub.preprocess(images, image_size=8)


@pytest.mark.parametrize("images", [b"\x89PNG\r\n", bytearray(b"x"), memoryview(b"x"),
                                    io.BytesIO(b"x")])
def test_bytes_and_files_given_where_model_inputs_belong_say_to_preprocess(images):
    with pytest.raises(ImageTypeError, match=r"it takes a float32 batch \(B, 32, 32, 3\) in "
                                             r"\[-1, 1\]; read and scale image files with "
                                             r"vit_hub\.preprocess\(paths, image_size=32\)"):
        check_not_files(images, (32, 32), "Model 'tiny'")


# === 3. URLs, folders, missing files ===


@pytest.mark.parametrize("url", ["http://example.com/cat.jpg", "https://example.com/cat.jpg",
                                 "HTTPS://EXAMPLE.COM/CAT.JPG", "ftp://example.com/cat.jpg",
                                 "s3://bucket/cat.jpg", "gs://bucket/cat.jpg"])
def test_a_url_is_refused_saying_to_fetch_the_bytes(url):
    with pytest.raises(ImageError, match=rf"^{re.escape(url)} is a URL: vit_hub does "
                                         r"not download images\. Fetch the image first and "
                                         r"pass its bytes, e\.g\. vit_hub\.preprocess\(urllib"
                                         r"\.request\.urlopen\(url\)\.read\(\)\)") as err:
        vit_hub.preprocess(url, image_size=8)
    assert not isinstance(err.value, FileNotFoundError)


def test_file_and_data_urls_say_what_to_pass():
    with pytest.raises(ImageError, match=r"is a URL: .*; for a file: URL, pass the path"):
        vit_hub.preprocess("file:///tmp/cat.jpg", image_size=8)
    with pytest.raises(ImageError, match=r"is a URL: .*; for a data: URL, base64\.b64decode"):
        vit_hub.preprocess("data:image/png;base64,iVBORw0KGgo=", image_size=8)


def test_a_url_in_a_list_is_refused_too(photo):
    with pytest.raises(ImageError, match=r"is a URL"):
        vit_hub.preprocess([photo, "https://example.com/cat.jpg"], image_size=8)


@pytest.mark.parametrize("as_path", [str, os.fspath, lambda p: p])
def test_a_folder_is_refused_naming_the_fix(tmp_path, as_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(ImageError, match=r"photos is a folder, not an image file: pass its "
                                         r"image files, e\.g\. sorted\(glob\.glob\(os\.path\."
                                         r"join\(.*'\*\.jpg'\)\)\), or embed a whole folder "
                                         r"with the vit-embed command") as err:
        vit_hub.preprocess(as_path(folder), image_size=8)
    assert not isinstance(err.value, FileNotFoundError)


def test_a_missing_file_names_its_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(MissingFileError, match=rf"^No image file at {missing}: check the path"):
        vit_hub.preprocess(str(missing), image_size=8)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingFileError, match=r"^No image file at nope\.jpg \(relative to the "
                                               rf"working folder {tmp_path}\)"):
        vit_hub.preprocess("nope.jpg", image_size=8)


def test_a_long_string_that_is_no_file_is_shortened():
    with pytest.raises(MissingFileError, match=r"\.\.\. \(100000 characters\)") as err:
        vit_hub.preprocess("A" * 100_000, image_size=8)
    assert len(str(err.value)) < 1000


def test_a_path_given_as_bytes_says_to_pass_a_str(tmp_path, photo):
    path = tmp_path / "photo.png"
    path.write_bytes(_encoded(photo))
    with pytest.raises(ImageError, match=r"the bytes are the path of a file: pass the path "
                                         r"as a str"):
        vit_hub.preprocess(os.fsencode(path), image_size=8)


# === 4. Image sizes through image_hw, and empty images ===


@pytest.mark.parametrize("size,hint", [
    (0, r"got 0: sizes are at least 1 pixel"), (-224, r"got -224: sizes are at least 1 pixel"),
    ((224, 0), r"got \(224, 0\): sizes are at least 1 pixel"),
    (224.0, r"got 224\.0 \(a float\): pass 224"),
    ((224.0, 160), r"got \(224\.0, 160\) \(a float\): pass \(224, 160\)"),
    (True, r"got True: a bool is not a size"), ((True, 32), r"got \(True, 32\): a bool is not a size"),
    ((224, 224, 3), r"got \(224, 224, 3\): pass \(height, width\), without the channels"),
    (22.4, r"got 22\.4\.$"), ("224", r"got '224'\.$"), (None, r"got None\.$"),
])
def test_bad_image_sizes_are_a_config_error_naming_the_fix(size, hint):
    with pytest.raises(ConfigError, match=r"^image_size must be a positive int or a \(height, "
                                          rf"width\) pair of positive ints, {hint}"):
        vit_hub.preprocess(_quarter(), image_size=size)


@pytest.mark.parametrize("size", [0, (0, 8), (8, -1), 8.0, True])
def test_resize_refuses_sizes_that_are_not_positive_ints(size):
    with pytest.raises(ConfigError, match=r"^image_size must be a positive int"):
        resize(np.ones((4, 4, 3), np.float32), size)


@pytest.mark.parametrize("shape", [(0, 4, 3), (4, 0, 3), (4, 4)])
def test_resize_refuses_images_with_no_pixels(shape):
    with pytest.raises(ImageError, match=r"^resize takes an \(height, width, channels\) "
                                         rf"array with pixels, got shape {re.escape(str(shape))}"):
        resize(np.ones(shape, np.float32), (8, 8))


@pytest.mark.parametrize("shape", [(0, 4, 3), (4, 0, 3), (0, 0, 3)])
def test_an_empty_array_is_an_image_error(shape):
    with pytest.raises(ImageError, match=r"^image has shape .*: it has no pixels\."):
        vit_hub.preprocess(np.zeros(shape, np.uint8), image_size=8)


@pytest.mark.parametrize("size", [(0, 5), (5, 0)])
def test_an_empty_pil_image_is_an_image_error(size):
    with pytest.raises(ImageError, match=r"^PIL image has no pixels \(size \d+x\d+\)\."):
        vit_hub.preprocess(PIL.Image.new("RGB", size), image_size=8)


# === 5. Pillow's decompression-bomb limit ===


@pytest.fixture
def small_limit(monkeypatch):
    """Pillow's limit at 1000 pixels (so its error at 2000): a 40x40 image is between the
    two, a 50x50 one over."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    return 1000


@pytest.mark.parametrize("given", ["path", "bytes", "file"])
def test_an_image_over_the_warning_limit_is_read_without_the_warning(small_limit, tmp_path,
                                                                     given):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    data = _encoded(pixels)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    filters = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (Pillow's DecompressionBombWarning would raise)
        out = vit_hub.preprocess({"path": str(path), "bytes": data,
                                  "file": io.BytesIO(data)}[given], image_size=16)
    np.testing.assert_allclose(out, vit_hub.preprocess(pixels, image_size=16), atol=1e-6)
    assert PIL.Image.MAX_IMAGE_PIXELS == small_limit  # (not changed, even for the call)
    assert list(warnings.filters) == filters
    with pytest.warns(PIL.Image.DecompressionBombWarning):  # Pillow itself still warns
        PIL.Image.open(io.BytesIO(data))


@pytest.mark.parametrize("given", ["path", "bytes"])
def test_an_image_over_the_error_limit_is_an_image_error_saying_how_to_raise_it(
        small_limit, tmp_path, given, recwarn):
    data = _encoded(np.zeros((50, 50, 3), np.uint8))
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    what = {"path": str(path), "bytes": data}[given]
    name = str(path) if given == "path" else r"image bytes \(\d+ bytes\)"
    with pytest.raises(ImageError, match=rf"^{name} is too large to decode: 2_500 pixels, over "
                                         r"the limit of 2_000 pixels \(twice PIL\.Image\."
                                         r"MAX_IMAGE_PIXELS\), which guards against "
                                         r"decompression bombs\. If the image is trusted, raise "
                                         r"the limit before calling preprocess: PIL\.Image\."
                                         r"MAX_IMAGE_PIXELS = 2500; or shrink the image") as err:
        vit_hub.preprocess(what, image_size=8)
    assert not isinstance(err.value, PIL.Image.DecompressionBombError)
    assert not [w for w in recwarn if issubclass(w.category, PIL.Image.DecompressionBombWarning)]
    PIL.Image.MAX_IMAGE_PIXELS = 2500  # what the message says (monkeypatch restores it)
    assert vit_hub.preprocess(what, image_size=8).shape == (1, 8, 8, 3)


def test_no_limit_when_pillow_has_none(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)
    data = _encoded(np.zeros((50, 50, 3), np.uint8))
    assert vit_hub.preprocess(data, image_size=8).shape == (1, 8, 8, 3)
