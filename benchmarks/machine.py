"""The machine a run measured on: its CPU class (model name and the instruction sets that
decide bf16 and int8 speed, from /proc/cpuinfo) and its matmul GFLOP/s peaks (a child:
`python -m benchmarks.machine matmul_peaks '{}'`)."""

import os
import platform
import time

from benchmarks import child
from vit_hub.runtime.engine import cpu_class, cpuinfo

# The /proc/cpuinfo flags recorded (OpenVINO's bf16 and int8 speed depends on them).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
             "amx_int8")


def cpu_flags():
    """Which of CPU_FLAGS /proc/cpuinfo lists."""
    flags = cpuinfo()[1]
    return {flag: flag in flags for flag in CPU_FLAGS}


def describe():
    """What is known of the machine without measuring: cheap, no TensorFlow."""
    return {"cpu": cpuinfo()[0], "cores": os.cpu_count(), "python": platform.python_version(),
            "cpu_class": cpu_class(), "cpu_flags": cpu_flags()}


def matmul_peaks(n=2048, repeats=10):
    """A task: best sustained GFLOP/s of an n x n matmul in fp32 and bf16, each the
    better of a TF graph (oneDNN: the one path here that runs bf16 on the CPU's bf16
    instructions) and XLA."""
    import tensorflow as tf

    def peak(dtype):
        a = tf.cast(tf.random.normal((n, n), dtype=tf.float32), dtype)
        best = float("inf")
        for jit in (False, True):
            step = tf.function(lambda x: tf.matmul(x, x), jit_compile=jit)
            step(a).numpy()
            for _ in range(repeats):
                start = time.perf_counter()
                step(a).numpy()
                best = min(best, time.perf_counter() - start)
        return 2 * n**3 / best / 1e9

    return {"tensorflow": tf.__version__, "matmul_gflops_fp32": peak("float32"),
            "matmul_gflops_bf16": peak("bfloat16")}


def measure():
    """The machine's description and its matmul peaks (measured in a child)."""
    return {**describe(), **child.run("machine", "matmul_peaks", {})}


TASKS = {"matmul_peaks": matmul_peaks}

if __name__ == "__main__":
    child.main(TASKS)
