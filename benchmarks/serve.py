"""vit-serve under load: throughput and p50/p99 latency at 1, 8 and 32 concurrent clients,
Keras and OpenVINO fp32, against the same runtime's in-process batch throughput measured
in the same run.

    python -m benchmarks.run serve --models vit_b32_fe --json out/serve.json
    python -m benchmarks.run serve --smoke

Each runtime is measured in a fresh child process (`python -m benchmarks.serve <task>
'<json>'`): `in_process` reads, decodes, preprocesses and predicts the same JPEGs in
batches of max_batch in one process (what a user's own batch loop does); `served` starts
a local Ray + Serve with `vit_hub.serve.app`, then, for each concurrency C, C client
threads post the JPEGs to /v1/embed over loopback for a fixed time, each request timed;
the batch sizes the replica ran are read from /v1/stats. The target: saturation
throughput (the best over the concurrencies) >= 70% of the in-process throughput at 32
clients.
"""

import concurrent.futures
import glob
import os
import statistics
import time

import numpy as np
import requests

from benchmarks import child
from benchmarks.embed import write_images

CONCURRENCY = (1, 8, 32)
# vit-serve's default batch wait, and a longer one: on a CPU a batch takes tens to
# hundreds of ms, and 10 ms gathers few requests (the longer wait is measured beside it).
BATCH_WAITS_MS = (10, 50)
TARGET = 0.7  # served throughput at 32 clients / in-process batch throughput
RUNTIMES = ("keras", "openvino")


# === Tasks (each runs in a child) ===


def in_process(name, cache, folder, runtime, batch, seconds):
    """Images/s of preprocess + predict over the folder's JPEGs, batch by batch, for at
    least `seconds` (after one warm-up batch)."""
    import vit_hub
    from vit_hub.cluster import load_in_worker

    data = [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(folder, "*.jpg")))]
    size = vit_hub.get_entry(name).image_size
    predict, _, _ = load_in_worker(name, cache, runtime, "fp32", None, None)
    batches = [data[i:i + batch] for i in range(0, len(data), batch)]
    predict(vit_hub.preprocess(batches[0], image_size=size))
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < len(data):
        for chunk in batches:
            np.asarray(predict(vit_hub.preprocess(chunk, image_size=size)))
            count += len(chunk)
    return {"images_per_s": count / elapsed, "images": count, "seconds": elapsed}


def served(name, cache, folder, runtime, max_batch, seconds, concurrency, batch_wait_ms=10):
    """Per concurrency: requests/s, p50/p99 latency (ms), failures, the replica's mean
    batch size; all over loopback to a local vit-serve."""
    import socket

    from ray import serve

    import vit_hub.serve
    from vit_hub.cluster import connect

    data = [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(folder, "*.jpg")))]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    ray = connect(None, vit_hub.serve.INSTALL)  # on this machine, as vit-serve starts it
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(vit_hub.serve.app(name, runtime=runtime, cache_dir=cache, offline=True,
                                    max_batch=max_batch, batch_wait_ms=batch_wait_ms),
                  route_prefix="/")
        start_s = time.perf_counter() - started
        post(url, data[0])  # warm-up
        results = {str(c): load(url, data, c, seconds) for c in concurrency}
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"start_s": start_s, "by_clients": results}


TASKS = {"in_process": in_process, "served": served}


def post(url, image, session=requests):
    answer = session.post(f"{url}/v1/embed", data=image,
                          headers={"Content-Type": "image/jpeg"}, timeout=120)
    return answer.status_code


def load(url, data, clients, seconds):
    """`clients` threads posting the images in turn for `seconds`."""

    def stats():
        return requests.get(f"{url}/v1/stats", timeout=60).json()

    before = stats()
    deadline = time.perf_counter() + seconds

    def client(c):
        session, latencies, failures, i = requests.Session(), [], 0, c
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            ok = post(url, data[i % len(data)], session) == 200
            latencies.append(time.perf_counter() - start)
            failures += not ok
            i += clients
        return latencies, failures

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    after = stats()
    latencies = sorted(t for times, _ in done for t in times)
    batches = after["batches"] - before["batches"]
    return {"requests_per_s": len(latencies) / elapsed, "requests": len(latencies),
            "failures": sum(f for _, f in done),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "mean_batch": (after["images"] - before["images"]) / batches if batches else 0.0,
            "largest_batch": after["largest_batch"]}


def bench_serve(name, cache, images_folder, smoke=None, count=256, max_batch=32,
                seconds=10.0):
    """Both runtimes: the in-process rate, the served figures at each concurrency, and
    the ratio of the served throughput at 32 clients to the in-process rate."""
    folder = os.path.join(images_folder, str(count))
    write_images(folder, count)
    # The IR is built once, untimed, as a user would before going offline.
    child.run("embed", "command", {"module": "convert_weights", "argv": [
        name, "--cache-dir", cache, "--runtime", "openvino"]}, smoke=smoke)
    result = {"model": name, "images": count, "max_batch": max_batch, "seconds": seconds,
              "concurrency": list(CONCURRENCY), "target": TARGET, "runtimes": {}}
    for runtime in RUNTIMES:
        common = {"name": name, "cache": cache, "folder": folder, "runtime": runtime}
        alone = child.run("serve", "in_process", {**common, "batch": max_batch,
                                                  "seconds": seconds}, smoke=smoke)
        by_wait = {}
        for wait in BATCH_WAITS_MS:
            figures = child.run("serve", "served", {**common, "max_batch": max_batch,
                                                    "seconds": seconds, "batch_wait_ms": wait,
                                                    "concurrency": list(CONCURRENCY)},
                                smoke=smoke)
            at_32 = figures["by_clients"][str(CONCURRENCY[-1])]["requests_per_s"]
            by_wait[wait] = {
                **figures, "batch_wait_ms": wait,
                "saturation_requests_per_s": max(
                    row["requests_per_s"] for row in figures["by_clients"].values()),
                "vs_in_process_at_32": at_32 / alone["images_per_s"],
                "met": at_32 / alone["images_per_s"] >= TARGET}
        default, *longer = BATCH_WAITS_MS
        result["runtimes"][runtime] = {"in_process_images_per_s": alone["images_per_s"],
                                       **by_wait[default],
                                       "longer_waits": [by_wait[w] for w in longer]}
    return result


if __name__ == "__main__":
    child.main(TASKS)
