"""`convert-weights`: download, convert, verify and cache published ViTs ahead of time.

    convert-weights vit_b32_fe                   # from Kaggle, into the cache
    convert-weights vit_b32_fe --source DIR      # from a local SavedModel (or .npz)
    convert-weights --all                        # every model that has a converter
    convert-weights --list                       # models, cache state, recorded parity
    convert-weights vit_b32_fe --runtime openvino --precision int8   # also the OpenVINO IR
    convert-weights vit_b32_fe --runtime openvino --precision int8 --min-cosine 0.995

Exit status: 0 all converted, 1 a conversion, parity check or OpenVINO accuracy gate
failed, 2 usage error.
"""

import argparse
import os
import sys
import time

from vit_hub.cli import add_cache_arguments, add_runtime_arguments, check_runtime_arguments
from vit_hub.conversion.pipeline import STEPS


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="convert-weights",
        description="Download, convert, verify and cache the Kaggle / TF-Hub ViTs as native "
        "vit_hub weights.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="models, e.g. vit_b32_fe")
    parser.add_argument("--all", action="store_true", help="every model with a converter")
    parser.add_argument("--list", action="store_true", help="models, cache state, parity")
    parser.add_argument("--source", metavar="PATH",
                        help="a local hub SavedModel folder or original .npz instead of Kaggle")
    parser.add_argument("--reference", metavar="DIR",
                        help="hub SavedModel to verify an .npz source against")
    add_cache_arguments(parser, offline=False)
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the parity check against the hub model")
    parser.add_argument("--force", action="store_true", help="convert even if cached")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the weights (and FILE's .json metadata) here")
    add_runtime_arguments(parser, "also build and cache the OpenVINO IR")
    parser.add_argument("--min-cosine", type=min_cosine, metavar="C",
                        help="OpenVINO bf16/int8: the least cosine to fp32 on the worst "
                        "held-out image, in (0, 1]; below it the IR is refused and not "
                        "cached (default 0.999 for bf16, 0.99 for int8)")
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    if args.min_cosine is not None and args.runtime != "openvino":
        parser.error("--min-cosine is the OpenVINO runtime's: add --runtime openvino (and "
                     "--precision bf16 or int8, whose gate it is)")
    if args.list and args.runtime != "keras":
        parser.error("--list shows the weights cache; --runtime goes with NAMEs or --all")
    if sum([bool(args.names), args.all, args.list]) != 1:
        parser.error("give model NAMEs, or --all, or --list")
    if (args.source or args.output or args.reference) and len(args.names) != 1:
        parser.error("--source, --reference and --output go with exactly one NAME")
    if args.source and not os.path.exists(args.source):
        parser.error(f"--source {args.source}: no such file or folder")
    if args.output and os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a folder: give the path of the weights "
                     f"file to write, e.g. {os.path.join(args.output, 'NAME.h5')}")
    if args.cache_dir and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        parser.error(f"--cache-dir {args.cache_dir} is a file, not a folder")
    return args


def min_cosine(text):
    """--min-cosine's value, checked as `min_cosine=` is (`options.check_min_cosine`)."""
    from vit_hub.errors import VitHubError
    from vit_hub.runtime.options import check_min_cosine

    try:
        return check_min_cosine(float(text))
    except (ValueError, VitHubError):
        raise argparse.ArgumentTypeError(
            f"{text} is not a number in (0, 1]: the least cosine similarity to fp32, e.g. "
            "0.999 (leave it out for the precision's default gate)") from None


def main(argv=None):
    args = parse_args(argv)
    from vit_hub.catalogue import get_entry, list_models
    from vit_hub.errors import VitHubError

    if args.list:
        return print_list(list_models(), args.cache_dir)
    if args.all:
        names = [n for n in list_models() if get_entry(n).converter]
    else:
        try:  # the catalogue's names, whatever form was given
            names = [get_entry(name).name for name in args.names]
        except VitHubError as err:
            print(f"convert-weights: {err}", file=sys.stderr)
            return 2
    if args.runtime == "openvino":
        from vit_hub.runtime.options import check_runtime

        try:  # bf16 on a CPU without it, or no openvino: refused before any conversion
            args.precision = check_runtime(args.runtime, args.precision,
                                           min_cosine=args.min_cosine)
        except VitHubError as err:
            print(f"convert-weights: {err}", file=sys.stderr)
            return 2
    rows = [convert_one(name, args) for name in names]
    print_table(["model", "result", "parity max abs", "seconds", "weights"], rows)
    ok = all(row[1] in ("converted", "cached") for row in rows)
    if args.runtime == "openvino":  # only on weights that are now in the cache
        ok = all([build_ir(row[0], args) for row in rows if row[1] != "FAILED"]) and ok
    return 0 if ok else 1


def build_ir(name, args):
    """Builds (or finds) the cached OpenVINO IR of `name` and prints its measured
    agreement with fp32; False if it failed (an AccuracyError below the gate...)."""
    import functools

    import vit_hub
    from vit_hub.errors import CacheError, VitHubError
    from vit_hub.terminal import start_tensorflow_quietly

    load = functools.partial(vit_hub.load_pretrained, name, cache_dir=args.cache_dir,
                             runtime="openvino", precision=args.precision,
                             min_cosine=args.min_cosine)
    try:
        try:
            fast = load(offline=True)  # a cached IR: neither TensorFlow nor Keras
        except CacheError:  # not built yet: the Keras model is traced, on TensorFlow
            start_tensorflow_quietly()
            # The weights are cached by now, so this builds the IR here and downloads
            # nothing, also under VIT_HUB_OFFLINE (whose CacheError sends users here).
            fast = load(offline=False)
    except VitHubError as err:
        print(f"convert-weights: {name}: {err}", file=sys.stderr)
        return False
    print(f"{name}: {fast.summary()}")
    return True


def convert_one(name, args):
    from tqdm import tqdm

    from vit_hub.cache import CacheEntry, is_offline
    from vit_hub.conversion.pipeline import convert_into_cache
    from vit_hub.errors import VitHubError
    from vit_hub.terminal import start_tensorflow_quietly

    entry = CacheEntry(name, args.cache_dir)
    steps = []  # none when the entry was complete (also if another process made it)
    start = time.perf_counter()
    with tqdm(total=len(STEPS), desc=name, unit="step", file=sys.stderr, leave=False) as bar:

        def progress(step):
            if not steps:  # work to do (a cached entry has none): on TensorFlow
                start_tensorflow_quietly()
            steps.append(step)
            bar.set_postfix_str(step)
            bar.n = STEPS.index(step)
            bar.refresh()

        try:
            metadata = convert_into_cache(
                name, cache_dir=args.cache_dir, source=args.source, reference=args.reference,
                verify=not args.no_verify, force=args.force, offline=is_offline(),
                output=args.output, progress=progress,
            )
        except VitHubError as err:
            bar.close()
            print(f"convert-weights: {name}: {err}", file=sys.stderr)
            return [name, "FAILED", "-", f"{time.perf_counter() - start:.1f}", "-"]
    parity = metadata.get("parity")
    return [
        name,
        "converted" if steps else "cached",
        f"{parity['max_abs']:.2e}" if isinstance(parity, dict) else "not verified",
        f"{time.perf_counter() - start:.1f}",
        args.output or entry.weights_path,
    ]


def print_list(names, cache_dir):
    from vit_hub.cache import CacheEntry
    from vit_hub.catalogue import get_entry

    rows = []
    for name in names:
        entry, cache = get_entry(name), CacheEntry(name, cache_dir)
        state = cache.state() if entry.converter else "no converter yet"
        parity = (cache.metadata() or {}).get("parity") if state == "ok" else None
        rows.append([name, entry.handle, f"{entry.top1:.3f}" if entry.top1 else "-", state,
                     f"{parity['max_abs']:.2e}" if isinstance(parity, dict) else "-"])
    print_table(["model", "kaggle handle", "top-1 %", "cache", "parity max abs"], rows)
    return 0


def print_table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
