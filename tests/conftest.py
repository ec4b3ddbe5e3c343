import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

# A ViT small enough for tests that run in seconds, with every kind of layer.
TINY = dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64)
TINY_IMAGE = 32


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
