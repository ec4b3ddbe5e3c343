"""One converted cache, every Keras backend: what a cache hit does on TensorFlow, JAX,
PyTorch and OpenVINO, each in a fresh process as a user runs it, compared output for
output, and what it imports.

Conversion stays on TensorFlow (it reads TF SavedModels); everything after it must not
need TensorFlow. Runs in the TensorFlow leg only: it starts the other backends itself.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY_HYBRID_IMAGE, TINY_IMAGE, TINY_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch", "openvino")
OTHERS = BACKENDS[1:]
HYBRID = "vit_r14_tiny32_classification"
# What a cache hit must never load, off TensorFlow.
HEAVY = ("tensorflow", "tensorflow_hub", "tf_keras", "kagglehub")
# float32 on four kernel libraries (oneDNN, XLA, ATen, OpenVINO's CPU plugin): different
# summation orders give differences of a few float32 ulps of the outputs' magnitude
# (measured up to ~3e-6 on full-size ViT-B/32), so 1e-5 is tight yet never flaky.
TOLERANCE = 1e-5

# Everything a user does after the cache is filled: load (at the trained size and another),
# preprocess arrays and an image file, call, look at attention, save an overlay.
CHILD = f"""
import json, sys
import numpy as np
import keras, vit_hub
from tests.conftest import register_catalogue  # the tiny catalogue, as a user registers one

out, png = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
model = vit_hub.load_pretrained({TINY_NAME!r})
images = vit_hub.preprocess([pixels, png], image_size={TINY_IMAGE})
maps = vit_hub.attention_maps(model, images)
rollout = vit_hub.attention_rollout(maps, model.grid_size)
vit_hub.save_attention_overlay(images[0], rollout[0], out + ".png")
bigger = vit_hub.load_pretrained({TINY_NAME!r}, image_size=48)
hybrid = vit_hub.load_pretrained({HYBRID!r})
results = dict(
    images=images,
    features=keras.ops.convert_to_numpy(model(images)),
    attention=np.stack(maps), rollout=rollout,
    resampled=keras.ops.convert_to_numpy(bigger(vit_hub.preprocess(pixels, image_size=48))),
    hybrid=keras.ops.convert_to_numpy(hybrid(vit_hub.preprocess(pixels, image_size={TINY_HYBRID_IMAGE}))),
)
np.savez(out, **results)
print(json.dumps(dict(backend=keras.backend.backend(),
                      loaded=[name for name in {HEAVY!r} if name in sys.modules])))
"""


def run_child(backend, cache, tmp_path, png):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIT_HUB", "KAGGLE"))}
    env.update(KERAS_BACKEND=backend, VIT_HUB_CACHE=str(cache), VIT_HUB_OFFLINE="1",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    out = str(tmp_path / backend)
    done = subprocess.run([sys.executable, "-c", CHILD, out, str(png)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{backend}:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    return report, dict(np.load(out + ".npz")), out + ".png"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_saved_model):
    """Each backend's run over one cache, converted on TensorFlow here."""
    from PIL import Image

    from tests import checkpoints

    tmp = tmp_path_factory.mktemp("backends")
    cache = checkpoints.cache_copy(tmp / "cache", TINY_NAME, HYBRID)
    png = tmp / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 45, 3), np.uint8)).save(png)
    return {backend: run_child(backend, cache, tmp, png) for backend in BACKENDS}


@pytest.mark.parametrize("backend", OTHERS)
def test_a_cache_hit_never_imports_tensorflow(runs, backend):
    report, _, _ = runs[backend]
    assert report["loaded"] == []


@pytest.mark.parametrize("backend", OTHERS)
def test_every_backend_computes_what_tensorflow_computes(runs, backend):
    _, reference, reference_png = runs["tensorflow"]
    _, results, png = runs[backend]
    np.testing.assert_array_equal(results["images"], reference["images"])  # numpy, no backend
    for key in ("features", "attention", "resampled", "hybrid"):
        assert results[key].shape == reference[key].shape, key
        difference = np.abs(results[key] - reference[key]).max()
        assert difference <= TOLERANCE, f"{key}: {backend} differs from TensorFlow by {difference:.2e}"
    np.testing.assert_allclose(results["rollout"], reference["rollout"], atol=1e-4)
    from PIL import Image

    overlay, expected = (np.asarray(Image.open(p), np.int16) for p in (png, reference_png))
    assert overlay.shape == expected.shape and np.abs(overlay - expected).max() <= 1
