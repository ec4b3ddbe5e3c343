"""Every variant (`python -m benchmarks.run compare`): parameters, tokens, GFLOPs, batch-1
XLA images/s and peak RSS, each variant in a fresh process (task `variant_cost`)."""

import time

from benchmarks import child
from benchmarks.common import flops_per_image


def variant_cost(variant, size, repeats):
    """A task: `create_vit(variant)` (random weights) under XLA, batch 1."""
    import numpy as np
    import tensorflow as tf

    import vit_hub

    model = vit_hub.create_vit(variant, image_size=size, include_top=False, pooling="token")
    run = tf.function(model, jit_compile=True)
    x = np.zeros((1, size, size, 3), np.float32)
    np.asarray(run(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(run(x))
        times.append(time.perf_counter() - start)
    return {"params": model.count_params(), "tokens": model.num_patches + 1,
            "output_shape": list(model.output_shape),
            "seconds_per_image": sorted(times)[len(times) // 2],
            "seconds_runs": times, "peak_rss_bytes": child.peak_rss()}


TASKS = {"variant_cost": variant_cost}


def bench_compare(variants, smoke):
    """One row per variant (all registered variants when `variants` is None)."""
    import vit_hub
    from vit_hub.architecture import get_variant

    rows = []
    size = 32 if smoke else 224
    for variant in variants or vit_hub.list_variants():
        row = {"variant": variant, **child.run("compare", "variant_cost", {
            "variant": variant, "size": size, "repeats": 1 if smoke else 3})}
        arch = get_variant(variant).replace(image_size=size, include_top=False)
        row["gflops_per_image"] = flops_per_image(arch) / 1e9
        row["images_per_s"] = 1 / row["seconds_per_image"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    child.main(TASKS)
