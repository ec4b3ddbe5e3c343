"""Fine-tuning speed: `hub.KerasLayer(trainable=True)` against vit_hub on each backend and
precision, and full fine-tuning against LoRA.

    python -m benchmarks.run finetune --models vit_b32_fe --json out/finetune.json

Every contender is the Kaggle cards' flow, backbone + `Dense(10)`, Adam, batch 16, in a
fresh process as a user runs it: the hub layer under tf_keras (TF_USE_LEGACY_KERAS=1, the
one way it trains), vit_hub under Keras 3 with KERAS_BACKEND set. A step is
`train_on_batch` (what `fit` runs per batch); after two warm-up steps (tracing,
compilation, allocation) the median of the timed steps is taken, and the process's peak
RSS. Rounds alternate the contenders, so drift hits them alike. A run is the task
`train_steps` (`python -m benchmarks.finetune train_steps '<json>'`).
"""

import statistics
import time

from benchmarks import child

# (key, backend, dtype policy, LoRA rank or None, jit_compile, rounds); the hub layer is
# "hub". vit_hub's flow is the native model with a new head, compiled as Keras does by
# default (vit_hub's compile picks XLA for TensorFlow at float32); "_keras_default" is the
# backbone inside a user's own functional model, which Keras compiles without XLA on CPU.
CONTENDERS = [
    ("hub", "tensorflow", None, None, "auto", 2),
    ("tensorflow_fp32", "tensorflow", "float32", None, "auto", 2),
    ("tensorflow_fp32_keras_default", "tensorflow", "float32", None, False, 1),
    ("tensorflow_bf16", "tensorflow", "mixed_bfloat16", None, "auto", 1),
    ("jax_fp32", "jax", "float32", None, "auto", 1),
    ("jax_bf16", "jax", "mixed_bfloat16", None, "auto", 1),
    ("torch_fp32", "torch", "float32", None, "auto", 1),
    ("torch_bf16", "torch", "mixed_bfloat16", None, "auto", 1),
    ("tensorflow_fp32_lora", "tensorflow", "float32", 8, "auto", 1),
    ("jax_fp32_lora", "jax", "float32", 8, "auto", 1),
    ("torch_fp32_lora", "torch", "float32", 8, "auto", 1),
]
BATCH, CLASSES = 16, 10
# bf16 emulated this slowly (PyTorch's CPU bf16 without AVX512_BF16: 0.01x) would take
# minutes a step: reported with its measured matmul rate, not timed.
SLOWEST_BF16 = 0.25

# === The task (each run is a child) ===


def train_steps(kind, name, source, cache, policy, rank, jit, size, steps, budget):
    """`train_on_batch` of the hub layer (`kind` "hub", under tf_keras) or of vit_hub's
    model (`kind` "native", under Keras 3) + Dense(CLASSES): the median step after two
    warm-up steps, the process's peak RSS."""
    import warnings

    import numpy as np

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH)
    if kind == "hub":
        model = _hub_model(source, size)
    else:
        from vit_hub import precision

        if policy == "mixed_bfloat16" and precision.bf16_speedup() < SLOWEST_BF16:
            return {"error": f"bf16 emulated: matmuls at {precision.bf16_speedup():.2f}x "
                    "the float32 rate, not timed"}
        model = _native_model(name, cache, size, policy, rank, jit)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    times = []
    for step in range(2 + steps):
        start = time.perf_counter()
        loss = float(np.asarray(model.train_on_batch(x, y)))
        times.append(time.perf_counter() - start)
        if step >= 2 and sum(times[2:]) > budget:
            break
    timed = times[2:]
    return {"step_s": sorted(timed)[len(timed) // 2], "warmup_s": times[:2],
            "steps": len(timed), "trainable_params": trainable,
            "peak_rss_bytes": child.peak_rss(), "loss": loss}


def _hub_model(source, size):
    import tensorflow_hub as hub
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((size, size, 3)),
                                 hub.KerasLayer(source, trainable=True),
                                 tf_keras.layers.Dense(CLASSES)])
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-5),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _native_model(name, cache, size, policy, rank, jit):
    import keras

    import vit_hub

    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True, dtype=policy,
                                    include_top=True, num_classes=CLASSES)
    if rank:
        model.enable_lora(rank)
    if jit is False:  # the backbone in the user's own model, compiled as Keras does
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, model(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1e-5), jit_compile=jit,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


TASKS = {"train_steps": train_steps}


# === The parent's side ===


def run_one(kind, backend, name, source, cache, policy, rank, jit, size, steps, budget,
            smoke):
    """One fresh-process run, or {"error": the last line of its stderr}."""
    env = {"TF_USE_LEGACY_KERAS": "1"} if kind == "hub" else {}  # the hub layer trains
    try:                                                          # under tf_keras only
        return child.run("finetune", "train_steps", {
            "kind": kind, "name": name, "source": source, "cache": cache, "policy": policy,
            "rank": rank, "jit": jit, "size": size, "steps": steps, "budget": budget},
            backend=backend, smoke=smoke, env=env)
    except child.ChildError as err:
        return {"error": err.last_line}


def bench_finetune(name, source, cache, size, flops_per_image, peak_gflops, smoke=None,
                   rounds=2, steps=5, budget=40.0):
    """{contender: median step seconds, steps/s, ratio to the hub's best, peak RSS, %
    of the fp32 matmul peak}, from `rounds` alternating fresh-process runs."""
    runs = {key: [] for key, *_ in CONTENDERS}
    for round_ in range(rounds):
        for key, backend, policy, rank, jit, repeats in CONTENDERS:
            if round_ < min(repeats, rounds):
                kind = "hub" if key == "hub" else "native"
                runs[key].append(run_one(kind, backend, name, source, cache, policy, rank,
                                         jit, size, steps, budget, smoke))
    hub_best = min(r["step_s"] for r in runs["hub"] if "step_s" in r)
    # Forward + backward: about 3x the forward's FLOPs (a frozen kernel skips its weight
    # gradient, so LoRA's bound is lower: reported against the same 3x for comparison).
    step_gflop = 3 * flops_per_image * BATCH / 1e9
    results = {}
    for key, rows in runs.items():
        good = [r for r in rows if "step_s" in r]
        if not good:
            results[key] = {"error": rows[0]["error"]}
            continue
        step = statistics.median(r["step_s"] for r in good)
        results[key] = {
            "step_s": step, "step_s_runs": [r["step_s"] for r in good],
            "steps_per_s": 1 / step, "images_per_s": BATCH / step,
            "vs_hub_best": hub_best / step,
            "every_run_vs_hub_best": min(hub_best / r["step_s"] for r in good),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in good),
            "trainable_params": good[0]["trainable_params"],
            "fp32_peak_pct": 100 * step_gflop / step / peak_gflops,
        }
    return {"model": name, "batch": BATCH, "classes": CLASSES, "step_gflop": step_gflop,
            "hub_best_step_s": hub_best, "contenders": results}


if __name__ == "__main__":
    child.main(TASKS)
