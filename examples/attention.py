"""Where does the class token look? Attention rollout of a pretrained ViT, as a PNG.

    python examples/attention.py [IMAGE] [--output out/attention_rollout.png]

Uses `vit_b32_fe` from the cache (or the demo's test-built stand-in, whose random
weights give a map without meaning: it shows the mechanics only).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

# `python examples/NAME.py` puts examples/ first on sys.path: the shared helpers are found there.
from shared import pretrained_backbone  # noqa: E402

import vit_hub

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backbone():
    load, _, stand_in = pretrained_backbone()
    if stand_in:
        print("Using the demo's TEST-BUILT vit_b32_fe (random weights): the map shows the "
              "mechanics, not what a trained model attends to.")
    return load()


def sample_image(size=224):
    """A synthetic scene: a bright disc on a dark gradient, as uint8 RGB."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((xx - 0.65) ** 2 + (yy - 0.35) ** 2) < 0.03
    rgb = np.stack([0.2 + 0.3 * xx, 0.2 + 0.2 * yy, 0.3 * np.ones_like(xx)], -1)
    rgb[disc] = [1.0, 0.9, 0.2]
    return (rgb * 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="an image file (default: a synthetic scene)")
    parser.add_argument("--output", default=os.path.join(REPO, "out", "attention_rollout.png"))
    args = parser.parse_args(argv)
    model = backbone()
    images = vit_hub.preprocess(args.image or sample_image(), image_size=model.image_size)
    maps = vit_hub.attention_maps(model, images)
    rollout = vit_hub.attention_rollout(maps, model.grid_size)
    path = vit_hub.save_attention_overlay(images[0], rollout[0], args.output)
    print(f"{len(maps)} blocks x {maps[0].shape[1]} heads; rollout over a "
          f"{model.grid_size[0]}x{model.grid_size[1]} grid written to {path}")
    return path


if __name__ == "__main__":
    main()
