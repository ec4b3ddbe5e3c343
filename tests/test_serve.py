"""vit-serve over loopback HTTP, on one local Ray + Serve for the module: the API, with
features equal to `model.predict` on the same preprocessed image; every bad input's
status and message, with the replica still up; concurrent clients each answered with
their own image's output; a model replica killed mid-load (kill -9) replaced, no request
hanging; and shutdown leaving no Ray process. Two applications: the tiny fe model on
Keras at /fe, the tiny classification model on OpenVINO at /cls."""

import asyncio
import concurrent.futures
import functools
import io
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import vit_hub
from tests.conftest import TINY_CLASSIFICATION, TINY_IMAGE, TINY_NAME, wait_until
from tests.fault_support import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

# The replicas run the same model on the same images, in batches of other sizes: float32
# results differ by a few ulps (test_embed measured 0 to 5e-7).
TOLERANCE = 1e-5
TIMEOUT = 30  # seconds, every HTTP call (the service's own timeout_s is 20)
JPEG = {"Content-Type": "image/jpeg"}
MAX_PIXELS, MAX_BYTES = 100_000, 300_000


def photo(seed, fmt="JPEG"):
    """A distinct small photo (noise on a gradient), 20..70 pixels a side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(20, 70, 2))
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    pixels = np.clip(ramp + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def ray_processes():
    """{pid: command line} of this process's descendants that run Ray (its GCS, raylet,
    workers, Serve's controller, proxy and replicas)."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    found, stack = {}, [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            try:
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "ray" in command:
                found[child] = command
    return found


def alive(pids):
    """Those of `pids` still running (zombies, waiting for their parent, are not)."""
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.append(pid)
        except OSError:
            continue
    return running


class Service:
    def __init__(self, url, cache):
        self.url, self.cache = url, cache

    def get(self, path):
        return requests.get(self.url + path, timeout=TIMEOUT)

    def post(self, path, data, headers=JPEG, session=requests):
        return session.post(self.url + path, data=data, headers=headers, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from tests import checkpoints

    root = tmp_path_factory.mktemp("serve")
    cache = str(checkpoints.cache_copy(root / "cache", TINY_NAME, TINY_CLASSIFICATION))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={
        "env_vars": {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}})
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(vit_hub.serve.app(TINY_NAME, cache_dir=cache, offline=True, max_batch=8,
                                    batch_wait_ms=20, max_pixels=MAX_PIXELS,
                                    max_bytes=MAX_BYTES, timeout_s=20),
                  name="fe", route_prefix="/fe")
        serve.run(vit_hub.serve.app(TINY_CLASSIFICATION, runtime="openvino", cache_dir=cache,
                                    timeout_s=20), name="cls", route_prefix="/cls")
        yield Service(f"http://127.0.0.1:{port}", cache)
    finally:  # (test_shutdown_leaves_no_ray_process shut it down already where it ran)
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def keras_model(service):
    return vit_hub.load_pretrained(TINY_NAME, cache_dir=service.cache, offline=True)


def features(model, images):
    return model.predict(vit_hub.preprocess(images, image_size=TINY_IMAGE), verbose=0)


def test_the_model_line_names_the_engine_its_speed_and_the_cpu_class(service):
    """What vit-serve prints for an OpenVINO model: the IR's own summary (engine,
    precision, build-time speed, CPU class, agreement with fp32)."""
    served = vit_hub.serve.build(
        TINY_CLASSIFICATION, runtime="openvino", precision=None, min_cosine=None,
        replicas=1, max_batch=8, batch_wait_ms=10, cache_dir=service.cache, offline=True,
        max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, timeout_s=20)
    fast = vit_hub.load_pretrained(TINY_CLASSIFICATION, cache_dir=service.cache,
                                   runtime="openvino", offline=True)
    assert served.summary() == (f"{TINY_CLASSIFICATION}: {TINY_IMAGE}x{TINY_IMAGE} images "
                                f"-> 1000 logits; {fast.summary()}")
    assert "images/s at batch" in fast.summary()


def test_the_model_is_described(service):
    fe = service.get("/fe/v1/model")
    assert fe.status_code == 200 and fe.headers["content-type"] == "application/json"
    assert fe.json() == {"name": TINY_NAME, "runtime": "keras", "precision": "fp32",
                         "image_size": [TINY_IMAGE, TINY_IMAGE], "output_dim": 32,
                         "classification": False, "accuracy": {}}
    cls = service.get("/cls/v1/model").json()
    fast = vit_hub.load_pretrained(TINY_CLASSIFICATION, cache_dir=service.cache,
                                   runtime="openvino", offline=True)
    assert (cls["name"], cls["runtime"], cls["precision"]) == (TINY_CLASSIFICATION,
                                                               "openvino", "fp32")
    assert cls["output_dim"] == 1000 and cls["classification"] is True
    assert cls["accuracy"] == json.loads(json.dumps(fast.accuracy))  # as measured
    assert service.get("/fe/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("fmt, content_type", [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                               ("WEBP", "image/webp")])
def test_embed_answers_the_models_output_for_the_image(service, keras_model, fmt,
                                                       content_type):
    data = photo(1, fmt)
    answer = service.post("/fe/v1/embed", data, {"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    found = np.asarray(answer.json()["features"], np.float32)
    expected = features(keras_model, data)[0]
    assert found.shape == (32,) and np.abs(found - expected).max() <= TOLERANCE


def test_classify_answers_imagenet_labels_with_softmax_scores(service):
    fast = vit_hub.load_pretrained(TINY_CLASSIFICATION, cache_dir=service.cache,
                                   runtime="openvino", offline=True)
    data = photo(2)
    answer = service.post("/cls/v1/classify?top_k=3", data)
    assert answer.status_code == 200, answer.text
    labels = answer.json()["labels"]
    logits = fast.predict(vit_hub.preprocess(data, image_size=TINY_IMAGE))
    [best] = vit_hub.decode_predictions(logits, top=3)
    assert [row["label"] for row in labels] == [names for _, names, _ in best]
    np.testing.assert_allclose([row["score"] for row in labels], [p for _, _, p in best],
                               atol=1e-5)
    assert [row["index"] for row in labels] == list(np.argsort(-logits[0])[:3])
    assert len(service.post("/cls/v1/classify", data).json()["labels"]) == 5  # default
    embedded = service.post("/cls/v1/embed", data).json()["features"]  # the logits
    assert np.abs(np.asarray(embedded) - logits[0]).max() <= TOLERANCE


def png(width, height):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def chunked(data, size=65536):
    """A body sent chunked (no Content-Length), as a stream is."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


BAD = {  # case: (method, path, body, headers, status, words in the error)
    "not an image": ("POST", "/fe/v1/embed", b"\x00\x01 not pixels" * 20, JPEG, 400,
                     "is not a readable JPEG"),
    "truncated": ("POST", "/fe/v1/embed", photo(3)[:300], JPEG, 400, "is not a readable"),
    "empty body": ("POST", "/fe/v1/embed", b"", JPEG, 400, "The request body is empty"),
    "too many bytes": ("POST", "/fe/v1/embed", b"\xff" * (MAX_BYTES + 1), JPEG, 413,
                       "more than this service takes"),
    "too many bytes, chunked": ("POST", "/fe/v1/embed", "chunked", JPEG, 413,
                                "more than this service takes"),
    "too many pixels": ("POST", "/fe/v1/embed", png(400, 300), {"Content-Type": "image/png"},
                        413, "120_000 pixels, over the limit of 100_000"),
    "text content type": ("POST", "/fe/v1/embed", photo(3), {"Content-Type": "text/plain"},
                          415, "not an image type"),
    "no content type": ("POST", "/fe/v1/embed", photo(3), {}, 415, "no Content-Type"),
    "classify a feature extractor": ("POST", "/fe/v1/classify", photo(3), JPEG, 422,
                                     "is a feature extractor"),
    "top_k zero": ("POST", "/cls/v1/classify?top_k=0", photo(3), JPEG, 422, "top_k='0'"),
    "top_k not a number": ("POST", "/cls/v1/classify?top_k=five", photo(3), JPEG, 422,
                           "from 1 to 1000"),
    "unknown path": ("GET", "/fe/v2/embed", None, {}, 404, "No such path"),
    "wrong method": ("GET", "/fe/v1/embed", None, {}, 405, "GET is not allowed"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_json_naming_the_problem_and_the_replica_stays(service, case):
    method, path, body, headers, status, words = BAD[case]
    before = service.get("/fe/v1/stats").json()["pid"]
    if body == "chunked":
        body = chunked(b"\xff" * (MAX_BYTES + 70_000))
    answer = requests.request(method, service.url + path, data=body, headers=headers,
                              timeout=TIMEOUT)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert words in answer.json()["error"], answer.json()
    good = service.post("/fe/v1/embed", photo(4))
    assert good.status_code == 200 and service.get("/fe/v1/stats").json()["pid"] == before


CLIENTS, SECONDS = 8, 3.0


def load(service, images, stop):
    """CLIENTS threads posting the images in turn until `stop`: [(image index, status,
    JSON, seconds, when it ended)] of every request (an exception: status None)."""

    def client(c):
        done, session = [], requests.Session()
        i = c
        while not stop():
            k = i % len(images)
            started = time.monotonic()
            try:
                answer = service.post("/fe/v1/embed", images[k], session=session)
                done.append((k, answer.status_code, answer.json(),
                             time.monotonic() - started, time.monotonic()))
            except Exception as err:  # recorded: the test asserts there is none
                done.append((k, None, repr(err), time.monotonic() - started,
                             time.monotonic()))
            i += CLIENTS
        return done

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return [r for rs in pool.map(client, range(CLIENTS)) for r in rs]


def test_concurrent_clients_each_get_their_own_images_output(service, keras_model):
    images = [photo(100 + i) for i in range(16)]
    expected = features(keras_model, images)
    before = service.get("/fe/v1/stats").json()
    deadline = time.monotonic() + SECONDS
    results = load(service, images, lambda: time.monotonic() > deadline)
    assert len(results) > 2 * CLIENTS
    failed = [(k, status, body) for k, status, body, *_ in results if status != 200]
    assert not failed, failed[:3]
    for k, _, body, *_ in results:  # each answer is its own image's, none another's
        distance = np.abs(np.asarray(body["features"]) - expected).max(axis=1)
        assert distance[k] <= TOLERANCE and np.argmin(distance) == k, (k, distance)
    after = service.get("/fe/v1/stats").json()
    batched = (after["images"] - before["images"]) / (after["batches"] - before["batches"])
    assert after["largest_batch"] > 1 and batched > 1, (before, after)  # batched together
    assert after["largest_batch"] <= 8  # max_batch


def test_a_killed_replica_is_replaced_and_no_request_hangs(service, keras_model):
    """Ray Serve 2.60 routed the requests the kill cut off to the new replica (all 200,
    ~8 s late, on this machine); a 503 saying to retry is allowed too."""
    images = [photo(200 + i) for i in range(8)]
    expected = features(keras_model, images)
    killed = service.get("/fe/v1/stats").json()["pid"]
    stop, state = threading.Event(), {}

    def kill_then_wait_for_recovery():
        time.sleep(1.0)  # mid-load
        os.kill(killed, signal.SIGKILL)
        state["killed_at"] = time.monotonic()
        wait_until(lambda: service.get("/fe/healthz").status_code == 200
                   and service.get("/fe/v1/stats").json().get("pid", killed) != killed,
                   90, "no new replica answered")
        state["back_at"] = time.monotonic()
        time.sleep(1.0)  # the load goes on against the new replica
        stop.set()

    watcher = concurrent.futures.ThreadPoolExecutor(1).submit(kill_then_wait_for_recovery)
    deadline = time.monotonic() + 120
    results = load(service, images, lambda: stop.is_set() or time.monotonic() > deadline)
    watcher.result(timeout=10)
    assert all(status is not None for _, status, *_ in results), [
        r for r in results if r[1] is None][:3]  # every request answered, in time
    assert max(r[3] for r in results) < 25  # the service's timeout_s is 20
    for k, status, body, *_ in results:
        if status == 200:
            assert np.abs(np.asarray(body["features"]) - expected[k]).max() <= TOLERANCE
        else:  # cut off by the kill: a 5xx that says to retry
            assert 500 <= status < 600 and "retry" in body["error"], (status, body)
    before = [r for r in results if r[4] < state["killed_at"] and r[1] == 200]
    resumed = [r for r in results if r[4] > state["back_at"] and r[1] == 200]
    assert before and resumed, (len(before), len(resumed))
    assert service.get("/fe/v1/stats").json()["pid"] != killed


class Reply:
    """A stand-in for a DeploymentResponse: raises `error` or answers after `delay` s."""

    def __init__(self, error=None, delay=0.0):
        self.error, self.delay, self.cancelled = error, delay, False

    def __await__(self):
        return self._result().__await__()

    async def _result(self):
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return "answered"

    def cancel(self):
        self.cancelled = True


@pytest.mark.parametrize("case", ["replica died", "no answer in time"])
def test_a_dead_or_silent_replica_costs_a_503_that_says_to_retry(case):
    """What the kill test may not meet (Serve retried every request it cut off there):
    a replica that dies with the request, or does not answer within timeout_s."""
    from ray.exceptions import ActorDiedError

    from vit_hub.serve.deployment import Ingress

    call = functools.partial(Ingress.func_or_class._call, None)  # alone, no instance
    reply = Reply(ActorDiedError()) if case == "replica died" else Reply(delay=5)
    answer = asyncio.run(call(reply, lambda result: result, timeout_s=0.2))
    error = json.loads(answer.body)["error"]
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert "retry the request" in error
    if case == "replica died":
        assert "ActorDiedError" in error
    else:
        assert "within 0.2 s" in error and reply.cancelled
    assert asyncio.run(call(Reply(), lambda result: result, 1)) == "answered"


def test_shutdown_leaves_no_ray_process(service):
    """Last in the module: what serve.shutdown and ray.shutdown leave (nothing)."""
    started = ray_processes()
    assert any("raylet" in command for command in started.values()), started
    serve.shutdown()
    ray.shutdown()
    wait_until(lambda: not alive(started), 30, f"Ray processes {alive(started)} still run")
