"""The command-line tools, the top of the package: `convert_weights` is `convert-weights`,
`vit_embed` is `vit-embed` (pyproject.toml's entry points). What both take alike is here."""


def add_runtime_arguments(parser, what):
    """--runtime and --precision; `what`: what the OpenVINO runtime builds here."""
    parser.add_argument("--runtime", choices=["keras", "openvino"], default="keras",
                        help=f"openvino: {what} (default keras)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"],
                        help="the OpenVINO model's precision (default fp32)")


def check_runtime_arguments(parser, args):
    if args.precision and args.runtime != "openvino":
        parser.error(f"--precision {args.precision} is the OpenVINO runtime's: add "
                     "--runtime openvino (the Keras model computes in fp32)")
