"""What a model can run on: the runtimes, OpenVINO's precisions, and the one check of a
runtime with its options, for `load_pretrained`, `embed_images` and the command-line
tools (whose --runtime and --precision choices are these tuples).

Light: imports neither Keras nor OpenVINO (only a bf16 request asks OpenVINO whether this
CPU has it), so that `--help` and usage errors stay instant.
"""

from vit_hub.errors import ConfigError

RUNTIMES = ("keras", "openvino")
DEFAULT_RUNTIME = "keras"
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_PRECISION = "fp32"  # exact: what the Keras model computes in


def check_runtime(runtime, precision=None, **openvino_options):
    """The precision `runtime` computes at: fp32 for Keras; for OpenVINO `precision`
    (default fp32), checked by `check_precision`. A ConfigError for an unknown runtime,
    for OpenVINO options given to Keras (`precision` and `openvino_options` such as
    min_cosine=, those not None: they would be ignored), and for calibration= at a
    precision other than int8."""
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
    return precision


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
