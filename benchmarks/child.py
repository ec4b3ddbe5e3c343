"""The child-process protocol, both sides, and what timing children share.

Parent: `run("throughput", "openvino", {"xml": ..., ...})` starts

    python -m benchmarks.throughput openvino '{"xml": ..., ...}'

in the repository root (so `benchmarks` is importable) and returns the task's result.
Children run one at a time: `run` waits for each.

Child: a module that has tasks ends in

    if __name__ == "__main__":
        child.main(TASKS)

`main` registers the smoke stand-in the JSON carries under REGISTER (as data: its name
and catalogue fields, through `common.register_smoke`), calls the task, a plain function,
with the other keys as keyword arguments, and prints its result as one JSON line after
RESULT (stdout carries library chatter too).
"""

import json
import os
import subprocess
import sys
import time

from benchmarks.common import REPO, register_smoke

RESULT = "RESULT "
REGISTER = "register_smoke"  # the key of the JSON arguments that carries a stand-in
# The engine packages whose presence in a child's sys.modules is recorded: a throughput
# child should run one. (Importing TensorFlow imports jax and keras too, unused.)
ENGINES = ("tensorflow", "jax", "torch", "keras", "openvino", "onnxruntime")


class ChildError(RuntimeError):
    """A child that printed no result: the end of its stderr."""

    @property
    def last_line(self):
        return (str(self).strip().splitlines() or ["no output"])[-1]


def run(module, task, kwargs, *, backend="tensorflow", smoke=None, env=None):
    """The result of `benchmarks.<module>`'s `task(**kwargs)` in a fresh process, with
    KERAS_BACKEND=`backend`, VIT_HUB_OFFLINE=1 and `env`; `smoke`: the stand-in to
    register there first ({"name", "fields"}, `common.smoke_model`), or None."""
    arguments = {**kwargs, **({REGISTER: smoke} if smoke else {})}
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", task, json.dumps(arguments)],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "VIT_HUB_OFFLINE": "1",
             "KERAS_BACKEND": backend, **(env or {})})
    line = next((l for l in done.stdout.splitlines() if l.startswith(RESULT)), None)
    if done.returncode or line is None:
        raise ChildError(f"benchmark child {module} {task} failed (exit {done.returncode}):"
                         f"\n{done.stderr[-3000:]}")
    return json.loads(line[len(RESULT):])


def main(tasks, argv=None):
    """The child's side: `argv` is [task, JSON keyword arguments]."""
    task, arguments = (sys.argv[1:] if argv is None else argv)
    arguments = json.loads(arguments)
    smoke = arguments.pop(REGISTER, None)
    if smoke:
        register_smoke(smoke["name"], smoke["fields"])
    result = tasks[task](**arguments)
    print(RESULT + json.dumps(result), flush=True)


# === What timing children share ===


def timed_rounds(function, x, rounds, min_seconds, warmup=2):
    """images/s of each of `rounds` rounds of `function(x)` (its outputs brought to numpy),
    after `warmup` calls (tracing, compilation, allocation); a round calls until
    `min_seconds` have passed, and at least twice."""
    import numpy as np

    for _ in range(warmup):
        np.asarray(function(x))
    rates = []
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds or count < 2:
            np.asarray(function(x))
            count += 1
        rates.append(count * len(x) / elapsed)
    return rates


def peak_rss():
    """This process's own high-water mark in bytes (getrusage's ru_maxrss survives exec:
    it would report the parent's peak)."""
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def engine_modules_imported():
    """Which of ENGINES this process has imported."""
    return [name for name in ENGINES if name in sys.modules]
