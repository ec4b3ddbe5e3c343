"""What the fine-tuning and training-from-scratch examples share: scikit-learn's digits
(1,797 8x8 images, shipped inside scikit-learn) as ViT inputs, and the training curves."""

import os
import subprocess
import sys
from functools import partial

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CACHE = os.path.join(REPO, "out", "demo-cache")
BACKBONE = "vit_b32_fe"


def load_digits(samples, image_size, seed):
    """(images in [-1, 1] at image_size, labels), a seeded random subset."""
    from sklearn.datasets import load_digits as sklearn_digits

    import vit_hub

    digits = sklearn_digits()
    # The digits' pixels are 0..16; as 8-bit RGB they look like any photo to preprocess.
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(rgb))[:samples]
    images = np.asarray(vit_hub.preprocess(rgb[order], image_size=image_size))
    return images, digits.target[order]


def split(images, labels, validation_fraction=0.2):
    """Train/validation split; the data is already shuffled (seeded)."""
    n_val = max(1, int(round(len(images) * validation_fraction)))
    return (images[n_val:], labels[n_val:]), (images[:n_val], labels[:n_val])


def plot(history, path, title, phase_boundary=None, branch=None):
    """Loss and accuracy (train and validation) per epoch, as a PNG; a dashed line after
    epoch `phase_boundary` marks where the backbone was unfrozen. `branch`: (label,
    history) of another second phase from the same boundary, drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ["loss", "accuracy"], strict=True):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        if branch:
            label, other = branch
            after = np.arange(phase_boundary + 1, phase_boundary + 1 + len(other[metric]))
            ax.plot(after, other[metric], "s--", label=f"train, {label}")
            ax.plot(after, other[f"val_{metric}"], "s--", label=f"validation, {label}")
        if phase_boundary:
            ax.axvline(phase_boundary + 0.5, color="gray", linestyle="--",
                       label="unfrozen")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def backbone_cache():
    """(cache_dir, description, stand_in) holding `vit_b32_fe`: the user cache, else the
    demo's cache (out/demo-cache), running examples/demo.py first when neither has it.
    `stand_in` is True for the demo's test-built checkpoint with RANDOM weights (no
    network here to fetch the real one)."""
    from vit_hub.cache import CacheEntry

    if CacheEntry(BACKBONE).state() != "ok" and CacheEntry(BACKBONE, DEMO_CACHE).state() != "ok":
        # The demo fills the user cache from Kaggle when reachable, else out/demo-cache.
        print(f"No {BACKBONE} in any cache: running examples/demo.py first.", flush=True)
        subprocess.run([sys.executable, os.path.join(REPO, "examples", "demo.py")],
                       check=True)
    if CacheEntry(BACKBONE).state() == "ok":
        return None, "the converted checkpoint in the user cache", False
    return (DEMO_CACHE, "the TEST-BUILT stand-in in out/demo-cache with RANDOM weights "
            "(not pretrained)", True)


def pretrained_backbone():
    """(loader, description, stand_in) for `vit_b32_fe`, from `backbone_cache()`:
    `loader(**model_kwargs)` loads it."""
    import vit_hub

    cache_dir, description, stand_in = backbone_cache()
    return (partial(vit_hub.load_pretrained, BACKBONE, cache_dir=cache_dir, offline=True),
            description, stand_in)


def train(model, learning_rate, epochs, train_data, val_data, batch_size):
    """Compiles (needed after changing `trainable`) and fits; returns the history dict."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(*train_data, validation_data=val_data, epochs=epochs,
                        batch_size=batch_size, verbose=2)
    return history.history


def merge(*histories):
    """The per-epoch histories of consecutive phases, concatenated."""
    return {key: sum((h[key] for h in histories), []) for key in histories[0]}

