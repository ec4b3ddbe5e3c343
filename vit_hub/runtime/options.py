"""What a model can run on: the runtimes, OpenVINO's precisions, and the one check of a
runtime with its options, for `load_pretrained`, `embed_images` and the command-line
tools (whose --runtime and --precision choices are these tuples).

Light: imports neither Keras nor OpenVINO (only a bf16 request asks OpenVINO whether this
CPU has it), so that `--help` and usage errors stay instant.
"""

import math

from vit_hub.architecture import is_int, is_number
from vit_hub.errors import ArgumentError, ConfigError

# What an int8 model's unquantized ops compute in (`OpenVINOModel`'s `rest`).
INT8_RESTS = ("f32", "bf16")
RUNTIMES = ("keras", "openvino")
DEFAULT_RUNTIME = "keras"
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_PRECISION = "fp32"  # exact: what the Keras model computes in


def check_runtime(runtime, precision=None, **openvino_options):
    """The precision `runtime` computes at: fp32 for Keras; for OpenVINO `precision`
    (default fp32), checked by `check_precision`. A ConfigError for an unknown runtime,
    for OpenVINO options given to Keras (`precision` and `openvino_options` such as
    min_cosine=, those not None: they would be ignored), and for calibration= at a
    precision other than int8. `min_cosine=` and `threads=` are checked by
    `check_min_cosine` and `check_threads`. The one check of these options for
    `to_openvino`, `load_pretrained`, `embed_images` and `convert-weights`."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not one of "
                          f"{', '.join(repr(r) for r in RUNTIMES)}.")
    options = {"precision": precision, **openvino_options}
    given = [f"{key}=" for key, value in options.items() if value is not None]
    if runtime == "keras":
        if given:
            raise ConfigError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} the OpenVINO "
                "runtime's: add runtime='openvino' (the Keras model computes in fp32; for "
                "Keras mixed precision, dtype='mixed_bfloat16').")
        return DEFAULT_PRECISION
    precision = check_precision(DEFAULT_PRECISION if precision is None else precision)
    if openvino_options.get("calibration") is not None and precision != "int8":
        raise ConfigError(f"calibration= is for precision='int8', not {precision!r}.")
    check_min_cosine(openvino_options.get("min_cosine"))
    check_threads(openvino_options.get("threads"))
    return precision


def check_min_cosine(min_cosine):
    """`min_cosine` (None: the precision's default gate) if it is a gate a model can meet:
    a number in (0, 1] (a cosine similarity is at most 1; 0 or less would pass a model
    that computes nothing like fp32). ArgumentError for another type, ConfigError for a
    value outside."""
    if min_cosine is None:
        return None
    if not is_number(min_cosine):
        raise ArgumentError(f"min_cosine must be a number in (0, 1] (the least cosine "
                            f"similarity to fp32 on the worst held-out image), got "
                            f"{min_cosine!r}; or None for the precision's default gate.")
    if not (math.isfinite(min_cosine) and 0 < min_cosine <= 1):
        raise ConfigError(f"min_cosine must be in (0, 1], got {min_cosine!r}: a cosine "
                          "similarity is at most 1, and a gate of 0 or less passes anything. "
                          "Give e.g. 0.999, or None for the precision's default gate.")
    return float(min_cosine)


def check_threads(threads):
    """`threads` (None: all the CPU's) if it is a number of CPU threads OpenVINO can take:
    an int, at least 1. ArgumentError for another type, ConfigError for a value below."""
    if threads is None:
        return None
    if not is_int(threads):
        raise ArgumentError(f"threads must be an int (CPU threads for inference), got "
                            f"{threads!r}; or None for all of them.")
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}; or None for all the "
                          "CPU's threads.")
    return int(threads)


def check_batch_size(batch_size):
    """`batch_size` if it is an int of at least 1: ArgumentError for another type (a float
    or a string would fail inside the slicing), ConfigError for a value below 1."""
    if not is_int(batch_size):
        raise ArgumentError(f"batch_size must be an int, got {batch_size!r}: the images per "
                            "inference call, e.g. batch_size=32.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}: the images per "
                          "inference call, e.g. batch_size=32.")
    return int(batch_size)


def check_precision(precision):
    """ConfigError for an unknown precision, or bf16 on a CPU without bf16 instructions:
    the plugin would compute in f32 and the result would be called bf16 falsely."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: "
                          "fp32 is exact, bf16 and int8 are faster and record their cost.")
    if precision == "bf16":
        from vit_hub.runtime.engine import cpu_capabilities

        if "BF16" not in cpu_capabilities():
            raise ConfigError(
                f"precision 'bf16' needs a CPU with bf16 instructions (AVX512_BF16 or AMX); "
                f"this one offers {', '.join(cpu_capabilities())}, so OpenVINO would compute "
                "in fp32 under a bf16 label. Use precision='fp32' (exact) or 'int8'.")
    return precision
