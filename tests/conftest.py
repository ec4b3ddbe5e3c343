"""What the tests share: tiny configs and inputs, the tiny catalogue entries (registered
through the public API, as a user would add a private model), a test-built checkpoint in
the published format, and clean cache environments."""

import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The tests are a CI, as OpenVINO's usage reporting understands the word: it stays off.
# (It sends from a thread pool by forking; OpenBLAS's fork handler then deadlocked a
# worker whose main thread was in a numpy matmul, once in a full run.)
os.environ.setdefault("CI", "true")

import numpy as np
import pytest

import vit_hub

# The fault tests' fixtures (env, warm_cache), for every test module that asks for them.
pytest_plugins = ["tests.fault_support"]

# A ViT small enough for tests that run in seconds, with every kind of layer.
TINY = dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64)
TINY_IMAGE = 32

# The tiny variant in the catalogue, fe and classification, as published models would be.
TINY_NAME = "vit_tiny8_fe"
TINY_CLASSIFICATION = "vit_tiny8_classification"
TINY_HANDLE = "spsayakpaul/vision-transformer/tensorFlow2/vit-tiny8-fe/1"
TINY_ENTRY = {
    "handle": TINY_HANDLE, "variant": "vit_tiny8", "kind": "fe", "image_size": TINY_IMAGE,
    "input_range": [-1.0, 1.0], "output": {"kind": "features", "shape": [None, 32]},
    "num_tensors": 38, "num_params": 0, "converter": "vit",
}
TINY_CLASSIFICATION_ENTRY = {
    **TINY_ENTRY, "kind": "classification",
    "handle": "spsayakpaul/vision-transformer/tensorFlow2/vit-tiny8-classification/1",
}
# A tiny hybrid: the published ResNet stem widths, one bottleneck unit per stage (R14).
TINY_HYBRID = dict(patch_size=32, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                   resnet_units=(1, 1, 1, 1))
TINY_HYBRID_IMAGE = 64
TINY_HYBRID_ENTRIES = {
    f"vit_r14_tiny32_{kind}": {
        "handle": f"spsayakpaul/vision-transformer/tensorFlow2/vit-r14-tiny32-{kind}/1",
        "variant": "vit_r14_tiny32", "kind": kind, "image_size": TINY_HYBRID_IMAGE,
        "num_tensors": 80 + 2 * (kind == "classification"), "num_params": 0, "converter": "vit",
    } for kind in ("fe", "classification")}
# Handed to child processes (tests/fault_driver.py) to register the same catalogue.
CATALOGUE = {
    "variants": {"vit_tiny8": TINY, "vit_r14_tiny32": TINY_HYBRID},
    "models": {TINY_NAME: TINY_ENTRY, TINY_CLASSIFICATION: TINY_CLASSIFICATION_ENTRY,
               **TINY_HYBRID_ENTRIES},
}


def register_catalogue(catalogue=CATALOGUE):
    """Registers the test catalogue with vit_hub.register_variant / register_model
    (idempotent: registering the same entry again changes nothing)."""
    for name, architecture in catalogue.get("variants", {}).items():
        vit_hub.register_variant(name, **architecture)
    for name, entry in catalogue.get("models", {}).items():
        vit_hub.register_model(name, entry)


register_catalogue()

BACKEND = os.environ["KERAS_BACKEND"]


# For the few tests of the backend suite that are about TensorFlow itself.
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="about TensorFlow itself (tf.keras, SavedModels)")
# For the tests that train (fit, gradients, fine-tuning): the backend suite runs on
# openvino too, where Keras' `fit` raises NotImplementedError (test_model.py checks it).
needs_training = pytest.mark.skipif(
    BACKEND == "openvino", reason="Keras' openvino backend does inference only")


def pytest_report_header():
    return f"keras backend: {BACKEND}"


def pytest_collection_modifyitems(config, items):
    """Off TensorFlow only the backend suite (tests marked `backends`) runs: conversion,
    parity and export read or write TensorFlow SavedModels, and test_backends.py starts
    the other backends itself from the TensorFlow run."""
    if BACKEND == "tensorflow":
        return
    other = [item for item in items if not item.get_closest_marker("backends")]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item.get_closest_marker("backends")]


def tiny_hub_config():
    from vit_hub.conversion import published_format

    return published_format.HubConfig(8, 32, 2, 4, 64, num_classes=1000, image_size=TINY_IMAGE)


# After a test that grew the process by more than FREE_MEMORY_GROWTH, or once it is past
# FREE_MEMORY_ABOVE, its leftovers in Keras' global state are freed. Not after every
# test: a full collection with TensorFlow loaded takes ~3 s, minutes over the suite.
FREE_MEMORY_GROWTH = 1 << 30
FREE_MEMORY_ABOVE = 10 << 30


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def free_memory_after_big_tests():
    """Releases what a big test's models left in Keras' global state and gives the freed
    memory back, so that one pytest process runs the whole suite within the machine's
    24 GB (full-size ViT-B/8, R50+L/32 and ViT-H/14 models are built along the way)."""
    before = resident_bytes()
    yield
    after = resident_bytes()
    if "keras" in sys.modules and (after - before > FREE_MEMORY_GROWTH
                                   or after > FREE_MEMORY_ABOVE):
        import ctypes
        import gc

        import keras

        keras.backend.clear_session(free_memory=True)
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed pages otherwise
        except (OSError, AttributeError):
            pass


def numpy(tensor):
    """A model's output as numpy on every backend (np.asarray refuses PyTorch tensors
    that require grad, as a model's outputs do)."""
    import keras

    return keras.ops.convert_to_numpy(tensor)


def random_classifier(num_classes=10):
    """A tiny classifier with random weights of a realistic scale (fresh initialisation
    would leave the head at zero), the same on every call."""
    import vit_hub

    model = vit_hub.VisionTransformer(image_size=TINY_IMAGE, num_classes=num_classes, **TINY)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32) + ("gamma" in v.path))
    return model


@pytest.fixture
def test_port():
    """Held for a test that serves a fake Kaggle on kagglesdk's fixed TEST port (7777):
    one such test at a time across pytest-xdist's workers."""
    from tests.kaggle_server import holding_test_port

    with holding_test_port():
        yield


@pytest.fixture(scope="module")
def ov_classifier():
    """`random_classifier()`, once per module (the OpenVINO runtime's tests)."""
    return random_classifier()


@pytest.fixture(scope="module")
def ov_fp32(ov_classifier):
    """The fp32 OpenVINO model of `ov_classifier`."""
    import vit_hub

    return vit_hub.to_openvino(ov_classifier)


@pytest.fixture
def tiny_config():
    return dict(TINY)


@pytest.fixture
def images():
    """Deterministic inputs in [-1, 1]: seeded noise plus a smooth structured image."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, (2, TINY_IMAGE, TINY_IMAGE, 3))
    yy, xx = np.mgrid[0:TINY_IMAGE, 0:TINY_IMAGE] / TINY_IMAGE
    smooth = np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy * 2 - 1], -1)
    return np.concatenate([noise, smooth[None]], 0).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory):
    """The tiny fe model exported in the published format (random weights, seed 3),
    shared by every module (tests/checkpoints.py); tests only read it."""
    from tests import checkpoints

    return checkpoints.saved_model(TINY_NAME)


def cache_files(root):
    """Files under `root`, relative, lock files left out."""
    return sorted(
        os.path.relpath(os.path.join(folder, f), root)
        for folder, _, files in os.walk(root) for f in files if not f.endswith(".lock")
    )


def wait_until(condition, timeout, what):
    """Polls `condition` until it holds; AssertionError '`what` within `timeout` s'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s")


def kill_session(sid):
    """SIGKILL to every process of the session `sid` (a command started with
    start_new_session=True, its Ray processes too: Ray's workers run in process groups of
    their own, in the same session)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) == sid:
                os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue

