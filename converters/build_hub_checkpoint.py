"""Build a checkpoint in the format of the published Kaggle / TF-Hub ViTs.

    python converters/build_hub_checkpoint.py --arch b32 --kind fe --out DIR [--npz F.npz]
    python converters/build_hub_checkpoint.py --from-npz B_32.npz --kind fe --out DIR

Random weights (seeded) or the tensors of an original google-research .npz, exported
with the published recipe (Flax + jax2tf, `vit_hub.conversion.published_format`), so that
`convert-weights NAME --source DIR` and parity can be tried without reaching Kaggle.
Needs the `hub-format` extra: `pip install -e ".[hub-format]"`.
"""

import argparse
import sys

from vit_hub.terminal import start_tensorflow_quietly

# Before published_format imports TensorFlow: its C++ start-up lines kept off the
# terminal, as the library leaves that to the entry points.
start_tensorflow_quietly()
from vit_hub.conversion import published_format as hub  # noqa: E402


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(hub.ARCHS),
                    help="published shape; omit to give a custom one")
    ap.add_argument("--kind", choices=hub.KINDS, required=True)
    ap.add_argument("--out", required=True, help="SavedModel directory")
    ap.add_argument("--npz", help="also write the params as an original npz")
    ap.add_argument("--from-npz", help="export these params instead of random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=224)
    for name in ("hidden-dim", "num-layers", "num-heads", "mlp-dim",
                 "patch-size", "num-classes"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--signature-batch", type=int, default=None,
                    help="batch of serving_default (default: None = any)")
    ap.add_argument("--platforms", nargs="+", choices=("cpu", "cuda", "rocm", "tpu"),
                    help="jax2tf lowering platforms (default: JAX's backend)")
    return ap.parse_args(argv)


def _config_from_args(args) -> "hub.HubConfig":
    base = hub.ARCHS[args.arch] if args.arch else None
    fields = {}
    for f in ("patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim",
              "num_classes"):
        value = getattr(args, f)
        if value is None and base is not None:
            value = getattr(base, f)
        if value is None and f == "num_classes":
            value = 1000
        if value is None:
            raise SystemExit(f"--{f.replace('_', '-')} is needed without --arch")
        fields[f] = value
    return hub.HubConfig(image_size=args.image_size, **fields)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.from_npz:
        params = hub.read_npz(args.from_npz)
        if args.kind == "fe":
            params.pop("head", None)  # as the notebook does for fe models
        elif "head" not in params:
            raise SystemExit("classification export needs an npz with a head")
        config = hub.config_from_params(params, args.image_size, args.num_heads)
    else:
        config = _config_from_args(args)
        params = hub.init_params(config, args.kind, args.seed)
    if args.npz:
        hub.write_npz(params, args.npz)
    hub.export_saved_model(params, config, args.kind, args.out,
                           signature_batch=args.signature_batch,
                           platforms=tuple(args.platforms) if args.platforms else None)
    print(f"wrote {args.kind} {config} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
