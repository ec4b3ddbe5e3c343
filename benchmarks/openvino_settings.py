"""OpenVINO fp32 and int8 under its own settings: is vit_hub's compile (the precision
pinned, everything else OpenVINO's default) the fastest OpenVINO offers on this machine,
and where does its time go?

    python -m benchmarks.run openvino-settings --json out/openvino_settings.json

One child (only OpenVINO loaded) compiles the fp32 and int8 IRs of the first model under each of
SETTINGS and measures it like every throughput contender (`child.timed_rounds`); the
"throughput" settings split a batch over OpenVINO's own asynchronous requests, one per
stream, as its throughput hint intends. Then one compile with PERF_COUNT on gives the
share of the time of each operation type and the kernels that ran (which instruction set
the matmuls used).
"""

import collections

from benchmarks import child
from benchmarks.common import spread

# name -> (compile properties beside INFERENCE_PRECISION_HINT=f32, split over requests)
SETTINGS = {
    "vit_hub (hint f32, defaults)": ({}, False),
    "latency hint": ({"PERFORMANCE_HINT": "LATENCY"}, False),
    "throughput hint, async requests": ({"PERFORMANCE_HINT": "THROUGHPUT"}, True),
    "1 stream, threads = cores": ({"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": 0}, False),
    "no hyper-threading, pinned": ({"ENABLE_HYPER_THREADING": False,
                                    "ENABLE_CPU_PINNING": True}, False),
}


def settings(xmls, size, batches, rounds, min_seconds):
    """{"rates": {precision: {setting: {batch: rates}}}, "properties": {precision:
    {setting: what OpenVINO chose}}, "profile": {precision: the PERF_COUNT breakdown at
    the largest batch}} of each IR in `xmls` ({precision: .xml path}); an int8 IR's
    unquantized ops compute in f32 here, as vit_hub compiles it by default."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    result = {"rates": {}, "properties": {}, "profile": {}}
    for precision, xml in xmls.items():
        model = core.read_model(xml)
        rates, chosen = result["rates"].setdefault(precision, {}), {}
        for name, (properties, split) in SETTINGS.items():
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         **properties})
            chosen[name] = {key: str(compiled.get_property(key)) for key in (
                "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                "OPTIMAL_NUMBER_OF_INFER_REQUESTS")}
            function = _split(compiled, ov) if split else (lambda x, c=compiled: c(x)[0])
            rates[name] = {}
            for batch in batches:
                x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(
                    np.float32)
                rates[name][str(batch)] = child.timed_rounds(function, x, rounds, min_seconds)
        result["properties"][precision] = chosen
        result["profile"][precision] = _profile(core, model, size, max(batches))
    return result


def _split(compiled, ov):
    """images -> outputs over OpenVINO's optimal number of asynchronous requests, the
    batch cut into that many parts."""
    import numpy as np

    queue = ov.AsyncInferQueue(compiled, compiled.get_property(
        "OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    outputs = {}
    queue.set_callback(lambda request, i: outputs.__setitem__(
        i, request.get_output_tensor(0).data.copy()))

    def function(x):
        parts = np.array_split(x, min(len(queue), len(x)))
        for i, part in enumerate(parts):
            queue.start_async({0: part}, i)
        queue.wait_all()
        return np.concatenate([outputs[i] for i in range(len(parts))])

    return function


def _profile(core, model, size, batch, calls=5):
    """Each operation type's share of the run time, and the kernels (exec types) of the
    matmuls, from PERF_COUNT over `calls` calls."""
    import numpy as np

    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = np.zeros((batch, size, size, 3), np.float32)
    request.infer({0: x})
    by_type, kernels = collections.Counter(), collections.Counter()
    for _ in range(calls):
        request.infer({0: x})
        for node in request.profiling_info:
            seconds = node.real_time.total_seconds()
            by_type[node.node_type] += seconds
            if node.node_type.startswith(("FullyConnected", "MatMul")):
                kernels[node.exec_type] += seconds
    total = sum(by_type.values())
    return {"batch": batch, "ms_per_call": 1000 * total / calls,
            "share_by_type": {k: v / total for k, v in by_type.most_common(8)},
            "matmul_kernels": {k: v / total for k, v in kernels.most_common(4)}}


def save_irs(name, cache, folder):
    """{precision: .xml}: the fp32 and int8 IRs of `name` from the cache (built from the
    cached weights if missing; int8 ungated: random weights are not what its gate is set
    for), saved in `folder`. A child of its own, so that the measuring one loads only
    OpenVINO."""
    import vit_hub

    xmls = {}
    for precision in ("fp32", "int8"):
        fast = vit_hub.load_pretrained(name, cache_dir=cache, runtime="openvino",
                                       precision=precision, offline=False,
                                       min_cosine=None if precision == "fp32" else 1e-9)
        xmls[precision] = fast.save(f"{folder}/{precision}.xml")
    return xmls


def summarise(measured):
    """{precision: {setting: {batch: spread}}} from the child's rates."""
    return {precision: {name: {batch: spread(rates) for batch, rates in by_batch.items()}
                        for name, by_batch in settings.items()}
            for precision, settings in measured["rates"].items()}


def bench_settings(name, cache, size, batches, rounds, min_seconds, folder, smoke):
    """The parent's side: the IRs saved by one child, measured by another."""
    xmls = child.run("openvino_settings", "save_irs", {
        "name": name, "cache": cache, "folder": folder}, smoke=smoke)
    measured = child.run("openvino_settings", "settings", {
        "xmls": xmls, "size": size, "batches": batches, "rounds": rounds,
        "min_seconds": min_seconds})
    return {"spread": summarise(measured), "properties": measured["properties"],
            "profile": measured["profile"]}


TASKS = {"settings": settings, "save_irs": save_irs}

if __name__ == "__main__":
    child.main(TASKS)
