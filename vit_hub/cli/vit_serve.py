"""`vit-serve`: a model over HTTP, on Ray Serve: on this machine, or on a cluster with
--address.

    vit-serve vit_b32_fe                                  # http://127.0.0.1:8000
    vit-serve vit_b16_classification --port 8080 --replicas 2
    vit-serve vit_b32_fe --runtime openvino --precision int8 --max-batch 16
    vit-serve vit_b32_fe --address auto                   # a running Ray cluster

    curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/v1/embed

It prints the URL and the model line, then serves until Ctrl-C (SIGINT) or SIGTERM, and
shuts down what it started (Serve, and the Ray it started on this machine). Exit status:
1 the service failed, 2 usage error (or refused before anything started), 130 stopped.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading

from vit_hub import cli


def parse_args(argv):
    from vit_hub.serve.http import MAX_BYTES, MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="vit-serve",
        description="Serve a vit_hub model over HTTP (JSON), on Ray Serve: GET /v1/model, "
        "POST /v1/embed, POST /v1/classify?top_k=5, GET /v1/stats, GET /healthz.")
    parser.add_argument("model", metavar="NAME", help="e.g. vit_b32_fe")
    cli.add_runtime_arguments(parser, "the replicas run OpenVINO models")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="model replicas, each with its own model (default 1)")
    parser.add_argument("--max-batch", type=int, default=32, metavar="B",
                        help="requests that arrive together run as one batch of up to B "
                        "images (default 32)")
    parser.add_argument("--batch-wait-ms", type=float, default=10, metavar="MS",
                        help="how long a batch waits for more requests (default 10)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0: every "
                        "interface)")
    parser.add_argument("--port", type=int, default=8000, help="(default 8000)")
    cli.add_address_argument(parser)
    cli.add_cache_arguments(parser)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, metavar="BYTES",
                        help=f"largest upload taken (default {MAX_BYTES}); larger: 413")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="PIXELS",
                        help=f"largest image taken, width x height (default {MAX_PIXELS}); "
                        "larger: 413")
    parser.add_argument("--timeout-s", type=float, default=60, metavar="S",
                        help="longest a request waits for a model replica, then 503 "
                        "(default 60)")
    args = parser.parse_args(argv)
    cli.check_runtime_arguments(parser, args)
    for option in ("replicas", "max_batch", "max_bytes", "max_pixels"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got "
                         f"{getattr(args, option)}")
    if not 0 <= args.batch_wait_ms <= 10_000:
        parser.error(f"--batch-wait-ms must be from 0 to 10000, got {args.batch_wait_ms:g}")
    if not 0.1 <= args.timeout_s <= 3600:
        parser.error(f"--timeout-s must be from 0.1 to 3600, got {args.timeout_s:g}")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be from 1 to 65535, got {args.port}")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with cli.interruptible(), _stopped_by_sigterm():
        try:
            return run(args)
        except KeyboardInterrupt:  # Serve is shut down by now (see run)
            print("vit-serve: stopped; Serve shut down.", file=sys.stderr)
            return 130


@contextlib.contextmanager
def _stopped_by_sigterm():
    """SIGTERM (a service manager's stop) stops the service as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args):
    from vit_hub.errors import ServeError, VitHubError

    try:
        served = start(args)
    except ServeError as err:  # it started, and failed
        print(f"vit-serve: {err}", file=sys.stderr)
        return 1
    except VitHubError as err:
        print(f"vit-serve: {err}", file=sys.stderr)
        return 2
    from ray import serve

    try:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"vit-serve: serving at http://{host}:{args.port} (POST /v1/embed"
              f"{', /v1/classify' if served.description['classification'] else ''}; "
              "Ctrl-C stops it)", flush=True)
        print(f"model {served.summary()}", flush=True)
        while True:
            signal.pause()
    finally:  # interrupted: the application goes (its replicas drained), then the Ray
        # this command started goes with Serve's controller and proxies; on a cluster,
        # its other applications stay
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve.delete(_app_name())


def start(args):
    """The `Served` application, once it runs; VitHubError for what is refused
    before anything starts (model, runtime, port, address, cache) or fails to start."""
    import logging

    from vit_hub.cluster import check_address, connect
    from vit_hub.errors import ServeError
    from vit_hub.serve import INSTALL, build, check_port

    if args.address is None:  # with a cluster, Serve's proxies listen on its nodes
        check_port(args.host, args.port)
    check_address(args.address)
    served = build(args.model, runtime=args.runtime, precision=args.precision,
                   min_cosine=None, replicas=args.replicas, max_batch=args.max_batch,
                   batch_wait_ms=args.batch_wait_ms, cache_dir=args.cache_dir,
                   offline=args.offline or None, max_bytes=args.max_bytes,
                   max_pixels=args.max_pixels, timeout_s=args.timeout_s)
    connect(args.address, INSTALL)
    from ray import serve
    from ray.serve.exceptions import RayServeException

    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # ours says what matters
    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(served.application, name=_app_name(), route_prefix="/")
    except (RuntimeError, RayServeException) as err:  # a replica that cannot start
        raise ServeError(f"The service did not start: {err}") from None
    return served


def _app_name():
    from vit_hub.serve import APP_NAME

    return APP_NAME


if __name__ == "__main__":
    sys.exit(main())
