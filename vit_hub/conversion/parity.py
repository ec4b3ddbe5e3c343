"""Parity: the converted native model against the hub model's own outputs.

The hub side runs through `hub.KerasLayer` (tf_keras), as users of the published models
run it. Both see the same deterministic inputs in [-1, 1]. In float32 the two are the
same computation in a different order (XLA-compiled jax2tf graph vs Keras ops), so they
differ by rounding only: ~1e-6 on tiny models, ~1e-5 at full size (ViT-B/32, R26+S/32).

The gate allows 1e-4 per unit of the hub output's magnitude (max |output|, at least 1):
float32 rounding grows with the values and the depth. On R50+L/32 (a 16-unit ResNet stem
and 24 blocks, features up to 3.2) the hub model's own float32 output is 1.7e-4 from a
float64 run of the same network, the native one 8.4e-5, so 1e-4 absolute would reject
the more exact of the two. A wrong tensor or equation moves outputs by 1e-2 to 1, far
above the gate.
"""

import dataclasses

import numpy as np

from vit_hub.architecture import image_hw
from vit_hub.errors import ParityError

TOLERANCE = 1e-4


@dataclasses.dataclass
class ParityReport:
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    tolerance: float = TOLERANCE  # as applied: TOLERANCE x the output scale
    batch: int = 0
    scale: float = 1.0  # max |hub output|, at least 1

    @property
    def passed(self):
        return self.max_abs <= self.tolerance

    def summary(self):
        text = f"max abs {self.max_abs:.2e}, max rel {self.max_rel:.2e}, cosine {self.cosine:.8f}"
        if self.top1_agreement is not None:
            text += f", top-1 {self.top1_agreement:.0%}, top-5 {self.top5_agreement:.0%}"
        return text


def parity_inputs(image_size, batch=4, seed=0):
    """Seeded uniform noise plus smooth structured images (gradients and sinusoids), so
    that both high-frequency and natural-image-like statistics are exercised."""
    height, width = image_hw(image_size)
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-1.0, 1.0, (max(batch - batch // 2, 1), height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    smooth = [
        np.stack([np.sin(6 * xx + k), np.cos(5 * yy - k), 2 * xx * yy - 1], axis=-1)
        for k in range(batch // 2)
    ]
    return np.concatenate([noise, *[s[None] for s in smooth]], 0).astype(np.float32)


def hub_outputs(saved_model_dir, inputs):
    """The hub model's outputs through `hub.KerasLayer`, as its users call it."""
    import logging
    import warnings

    with warnings.catch_warnings():  # its own import of pkg_resources; nothing to act on
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import tensorflow_hub as hub

    # Loading an fe model logs "Importing a function ... with ops with unsaved custom
    # gradients" once per gradient function: true, and beside the point of a forward pass.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        layer = hub.KerasLayer(str(saved_model_dir), trainable=False)
    finally:
        absl.setLevel(level)
    return np.asarray(layer(inputs))


def compare(native, reference, classification):
    native = np.asarray(native, np.float64)
    reference = np.asarray(reference, np.float64)
    if native.shape != reference.shape:
        raise ParityError(f"output shapes differ: native {native.shape}, hub {reference.shape}")
    diff = np.abs(native - reference)
    cosines = np.sum(native * reference, -1) / (
        np.linalg.norm(native, axis=-1) * np.linalg.norm(reference, axis=-1) + 1e-30
    )
    report = ParityReport(
        max_abs=float(diff.max()),
        max_rel=float((diff / (np.abs(reference) + 1e-6)).max()),
        cosine=float(cosines.min()),
        batch=len(native),
        scale=float(max(1.0, np.abs(reference).max())),
    )
    if classification:
        top5_native = np.argsort(-native, -1)[:, :5]
        top5_hub = np.argsort(-reference, -1)[:, :5]
        report.top1_agreement = float(np.mean(top5_native[:, 0] == top5_hub[:, 0]))
        report.top5_agreement = float(
            np.mean([set(a) == set(b) for a, b in zip(top5_native, top5_hub)])
        )
    return report


def check_parity(model, saved_model_dir, batch=4, tolerance=TOLERANCE):
    """Runs both models; returns the report, or raises ParityError above `tolerance` per
    unit of the hub output's magnitude."""
    import keras

    inputs = parity_inputs(model.image_size, batch)
    # model(x), not predict: predict builds a tf.function per model, and TensorFlow warns
    # of "excessive retracing" once a process has converted a few models.
    native = keras.ops.convert_to_numpy(model(inputs))
    report = compare(native, hub_outputs(saved_model_dir, inputs),
                     classification=model.include_top)
    report.tolerance = tolerance * report.scale
    if not report.passed:
        raise ParityError(
            f"Parity check failed for {saved_model_dir}: {report.summary()} exceeds the "
            f"tolerance {report.tolerance:.1e} ({tolerance:.0e} x the output scale "
            f"{report.scale:.2f}). The checkpoint's tensors are in an unexpected order or "
            "the checkpoint is not this variant; nothing was written."
        )
    return report
