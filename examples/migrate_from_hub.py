"""Coming from hub.KerasLayer: the Kaggle ViT fine-tuning flow with one line changed.

The flow users have (Kaggle's ViT model cards and READMEs, `../shared/seeds/`):

    import tensorflow_hub as hub            # under Keras 3 the next line fails
    model = tf.keras.Sequential([hub.KerasLayer(HANDLE), tf.keras.layers.Dense(10)])

and the same with vit_hub, which is all this script changes:

    import vit_hub as hub

Phase 1 trains the new head with the backbone frozen (hub.KerasLayer's default); phase 2
unfreezes it (`layer.trainable = True`) at a small learning rate, which the hub layer
only allowed for the fe models. Then the model is saved as `.keras` and reloaded.

    python examples/migrate_from_hub.py     # ~2 min on 2 CPU cores

Data: scikit-learn's digits at the published 224x224. Offline, the backbone is the
demo's TEST-BUILT stand-in with RANDOM weights (see examples/demo.py), and it says so.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

# `python examples/NAME.py` puts examples/ first on sys.path: the shared helpers are found there.
from shared import backbone_cache, load_digits, merge, plot, split, train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDLE = "https://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/vit-b32-fe/1"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handle", default=HANDLE, help="any handle hub.KerasLayer took")
    parser.add_argument("--cache-dir", help="the vit_hub cache holding it (default: the "
                        "user cache, else the demo's stand-in)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="the size the model was published at (224 for the hub models)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="epochs, backbone frozen")
    parser.add_argument("--fine-tune-epochs", type=int, default=1, help="epochs, unfrozen")
    parser.add_argument("--output", default=os.path.join(REPO, "out", "migrate_from_hub.png"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)  # before the slow imports, so --help is instant
    import tensorflow as tf

    import vit_hub as hub  # was: import tensorflow_hub as hub

    start = time.perf_counter()
    tf.keras.utils.set_random_seed(0)
    stand_in = False
    if args.cache_dir is None:
        args.cache_dir, description, stand_in = backbone_cache()
        print(f"Backbone: {args.handle}, {description}.")
    train_data, val_data = split(*load_digits(args.samples, args.image_size, seed=0))

    backbone = hub.KerasLayer(args.handle, cache_dir=args.cache_dir)  # frozen, as hub's
    model = tf.keras.Sequential([
        tf.keras.Input((args.image_size, args.image_size, 3)),
        backbone,
        tf.keras.layers.Dense(10),
    ])
    print(f"Phase 1: backbone frozen ({len(model.trainable_weights)} trainable tensors: "
          f"the head), {args.epochs} epochs.")
    frozen = train(model, 1e-3, args.epochs, train_data, val_data, batch_size=32)

    backbone.trainable = True  # hub.KerasLayer(..., trainable=True) is the same
    print(f"Phase 2: unfrozen ({len(model.trainable_weights)} trainable tensors), "
          f"{args.fine_tune_epochs} epochs at a small learning rate.")
    tuned = train(model, 1e-5, args.fine_tune_epochs, train_data, val_data, batch_size=32)

    history = merge(frozen, tuned)
    label = "RANDOM-weight stand-in" if stand_in else "pretrained"
    plot(history, args.output, f"hub.KerasLayer flow through vit_hub.KerasLayer ({label})",
         args.epochs)
    path = os.path.join(os.path.dirname(os.path.abspath(args.output)), "migrated.keras")
    model.save(path)
    reloaded = tf.keras.models.load_model(path)  # no custom objects, no vit_hub cache
    images = val_data[0][:4]
    reload_diff = float(np.abs(reloaded.predict(images, verbose=0)
                               - model.predict(images, verbose=0)).max())
    print(f"Validation accuracy: {history['val_accuracy'][-1]:.3f} (frozen phase: "
          f"{frozen['val_accuracy'][-1]:.3f}). Saved {path}; reloaded predictions differ "
          f"by at most {reload_diff:.1e}. {time.perf_counter() - start:.0f} s.")
    if stand_in:
        print("Note: the backbone had RANDOM weights (test-built stand-in), not pretrained.")
    return {"history": history, "reload_max_abs_diff": reload_diff, "model": path}


if __name__ == "__main__":
    main()
