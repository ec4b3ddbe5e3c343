"""A Keras model in hand -> an `OpenVINOModel` at a precision, with its measured cost.

The model is traced by Keras' own OpenVINO export (on TensorFlow a tf.function through
OpenVINO's TensorFlow frontend, on the openvino backend its own graph), int8 is
post-training quantization by NNCF (SmoothQuant and bias correction, as NNCF applies for
transformers), and every precision is measured against the Keras model's own fp32 outputs
on held-out photographs before it is handed out:

- fp32 must pass the project's parity gate (1e-4 x the output's scale), like a conversion;
- bf16 and int8 record cosine, max abs and, for classifiers, top-1/top-5 agreement, and
  are refused (AccuracyError, nothing cached) below their gate on the worst image.

Cosines are per image (`cosines`): an image whose outputs are zero on both sides (within
the parity gate's tolerance; a fresh zero-initialised head gives exact zeros) agrees
exactly (1), where 0/0 would read as total disagreement; zero on one side only is 0.
"""

import contextlib
import functools
import hashlib
import io
import logging
import os
import tempfile

import numpy as np

from vit_hub.conversion.parity import TOLERANCE, compare
from vit_hub.errors import AccuracyError, ConfigError, ImageError, MissingDependencyError
from vit_hub.runtime import photos
from vit_hub.runtime.engine import core, cpu_capabilities, import_openvino
from vit_hub.runtime.openvino_model import OpenVINOModel, measure_speed
from vit_hub.runtime.options import check_runtime

# The least cosine similarity to fp32 on the worst held-out image. bf16 keeps 8 bits of
# mantissa (measured 0.9998 on ViT-B/32); int8 with SmoothQuant measured 0.995-0.998 on
# random-weight stand-ins, and naive int8 of ViT-B costs 1.4-2.2 points of top-1
# (published), so below 0.99 something is wrong with the calibration or the model.
GATES = {"bf16": 0.999, "int8": 0.99}
# An int8 model computes the rest in bf16 only if that is this much faster than in f32
# (the build's timing of the held-out batch varies by a few percent).
BF16_REST_MARGIN = 1.05
# Fewer calibration images than this give NNCF ranges it cannot trust.
MIN_CALIBRATION = 8


def to_openvino(model, precision="fp32", calibration=None, *, min_cosine=None, threads=None):
    """The OpenVINO model of a vit_hub Keras model (float32 policy), at `precision`.

    Args:
        model: a `VisionTransformer` (any size, head or fine-tuning).
        precision: 'fp32' (exact), 'bf16' (CPUs with bf16 instructions) or 'int8'.
        calibration: int8 only: images as `vit_hub.preprocess` takes them (paths, arrays,
            PIL images), or a folder, searched recursively for image files by extension
            (those vit-embed takes: .jpg, .jpeg, .png, .gif, .bmp, .webp); at least 8.
            Default: 32 crops of scikit-learn's sample photos (the accuracy record says
            which).
        min_cosine: the least cosine to fp32 on the worst held-out image, in (0, 1]
            (default: 0.999 for bf16, 0.99 for int8); below it an AccuracyError is
            raised. Images whose outputs are zero on both sides count as agreeing
            (`cosines`).
        threads: CPU threads for inference, at least 1 (default: all).
    """
    precision = check_runtime("openvino", precision, calibration=calibration,
                              min_cosine=min_cosine, threads=threads)
    _check_model(model)
    calibrate = None
    if precision == "int8":
        _import_nncf()
        calibrate = calibration_set(calibration, model.image_size)
    ov_model = trace(model)
    held_out = photos.held_out_images(model.image_size)
    reference = _keras_outputs(model, held_out)
    built = functools.partial(_built, name=model.name, threads=threads, held_out=held_out,
                              reference=reference, classification=bool(model.include_top))
    fast = built(ov_model, "fp32", timed=precision == "fp32")
    _check_exact(fast.accuracy, model.name)  # the trace itself, before any reduction
    if precision == "fp32":
        return fast
    if precision == "bf16":
        fast = built(ov_model, "bf16")
    else:
        quantized = quantize(ov_model, calibrate[0])
        fast = _fastest_within(gate_for("int8", min_cosine),
                               [built(quantized, "int8", rest=rest) for rest in _int8_rests()])
        fast.accuracy["calibration"] = {"images": len(calibrate[0]), "source": calibrate[1]}
    check_gate(precision, fast.accuracy, min_cosine, model.name)
    return fast


def _built(ov_model, precision, *, name, threads, held_out, reference, classification,
           rest="f32", timed=True):
    """The `OpenVINOModel` at `precision`, with its agreement with the Keras model's
    `reference` outputs on `held_out` measured, and (`timed`: a model that may be kept)
    its speed on them."""
    fast = OpenVINOModel(ov_model, precision=precision, accuracy={}, name=name,
                         threads=threads, rest=rest)
    fast.accuracy = _measure(fast(held_out), reference, classification)
    if timed:  # (the call above compiled and allocated: no warm-up needed)
        fast.speed = measure_speed(fast, held_out)
    return fast


def _int8_rests():
    """What an int8 model's unquantized ops are tried in: f32, and bf16 where the CPU
    computes in it (faster there, if its agreement holds)."""
    return ("f32", "bf16") if "BF16" in cpu_capabilities() else ("f32",)


def _fastest_within(gate, candidates):
    """Of the candidates (one model computing the rest in f32, then one in bf16), the
    first whose agreement meets `gate`, unless a later one that meets it too is faster by
    BF16_REST_MARGIN (f32 is the more exact: bf16 must pay for itself); if none meets
    it, the most exact (which the gate then refuses). Where there were two, both's
    figures go into its accuracy record ("rests")."""
    passing = [c for c in candidates if c.accuracy["cosine_min"] >= gate]
    chosen = max(candidates, key=lambda c: c.accuracy["cosine_min"])
    if passing:
        chosen = passing[0]
        for other in passing[1:]:
            if other.speed["images_per_s"] >= BF16_REST_MARGIN * chosen.speed["images_per_s"]:
                chosen = other
    if len(candidates) > 1:
        chosen.accuracy["rests"] = {
            c.rest: {"cosine_min": c.accuracy["cosine_min"],
                     "images_per_s": c.speed["images_per_s"]} for c in candidates}
    return chosen


def _check_model(model):
    import keras

    if not all(hasattr(model, a) for a in ("image_size", "include_top", "name")):
        raise ConfigError(f"to_openvino takes a vit_hub model (VisionTransformer), got "
                          f"{type(model).__name__}.")
    policy = keras.dtype_policies.get(model.dtype_policy)
    if policy.compute_dtype != "float32" or policy.variable_dtype != "float32":
        raise ConfigError(
            f"to_openvino takes a float32 model; {model.name!r} has dtype policy "
            f"{policy.name!r}. Load it in float32 and pick the runtime's precision with "
            "precision='bf16' or 'int8'.")


def _import_nncf():
    try:
        with _quiet():  # NNCF starts its telemetry when imported
            import nncf
    except ImportError:
        raise MissingDependencyError("int8 needs NNCF to quantize: pip install "
                                     "'vit_hub[openvino]'.") from None
    return nncf


def calibration_digest(images, image_size):
    """What identifies a calibration set in the IR cache's key."""
    if images is None:
        return f"default: {photos.CALIBRATION_IMAGES} {photos.SOURCE}"
    batch, _ = calibration_set(images, image_size)
    return hashlib.sha256(batch.tobytes()).hexdigest()


def calibration_set(images, image_size):
    """(calibration images in [-1, 1], where they come from), checked before any work."""
    if images is None:
        return photos.calibration_images(image_size), f"default: {photos.SOURCE}"
    from vit_hub.preprocessing import preprocess

    if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
        images = _folder_images(os.fspath(images))
    batch = preprocess(images, image_size)
    if len(batch) < MIN_CALIBRATION:
        raise ImageError(f"int8 calibration needs at least {MIN_CALIBRATION} images, got "
                         f"{len(batch)}: pass more, or calibration=None for the default "
                         f"{photos.CALIBRATION_IMAGES} photos.")
    return batch, f"{len(batch)} images given"


def _folder_images(folder):
    """The image files of a calibration folder, by extension as vit-embed takes them
    (searched recursively; hidden files and folders, such as macOS' `._*` files, are
    skipped), sorted."""
    from vit_hub.embed.sources import IMAGE_EXTENSIONS  # (stdlib only: no Ray, no fsspec)

    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [os.path.join(parent, name) for name in names
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ImageError(
            f"There are no image files in the calibration folder {folder} (searched "
            f"recursively for {', '.join(IMAGE_EXTENSIONS)}, in any case): put at least "
            f"{MIN_CALIBRATION} images like yours there, or pass calibration=None for the "
            f"default {photos.CALIBRATION_IMAGES} photos.")
    return sorted(found)


def trace(model):
    """The model as an `openvino.Model`, through Keras' own export, with one input
    ('images', batch dynamic) and its one output ('output_0')."""
    import keras

    openvino = import_openvino()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.xml")
        signature = [keras.InputSpec(shape=(None, *model.image_size, 3), dtype="float32")]
        with _quiet():
            model.export(path, format="openvino", verbose=False, input_signature=signature)
        # Read into memory (no mmap): the files go with the temporary folder.
        traced = core().read_model(path, config={"ENABLE_MMAP": False})
    # TensorFlow's trace also returns shape scalars the graph computed on the way.
    result = traced.get_results()[0]
    ov_model = openvino.Model([result], traced.get_parameters(), model.name)
    ov_model.input(0).get_tensor().set_names({"images"})
    ov_model.output(0).get_tensor().set_names({"output_0"})
    expected = tuple(model.output_shape[1:])
    found = tuple(int(d.get_length()) for d in list(ov_model.output(0).get_partial_shape())[1:])
    if found != expected:
        raise ConfigError(f"The OpenVINO trace of {model.name!r} gives outputs {found}, the "
                          f"model {expected}; this model cannot be traced.")
    return ov_model


def quantize(ov_model, images):
    """NNCF post-training int8 quantization on `images` (one per calibration step)."""
    nncf = _import_nncf()
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    with _quiet():
        return nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(images))


@contextlib.contextmanager
def _quiet():
    """OpenVINO's converter and NNCF, as vit_hub runs them inside a library call: what
    they print (progress bars, INFO lines) is not what its user needs on the terminal
    (warnings still pass). Their usage reports are the user's choice, made once for the
    machine (`opt_in_out --opt_out`, see the docs' OpenVINO page): a library call changes
    neither the process environment nor their settings."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def _keras_outputs(model, images):
    import keras

    return keras.ops.convert_to_numpy(model.predict_on_batch(images))


def _measure(outputs, reference, classification):
    report = compare(outputs, reference, classification=classification)
    agreement = cosines(outputs, reference, TOLERANCE * report.scale)
    return {
        "images": report.batch, "held_out": photos.SOURCE,
        "max_abs": report.max_abs, "cosine_min": float(agreement.min()),
        "cosine_mean": float(agreement.mean()),
        "top1_agreement": report.top1_agreement, "top5_agreement": report.top5_agreement,
        "scale": report.scale, "cpu": cpu_capabilities(),
    }


def cosines(outputs, reference, tolerance):
    """The cosine similarity of each image's outputs (rows, last axis) to the reference's,
    defined where the plain formula is 0/0: an image whose two output vectors both have
    an L2 norm of at most `tolerance` (`_measure` passes the fp32 parity gate's absolute
    tolerance, 1e-4 x the output's scale) agrees exactly, 1: both are zero as far as the
    gate can tell (a fresh zero-initialised head gives exact zeros on both sides). Zero
    on one side only is 0, a disagreement, as are orthogonal outputs; opposite ones -1."""
    a, b = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    both_zero = (norm_a <= tolerance) & (norm_b <= tolerance)
    plain = np.sum(a * b, -1) / np.maximum(norm_a * norm_b, 1e-300)
    return np.where(both_zero, 1.0, np.clip(plain, -1.0, 1.0))


def _check_exact(accuracy, name):
    tolerance = TOLERANCE * accuracy["scale"]
    accuracy["tolerance"] = tolerance
    if accuracy["max_abs"] > tolerance:
        raise AccuracyError(
            f"OpenVINO fp32 of {name!r} is {accuracy['max_abs']:.2e} off the Keras model "
            f"(gate {tolerance:.1e}): the trace does not compute what the model computes. "
            "Please report it; use the Keras model meanwhile.")


def gate_for(precision, min_cosine):
    """The least cosine a bf16/int8 model must reach: `min_cosine`, or its default."""
    return GATES[precision] if min_cosine is None else min_cosine


def check_gate(precision, accuracy, min_cosine, name):
    """AccuracyError unless a bf16/int8 model's measured agreement meets `min_cosine`
    (default GATES; checked by `options.check_min_cosine` at the entry points); records
    the gate applied. Also checked on a cache hit, since an IR cached under a looser gate
    must not pass a stricter one. The advice is the precision's own: int8 can be
    calibrated, bf16 (weights and activations rounded, nothing fitted) cannot."""
    if precision == "fp32":
        return
    gate = gate_for(precision, min_cosine)
    accuracy["gate_cosine_min"] = gate
    if accuracy["cosine_min"] < gate:
        if precision == "int8":
            advice = ("Calibrate on more images like yours (calibration=...), or use "
                      "precision='fp32' or 'bf16'")
        else:
            advice = ("bf16 takes no calibration (it rounds weights and activations, nothing "
                      "is fitted to data): use precision='fp32' (exact)")
        raise AccuracyError(
            f"OpenVINO {precision} of {name!r} agrees with fp32 only to cosine "
            f"{accuracy['cosine_min']:.5f} on its worst held-out image (gate {gate}); it "
            f"is not used or cached. {advice}, or accept this agreement with a lower "
            f"min_cosine= (default {GATES[precision]}).")
