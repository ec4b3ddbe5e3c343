"""The main job, through the public API only: the published ViT-B/32 feature extractor
(`vit_b32_fe`) obtained, converted, checked against the hub model, and used.

    python examples/demo.py [--out OUT]

1. Obtain and convert. `vit_hub.load_pretrained("vit_b32_fe")` does it on first use:
   it downloads the SavedModel from Kaggle, converts it, checks parity against
   `hub.KerasLayer` and caches the result in the user cache.
   Without network (as on this project's build machines) the demo says so and builds a
   stand-in in exactly the published format (same SavedModel layout, signature and
   numerics) with RANDOM weights, using `vit_hub.conversion.published_format` (the
   `hub-format` extra), then converts it with `convert-weights vit_b32_fe --source DIR`,
   the documented route for a local copy. The stand-in is cached in OUT/demo-cache
   (default out/demo-cache), never in the user cache, so it cannot be taken for the
   real weights.
2. Check parity: `convert-weights` prints the parity figure it recorded.
3. `load_pretrained("vit_b32_fe")` from the cache, offline, and the features of an
   image; then the same model on the OpenVINO runtime.

What it prints is all it says: TensorFlow's C++ start-up lines are filtered out (by
`vit_hub.start_tensorflow_quietly`, as vit_hub's own commands do), and JAX,
which builds the stand-in, is only ever imported in a child process (see `build_stand_in`).
"""

import os

# TensorFlow's C++ logging: errors only. Read when TensorFlow loads, so set before any
# import that brings it in (also inherited by the child processes below).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402  (after the variable above, on purpose)
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

import vit_hub  # noqa: E402  (light: no framework imported yet)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "vit_b32_fe"


def sample_image(size=224):
    """A smooth synthetic RGB image, through `vit_hub.preprocess` as any photo would be."""
    import vit_hub

    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * xx), np.cos(5 * yy), 2 * xx * yy - 1], axis=-1)
    pixels = np.round((rgb + 1) * 127.5).astype(np.uint8)  # an 8-bit image
    return np.asarray(vit_hub.preprocess(pixels[None], image_size=size))  # [-1, 1]


def build_stand_in(folder):
    """Writes a ViT-B/32 fe SavedModel in the published format with random weights.

    Run in a child process started with 'spawn' (`stand_in_checkpoint`): the published
    recipe is Flax + jax2tf, and JAX, once imported, warns at every os.fork() of its
    process ("os.fork() was called ... JAX is multithreaded"). Libraries fork behind
    your back (OpenVINO's usage report does, in step 3), so JAX stays out of this one."""
    vit_hub.start_tensorflow_quietly()
    from vit_hub.conversion import published_format

    config = published_format.ARCHS["b32"]
    params = published_format.init_params(config, "fe", seed=0)
    published_format.export_saved_model(params, config, "fe", folder)


def stand_in_checkpoint(out):
    """The stand-in's SavedModel folder under `out`, built once."""
    folder = os.path.join(out, "demo-checkpoint", "vit-b32-fe")
    if not os.path.exists(os.path.join(folder, "saved_model.pb")):
        print("Building a TEST-BUILT stand-in in the published format (random weights) ...",
              flush=True)
        staging = folder + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left
        child = multiprocessing.get_context("spawn").Process(target=build_stand_in,
                                                             args=(staging,))
        child.start()
        child.join()
        if child.exitcode != 0:
            sys.exit(f"Building the stand-in failed (exit status {child.exitcode}).")
        os.replace(staging, folder)
    return folder


def convert_weights(*args):
    """Runs the `convert-weights` command (download or --source, convert, parity check
    against hub.KerasLayer, cache) and passes on its table; exits if it fails."""
    print(f"$ convert-weights {' '.join(args)}", flush=True)
    env = dict(os.environ)
    if not sys.stderr.isatty():
        env["TQDM_DISABLE"] = "1"  # its progress bar is for terminals
    done = subprocess.run([sys.executable, "-m", "vit_hub.cli.convert_weights", *args],
                          env=env)
    if done.returncode != 0:
        sys.exit(f"convert-weights failed (exit status {done.returncode}).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "out"),
                        help="where the stand-in and its cache go (default: out/)")
    out = os.path.abspath(parser.parse_args(argv).out)

    vit_hub.start_tensorflow_quietly()  # Keras runs on TensorFlow here: its start-up lines off

    # 1. Obtain and convert: the real model into the user cache on first use, else the
    # stand-in into the demo's own cache.
    try:
        vit_hub.load_pretrained(NAME)
    except (vit_hub.DownloadError, vit_hub.CacheError) as err:  # no network, or offline
        print(f"No checkpoint from Kaggle: {err}")
        source = stand_in_checkpoint(out)
        cache_dir = os.path.join(out, "demo-cache")
        print("Checkpoint: a TEST-BUILT checkpoint in the published format with RANDOM "
              "weights (not the real ViT-B/32).")
        # 2. Convert it and check parity (the figure is in the table).
        convert_weights(NAME, "--source", source, "--cache-dir", cache_dir)
    else:
        cache_dir = None
        print("Checkpoint: the real one from Kaggle, converted in the user cache.")
        convert_weights(NAME)  # 2. cached now: prints the parity figure it recorded

    # 3. Use it: from the cache, no network.
    model = vit_hub.load_pretrained(NAME, cache_dir=cache_dir, offline=True)
    image = sample_image()
    features = np.asarray(model(image))
    print(f"load_pretrained('{NAME}'): {model.count_params():,} parameters; features of "
          f"the sample image {features.shape}, norm {np.linalg.norm(features):.3f}.")

    # The same model on OpenVINO (fp32, exact), its IR built from the cached weights (no
    # download, so also under VIT_HUB_OFFLINE=1) and cached beside them.
    fast = vit_hub.load_pretrained(NAME, cache_dir=cache_dir, offline=False,
                                   runtime="openvino")
    difference = np.abs(fast(image) - features).max()
    print(f"load_pretrained('{NAME}', runtime='openvino'): {fast.summary()}; the sample "
          f"image's features are {difference:.1e} from the Keras model's.")


if __name__ == "__main__":
    main()
