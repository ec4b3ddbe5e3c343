"""Transfer learning with a pretrained ViT-B/32, natively in Keras 3.

    python examples/fine_tune.py [--image-size 96] [--epochs 4] [--fine-tune-epochs 2]
                                 [--lora-rank 8] [--samples 400]
                                 [--output out/fine_tune.png] [--weights PATH]

The flow the TF-Hub tutorials do with `hub.KerasLayer` + tf_keras +
TF_USE_LEGACY_KERAS=1, with the backbone as ordinary Keras layers instead:

1. scikit-learn's digits (8x8 grayscale) as RGB uint8, resized by `vit_hub.preprocess`.
2. Phase 1: `load_pretrained("vit_b32_fe", image_size=S)` frozen inside a functional
   model (Input -> backbone -> Dropout -> Dense(10)); only the head trains.
3. Phase 2: unfreeze and fine-tune everything with a small learning rate.
4. Phase 2 again from the same start, with LoRA instead (`backbone.enable_lora(rank)`:
   the backbone frozen but for low-rank adapters on its attention's query and value);
   save the adapters alone (`save_lora_weights`), then fold them into the kernels
   (`merge_lora`) and check that the merged model predicts the same.
5. Plot loss/accuracy of the phases (both second phases), save the fully fine-tuned
   model as a `.keras` file and check that the reloaded model predicts the same.

Offline, the backbone comes from the user cache if it holds `vit_b32_fe`, else from
out/demo-cache, where `examples/demo.py` puts a TEST-BUILT stand-in with RANDOM weights
(built here if missing). With that stand-in the accuracy shows what training the head
(and then the whole network) achieves from random features, not what pretraining gives.
"""

import argparse
import os
import time
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

# `python examples/NAME.py` puts examples/ first on sys.path: the shared helpers are found there.
from shared import BACKBONE as NAME  # noqa: E402,E501
from shared import load_digits, merge, plot, pretrained_backbone, split, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=96,
                        help="input size; 96 gives ViT-B/32 a 3x3 patch grid (CPU-fast)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs with a frozen backbone")
    parser.add_argument("--fine-tune-epochs", type=int, default=2,
                        help="epochs with everything trainable")
    parser.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA adapters")
    parser.add_argument("--samples", type=int, default=400,
                        help="digits used (of 1797), 20%% of them for validation; 400 keeps "
                             "the run near 3 minutes on 2 CPU cores")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(REPO, "out", "fine_tune.png"),
                        help="PNG of the curves; the model goes next to it")
    parser.add_argument("--weights", help="a converted weights file to use as backbone")
    return parser.parse_args(argv)


def backbone_source(weights=None):
    """(loader, description, stand_in): a function of model kwargs that loads the
    backbone, where its weights come from, and whether they are the random stand-in."""
    import vit_hub

    if weights:  # any converted file, with the architecture recorded in it
        return partial(vit_hub.load_weights, weights), f"the weights file {weights}", False
    return pretrained_backbone()


def build_model(backbone, image_size):
    """Input -> backbone -> Dropout -> Dense(10) logits, as in the hub tutorials."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="images")
    # training=False keeps the backbone in inference mode even once unfrozen (the usual
    # transfer-learning practice; ViT has no BatchNorm, so it only fixes dropout).
    features = backbone(inputs, training=False)
    features = keras.layers.Dropout(0.2, name="head_dropout")(features)
    outputs = keras.layers.Dense(NUM_CLASSES, name="classifier")(features)
    return keras.Model(inputs, outputs, name="digits_vit")


def check_reload(model, path, images):
    """Saves `model` as .keras and returns the max abs difference of the reloaded
    model's predictions on `images` (the vit_hub layers are registered: no custom
    objects, no safe_mode=False)."""
    import keras

    # Saved for inference: an uncompiled model on the same layers carries no Adam
    # moments, which would triple the file (~1 GB). To resume training, save `model`.
    keras.Model(model.inputs, model.outputs, name=model.name).save(path)
    reloaded = keras.saving.load_model(path)
    before = model.predict(images, verbose=0)
    after = reloaded.predict(images, verbose=0)
    return float(np.max(np.abs(before - after)))


def lora_phase(model, backbone, args, train_data, val_data, folder):
    """Phase 2 with LoRA on the backbone; the adapters saved alone, then merged."""
    backbone.trainable = True
    backbone.enable_lora(args.lora_rank)  # freezes the rest of the backbone
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"Phase 2 with LoRA (rank {args.lora_rank}): {trainable:,} trainable weights of "
          f"{model.count_params():,}, {args.fine_tune_epochs} epochs.")
    # LoRA's factors start at zero and are few: they take a larger learning rate.
    history = train(model, 1e-3, args.fine_tune_epochs, train_data, val_data, args.batch_size)
    path = backbone.save_lora_weights(os.path.join(folder, "digits.lora.h5"))
    before = model.predict(val_data[0][:4], verbose=0)
    backbone.merge_lora()
    model.make_predict_function(force=True)  # traced again, on the plain merged layers
    after = model.predict(val_data[0][:4], verbose=0)
    return {"history": history, "trainable": trainable, "total": model.count_params(),
            "path": path, "merge_max_abs_diff": float(np.max(np.abs(before - after)))}


def main(argv=None):
    args = parse_args(argv)  # before the slow imports, so --help is instant
    import keras


    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)

    train_data, val_data = split(*load_digits(args.samples, args.image_size, args.seed))
    load, description, stand_in = backbone_source(args.weights)
    print(f"Backbone: {NAME} from {description}.")
    # A new image size resamples the position embeddings (load_pretrained warns).
    backbone = load(image_size=args.image_size)
    model = build_model(backbone, args.image_size)

    backbone.trainable = False
    print(f"Phase 1: frozen backbone, {args.epochs} epochs on {len(train_data[0])} images.")
    frozen = train(model, 1e-3, args.epochs, train_data, val_data, args.batch_size)
    phase1_end = time.perf_counter()

    after_phase1 = model.get_weights()
    backbone.trainable = True
    # A small learning rate: large updates would wreck the pretrained features.
    print(f"Phase 2: everything trainable, {args.fine_tune_epochs} epochs.")
    tuned = train(model, 1e-5, args.fine_tune_epochs, train_data, val_data, args.batch_size)
    phase2_s = time.perf_counter() - phase1_end
    output_folder = os.path.dirname(os.path.abspath(args.output))
    model_path = os.path.join(output_folder, "fine_tuned.keras")
    reload_diff = check_reload(model, model_path, val_data[0][:4])

    model.set_weights(after_phase1)  # phase 2 again from the same start, with LoRA
    lora = lora_phase(model, backbone, args, train_data, val_data, output_folder)

    history = merge(frozen, tuned)
    label = "RANDOM-weight stand-in" if stand_in else NAME
    plot(history, args.output, f"ViT-B/32 on digits at {args.image_size}px (backbone: "
         f"{label})", args.epochs, branch=(f"LoRA rank {args.lora_rank}", lora["history"]))
    runtime = time.perf_counter() - start

    print(f"Final validation accuracy: {history['val_accuracy'][-1]:.3f} fully fine-tuned, "
          f"{lora['history']['val_accuracy'][-1]:.3f} with LoRA (after phase 1: "
          f"{frozen['val_accuracy'][-1]:.3f}).")
    print(f"Saved {args.output} and {model_path}; reloaded predictions differ by at most "
          f"{reload_diff:.1e}.")
    print(f"LoRA: {lora['trainable']:,} trainable weights of {lora['total']:,}; adapters "
          f"and head saved alone in {lora['path']} ({os.path.getsize(lora['path']) / 1e6:.2f} MB"
          f" vs {os.path.getsize(model_path) / 1e6:.0f} MB for the model); merged into the "
          f"kernels, predictions differ by at most {lora['merge_max_abs_diff']:.1e}.")
    if stand_in:
        print("Note: the backbone had RANDOM weights (test-built stand-in), not pretrained.")
    print(f"Runtime: {runtime:.1f} s (frozen phase {phase1_end - start:.1f} s including "
          f"data and backbone loading, fine-tuning {phase2_s:.1f} s).")
    return {"history": history, "phase_boundary": args.epochs, "plot": args.output,
            "model": model_path, "reload_max_abs_diff": reload_diff, "lora": lora,
            "runtime_s": runtime}


if __name__ == "__main__":
    main()
