"""A small Vision Transformer trained from scratch on scikit-learn's digits.

    python examples/train_from_scratch.py [--image-size 32] [--epochs 12] [--samples 1797]
                                          [--output out/train_from_scratch.png]

A tiny ViT built from its config (patch 4, width 64, 4 blocks, 4 heads), no pretrained
weights: the 8x8 digits are upsampled to 32x32 RGB by `vit_hub.preprocess` (an 8x8
patch grid), trained with AdamW, and the loss/accuracy curves saved as a PNG.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

# `python examples/NAME.py` puts examples/ first on sys.path: the shared helpers are found there.
from shared import load_digits, plot, split  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
# Small enough for a CPU: ~0.2M parameters.
CONFIG = dict(patch_size=4, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128,
              dropout=0.1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=32,
                        help="input size, a multiple of the patch size 4")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=1797,
                        help="digits used (of 1797), 20%% of them for validation")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(REPO, "out", "train_from_scratch.png"))
    return parser.parse_args(argv)


def build_model(image_size):
    import vit_hub

    return vit_hub.VisionTransformer(image_size=image_size, num_classes=NUM_CLASSES,
                                     name="tiny_vit", **CONFIG)


def compile_model(model, learning_rate, steps):
    """AdamW with a cosine decay: transformers from scratch like a decaying rate and
    weight decay; the schedule spans the whole run."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps,
                                                      alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main(argv=None):
    args = parse_args(argv)  # before the slow imports, so --help is instant
    import keras

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)

    (x_train, y_train), val_data = split(*load_digits(args.samples, args.image_size,
                                                      args.seed))
    model = build_model(args.image_size)
    print(f"Tiny ViT: {model.count_params():,} parameters, {model.num_patches} patches; "
          f"{len(x_train)} training / {len(val_data[0])} validation images.")
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
    compile_model(model, args.learning_rate, steps)
    history = model.fit(x_train, y_train, validation_data=val_data, epochs=args.epochs,
                        batch_size=args.batch_size, verbose=2).history

    plot(history, args.output,
         f"Tiny ViT from scratch on digits at {args.image_size}px")
    runtime = time.perf_counter() - start
    print(f"Final validation accuracy: {history['val_accuracy'][-1]:.3f}; "
          f"saved {args.output}. Runtime: {runtime:.1f} s.")
    return {"history": history, "plot": args.output, "runtime_s": runtime}


if __name__ == "__main__":
    main()
