"""Real photographs without a download, for int8 calibration and for measuring a reduced
precision against fp32: the two sample photos scikit-learn ships (`china.jpg`, a temple,
and `flower.jpg`, 427x640 each; scikit-learn comes with NNCF), as square crops of seeded
random sizes and places, half of them mirrored.

Calibration and held-out images are different crops (other seeds) of the same two
photos: an int8 model is never judged on the crops it was calibrated on. Noise would be
the wrong stand-in: a transformer's activation ranges on noise are not those of photos.
"""

import numpy as np

from vit_hub.errors import MissingDependencyError

SOURCE = "crops of scikit-learn's sample photos china.jpg and flower.jpg"
CALIBRATION_IMAGES = 32
HELD_OUT_IMAGES = 16
_CALIBRATION_SEED, _HELD_OUT_SEED = 0, 1


def calibration_images(image_size, count=CALIBRATION_IMAGES):
    return _crops(image_size, count, _CALIBRATION_SEED)


def held_out_images(image_size, count=HELD_OUT_IMAGES):
    return _crops(image_size, count, _HELD_OUT_SEED)


def _crops(image_size, count, seed):
    """`count` crops in [-1, 1] at `image_size`, alternating between the photos."""
    from vit_hub.preprocessing import preprocess

    photos = _photos()
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        rows, cols = photo.shape[:2]
        side = int(min(rows, cols) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, rows - side + 1), rng.integers(0, cols - side + 1)
        crop = photo[top:top + side, left:left + side]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return preprocess(crops, image_size)


def _photos():
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise MissingDependencyError(
            "The default calibration and held-out photos come with scikit-learn: pip "
            "install 'vit_hub[openvino]', or pass calibration= images.") from None
    return load_sample_images().images
