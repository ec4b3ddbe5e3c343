"""`OpenVINOModel`: a compiled OpenVINO model of a vit_hub ViT, numpy in, numpy out; and
`load_openvino`, which reads one back from the IR files it saved (`vit_hub.runtime.ir`).

It takes what the Keras model takes (float images (B, H, W, 3) in [-1, 1]) and is
compiled at one precision, always said explicitly: OpenVINO's CPU plugin otherwise picks
bf16 by itself on CPUs with AVX512_BF16 or AMX, and "fp32" here means fp32.
"""

import concurrent.futures
import os
import time

import numpy as np

from vit_hub.errors import ImageError, WeightsError
from vit_hub.files import read_json
from vit_hub.preprocessing import check_model_images
from vit_hub.runtime import ir
from vit_hub.runtime.engine import DEVICE, core, cpu_capabilities, describe_cpu_class
from vit_hub.runtime.options import check_batch_size, check_precision, check_threads

# OpenVINO's INFERENCE_PRECISION_HINT for each precision: what every op computes in,
# except an int8 model's quantized ones, which compute in int8. An int8 model's other
# ops ("the rest") compute in f32, or in bf16 on a CPU with bf16 instructions where that
# was measured to keep the gate (`convert.to_openvino` decides it, the record keeps it).
_HINT = {"fp32": "f32", "bf16": "bf16"}


class OpenVINOModel:
    """A ViT compiled by OpenVINO on the CPU.

    `model(images)` and `model.predict(images, batch_size=32)` take float images
    (B, H, W, 3) in [-1, 1] (see `vit_hub.preprocess`) and return numpy arrays, what the
    Keras model returns. `precision` is 'fp32', 'bf16' or 'int8'; `accuracy` records how
    far it is from the fp32 Keras model, measured when it was built. `save(path)` writes
    the OpenVINO IR (`.xml` and `.bin`) for deployment, plus a `.json` record that
    `vit_hub.load_openvino` checks. One call at a time per object (it keeps one request).
    """

    def __init__(self, ov_model, *, precision, accuracy, name, threads=None, rest="f32",
                 speed=None):
        """`rest`: int8 only, what its unquantized ops compute in ('f32', or 'bf16' where
        the CPU has it: elsewhere f32, `self.rest` says which). `speed`: images/s
        measured when it was built (`measure_speed`), with the CPU class."""
        self.ov_model = ov_model
        self.precision = check_precision(precision)
        self.accuracy = dict(accuracy)
        self.name = name
        self.speed = dict(speed) if speed else None
        self.rest = None
        if precision == "int8":
            self.rest = "bf16" if rest == "bf16" and "BF16" in cpu_capabilities() else "f32"
        config = {"INFERENCE_PRECISION_HINT": self.rest or _HINT[precision]}
        if threads is not None:  # checked by the entry points (`options.check_threads`)
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
        batch_size = check_batch_size(batch_size)
        images = self._check(images)
        return np.concatenate([self.compiled(images[i:i + batch_size])[0]
                               for i in range(0, len(images), batch_size)])

    def _check(self, images):
        images = check_model_images(images, self.image_size, f"OpenVINO model {self.name!r}")
        if not len(images):
            raise ImageError(f"OpenVINO model {self.name!r} got an empty batch.")
        return images

    def save(self, path):
        """Writes the IR to `path` (ending in .xml; the weights go to the .bin beside it,
        at full precision) and the record to the .json beside it, each atomically. A
        vit_hub model saved there earlier is replaced; other files there are not (an
        OutputExistsError says so, as it does for a path under a file)."""
        ir.check_save_target(path)
        ir.write_ir(self.ov_model, path, self.record())
        return path

    def record(self):
        """What the `.json` beside a saved IR holds besides its checksums."""
        return {"name": self.name, "precision": self.precision, "rest": self.rest,
                "accuracy": self.accuracy, "speed": self.speed,
                "image_size": list(self.image_size)}

    @property
    def engine(self):
        """'OpenVINO <precision>', and for int8 what the rest computes in."""
        rest = f" (the rest in {self.rest})" if self.rest else ""
        return f"OpenVINO {self.precision}{rest}"

    def summary(self):
        """One line: the engine and precision, its speed and the CPU class it was measured
        on, and what it costs in agreement with fp32, as measured when it was built."""
        engine = self.engine
        speed = ""
        if self.speed:
            speed = (f" {self.speed['images_per_s']:.1f} images/s at batch "
                     f"{self.speed['batch']} on {self.speed['cpu']};")
        return f"{engine}:{speed} {describe_accuracy(self.accuracy)}"

    def __repr__(self):
        return (f"<OpenVINOModel {self.name!r} {self.precision}, input "
                f"{self.input_shape}, output {self.output_shape}>")


def measure_speed(model, images, calls=3):
    """{"images_per_s", "batch", "cpu"}: the best of `calls` timed calls on `images`, by
    a model that has run a batch of that size once (compiled, memory allocated), and the
    CPU class it ran on. A figure for the summary, taken when a model is built (a
    benchmark measures longer: see the benchmarks page)."""
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        model.compiled(images)
        best = min(best, time.perf_counter() - start)
    return {"images_per_s": len(images) / best, "batch": len(images),
            "cpu": describe_cpu_class()}


def describe_accuracy(accuracy):
    parts = [f"against the fp32 Keras model on {accuracy.get('images', '?')} held-out images:",
             f"max abs {accuracy['max_abs']:.2e}, cosine min {accuracy['cosine_min']:.6f}"]
    if accuracy.get("top1_agreement") is not None:
        parts.append(f", top-1 agreement {accuracy['top1_agreement']:.0%}, top-5 "
                     f"{accuracy['top5_agreement']:.0%}")
    if accuracy.get("calibration"):
        parts.append(f"; calibrated on {accuracy['calibration']['images']} images "
                     f"({accuracy['calibration']['source']})")
    return " ".join(parts[:2]) + "".join(parts[2:])


def read_verified(xml_path, threads=None):
    """(the `OpenVINOModel` of the IR, None), or (None, why it is not used). The files
    are hashed while OpenVINO reads and compiles them (hashing and compiling release the
    GIL): a first prediction pays for the longer of the two, not both. A model whose
    files fail their checksums is dropped before anything runs on it."""
    problem = ir.record_problem(xml_path)
    if problem:
        return None, problem
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        checking = pool.submit(ir.checksum_problem, xml_path)
        try:
            model, failure = read_ir(xml_path, threads), None
        except Exception as err:  # (OpenVINO's RuntimeError for files it cannot parse)
            model, failure = None, err
        problem = checking.result()
    if problem:
        return None, problem
    if failure is not None:
        raise failure
    return model, None


def read_ir(xml_path, threads=None):
    """The `OpenVINOModel` of an IR, its files unchecked: `read_verified` checks them,
    and the record (`ir.record_problem`) before this reads it."""
    xml, weights, record_path = ir.paths(xml_path)
    record = read_json(record_path)
    ov_model = core().read_model(xml, weights)
    return OpenVINOModel(ov_model, precision=record["precision"], accuracy=record["accuracy"],
                         name=record["name"], threads=threads,
                         rest=record.get("rest") or "f32", speed=record.get("speed"))


def load_openvino(path, threads=None):
    """The `OpenVINOModel` saved at `path` (`.xml`) by `OpenVINOModel.save`, after
    checking it against its `.json` record, and the record against its own checksum: an
    IR that is corrupt, incomplete, edited or from another OpenVINO version is refused,
    never compiled. `threads`: CPU threads for inference (default: all)."""
    check_threads(threads)
    path = ir.check_xml_path(path)
    if not os.path.isfile(path):
        raise WeightsError(f"No OpenVINO IR at {path}.")
    model, problem = read_verified(path, threads)
    if problem:
        raise WeightsError(
            f"The OpenVINO IR {path} is not loaded: {problem}. Build it again with this "
            "version: vit_hub.to_openvino(model, precision=...).save(path), or "
            "vit_hub.load_pretrained(name, runtime='openvino', precision=...).save(path).")
    return model
