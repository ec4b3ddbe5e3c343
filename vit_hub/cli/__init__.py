"""The command-line tools, the top of the package: `convert_weights` is `convert-weights`,
`vit_embed` is `vit-embed`, `vit_serve` is `vit-serve` (pyproject.toml's entry points).
What they take and do alike is here."""

import contextlib
import signal
import sys
import threading

from vit_hub.runtime.options import DEFAULT_PRECISION, DEFAULT_RUNTIME, PRECISIONS, RUNTIMES


def add_runtime_arguments(parser, what):
    """--runtime and --precision; `what`: what the OpenVINO runtime builds here."""
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                        help=f"openvino: {what} (default {DEFAULT_RUNTIME})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"the OpenVINO model's precision (default {DEFAULT_PRECISION})")


def add_cache_arguments(parser, offline=True):
    """--cache-dir, and (`offline`) --offline."""
    parser.add_argument("--cache-dir", metavar="DIR", help="cache root (default: "
                        "$VIT_HUB_CACHE or the user cache folder)")
    if offline:
        parser.add_argument("--offline", action="store_true",
                            help="never download: the model must be cached")


def add_address_argument(parser):
    """--address of the Ray cluster a command joins (default: a Ray on this machine)."""
    parser.add_argument("--address", metavar="ADDR",
                        help="join this Ray cluster ('auto', 'ray://HOST:10001')")


def check_runtime_arguments(parser, args):
    if args.precision and args.runtime != "openvino":
        parser.error(f"--precision {args.precision} is the OpenVINO runtime's: add "
                     "--runtime openvino (the Keras model computes in fp32)")


@contextlib.contextmanager
def interruptible():
    """SIGINT raises KeyboardInterrupt for the command's run, also where the command was
    started with SIGINT ignored (a background job of a script, some launchers): Ctrl-C and
    `kill -INT` stop it. The Ray this command started is shut down before it returns, with
    SIGINT ignored (a second Ctrl-C would break Ray's shutdown mid-way); the handler the
    caller had is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ray_was_up = _ray_is_up()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if not ray_was_up and _ray_is_up():
                sys.modules["ray"].shutdown()
        finally:  # (None: one not set from Python: the default then)
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _ray_is_up():
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
