"""The main job: a published ViT-B/32 feature extractor, converted, verified and used
through `vit_hub.load_pretrained`, offline if need be.

    python examples/demo.py

1. Obtain the hub checkpoint `vit_b32_fe`: from Kaggle when reachable. Without network
   (as on the project's build machines) it builds a stand-in in exactly the published
   format (same SavedModel layout, signature and numerics) with RANDOM weights, using
   `vit_hub.conversion.published_format`, and says so; that one is cached in out/demo-cache, never in
   the user cache, so it cannot be mistaken for the real weights.
2. Convert it to native weights and check parity against `hub.KerasLayer`.
3. `load_pretrained('vit_b32_fe')` and extract features for a sample image.
"""

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "vit_b32_fe"


def sample_image(size=224):
    """A smooth synthetic RGB image, scaled to [-1, 1] as the checkpoints expect."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * xx), np.cos(5 * yy), 2 * xx * yy - 1], axis=-1)
    pixels = np.round((rgb + 1) * 127.5)  # an 8-bit image ...
    return ((pixels - 127.5) / 127.5)[None].astype(np.float32)  # ... preprocessed


def obtain_checkpoint():
    """(cache_dir, source, label): the real model from Kaggle, or a test-built stand-in."""
    from vit_hub.cache import CacheEntry
    from vit_hub.conversion.download import download
    from vit_hub.errors import DownloadError

    if CacheEntry(NAME).state() == "ok":
        return None, None, "the real checkpoint, already converted in the user cache"
    try:
        source = download("spsayakpaul/vision-transformer/tensorFlow2/vit-b32-fe/1", timeout=600)
        return None, source, "the real checkpoint, downloaded from Kaggle"
    except DownloadError as err:
        print(f"No checkpoint from Kaggle: {err}")
    from vit_hub.conversion import published_format

    folder = os.path.join(REPO, "out", "demo-checkpoint", "vit-b32-fe")
    if not os.path.exists(os.path.join(folder, "saved_model.pb")):
        print("Building a TEST-BUILT stand-in in the published format (random weights) ...")
        config = published_format.ARCHS["b32"]
        params = published_format.init_params(config, "fe", seed=0)
        published_format.export_saved_model(params, config, "fe", folder + ".tmp")
        os.replace(folder + ".tmp", folder)
    return (os.path.join(REPO, "out", "demo-cache"), folder,
            "a TEST-BUILT checkpoint in the published format with RANDOM weights "
            "(not the real ViT-B/32)")


def main():
    from vit_hub.terminal import start_tensorflow_quietly

    start_tensorflow_quietly()  # the conversion runs on TensorFlow: its log lines kept off
    import vit_hub
    from vit_hub.conversion.pipeline import convert_into_cache

    cache_dir, source, label = obtain_checkpoint()
    print(f"Checkpoint: {label}.")
    metadata = convert_into_cache(NAME, cache_dir=cache_dir, source=source)
    parity = metadata["parity"]
    print(f"Converted {metadata['handle']}: parity against hub.KerasLayer on "
          f"{parity['batch']} images: max abs {parity['max_abs']:.2e} (tolerance "
          f"{parity['tolerance']:.1e}), cosine {parity['cosine']:.8f}.")

    model = vit_hub.load_pretrained(NAME, cache_dir=cache_dir, offline=True)
    features = np.asarray(model(sample_image()))
    print(f"load_pretrained('{NAME}'): {model.count_params():,} parameters; features of "
          f"the sample image {features.shape}, norm {np.linalg.norm(features):.3f}.")

    # The same model on OpenVINO (fp32, exact), its IR cached beside the weights.
    fast = vit_hub.load_pretrained(NAME, cache_dir=cache_dir, runtime="openvino")
    difference = np.abs(fast(sample_image()) - features).max()
    print(f"load_pretrained('{NAME}', runtime='openvino'): {fast.summary()}; the sample "
          f"image's features are {difference:.1e} from the Keras model's.")


if __name__ == "__main__":
    main()
