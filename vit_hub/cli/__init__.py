"""The command-line tools, the top of the package: `convert_weights` is `convert-weights`,
`vit_embed` is `vit-embed` (pyproject.toml's entry points). What both take alike is here."""

from vit_hub.runtime.options import DEFAULT_PRECISION, DEFAULT_RUNTIME, PRECISIONS, RUNTIMES


def add_runtime_arguments(parser, what):
    """--runtime and --precision; `what`: what the OpenVINO runtime builds here."""
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                        help=f"openvino: {what} (default {DEFAULT_RUNTIME})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"the OpenVINO model's precision (default {DEFAULT_PRECISION})")


def check_runtime_arguments(parser, args):
    if args.precision and args.runtime != "openvino":
        parser.error(f"--precision {args.precision} is the OpenVINO runtime's: add "
                     "--runtime openvino (the Keras model computes in fp32)")
