"""Whether bf16 pays on this machine: measured, not assumed.

bf16 mixed precision is faster only where the hardware computes in bf16 (AVX512_BF16 or
AMX on CPUs, GPUs) and the backend's kernels use it. Elsewhere it is emulated, converted
to float32 and back around every op, and slower than float32: on a CPU without bf16
instructions (this project's AVX2 CI machines) and on JAX's XLA:CPU, which computes bf16
matmuls at or below the float32 rate on any CPU. Rather than keep a table of CPUs and
backends, the first bf16 model of a process times one matmul in both dtypes on the
backend's default device (tens of milliseconds) and warns if bf16 is not faster.
"""

import functools
import time

from vit_hub.errors import warn


class PerformanceWarning(UserWarning):
    """A setting that computes right but slower than expected here (bf16 that this
    machine only emulates); the message gives the measured figure."""


# bf16 is worth its accuracy cost (measured by the caller: see the README) only if it is
# clearly faster; native bf16 matmuls run at about 2x the float32 rate.
MIN_SPEEDUP = 1.2
SIZE, REPEATS = 256, 3


def _rate(dtype):
    """Best-of-REPEATS multiply-adds per second of a SIZE x SIZE matmul in `dtype`."""
    import keras
    import numpy as np

    a = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal(
        (SIZE, SIZE)).astype("float32"), dtype=dtype)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # warm-up: kernels, allocation
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # (waits for the result)
        best = min(best, time.perf_counter() - start)
    return SIZE ** 3 / best


@functools.cache
def bf16_speedup():
    """bf16's matmul rate over float32's on this backend and machine (once a process)."""
    return _rate("bfloat16") / _rate("float32")


def float16_fails_here(policy):
    """Why `policy` cannot compute here (a sentence), or None. JAX's XLA:CPU has no float16
    matmul with float32 accumulation, which Keras' float16 policies ask for: it refuses
    ("precision 'F16_F16_F32' is not supported by dot_general on CPU") in Keras' own
    predict, fit and evaluate, and in any jitted call."""
    import keras

    policy = keras.dtype_policies.get(policy)
    if policy.compute_dtype != "float16" or keras.backend.backend() != "jax":
        return None
    import jax

    if jax.default_backend() != "cpu":
        return None
    return (f"{policy.name!r} cannot be compiled on JAX's CPU (XLA:CPU has no float16 "
            "matmul with float32 accumulation): model(x) runs op by op, and Keras' "
            "predict/fit/evaluate fail. Use 'mixed_bfloat16' or 'float32' on a CPU, or "
            "float16 on a GPU or another backend.")


def warn_if_unsuited(policy):
    """Where a user asks for a dtype policy (`create_vit`, `load_pretrained`): a warning,
    once a process, if it computes slower than float32 here (bf16 that the machine only
    emulates: a PerformanceWarning with the measured speed-up) or cannot be compiled here
    (float16 on JAX's CPU). Not in the model's constructor: a model rebuilt from its
    config (`.keras` files, clones) measures nothing."""
    import keras

    if policy is None:
        return
    policy = keras.dtype_policies.get(policy)
    if policy.compute_dtype == "float16":
        reason = float16_fails_here(policy)
        if reason:
            _warn_once(reason)
    elif policy.compute_dtype == "bfloat16" and keras.backend.backend() != "openvino":
        _warn_if_emulated()  # (on OpenVINO: the runtime's own precision)


@functools.cache  # what makes it once a process
def _warn_once(message):
    warn(message)


@functools.cache  # what makes it once a process
def _warn_if_emulated():
    import keras

    speedup = bf16_speedup()
    if speedup >= MIN_SPEEDUP:
        return
    warn(
        f"bf16 is emulated here: a bf16 matmul ran at {speedup:.2f}x the float32 rate on "
        f"{keras.backend.backend()} (measured now; native bf16 gives about 2x). A "
        "mixed_bfloat16 model computes less precisely for no speed on this machine: use "
        "float32, or bf16 on hardware with AVX512_BF16/AMX or a GPU.",
        PerformanceWarning)
