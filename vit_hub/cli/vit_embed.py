"""`vit-embed`: features (or logits and top-5 labels) of every image of a collection, into
a Parquet dataset, on Ray Data: on this machine, or on a cluster with --address.

    vit-embed vit_b32_fe photos/ --output embeddings/
    vit-embed vit_b16_classification 'shots/**/*.jpg' --output labels/ --workers 4
    vit-embed vit_b32_fe list.txt --output out/ --address auto     # a running Ray cluster
    vit-embed vit_b32_fe photos/ --output out/ --runtime openvino --precision int8

A rerun with the same --output resumes. Ctrl-C (SIGINT) stops the job, keeping the
finished shards. Exit status: 0 done (unreadable images are listed in OUT/_errors.csv),
1 the job failed, 2 usage error (or refused before any work), 130 interrupted.
"""

import argparse
import os
import sys

from vit_hub.cli import (
    add_address_argument,
    add_cache_arguments,
    add_runtime_arguments,
    check_runtime_arguments,
    interruptible,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="vit-embed",
        description="Embed every image of SOURCE with a vit_hub model into a Parquet "
        "dataset (one row per image), on Ray Data.")
    parser.add_argument("model", metavar="MODEL", help="e.g. vit_b32_fe")
    parser.add_argument("source", metavar="SOURCE", help="a folder (recursive), a glob, an "
                        "image, or a text file of paths/URLs (fsspec)")
    parser.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="folder of the Parquet dataset (resumed if it exists)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="Ray workers, each with its own model (default 1)")
    add_address_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32, metavar="B",
                        help="images per model call (default 32)")
    add_cache_arguments(parser)
    parser.add_argument("--cpus-per-worker", type=float, metavar="C",
                        help="default: the cluster's CPUs shared evenly")
    parser.add_argument("--gpus-per-worker", type=float, default=0, metavar="G")
    parser.add_argument("--retries", type=int, default=3, metavar="R",
                        help="runs of a shard after its worker died, before the job "
                        "stops (default 3)")
    add_runtime_arguments(parser, "the workers run OpenVINO models")
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.retries < 0:
        parser.error(f"--retries must be at least 0, got {args.retries}")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with interruptible():
        try:
            return run(args)
        except KeyboardInterrupt as err:  # the job's workers are stopped by now
            from vit_hub.embed import EmbedStopped

            stopped = err if isinstance(err, EmbedStopped) else EmbedStopped.at(args.output)
            print(f"vit-embed: {stopped}", file=sys.stderr)
            return 130


def run(args):
    from vit_hub.embed import embed_images
    from vit_hub.errors import EmbedError, VitHubError

    try:
        summary = embed_images(
            args.model, args.source, args.output, workers=args.workers,
            address=args.address, batch_size=args.batch_size, cache_dir=args.cache_dir,
            offline=args.offline or None, cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker, retries=args.retries,
            runtime=args.runtime, precision=args.precision)
    except EmbedError as err:  # the job ran and stopped: finished shards are kept
        print(f"vit-embed: {err}", file=sys.stderr)
        return 1
    except VitHubError as err:
        print(f"vit-embed: {err}", file=sys.stderr)
        return 2
    print(f"{summary.images} images embedded ({summary.images_per_second:.1f} img/s, "
          f"{summary.shards} shards), {summary.skipped} already done, "
          f"{summary.errors} unreadable -> {summary.output}")
    print(f"Computed by {summary.engine} on {summary.cpu}.")
    if summary.errors:
        print(f"Unreadable images and why: {os.path.join(summary.output, '_errors.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
