"""The main job, offline: build a ViT-B/32 and extract features from a sample image.

Run: python examples/demo.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import vit_hub


def sample_image(size=224):
    """A smooth synthetic RGB image in [-1, 1] (no download needed)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * xx), np.cos(5 * yy), 2 * xx * yy - 1], axis=-1)
    return rgb[None].astype(np.float32)


def main():
    model = vit_hub.create_vit_b32(image_size=224, include_top=False)
    print(f"{model.name}: {model.count_params():,} parameters, "
          f"{model.num_patches} patches + class token")
    features = np.asarray(model.extract_features(sample_image()))
    print(f"features {features.shape}, mean {features.mean():+.4f}, std {features.std():.4f}")


if __name__ == "__main__":
    main()
