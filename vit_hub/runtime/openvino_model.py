"""`OpenVINOModel`: a compiled OpenVINO model of a vit_hub ViT, numpy in, numpy out.

It takes what the Keras model takes (float images (B, H, W, 3) in [-1, 1]) and is
compiled at one precision, always said explicitly: OpenVINO's CPU plugin otherwise picks
bf16 by itself on CPUs with AVX512_BF16 or AMX, and "fp32" here means fp32.
"""

import functools

import numpy as np

from vit_hub.errors import ConfigError, ImageError, MissingDependencyError
from vit_hub.preprocessing import check_model_images

PRECISIONS = ("fp32", "bf16", "int8")
# OpenVINO's INFERENCE_PRECISION_HINT for each precision: an int8 model computes its
# quantized matmuls in int8 and every other op in f32.
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
DEVICE = "CPU"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(
            "The OpenVINO runtime needs the openvino package: pip install 'vit_hub[openvino]'."
        ) from None
    return openvino


@functools.cache
def core():
    """One OpenVINO Core per process (it holds the loaded device plugins)."""
    return import_openvino().Core()


def openvino_version():
    return import_openvino().get_version()


def cpu_capabilities():
    """What the CPU plugin can compute in here, e.g. ['FP32', 'INT8', 'BF16']."""
    return list(core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision):
    """ConfigError for an unknown precision, or bf16 on a CPU without bf16 instructions:
    the plugin would compute in f32 and the result would be called bf16 falsely."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: "
                          "fp32 is exact, bf16 and int8 are faster and record their cost.")
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise ConfigError(
            f"precision 'bf16' needs a CPU with bf16 instructions (AVX512_BF16 or AMX); "
            f"this one offers {', '.join(cpu_capabilities())}, so OpenVINO would compute "
            "in fp32 under a bf16 label. Use precision='fp32' (exact) or 'int8'."
        )
    return precision


class OpenVINOModel:
    """A ViT compiled by OpenVINO on the CPU.

    `model(images)` and `model.predict(images, batch_size=32)` take float images
    (B, H, W, 3) in [-1, 1] (see `vit_hub.preprocess`) and return numpy arrays, what the
    Keras model returns. `precision` is 'fp32', 'bf16' or 'int8'; `accuracy` records how
    far it is from the fp32 Keras model, measured when it was built. `save(path)` writes
    the OpenVINO IR (`.xml` and `.bin`) for deployment, plus a `.json` record that
    `vit_hub.load_openvino` checks. One call at a time per object (it keeps one request).
    """

    def __init__(self, ov_model, *, precision, accuracy, name, threads=None):
        self.ov_model = ov_model
        self.precision = check_precision(precision)
        self.accuracy = dict(accuracy)
        self.name = name
        config = {"INFERENCE_PRECISION_HINT": _HINT[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core().compile_model(ov_model, DEVICE, config)
        shape = ov_model.input(0).get_partial_shape()
        self.input_shape = (None, *(int(d.get_length()) for d in list(shape)[1:]))
        self.image_size = self.input_shape[1:3]
        out = ov_model.output(0).get_partial_shape()
        self.output_shape = (None, *(int(d.get_length()) for d in list(out)[1:]))

    def __call__(self, images):
        images = self._check(images)
        return self.compiled(images)[0]

    def predict(self, images, batch_size=32):
        images = self._check(images)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        return np.concatenate([self.compiled(images[i:i + batch_size])[0]
                               for i in range(0, len(images), batch_size)])

    def _check(self, images):
        images = check_model_images(images, self.image_size, f"OpenVINO model {self.name!r}")
        if not len(images):
            raise ImageError(f"OpenVINO model {self.name!r} got an empty batch.")
        return images

    def save(self, path):
        """Writes the IR to `path` (ending in .xml; the weights go to the .bin beside it,
        at full precision) and the record to the .json beside it, each atomically."""
        from vit_hub.runtime.ir import write_ir

        write_ir(self.ov_model, path, self.record())
        return path

    def record(self):
        """What the `.json` beside a saved IR holds besides its checksums."""
        return {"name": self.name, "precision": self.precision, "accuracy": self.accuracy,
                "image_size": list(self.image_size)}

    def summary(self):
        """One line: the precision and what it costs, as measured."""
        return describe_accuracy(self.precision, self.accuracy)

    def __repr__(self):
        return (f"<OpenVINOModel {self.name!r} {self.precision}, input "
                f"{self.input_shape}, output {self.output_shape}>")


def describe_accuracy(precision, accuracy):
    parts = [f"against the fp32 Keras model on {accuracy.get('images', '?')} held-out images:",
             f"max abs {accuracy['max_abs']:.2e}, cosine min {accuracy['cosine_min']:.6f}"]
    if accuracy.get("top1_agreement") is not None:
        parts.append(f", top-1 agreement {accuracy['top1_agreement']:.0%}, top-5 "
                     f"{accuracy['top5_agreement']:.0%}")
    if accuracy.get("calibration"):
        parts.append(f"; calibrated on {accuracy['calibration']['images']} images "
                     f"({accuracy['calibration']['source']})")
    return f"OpenVINO {precision} " + " ".join(parts[:2]) + "".join(parts[2:])
