"""vit_hub against hub.KerasLayer, and against the machine's limit.

    python -m benchmarks.run --models vit_b32_fe --json out/bench.json
    python -m benchmarks.run compare --json out/compare.json     # every variant
    python -m benchmarks.run embed --json out/embed.json         # vit-embed vs predict
    python -m benchmarks.run finetune --json out/finetune.json   # fit vs the hub layer
    python -m benchmarks.run openvino-settings   # OpenVINO's settings, PERF_COUNT
    python -m benchmarks.run serve --json out/serve.json         # vit-serve under load
    python -m benchmarks.run --smoke                             # tiny, minutes (CI)

This process only orchestrates: every figure is measured in a fresh child process, one
at a time (`benchmarks.child`), and the report is `benchmarks.report`'s, from the JSON.
Checkpoints are full-size models in the published format with random weights, built
by `vit_hub.conversion.published_format` into out/bench/, and reused. Figures:
- the machine: its CPU class (model, AVX2/AVX-512F/AVX512_VNNI/AVX512_BF16/AMX) and its
  fp32 and bf16 matmul GFLOP/s (`machine`);
- conversion (`convert_into_cache` from the SavedModel): time and peak RSS, next to the
  raw I/O floor (read the source bytes, write as many bytes) (`startup`);
- first prediction from a warm cache, fresh processes, alternating: `load_pretrained` +
  first call, `hub.KerasLayer(saved_model_dir)` + first call, OpenVINO from its IR cache
  (no TensorFlow), imports excluded (`startup`);
- per Keras backend (TensorFlow, JAX, PyTorch), for the first model named: load + first
  call, and images/s of `model(x)`, `predict_on_batch` and bf16 `model(x)` (`throughput`);
- agreement with fp32 `model(x)` of Keras bf16 and int8, OpenVINO fp32/int8/bf16
  (`vit_hub.to_openvino`; bf16 where the CPU computes in it) and ONNX Runtime fp32 and
  dynamic int8 (measured only: offered where it beats OpenVINO) (`accuracy`);
- steady throughput at each batch size, each contender in its own process where only its
  engine is loaded: the hub layer; `model(x)` fp32 and bf16, `predict_on_batch`, XLA,
  and at the smallest batch Keras int8 and the op-by-op eager path; OpenVINO from the
  saved IRs; ONNX Runtime from the .onnx files. Each: median, min, max and every round's
  images/s, and the share of the matmul peak (fp32's, bf16's for bf16 paths)
  (`throughput`).
"""

import argparse
import json
import os
import tempfile
import time

from benchmarks import accuracy, machine, report, startup, throughput
from benchmarks.common import REPO, WORK, flops_per_image, register_smoke, smoke_model


def bench_model(name, args, host, smoke):
    """Every figure of one model (`smoke`: its stand-in's registration, or None)."""
    import vit_hub

    arch = vit_hub.get_entry(name).architecture
    size = arch.image_size[0]
    repeats = 1 if args.smoke else args.repeats
    source, cache = startup.prepare(name, smoke, convert=False)  # converted just below
    result = {"model": name, "checkpoint": "test-built, published format, random weights",
              "conversion": startup.conversion(name, source, cache, repeats, smoke),
              "first_prediction": startup.first_prediction(name, source, cache, size, repeats,
                                                           smoke)}
    if name == args.backends_model:  # one model: ~1 min for B/32, ~7 for B/16
        result["backends"] = throughput.backends(name, cache, size, args.batch, args.rounds,
                                                 args.min_seconds, smoke)
    flops = flops_per_image(arch)
    # The IR and ONNX files (~0.35 GB each per precision and batch size for ViT-B) are
    # kept until the throughput children have loaded them.
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        result["onnxruntime"], onnx_files, agreed = accuracy.measure(
            name, cache, size, args.batch, folder, smoke)
        result["openvino"] = agreed["openvino"]
        result["cosine_to_fp32"] = agreed["cosine_to_fp32"]
        result["max_abs_to_fp32"] = agreed["max_abs_to_fp32"]
        found = throughput.contenders(name, source, cache, agreed["ir"], onnx_files)
        measured = throughput.measure(found, size, args.batch, args.rounds, args.min_seconds,
                                      smoke)
    result["flops_per_image"] = flops
    result["tokens"] = (size // arch.patch_size) ** 2 + 1  # with the class token
    result["width"] = arch.hidden_dim
    result["machine_matmul_gflops_fp32"] = host["matmul_gflops_fp32"]
    result["machine_matmul_gflops_bf16"] = host["matmul_gflops_bf16"]
    result["throughput_method"] = {
        "rounds": args.rounds, "min_seconds": args.min_seconds, "warmup_calls": 2,
        "isolation": "one fresh process per contender, one after another"}
    result["throughput"], result["throughput_processes"] = throughput.tabulate(
        measured, args.batch, flops, host)
    result.update(report.assess(result))
    return result


def first_model(args):
    """(name, stand-in registration or None) of the first model named: in smoke mode its
    tiny stand-in, registered here too."""
    name = args.models.split(",")[0]
    if not args.smoke:
        return name, None
    name, smoke = smoke_model(name)
    register_smoke(name, smoke["fields"])
    return name, smoke


def embed(args):
    """vit-embed (1 and 2 workers) against a plain predict loop: benchmarks/embed.py."""
    from benchmarks.embed import bench_embed

    name, smoke = first_model(args)
    _, cache = startup.prepare(name, smoke)
    return bench_embed(name, cache, os.path.join(WORK, "embed_images"), smoke,
                       count=12 if args.smoke else 512, batch=4 if args.smoke else 32,
                       repeats=1 if args.smoke else 2)


def serve(args):
    """vit-serve at 1, 8, 32 clients against in-process batches: benchmarks/serve.py."""
    from benchmarks.serve import bench_serve

    name, smoke = first_model(args)
    _, cache = startup.prepare(name, smoke)
    return bench_serve(name, cache, os.path.join(WORK, "embed_images"), smoke,
                       count=16 if args.smoke else 256, max_batch=32,
                       seconds=1.0 if args.smoke else 10.0)


def finetune(args, host):
    """The hub trainable layer against vit_hub's fit per backend and precision, and full
    fine-tuning against LoRA: benchmarks/finetune.py."""
    import vit_hub
    from benchmarks.finetune import bench_finetune

    name, smoke = first_model(args)
    source, cache = startup.prepare(name, smoke)
    arch = vit_hub.get_entry(name).architecture
    result = bench_finetune(name, source, cache, arch.image_size[0], flops_per_image(arch),
                            host["matmul_gflops_fp32"], smoke,
                            rounds=1 if args.smoke else args.repeats,
                            steps=1 if args.smoke else 5)
    result["targets"] = report.finetune_targets(result["contenders"])
    return result


def openvino_settings(args):
    """OpenVINO fp32 under its own settings, and where its time goes:
    benchmarks/openvino_settings.py."""
    import vit_hub
    from benchmarks.openvino_settings import bench_settings

    name, smoke = first_model(args)
    _, cache = startup.prepare(name, smoke)
    size = vit_hub.get_entry(name).architecture.image_size[0]
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        return bench_settings(name, cache, size, args.batch, args.rounds, args.min_seconds,
                              folder, smoke)


def main(argv=None):
    parser = argparse.ArgumentParser(description="vit_hub benchmarks")
    parser.add_argument("mode", nargs="?",
                        choices=["models", "compare", "embed", "finetune", "serve",
                                 "openvino-settings"],
                        default="models")
    parser.add_argument("--models", default="vit_b32_fe", help="comma-separated names")
    parser.add_argument("--variants", default=None, help="compare: comma-separated variants")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh-process runs of first prediction, conversion, fine-tuning")
    parser.add_argument("--rounds", type=int, default=None,
                        help="throughput rounds per contender and batch (default 5; 2 --smoke)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="least seconds of a throughput round (default 1; 0.2 --smoke)")
    parser.add_argument("--json", default=os.path.join(REPO, "out", "bench.json"))
    parser.add_argument("--png", default=None, help="chart (default: beside the JSON)")
    parser.add_argument("--markdown", default=None, help="also write the report's tables")
    parser.add_argument("--smoke", action="store_true", help="tiny models, short rounds (CI)")
    args = parser.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    args.variants = args.variants.split(",") if args.variants else None
    args.rounds = args.rounds or (2 if args.smoke else 5)
    args.min_seconds = args.min_seconds or (0.2 if args.smoke else 1.0)
    os.makedirs(WORK, exist_ok=True)
    started = time.perf_counter()
    if args.mode == "compare":
        from benchmarks.compare import bench_compare

        result = {"machine": machine.describe(),
                  "compare": bench_compare(args.variants, args.smoke)}
    elif args.mode == "embed":
        result = {"machine": machine.describe(), "embed": embed(args)}
    elif args.mode == "openvino-settings":
        result = {"machine": machine.describe(), "openvino_settings": openvino_settings(args)}
    elif args.mode == "serve":
        result = {"machine": machine.describe(), "serve": serve(args)}
    elif args.mode == "finetune":
        host = machine.measure()
        result = {"machine": host, "finetune": finetune(args, host)}
    else:
        host = machine.measure()
        print(report.measured_on(host), flush=True)
        names = args.models.split(",")
        stand_ins = {}
        if args.smoke:
            for real in names:
                name, smoke = smoke_model(real)
                register_smoke(name, smoke["fields"])
                stand_ins[name] = smoke
            names = list(stand_ins)
        args.backends_model = names[0]  # the per-backend figures: the first model's
        result = {"machine": host,
                  "models": [bench_model(name, args, host, stand_ins.get(name))
                             for name in names]}
        report.chart(result["models"], args.png or os.path.splitext(args.json)[0] + ".png")
    result["wall_s"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(report.text(result))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(result))
    print(f"\nwrote {args.json} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
