"""What the OpenVINO runtime refuses, and why: records that vouch for themselves, outputs
that are zero on both sides, arguments checked once at the entry points, saves that
would land under a file or over someone else's files, and calibration folders.

Gate refusals are forced with a stricter `min_cosine`, never by relying on bf16 or int8
being bad on this CPU (users run AVX2, AVX-512/VNNI, BF16 and AMX alike).
"""

import json
import math
import os

import numpy as np
import pytest

import vit_hub
from tests.conftest import TINY, TINY_IMAGE, TINY_NAME
from tests.fault_support import cli
from vit_hub.errors import ArgumentError, OutputExistsError
from vit_hub.runtime import convert, ir, photos

pytest.importorskip("openvino")


@pytest.fixture
def saved(ov_fp32, tmp_path):
    """(the .xml path of a saved fp32 IR, its record as written)."""
    path = ov_fp32.save(tmp_path / "vit.xml")
    return path, json.loads((tmp_path / "vit.json").read_text())


def write_record(path, record, sign=False):
    """Writes `record` as the IR's .json, signed with its own digest if `sign` (a record
    as a faulty writer would make it), otherwise as an editor would leave it."""
    if sign:
        record = {**record, ir.RECORD_DIGEST: ir.record_digest(record)}
    with open(ir.paths(path)[2], "w", encoding="utf-8") as f:
        json.dump(record, f)


# 1. A record vouches for itself.

@pytest.mark.parametrize("edit", [
    lambda r: {**r, "precision": "int8"},
    lambda r: {**r, "accuracy": {**r["accuracy"], "cosine_min": 1.0, "max_abs": 0.0}},
    lambda r: {**r, "name": "vit_l16_fe"},
    lambda r: {k: v for k, v in r.items() if k != ir.RECORD_DIGEST},
])
def test_an_edited_record_is_refused_with_the_fix(saved, edit):
    path, record = saved
    write_record(path, edit(record))
    with pytest.raises(vit_hub.WeightsError, match=r"vit\.json .*(edited or corrupt|no "
                       r"checksum of its own).*Build it again"):
        vit_hub.load_openvino(path)
    write_record(path, record)  # as written: loads
    assert vit_hub.load_openvino(path).precision == "fp32"


def test_a_record_of_the_previous_format_is_refused_naming_both(saved):
    path, record = saved
    old = {k: v for k, v in record.items() if k != ir.RECORD_DIGEST}
    write_record(path, {**old, "format_version": 1})
    with pytest.raises(vit_hub.WeightsError, match=rf"vit_hub IR format 1; this vit_hub reads "
                       rf"format {ir.FORMAT_VERSION}.*Build it again"):
        vit_hub.load_openvino(path)


@pytest.fixture
def cache(tmp_path, tiny_saved_model):
    from tests import checkpoints

    return checkpoints.cache_copy(tmp_path / "cache", TINY_NAME)


def test_the_cache_refuses_an_edited_or_old_record_offline_and_rebuilds_it_online(cache):
    vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino")
    [folder] = [p for p in (cache / "v1" / TINY_NAME / "openvino").iterdir() if p.is_dir()]
    xml = str(folder / "model.xml")
    record = json.loads((folder / "model.json").read_text())
    old = {k: v for k, v in record.items() if k != ir.RECORD_DIGEST}
    for stale, words in [({**record, "precision": "int8"}, "edited or corrupt"),
                         ({**old, "format_version": 1}, "vit_hub IR format 1")]:
        write_record(xml, stale)
        with pytest.raises(vit_hub.CacheError, match=rf"No usable OpenVINO fp32 IR .*{words}.*"
                           r"offline nothing is built.*convert-weights vit_tiny8_fe "
                           r"--runtime openvino --precision fp32"):
            vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                    offline=True)
        with pytest.warns(UserWarning, match=rf"is not used: .*{words}.*Building it again"):
            rebuilt = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino")
        assert rebuilt.precision == "fp32"
        assert ir.record_problem(xml) is None


# 2. A record that vouches for itself but lacks what a model needs.

@pytest.mark.parametrize("edit, words", [
    (lambda r: {k: v for k, v in r.items() if k != "accuracy"}, r"has no accuracy"),
    (lambda r: {k: v for k, v in r.items() if k != "precision"}, r"precision None"),
    (lambda r: {**r, "precision": "fp16"}, r"precision 'fp16'"),
    (lambda r: {**r, "accuracy": []}, r"has no accuracy"),
    (lambda r: {**r, "accuracy": {"images": 16}}, r"accuracy that lacks max_abs, cosine_min"),
    (lambda r: {**r, "accuracy": {**r["accuracy"], "cosine_min": "high"}},
     r"accuracy that lacks cosine_min"),
    (lambda r: {k: v for k, v in r.items() if k != "name"}, r"has no name"),
    (lambda r: {**r, "sha256": {"xml": r["sha256"]["xml"]}}, r"no sha256 of its \.xml and \.bin"),
])
def test_a_record_lacking_what_the_model_needs_is_a_clear_error(saved, edit, words):
    path, record = saved
    body = {k: v for k, v in record.items() if k != ir.RECORD_DIGEST}
    write_record(path, edit(body), sign=True)
    with pytest.raises(vit_hub.WeightsError, match=rf"vit\.json\b.*{words}.*Build it again"):
        vit_hub.load_openvino(path)


# 3. Outputs that are zero on both sides agree.

def test_a_fresh_zero_head_agrees_exactly():
    fresh = vit_hub.VisionTransformer(image_size=TINY_IMAGE, num_classes=10, **TINY)
    fast = vit_hub.to_openvino(fresh)
    assert not np.any(fast(photos.held_out_images(fresh.image_size)))  # zeros, both sides
    assert fast.accuracy["cosine_min"] == 1.0 and fast.accuracy["cosine_mean"] == 1.0
    assert "cosine min 1.000000" in fast.summary()
    # int8 too, at its default gate: a zero head is zero at any precision, on any CPU.
    int8 = vit_hub.to_openvino(fresh, "int8")
    assert int8.accuracy["cosine_min"] == 1.0 and int8.accuracy["gate_cosine_min"] == 0.99


def test_zero_rows_agree_and_a_real_disagreement_still_fails_its_gate():
    reference = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    close = reference + np.array([[1e-9, 0, 0], [0, 0, 1e-3], [0, 0, 0], [0, 1e-3, 0]])
    cosines = convert.cosines(close, reference, tolerance=1e-4)
    assert cosines[0] == 1.0 and cosines[2] == 1.0  # zero on both sides: exact agreement
    assert 0.9999 < cosines[1] < 1.0 and 0.9999 < cosines[3] < 1.0
    # One side zero, the other not; and opposite directions: disagreements, not agreement.
    wrong = np.array([[0.0, 0.0, 5.0], [-1.0, -2.0, -3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    cosines = convert.cosines(wrong, reference, tolerance=1e-4)
    assert cosines[0] == 0.0 and cosines[1] == pytest.approx(-1.0)
    assert cosines[2:].tolist() == [1, 1]
    accuracy = {"cosine_min": float(cosines.min())}
    with pytest.raises(vit_hub.AccuracyError, match=r"int8 of 'm' agrees with fp32 only"):
        convert.check_gate("int8", accuracy, None, "m")
    reversed_zero = convert.cosines(reference[:1], wrong[:1], tolerance=1e-4)
    assert reversed_zero.tolist() == [0.0]


# 4. Arguments: ours, checked once at the entry points, naming the fix.

@pytest.mark.parametrize("batch_size, error, words", [
    (2.5, ArgumentError, r"batch_size must be an int, got 2\.5"),
    (True, ArgumentError, r"batch_size must be an int, got True"),
    ("8", ArgumentError, r"batch_size must be an int, got '8'"),
    (0, vit_hub.ConfigError, r"batch_size must be at least 1, got 0"),
    (-1, vit_hub.ConfigError, r"batch_size must be at least 1, got -1"),
])
def test_predict_batch_size_is_checked(ov_fp32, batch_size, error, words):
    x = photos.held_out_images((TINY_IMAGE, TINY_IMAGE))[:3]
    with pytest.raises(error, match=words):
        ov_fp32.predict(x, batch_size=batch_size)
    np.testing.assert_array_equal(ov_fp32.predict(x, batch_size=np.int64(2)), ov_fp32(x))


BAD_OPTIONS = [
    ({"threads": -1}, vit_hub.ConfigError, r"threads must be at least 1.*or None"),
    ({"threads": 0}, vit_hub.ConfigError, r"threads must be at least 1"),
    ({"threads": "two"}, ArgumentError, r"threads must be an int .*got 'two'"),
    ({"threads": 2.0}, ArgumentError, r"threads must be an int"),
    ({"min_cosine": "high"}, ArgumentError, r"min_cosine must be a number .*got 'high'"),
    ({"min_cosine": True}, ArgumentError, r"min_cosine must be a number"),
    ({"min_cosine": 2}, vit_hub.ConfigError, r"min_cosine must be in \(0, 1\].*got 2\b"),
    ({"min_cosine": 0}, vit_hub.ConfigError, r"min_cosine must be in \(0, 1\]"),
    ({"min_cosine": -0.5}, vit_hub.ConfigError, r"min_cosine must be in \(0, 1\]"),
    ({"min_cosine": math.nan}, vit_hub.ConfigError, r"min_cosine must be in \(0, 1\]"),
]


@pytest.mark.parametrize("options, error, words", BAD_OPTIONS)
def test_runtime_options_are_checked_before_any_work(ov_classifier, tmp_path, options, error,
                                                     words):
    with pytest.raises(error, match=words):
        vit_hub.to_openvino(ov_classifier, "int8", **options)
    with pytest.raises(error, match=words):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=tmp_path, offline=True,
                                runtime="openvino", precision="int8", **options)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("threads, error", [(-1, vit_hub.ConfigError),
                                            ("two", ArgumentError)])
def test_load_openvino_checks_threads(saved, threads, error):
    with pytest.raises(error, match=r"threads must be"):
        vit_hub.load_openvino(saved[0], threads=threads)
    assert vit_hub.load_openvino(saved[0], threads=1).precision == "fp32"


def test_bf16_below_its_gate_is_given_advice_that_applies_to_bf16():
    accuracy = {"cosine_min": 0.9995}
    with pytest.raises(vit_hub.AccuracyError) as caught:
        convert.check_gate("bf16", accuracy, 0.99999, "m")
    message = str(caught.value)
    assert "calibration=" not in message and "Calibrate" not in message
    assert "precision='fp32'" in message and "min_cosine=" in message
    with pytest.raises(vit_hub.AccuracyError, match=r"Calibrate on more images.*calibration="):
        convert.check_gate("int8", {"cosine_min": 0.9995}, 0.99999, "m")


# 5. Saving: not under a file, not over someone else's files.

def test_save_under_a_file_is_a_clear_error(ov_fp32, tmp_path):
    (tmp_path / "notes").write_text("a file")
    for target in (tmp_path / "notes" / "vit.xml", tmp_path / "notes" / "sub" / "vit.xml"):
        with pytest.raises(OutputExistsError, match=r"notes is a file, not a folder.*"
                           r"another path"):
            ov_fp32.save(target)
    (tmp_path / "vit.xml").mkdir()
    with pytest.raises(OutputExistsError, match=r"vit\.xml is a folder.*another path"):
        ov_fp32.save(tmp_path / "vit.xml")


@pytest.mark.parametrize("foreign", [
    {"vit.xml": "<net/>"},
    {"vit.bin": "weights"},
    {"vit.json": '{"mine": true}'},
    {"vit.xml": "<net/>", "vit.bin": "weights", "vit.json": "not json"},
])
def test_save_refuses_to_overwrite_files_that_are_not_a_vit_hub_model(ov_fp32, tmp_path, foreign):
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(OutputExistsError, match=r"not a vit_hub OpenVINO model.*"
                       r"another path, or delete"):
        ov_fp32.save(tmp_path / "vit.xml")
    assert {n: (tmp_path / n).read_text() for n in foreign} == foreign
    assert sorted(os.listdir(tmp_path)) == sorted(foreign)


def test_save_overwrites_a_vit_hub_model_saved_earlier(ov_fp32, saved):
    path, _ = saved
    ov_fp32.save(path)
    assert vit_hub.load_openvino(path).accuracy == ov_fp32.accuracy


# 6. Calibration folders: image files by extension, as vit-embed takes them.

def images(folder, count, extension=".png"):
    from PIL import Image

    rng = np.random.default_rng(4)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (24, 20, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}{extension}")


def test_an_empty_calibration_folder_says_which_files_count(ov_classifier, tmp_path):
    for _ in range(2):  # empty, then holding no image file
        with pytest.raises(vit_hub.ImageError, match=r"no image files in the calibration "
                           r"folder .*\.jpg, \.jpeg, \.png.*\.webp"):
            vit_hub.to_openvino(ov_classifier, "int8", calibration=tmp_path)
        (tmp_path / "README.txt").write_text("calibration photos go here")


def test_a_calibration_folder_takes_its_image_files_only(tmp_path):
    images(tmp_path, 5, ".png")
    images(tmp_path / "more", 3, ".JPG")  # searched recursively, extensions in any case
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "._0.png").write_bytes(b"macOS metadata")  # hidden: skipped
    batch, source = convert.calibration_set(tmp_path, (TINY_IMAGE, TINY_IMAGE))
    assert batch.shape == (8, TINY_IMAGE, TINY_IMAGE, 3) and source == "8 images given"


# 7. convert-weights --min-cosine.

@pytest.mark.parametrize("argv, words", [
    ([TINY_NAME, "--min-cosine", "0.9"], "--min-cosine is the OpenVINO runtime's: add "
                                         "--runtime openvino"),
    ([TINY_NAME, "--runtime", "openvino", "--min-cosine", "2"],
     "argument --min-cosine: 2 is not a number in (0, 1]"),
    ([TINY_NAME, "--runtime", "openvino", "--min-cosine", "0"], "0 is not a number in (0, 1]"),
    ([TINY_NAME, "--runtime", "openvino", "--min-cosine", "high"],
     "argument --min-cosine: high is not a number in (0, 1]"),
])
def test_convert_weights_min_cosine_usage_errors(capsys, argv, words):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and words in err, err
