"""The OpenVINO runtime: `to_openvino`, `load_pretrained(..., runtime="openvino")`, the IR
cache and saved IRs, on tiny models.

fp32 is compared with the Keras model (the parity gate, 1e-4 x the output's scale; float32
on two kernel libraries differs by ~1e-6 here). bf16 and int8 are judged by their recorded
agreement with fp32, which is recomputed here independently. On a CPU without bf16
instructions (this project's machines: AVX2) bf16 must be refused, not run as fp32.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vit_hub
from tests.conftest import TINY, TINY_IMAGE, TINY_NAME, numpy
from vit_hub.runtime import engine, ir, photos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_BF16 = "BF16" in engine.cpu_capabilities()


@pytest.fixture(scope="module")
def model(ov_classifier):
    return ov_classifier


@pytest.fixture(scope="module")
def fp32(ov_fp32):
    return ov_fp32


@pytest.fixture(scope="module")
def int8(model):
    """Built below the default gate: random tiny weights quantize worse than a trained
    ViT-B (measured 0.97-0.98 here)."""
    return vit_hub.to_openvino(model, "int8", min_cosine=0.5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_saved_model):
    from tests import checkpoints

    return checkpoints.cache_copy(tmp_path_factory.mktemp("ov") / "cache", TINY_NAME)


def cosine_min(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min()


def test_fp32_equals_the_keras_model_and_is_pinned(model, fp32):
    fast = fp32
    # Not only on the held-out photos it was measured on: on noise too, and at batch 1.
    x = np.random.default_rng(5).uniform(-1, 1, (5, TINY_IMAGE, TINY_IMAGE, 3)).astype(np.float32)
    expected = numpy(model(x))
    assert np.abs(fast(x) - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(fast(x[:1]), expected[:1], atol=1e-4)
    np.testing.assert_allclose(fast.predict(x, batch_size=2), fast(x), atol=1e-6)
    # f32 asked for explicitly: the CPU plugin's own default is bf16 where it can.
    assert str(fast.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    record = fast.accuracy
    assert record["images"] == photos.HELD_OUT_IMAGES and record["max_abs"] <= record["tolerance"]
    assert record["top1_agreement"] == 1.0 and "fp32" in fast.summary()


def test_bf16_records_its_cost_or_is_refused_where_the_cpu_would_run_fp32(model):
    if not HAS_BF16:
        with pytest.raises(vit_hub.ConfigError, match=r"bf16 instructions .*fp32 under a bf16 label"):
            vit_hub.to_openvino(model, "bf16")
        return
    fast = vit_hub.to_openvino(model, "bf16")
    held_out = photos.held_out_images(model.image_size)
    assert fast.accuracy["cosine_min"] == pytest.approx(
        cosine_min(fast(held_out), numpy(model(held_out))), abs=1e-6)
    assert fast.accuracy["cosine_min"] >= 0.999


def test_int8_is_quantized_and_its_recorded_agreement_is_what_it_computes(model, int8):
    fast = int8
    ops = {op.get_type_name() for op in fast.ov_model.get_ops()}
    assert "FakeQuantize" in ops or "FakeConvert" in ops  # NNCF's quantizers are in the graph
    held_out = photos.held_out_images(model.image_size)
    measured = cosine_min(fast(held_out), numpy(model(held_out)))
    record = fast.accuracy
    assert record["cosine_min"] == pytest.approx(measured, abs=1e-6)
    assert 0.5 < record["cosine_min"] < 0.99999  # int8 is not exact, and not garbage
    assert record["calibration"] == {"images": photos.CALIBRATION_IMAGES,
                                     "source": f"default: {photos.SOURCE}"}
    assert record["gate_cosine_min"] == 0.5 and "calibrated on 32 images" in fast.summary()


def hint(fast):
    """What the compiled model computes its unquantized ops in: 'f32' or 'bf16'."""
    value = str(fast.compiled.get_property("INFERENCE_PRECISION_HINT"))
    return {"<Type: 'float32'>": "f32", "<Type: 'bfloat16'>": "bf16"}.get(value, value)


def test_int8_computes_the_rest_in_bf16_only_where_measured_faster_within_its_gate(int8):
    """On a CPU with bf16 both rests are built and measured, and bf16 kept only if it is
    clearly faster within the gate, both's figures recorded; elsewhere the rest is f32,
    nothing tried."""
    fast = int8
    assert hint(fast) == fast.rest and fast.record()["rest"] == fast.rest
    if not HAS_BF16:
        assert fast.rest == "f32" and "rests" not in fast.accuracy
        return
    from vit_hub.runtime.convert import BF16_REST_MARGIN

    rests = fast.accuracy["rests"]
    assert set(rests) == {"f32", "bf16"}
    assert rests[fast.rest]["cosine_min"] == fast.accuracy["cosine_min"]  # both >= 0.5 here
    faster = rests["bf16"]["images_per_s"] >= BF16_REST_MARGIN * rests["f32"]["images_per_s"]
    assert fast.rest == ("bf16" if faster else "f32")


def test_int8_keeps_the_rest_that_meets_a_stricter_gate(model, int8):
    """A gate between the two rests' agreements (forced, on a CPU with bf16) keeps the
    more exact one, whatever its speed; a gate above both refuses."""
    if not HAS_BF16:
        pytest.skip("one rest (f32) where the CPU has no bf16: the test above covers it")
    rests = int8.accuracy["rests"]
    exact = max(rests, key=lambda r: rests[r]["cosine_min"])
    if rests["f32"]["cosine_min"] == rests["bf16"]["cosine_min"]:
        pytest.skip("both rests agree alike here: no gate tells them apart")
    between = (rests["f32"]["cosine_min"] + rests["bf16"]["cosine_min"]) / 2
    fast = vit_hub.to_openvino(model, "int8", min_cosine=between)
    assert fast.rest == exact and hint(fast) == exact


def test_the_summary_names_engine_speed_and_cpu_class(fp32, int8, tmp_path):
    from vit_hub.runtime.engine import describe_cpu_class

    for fast in (fp32, int8):
        speed = fast.speed
        assert speed["cpu"] == describe_cpu_class() and speed["batch"] == photos.HELD_OUT_IMAGES
        assert speed["images_per_s"] > 0
        line = fast.summary()
        assert line.startswith(f"OpenVINO {fast.precision}")
        assert f"{speed['images_per_s']:.1f} images/s at batch {speed['batch']}" in line
        assert describe_cpu_class() in line and "cosine min" in line
    assert f"(the rest in {int8.rest})" in int8.summary() and "rest" not in fp32.summary()
    again = vit_hub.load_openvino(int8.save(tmp_path / "int8.xml"))
    assert (again.rest, again.speed, again.summary()) == (int8.rest, int8.speed, int8.summary())


def test_int8_calibrated_on_a_folder_and_refused_below_its_gate(model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(tmp_path / f"{i}.png")
    # The message comes after quantization: the folder's 8 images were read and used.
    with pytest.raises(vit_hub.AccuracyError, match=r"int8 of '.*' agrees with fp32 only to "
                       r"cosine .* not used or cached\. Calibrate on more images"):
        vit_hub.to_openvino(model, "int8", calibration=tmp_path, min_cosine=0.99999)


def test_calibration_images_are_checked_before_any_work(model, tmp_path):
    few = np.zeros((3, 20, 20, 3), np.uint8)
    with pytest.raises(vit_hub.ImageError, match=r"at least 8 images, got 3"):
        vit_hub.to_openvino(model, "int8", calibration=few)
    with pytest.raises(vit_hub.VitHubError, match=r"No image file at .*missing\.jpg"):
        vit_hub.to_openvino(model, "int8", calibration=[str(tmp_path / "missing.jpg")] * 8)
    with pytest.raises(vit_hub.ConfigError, match=r"calibration= is for precision='int8'"):
        vit_hub.to_openvino(model, "fp32", calibration=few)


def test_bad_input_to_the_runtime(model, fp32):
    fast = fp32
    with pytest.raises(vit_hub.ImageError, match=r"got uint8 images: .*vit_hub\.preprocess"):
        fast(np.zeros((1, TINY_IMAGE, TINY_IMAGE, 3), np.uint8))
    with pytest.raises(vit_hub.ImageError, match=r"takes a batch \(B, 32, 32, 3\).*got shape "
                       r"\(32, 32, 3\) \(one image: add the batch axis"):
        fast(np.zeros((TINY_IMAGE, TINY_IMAGE, 3), np.float32))
    with pytest.raises(vit_hub.ImageError, match=r"got shape \(1, 64, 64, 3\)"):
        fast(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(vit_hub.ConfigError, match=r"precision 'fp16' is not one of fp32, bf16, int8"):
        vit_hub.to_openvino(model, "fp16")
    bf16 = vit_hub.VisionTransformer(image_size=TINY_IMAGE, dtype="mixed_bfloat16", **TINY)
    with pytest.raises(vit_hub.ConfigError, match=r"takes a float32 model.*mixed_bfloat16"):
        vit_hub.to_openvino(bf16)


def test_int8_without_nncf_names_the_extra(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if it were not installed
    with pytest.raises(vit_hub.VitHubError, match=r"int8 needs NNCF.*vit_hub\[openvino\]"):
        vit_hub.to_openvino(model, "int8")


def test_saved_ir_round_trip_and_what_is_refused(model, fp32, tmp_path):
    fast = fp32
    path = fast.save(tmp_path / "vit.xml")
    assert sorted(os.listdir(tmp_path)) == ["vit.bin", "vit.json", "vit.xml"]
    loaded = vit_hub.load_openvino(path)
    x = photos.held_out_images(model.image_size)
    np.testing.assert_array_equal(loaded(x), fast(x))
    assert loaded.precision == "fp32" and loaded.accuracy == fast.accuracy
    # Full-precision weights: fp16 storage (OpenVINO's default) would be ~1e-3 off.
    assert os.path.getsize(tmp_path / "vit.bin") >= 4 * model.count_params()
    with pytest.raises(vit_hub.WeightsError, match=r"ends in \.xml"):
        fast.save(tmp_path / "vit.onnx")
    record = json.loads((tmp_path / "vit.json").read_text())
    # As an older OpenVINO's vit_hub would have written it (the record vouching for itself).
    older = {**record, "openvino": "2020.1.0"}
    older[ir.RECORD_DIGEST] = ir.record_digest(older)
    (tmp_path / "vit.json").write_text(json.dumps(older))
    with pytest.raises(vit_hub.WeightsError, match=r"written by OpenVINO 2020\.1\.0 and this is "
                       r"OpenVINO 20\d\d.*Build it again"):
        vit_hub.load_openvino(path)
    (tmp_path / "vit.json").write_text(json.dumps(record))
    with open(tmp_path / "vit.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(vit_hub.WeightsError, match=r"vit\.bin fails its sha256 check"):
        vit_hub.load_openvino(path)


CHILD = """
import json, sys
import numpy as np
import vit_hub
from tests.conftest import TINY_NAME  # registers the tiny catalogue
fast = vit_hub.load_pretrained(TINY_NAME, runtime="openvino", offline=True)
np.save(sys.argv[2], fast(np.load(sys.argv[1])))
print(json.dumps({"precision": fast.precision,
                  "loaded": [m for m in ("tensorflow", "keras", "jax", "torch", "nncf")
                             if m in sys.modules]}))
"""


def run_child(cache, x, folder):
    """A fresh process, as a user starts one; its outputs on `x`, and its report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIT_HUB", "KERAS"))}
    env.update(VIT_HUB_CACHE=str(cache), PYTHONPATH=ROOT)
    np.save(folder / "in.npy", x)
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder / "in.npy"),
                           str(folder / "out.npy")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(folder / "out.npy"), json.loads(done.stdout.strip().splitlines()[-1])


def ir_folders(cache):
    root = cache / "v1" / TINY_NAME / "openvino"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_a_cache_hit_compiles_the_ir_without_tensorflow_or_keras(cache, tmp_path):
    built = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino")
    [folder] = ir_folders(cache)
    assert sorted(os.listdir(folder)) == ["model.bin", "model.json", "model.xml"]
    x = photos.held_out_images((TINY_IMAGE, TINY_IMAGE))[:2]
    outputs, report = run_child(cache, x, tmp_path)
    assert report["loaded"] == [] and report["precision"] == "fp32"
    np.testing.assert_array_equal(outputs, built(x))
    keras_model = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, offline=True)
    np.testing.assert_allclose(built(x), numpy(keras_model(x)), atol=1e-5)


def test_a_corrupt_ir_is_refused_offline_and_rebuilt_online(cache):
    vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino")
    [folder] = ir_folders(cache)
    with open(folder / "model.bin", "r+b") as f:
        f.seek(64)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(vit_hub.CacheError, match=r"No usable OpenVINO fp32 IR of vit_tiny8_fe .*"
                       r"model\.bin fails its sha256 check.*offline nothing is built.*"
                       r"convert-weights vit_tiny8_fe --runtime openvino --precision fp32"):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino", offline=True)
    with pytest.warns(UserWarning, match=r"is not used: .*sha256.*Building it again"):
        rebuilt = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino")
    assert rebuilt.precision == "fp32"
    assert vit_hub.runtime.openvino_model.read_verified(str(folder / "model.xml"))[1] is None
    assert not [n for n in os.listdir(folder.parent) if n.startswith(".tmp-")]


def test_the_ir_cache_is_keyed_by_what_the_ir_depends_on(cache):
    vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino")
    before = ir_folders(cache)
    other = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                    image_size=48)
    assert other.image_size == (48, 48) and len(ir_folders(cache)) == len(before) + 1
    # Reconverted weights (another sha256) are another key: the old IR is never used.
    metadata = cache / "v1" / TINY_NAME / f"{TINY_NAME}.json"
    record = json.loads(metadata.read_text())
    from vit_hub.runtime.ir_cache import IRCacheEntry, ir_key

    key = ir_key("fp32", (TINY_IMAGE, TINY_IMAGE), {}, None)
    first = IRCacheEntry(TINY_NAME, cache, key).folder
    metadata.write_text(json.dumps({**record, "sha256": "0" * 64}))
    try:
        assert IRCacheEntry(TINY_NAME, cache, key).folder != first
    finally:
        metadata.write_text(json.dumps(record))


def test_int8_failing_its_gate_leaves_nothing_in_the_cache(cache):
    with pytest.raises(vit_hub.AccuracyError):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                precision="int8", min_cosine=0.99999)
    assert not [p for p in ir_folders(cache) if p.name.startswith("int8")]
    # A looser gate builds it; the stricter gate is then refused on the cache hit too.
    fast = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                   precision="int8", min_cosine=0.01)
    assert fast.precision == "int8"
    with pytest.raises(vit_hub.AccuracyError):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                precision="int8", min_cosine=0.99999, offline=True)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"runtime": "onnx"}, vit_hub.ConfigError, r"runtime 'onnx' is not one of 'keras', 'openvino'"),
    ({"precision": "int8"}, vit_hub.ConfigError, r"precision=.* the OpenVINO runtime's: add runtime='openvino'"),
    ({"runtime": "openvino", "dtype": "mixed_bfloat16"}, TypeError,
     r"unexpected keyword argument 'dtype'\. runtime='openvino' runs inference only"),
    ({"runtime": "openvino", "imgsize": 48}, TypeError, r"'imgsize'\. Did you mean 'image_size'"),
    ({"runtime": "openvino", "precision": "fp32", "calibration": ["a.jpg"]}, vit_hub.ConfigError,
     r"calibration= is for precision='int8', not 'fp32'"),
])
def test_bad_runtime_arguments_are_refused_before_any_work(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        vit_hub.load_pretrained(TINY_NAME, cache_dir=tmp_path, offline=True, **kwargs)
    assert not os.listdir(tmp_path)
