"""The OpenVINO install: its import (an optional dependency), one Core per process, and
what the CPU plugin can compute in."""

import functools

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
