"""The OpenVINO install: its import (an optional dependency), one Core per process, and
what the CPU plugin can compute in; and the CPU class, which decides bf16 and int8 speed
(figures and summaries name it)."""

import functools
import platform

from vit_hub.errors import MissingDependencyError

DEVICE = "CPU"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(
            "The OpenVINO runtime needs the openvino package: pip install 'vit_hub[openvino]'."
        ) from None
    return openvino


@functools.cache
def core():
    """One OpenVINO Core per process (it holds the loaded device plugins)."""
    return import_openvino().Core()


def openvino_version():
    return import_openvino().get_version()


def cpu_capabilities():
    """What the CPU plugin can compute in here, e.g. ['FP32', 'INT8', 'BF16']."""
    return list(core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


# The instruction sets a CPU class is named by, and the /proc/cpuinfo flags that give each.
CLASS_SETS = {"AVX2": ("avx2",), "AVX-512F": ("avx512f",), "AVX512_VNNI": ("avx512_vnni",),
              "AVX512_BF16": ("avx512_bf16",), "AMX": ("amx_bf16", "amx_int8", "amx_tile")}


def cpuinfo():
    """(model name, flags) of the first processor in /proc/cpuinfo (elsewhere: the
    platform's name and no flags)."""
    name, flags = platform.processor() or "unknown CPU", []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return name, flags
    name = next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), name)
    flags = next((line.split(":", 1)[1].split() for line in lines
                  if line.startswith("flags")), [])
    return name, flags


@functools.cache
def cpu_class():
    """{"model": the CPU's name, "instruction_sets": {AVX2, AVX-512F, AVX512_VNNI,
    AVX512_BF16, AMX: present or not}}."""
    name, flags = cpuinfo()
    return {"model": name, "instruction_sets": {label: any(f in flags for f in wanted)
                                                for label, wanted in CLASS_SETS.items()}}


def describe_cpu_class(recorded=None):
    """'<CPU model> (AVX2, AVX-512F, ..., no AMX)': a `cpu_class()` record (default: this
    machine's)."""
    recorded = recorded or cpu_class()
    sets = recorded["instruction_sets"]
    named = [label for label, present in sets.items() if present]
    named += [f"no {label}" for label, present in sets.items() if not present]
    return f"{recorded['model']} ({', '.join(named)})"
