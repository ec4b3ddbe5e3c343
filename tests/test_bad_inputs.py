"""Bad inputs: 44 cases (BAD_INPUTS), each a clear error naming the problem, and no file
changed. Every error raised is a `vit_hub.VitHubError` (one base class for all the package
raises) and still an instance of the built-in class listed in the table (ValueError,
TypeError, FileNotFoundError, ...), so `except` clauses written before the common base
still catch it; `convert-weights` cases give their exit status instead.

Catalogue entries with bad fields are refused at registration (`vit_hub.register_model`),
so nothing is added to the catalogue; the tiny models are those tests/conftest.py
registers. The shared helpers and the other faults: tests/fault_support.py.
"""

import io
import json
import os
import re
import shutil
import types

import numpy as np
import pytest

import vit_hub
import vit_hub.conversion.download
from tests.conftest import TINY_CLASSIFICATION, TINY_ENTRY
from tests.fault_support import (
    NAME,
    Env,
    cli,
    read_only,
    snapshot,
)
from vit_hub.cache import CacheEntry
from vit_hub.catalogue import ModelEntry
from vit_hub.errors import CacheError, CatalogueError, DownloadError, WeightsError

# === Bad inputs: a clear error naming the problem, and no file changed ===


class Failed(Exception):
    """A `convert-weights` run that exited non-zero: its status and stderr."""

    def __init__(self, code, stderr):
        super().__init__(f"exit status {code}: {stderr}")
        self.code = code


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_saved_model, warm_cache):  # noqa: F811
    """A warm cache and a folder of bad input files, shared by the bad-input cases (each
    proves it changed none of them)."""
    root = tmp_path_factory.mktemp("bad")
    env = Env(root)
    shutil.copytree(warm_cache, env.cache)
    # A cache that was written holds its entry's lock file (the shared copy leaves it out):
    # a refused --force would otherwise create it.
    open(CacheEntry(NAME, env.cache).lock_path, "a").close()
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not a checkpoint, not an image\n")
    (inputs / "a_file").write_text("a file where a folder is expected\n")
    (inputs / "garbage.h5").write_bytes(b"\x89HDF-not-really" * 100)
    (inputs / "read_only_cache").mkdir()
    shutil.copytree(tiny_saved_model, inputs / "hub")
    truncated = shutil.copytree(tiny_saved_model, inputs / "truncated_hub")
    data = next((truncated / "variables").glob("variables.data-*"))
    os.truncate(data, data.stat().st_size // 3)
    no_variables = shutil.copytree(tiny_saved_model, inputs / "no_variables_hub")
    (no_variables / "variables" / "variables.index").unlink()
    np.savez(inputs / "pickled.npz", head=np.array([{"__reduce__": "os.system"}], object))
    np.savez(inputs / "unrelated.npz", foo=np.zeros((3, 3), np.float32))
    (inputs / "truncated.npz").write_bytes((inputs / "unrelated.npz").read_bytes()[:100])
    source = CacheEntry(NAME, env.cache)
    for folder in ("weights", "tampered", "garbage_sidecar"):
        (inputs / folder).mkdir()
        shutil.copy(source.weights_path, inputs / folder)
        shutil.copy(source.metadata_path, inputs / folder)
    metadata = json.loads((inputs / "tampered" / f"{NAME}.json").read_text())
    metadata["sha256"] = "0" * 64
    (inputs / "tampered" / f"{NAME}.json").write_text(json.dumps(metadata))
    (inputs / "garbage_sidecar" / f"{NAME}.json").write_text("{{{ not json")
    return env, inputs


def _run_cli(c, *args):
    code, out, err = cli(c.capsys, *args)
    if code:
        raise Failed(code, err)


def _register(name, **fields):
    """Registers the tiny fe entry with `fields` changed under `name`: refused, so
    the catalogue does not hold `name` afterwards."""
    try:
        return vit_hub.register_model(name, {**TINY_ENTRY, **fields})
    finally:
        assert name not in vit_hub.list_models(), f"{name} was added to the catalogue"


def _bad_timeout(c):
    c.monkeypatch.setenv("VIT_HUB_DOWNLOAD_TIMEOUT", "abc")
    _run_cli(c, NAME, "--force")


def _read_only_cache(c):
    with read_only(c.inputs / "read_only_cache") as folder:
        vit_hub.load_pretrained(NAME, cache_dir=folder)


def _image(shape, dtype=np.uint8, value=0):
    return np.full(shape, value, dtype)


def _png_bytes():
    """A 32x32 PNG of noise, encoded in memory (as an upload arrives)."""
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


CLASSIFICATION = TINY_CLASSIFICATION
UNPINNED = "spsayakpaul/vision-transformer/tensorFlow2/vit-tiny8-fe"

# id: (the call, the error class (or the exit status of convert-weights), its text)
BAD_INPUTS = {
    # images
    "image-rank-2": (lambda c: vit_hub.preprocess(_image((32, 32))), ValueError,
                     r"^image has shape \(32, 32\): expected \(height, width, 3\) or a batch"),
    "image-rank-5": (lambda c: vit_hub.preprocess(_image((1, 2, 32, 32, 3))), ValueError,
                     r"^image has shape \(1, 2, 32, 32, 3\): expected"),
    "image-4-channels": (lambda c: vit_hub.preprocess(_image((32, 32, 4))), ValueError,
                         r"^image has 4 channels, expected 3 \(RGB\): drop the extra"),
    "image-1-channel": (lambda c: vit_hub.preprocess(_image((2, 32, 32, 1))), ValueError,
                        r"^image batch has 1 channels, expected 3 \(RGB\): grayscale"),
    "image-dtype-int64": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.int64)),
                          TypeError, r"^image has dtype int64: pass uint8 \(0\.\.255\) or floats"),
    "image-dtype-bool": (lambda c: vit_hub.preprocess(_image((32, 32, 3), bool)), TypeError,
                         r"^image has dtype bool"),
    "image-nan": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.float32, np.nan)),
                  ValueError, r"^image contains NaN or infinite values"),
    "image-inf": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.float32, np.inf)),
                  ValueError, r"^image contains NaN or infinite values"),
    "image-floats-0-255": (lambda c: vit_hub.preprocess(_image((32, 32, 3), np.float32, 200)),
                           ValueError, r"values in \[200, 200\]: float images must be in \[0, 1\]"),
    "image-file-not-an-image": (lambda c: vit_hub.preprocess(c.inputs / "notes.txt"),
                                ValueError, r"notes\.txt is not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image"),
    "image-file-missing": (lambda c: vit_hub.preprocess(c.inputs / "nope.png"),
                           FileNotFoundError, r"^No image file at .*nope\.png"),
    "image-size-zero": (lambda c: vit_hub.preprocess(_image((32, 32, 3)), image_size=(0, 32)),
                        ValueError, r"^image_size must be a positive int or a \(height, width\) "
                                    r"pair of positive ints, got \(0, 32\)"),
    "image-size-float": (lambda c: vit_hub.preprocess(_image((32, 32, 3)), image_size=224.0),
                         ValueError, r"^image_size must be a positive int or a \(height, width\) "
                                     r"pair of positive ints, got 224\.0 \(a float\): pass 224"),
    "crop-fraction-above-1": (
        lambda c: vit_hub.preprocess(_image((32, 32, 3)), crop_fraction=1.5), ValueError,
        r"^crop_fraction must be None or a number in \(0, 1\].*got 1\.5: above 1 the crop "
        r"would be larger than the image"),
    "crop-fraction-zero": (
        lambda c: vit_hub.preprocess(_image((32, 32, 3)), crop_fraction=0), ValueError,
        r"^crop_fraction must be None or a number in \(0, 1\].*got 0: it would keep nothing"),
    "image-url": (lambda c: vit_hub.preprocess("https://example.com/cat.jpg"), ValueError,
                  r"^https://example\.com/cat\.jpg is a URL: vit_hub does not download images\. "
                  r"Fetch the image first and pass its bytes"),
    "image-folder": (lambda c: vit_hub.preprocess(c.inputs / "read_only_cache"), ValueError,
                     r"read_only_cache is a folder, not an image file: pass its image files.*"
                     r"vit-embed"),
    "image-bytes-not-an-image": (
        lambda c: vit_hub.preprocess(b"<html>502 Bad Gateway</html>"), ValueError,
        r"^image bytes \(28 bytes\) is not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image "
        r".*the bytes look like text \(HTML or JSON\)"),
    "image-bytes-truncated": (
        lambda c: vit_hub.preprocess(_png_bytes()[:100]), ValueError,
        r"^image bytes \(100 bytes\) is not a readable JPEG, PNG, GIF, BMP, TIFF or WebP image"),
    "image-file-object-not-an-image": (
        lambda c: vit_hub.preprocess(io.BytesIO(b"GIF89a\0\0")), ValueError,
        r"^BytesIO file object is not a readable JPEG, PNG"),
    "image-generator-of-nothing": (lambda c: vit_hub.preprocess(x for x in ()), ValueError,
                                   r"^preprocess got no images\.$"),
    "logits-of-another-head": (lambda c: vit_hub.decode_predictions(np.zeros((2, 10))),
                               ValueError, r"shape \(batch, 1000\), got \(2, 10\)"),
    # model names, handles, the catalogue
    "unknown-name": (lambda c: vit_hub.load_pretrained("vit_b32_fee"), ValueError,
                     r"^Unknown pretrained model 'vit_b32_fee'\. Did you mean 'vit_b32_fe'"),
    "name-with-dotdot": (lambda c: vit_hub.load_pretrained(f"../{NAME}"), ValueError,
                         r"^'\.\./vit_tiny8_fe' is not a model name: .*\(no '/', '\\' or '\.\.'\)\. "
                         r"Did you mean 'vit_tiny8_fe'"),
    "name-absolute-path": (lambda c: vit_hub.load_pretrained(str(c.inputs / "x")), ValueError,
                           r"is not a model name"),
    "cache-entry-with-dotdot": (lambda c: CacheEntry("../../etc"), ValueError,
                                r"^'\.\./\.\./etc' is not a model name"),
    "cli-name-with-dotdot": (lambda c: _run_cli(c, f"../{NAME}"), 2,
                             r"convert-weights: '\.\./vit_tiny8_fe' is not a model name"),
    "download-handle-with-dotdot": (
        lambda c: vit_hub.conversion.download.download("spsayakpaul/../../tmp/x/1"), DownloadError,
        r"'spsayakpaul/\.\./\.\./tmp/x/1' is not a pinned Kaggle model handle"),
    "catalogue-bad-fields": (
        lambda c: _register("vit_bad_fe", image_size="224", kind="detector"), CatalogueError,
        r"^Catalogue entry 'vit_bad_fe' is invalid: 'kind' must be 'fe' or 'classification', "
        r"got 'detector'; 'image_size' must be a positive int or \[height, width\], "
        r"got '224'\.$"),
    "catalogue-handle-with-dotdot": (
        lambda c: _register("vit_evil_fe", handle="spsayakpaul/../../../tmp/1"), CatalogueError,
        r"^Catalogue entry 'vit_evil_fe' is invalid: "
        r"'handle' 'spsayakpaul/\.\./\.\./\.\./tmp/1' is not owner/model/framework/variation"),
    "catalogue-unpinned-handle": (
        lambda c: _register("vit_latest_fe", handle=UNPINNED), CatalogueError,
        r"^Catalogue entry 'vit_latest_fe' is invalid: 'handle' "
        r"'spsayakpaul/vision-transformer/tensorFlow2/vit-tiny8-fe' "
        r"is not owner/model/framework/variation/version with a pinned numeric version"),
    "catalogue-name-with-separator": (
        lambda c: ModelEntry.from_dict("vit/../../x", TINY_ENTRY), CatalogueError,
        r"^Catalogue entry 'vit/\.\./\.\./x' is invalid: "
        r"the name must be lower-case letters, digits and '_' \(no path separators"),
    "model-without-converter": (
        lambda c: (vit_hub.register_model("vit_unconverted_fe", {
            **TINY_ENTRY, "converter": None,
            "handle": "spsayakpaul/vision-transformer/tensorFlow2/vit-unconverted-fe/1"}),
            vit_hub.load_pretrained("vit_unconverted_fe")), NotImplementedError,
        r"^vit_unconverted_fe \(spsayakpaul/.*\) has no native converter: its entry says "
        r"'converter': null"),
    "catalogue-handle-of-another-model": (
        lambda c: vit_hub.register_model("vit_twin_fe", {**TINY_ENTRY}), CatalogueError,
        r"^model 'vit_twin_fe': the handle spsayakpaul/vision-transformer/tensorFlow2/"
        r"vit-tiny8-fe/1 is vit_tiny8_fe's; give each model its own"),
    # checkpoints and weights files
    "wrong-checkpoint-for-the-model": (
        lambda c: _run_cli(c, CLASSIFICATION, "--source", c.inputs / "hub"), 1,
        r"it holds 38 tensors, the model needs 40 \(2 fewer: an fe checkpoint, without "
        r"head, asked for as classification\?\)"),
    "truncated-saved-model": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "truncated_hub", "--force"), 1,
        r"truncated_hub.*Cannot read the variables of .* truncated or corrupt"),
    "saved-model-without-variables": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "no_variables_hub", "--force"), 1,
        r"no_variables_hub is not a SavedModel directory: .*variables\.index is missing"),
    "source-neither-saved-model-nor-npz": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "notes.txt", "--force"), 1,
        r"notes\.txt is neither a SavedModel directory nor an \.npz file"),
    "npz-with-pickled-objects": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "pickled.npz", "--force",
                           "--no-verify"), 1,
        r"pickled\.npz holds pickled Python objects .*pickles are not loaded because they "
        r"can run code"),
    "truncated-npz": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "truncated.npz", "--force",
                           "--no-verify"), 1,
        r"Cannot read .*truncated\.npz as an \.npz archive .*truncated or not an npz"),
    "npz-of-another-model": (
        lambda c: _run_cli(c, NAME, "--source", c.inputs / "unrelated.npz", "--force",
                           "--no-verify"), 1,
        r"unrelated\.npz does not match .*\n  - missing from the checkpoint: embedding/kernel"
        r".*\n  - in the checkpoint but not in the model: foo"),
    "weights-file-missing": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "nope.h5"), WeightsError,
        r"^No weights file at .*nope\.h5: pass the \.h5 file"),
    "weights-path-is-a-folder": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "hub"), WeightsError,
        r"^No weights file at .*hub \(it is a folder\)"),
    "weights-file-not-hdf5": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "garbage.h5"), WeightsError,
        r"^Cannot read .*garbage\.h5: .*truncated or not a vit_hub weights file\. Convert it again"),
    "weights-of-another-model": (
        lambda c: vit_hub.load_pretrained("vit_s16_fe", weights=c.inputs / "weights" / f"{NAME}.h5"),
        WeightsError,
        r"holds another network than vit_s16_fe: it \(2 blocks, hidden 32, patch 8, without "
        r"head\); vit_s16_fe is it \(12 blocks, hidden 384, patch 16, without head\)\. "
        r"Pass the weights converted for vit_s16_fe"),
    "weights-of-the-other-kind": (
        lambda c: vit_hub.load_pretrained(CLASSIFICATION, weights=c.inputs / "weights" / f"{NAME}.h5"),
        WeightsError, r"patch 8, without head\); vit_tiny8_classification is it \(.* with head\)"),
    "weights-sidecar-sha-mismatch": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "tampered" / f"{NAME}.h5"),
        WeightsError, r"cannot be verified: .*\.h5 fails its sha256 check against "
                      r".*tampered/vit_tiny8_fe\.json"),
    "weights-sidecar-garbage": (
        lambda c: vit_hub.load_pretrained(NAME, weights=c.inputs / "garbage_sidecar" / f"{NAME}.h5"),
        WeightsError, r"cannot be verified: its metadata .*garbage_sidecar/vit_tiny8_fe\.json "
                      r"is unreadable .*it is not loaded"),
    # options, folders, environment
    "image-size-not-a-multiple-of-the-patch": (
        lambda c: vit_hub.load_pretrained(NAME, image_size=30), ValueError,
        r"image_size 30x30 is not a positive multiple of the patch size 8"),
    "non-writable-cache-dir": (_read_only_cache, CacheError,
                               r"^Cannot write the vit_hub cache at .*read_only_cache: "
                               r"\[Errno (30|13)\] .*Choose a writable folder"),
    "cache-dir-is-a-file": (
        lambda c: vit_hub.load_pretrained(NAME, cache_dir=c.inputs / "a_file"), CacheError,
        r"^Cannot use the vit_hub cache at .*a_file: it is a file, not a folder"),
    "cli-cache-dir-is-a-file": (
        lambda c: _run_cli(c, NAME, "--cache-dir", c.inputs / "a_file"), 2,
        r"--cache-dir .*a_file is a file, not a folder"),
    "cli-output-is-a-folder": (
        lambda c: _run_cli(c, NAME, "--output", c.inputs), 2,
        r"--output .*inputs is a folder: give the path of the weights file"),
    "bad-download-timeout": (_bad_timeout, 1,
                             r"VIT_HUB_DOWNLOAD_TIMEOUT='abc' is not a number of seconds > 0"),
    "offline-and-not-cached": (
        lambda c: vit_hub.load_pretrained(NAME, cache_dir=c.inputs / "no_cache", offline=True),
        CacheError, r"is not in the vit_hub cache .* and offline mode is on"),
}



def test_bad_inputs_count():
    assert len(BAD_INPUTS) >= 20


def _files(env):
    """`snapshot` of the test's folder but its HOME, where a library imported for the first
    time in the process (Keras, matplotlib) writes its own settings and caches."""
    home = str(env.tmp / "home")
    return {path: state for path, state in snapshot(env.tmp).items()
            if path != home and not path.startswith(home + os.sep)}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_changes_no_file(bad, case, monkeypatch, capsys,
                                                           recwarn):
    env, inputs = bad
    env.activate(monkeypatch)
    context = types.SimpleNamespace(inputs=inputs, capsys=capsys, monkeypatch=monkeypatch)
    call, expected, text = BAD_INPUTS[case]
    before = _files(env)
    with pytest.raises(Failed if isinstance(expected, int) else expected) as err:
        call(context)
    assert re.search(text, str(err.value), re.S), str(err.value)
    if isinstance(expected, int):
        assert err.value.code == expected
    else:  # one base class for every error the package raises
        assert isinstance(err.value, vit_hub.VitHubError), type(err.value).__mro__
    assert _files(env) == before
    assert CacheEntry(NAME, env.cache).state() == "ok"
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []
