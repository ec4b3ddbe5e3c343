"""Looking inside: attention weights, intermediate outputs, attention rollout.

Attention rollout: Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (2020).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vit_hub.errors import ConfigError
from vit_hub.preprocessing import is_file_object, is_pil, preprocess

if TYPE_CHECKING:
    from vit_hub.model import VisionTransformer


def attention_maps(model: VisionTransformer, images: Any) -> list[np.ndarray]:
    """Every block's attention weights: a list of (B, heads, tokens, tokens) arrays,
    token 0 being the class token. `images`: a batch as the model takes it (float32 in
    [-1, 1]), or what `vit_hub.preprocess` takes (see `model_inputs`)."""
    import keras

    _, maps = model.encode(model_inputs(model, images), return_attention=True)
    return [keras.ops.convert_to_numpy(m) for m in maps]  # (PyTorch: detached from autograd)


def intermediate_outputs(model: VisionTransformer, images: Any) -> list[np.ndarray]:
    """Every block's output tokens (before the final norm): a list of (B, tokens, D);
    `images` as for `attention_maps`."""
    import keras

    _, outputs = model.encode(model_inputs(model, images), return_intermediates=True)
    return [keras.ops.convert_to_numpy(x) for x in outputs]


def model_inputs(model, images):
    """What `vit_hub.preprocess` reads (file paths, encoded bytes, binary file objects,
    PIL images, uint8 arrays), or a list of them: preprocessed at the
    model's image size. Anything else is taken as model inputs, float32 in [-1, 1], and
    checked as the model checks them (float arrays are never rescaled: [0, 1] and
    [-1, 1] cannot be told apart)."""
    leaves = images if isinstance(images, (list, tuple)) else [images]
    if all(isinstance(leaf, (str, os.PathLike, bytes, bytearray)) or is_pil(leaf)
           or is_file_object(leaf) or getattr(leaf, "dtype", None) == np.uint8
           for leaf in leaves):
        return preprocess(images, image_size=model.image_size)
    return images


def attention_rollout(maps: list[np.ndarray], grid_size: tuple[int, int],
                      head_fusion: Literal["mean", "max"] = "mean") -> np.ndarray:
    """How much each patch flows into the class token through all blocks: (B, rows, cols)
    in [0, 1]. Heads are fused by mean (or max), the residual connection is modelled by
    adding the identity, and the per-block matrices are multiplied in order."""
    fuse = {"mean": np.mean, "max": np.max}.get(head_fusion)
    if fuse is None:
        raise ConfigError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}.")
    rollout = None
    for weights in maps:
        fused = fuse(np.asarray(weights, np.float64), axis=1)
        fused = fused + np.eye(fused.shape[-1])
        fused /= fused.sum(-1, keepdims=True)
        rollout = fused if rollout is None else fused @ rollout
    flow = rollout[:, 0, 1:]
    rows, cols = grid_size
    if flow.shape[-1] != rows * cols:
        raise ConfigError(f"{flow.shape[-1]} patch tokens do not fit a {rows}x{cols} grid.")
    flow = flow.reshape(-1, rows, cols)
    low = flow.min(axis=(1, 2), keepdims=True)
    high = flow.max(axis=(1, 2), keepdims=True)
    return (flow - low) / np.maximum(high - low, 1e-12)


def save_attention_overlay(image: np.ndarray, rollout: np.ndarray, path: str | os.PathLike,
                           alpha: float = 0.5) -> str | os.PathLike:
    """Writes `image` ((H, W, 3) in [-1, 1], as the model saw it) with the rollout map
    (rows, cols) blended over it as a heat map, to a PNG file (atomically)."""
    from PIL import Image

    from vit_hub.files import atomic_path
    from vit_hub.resize import resize

    image = (np.clip(np.asarray(image, np.float32), -1, 1) + 1) / 2
    heat = resize(np.asarray(rollout, np.float32)[..., None], image.shape[:2], "bicubic")
    blended = (1 - alpha) * image + alpha * _heat_colours(np.clip(heat[..., 0], 0, 1))
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(tmp, format="PNG")
    return path


def _heat_colours(values):
    """A black -> red -> yellow -> white colour ramp for values in [0, 1]."""
    anchors = np.array([[0, 0, 0], [0.8, 0, 0], [1, 0.8, 0], [1, 1, 1]], np.float32)
    position = values * (len(anchors) - 1)
    low = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    t = (position - low)[..., None]
    return (1 - t) * anchors[low] + t * anchors[low + 1]
