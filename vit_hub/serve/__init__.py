"""Online inference over HTTP on Ray Serve: `app` and the `vit-serve` command.

    GET  /v1/model                 what is served: name, runtime, precision, sizes, accuracy
    POST /v1/embed                 body: one image file -> {"features": [...]}
    POST /v1/classify?top_k=5      classification models -> {"labels": [...]}
    GET  /v1/stats                 the batch sizes run by the replica that answers
    GET  /healthz                  200 when a model replica answers

`app(name, ...)` prepares the model once in the calling process (weights cached, the
OpenVINO IR built and checked), then returns the Ray Serve application: an HTTP ingress
and the model's replicas, which load it from the cache offline and batch the requests
that arrive together (`vit_hub.serve.deployment`). Run it with `serve.run(app(...))`, or
compose it into a larger application. Light: Ray is imported when the application is
built, not with this module.
"""

import dataclasses
import errno
import os
import socket

from vit_hub.errors import ConfigError, MissingDependencyError
from vit_hub.serve.http import MAX_BYTES, MAX_PIXELS

APP_NAME = "vit-serve"
INSTALL = "vit-serve runs on Ray Serve: pip install 'vit_hub[serve]'."


@dataclasses.dataclass(frozen=True)
class Served:
    """A Ray Serve application of a model, what GET /v1/model says about it, and what
    computes it (`engine`: the OpenVINO model's `summary()`, or Keras')."""

    application: object  # ray.serve.Application
    description: dict
    engine: str

    def summary(self):
        """One line: the model, then its engine and precision, speed, CPU class and what
        the precision costs."""
        d = self.description
        kind = "logits" if d["classification"] else "features"
        return (f"{d['name']}: {d['image_size'][0]}x{d['image_size'][1]} images -> "
                f"{d['output_dim']} {kind}; {self.engine}")


def app(name, *, runtime="keras", precision=None, min_cosine=None, replicas=1, max_batch=32,
        batch_wait_ms=10, cache_dir=None, offline=None, max_bytes=MAX_BYTES,
        max_pixels=MAX_PIXELS, timeout_s=60):
    """The Ray Serve application serving `name` over HTTP (see the module's routes).

    Args:
        name: a catalogue name or handle (`vit_hub.list_models()`).
        runtime, precision, min_cosine: 'keras', or 'openvino' at precision 'fp32'
            (default), 'bf16' or 'int8' with its gate (see `load_pretrained`).
        replicas: model replicas, each a Ray actor with its own copy of the model.
        max_batch, batch_wait_ms: requests that arrive together run as one batch of up
            to `max_batch` images; a batch waits at most `batch_wait_ms` for more.
        cache_dir, offline: as for `load_pretrained`. The model is cached (converted on
            a miss unless offline) and its OpenVINO IR built here, before any replica
            starts; replicas load it offline. On a cluster, `cache_dir` must be a
            folder every node sees.
        max_bytes, max_pixels: the largest upload (bytes) and image (width x height)
            taken; larger ones get HTTP 413.
        timeout_s: the longest a request waits for a model replica; past it, or when
            the replica died (Ray Serve starts another), HTTP 503 with Retry-After.

    Returns a `ray.serve.Application`: `serve.run(app("vit_b32_fe"))` serves it at
    Serve's HTTP address (http://127.0.0.1:8000 unless `serve.start(http_options=...)`
    says otherwise). Bad options (an unknown model, bf16 on a CPU without it, a model
    not cached with offline=True) raise before anything starts.
    """
    return build(name, runtime=runtime, precision=precision, min_cosine=min_cosine,
                 replicas=replicas, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                 cache_dir=cache_dir, offline=offline, max_bytes=max_bytes,
                 max_pixels=max_pixels, timeout_s=timeout_s).application


def build(name, *, runtime, precision, min_cosine, replicas, max_batch, batch_wait_ms,
          cache_dir, offline, max_bytes, max_pixels, timeout_s):
    """`app`'s application with its description (`Served`), for the command's model
    line."""
    from vit_hub.catalogue import get_entry
    from vit_hub.cluster import engine, prepare_model, registration
    from vit_hub.runtime.engine import describe_cpu_class
    from vit_hub.runtime.options import check_runtime

    _check_counts(replicas=replicas, max_batch=max_batch, max_bytes=max_bytes,
                  max_pixels=max_pixels)
    _check_range("batch_wait_ms", batch_wait_ms, 0, 10_000)
    _check_range("timeout_s", timeout_s, 0.1, 3600)
    entry = get_entry(name)
    precision = check_runtime(runtime, precision, min_cosine=min_cosine)
    computed = dict(runtime=runtime, precision=precision, min_cosine=min_cosine)
    fast = prepare_model(entry.name, cache_dir, offline, computed, "vit-serve")
    arch = entry.architecture
    description = {
        "name": entry.name, "runtime": runtime, "precision": precision,
        "image_size": list(entry.image_size),
        "output_dim": arch.num_classes if arch.include_top else arch.hidden_dim,
        "classification": entry.classification,
        "accuracy": dict(fast.accuracy) if fast is not None else {},
    }
    deployment = _deployment()
    cpus = os.cpu_count() or 1  # each replica's share of a machine's threads
    model_server = deployment.ModelServer.options(
        num_replicas=replicas, max_ongoing_requests=2 * max_batch).bind(
        registration=registration(entry),
        cache_dir=cache_dir and os.path.abspath(os.fspath(cache_dir)), threads=(
            max(1, cpus // replicas) if replicas > 1 else None),
        max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, max_pixels=max_pixels,
        **computed)
    # The ingress holds each request while a replica batches it: room for every
    # replica's batches in flight and the next ones filling (Serve's default is 5).
    ingress = deployment.Ingress.options(max_ongoing_requests=max(64, 4 * max_batch * replicas))
    application = ingress.bind(model_server, description, max_bytes, timeout_s)
    line = fast.summary() if fast is not None else (
        f"{engine(None)}, the reference model (exact), on {describe_cpu_class()}")
    return Served(application, description, line)


def _deployment():
    try:
        from vit_hub.serve import deployment
    except ImportError as err:  # ray, or Serve's own (fastapi, starlette, uvicorn)
        raise MissingDependencyError(f"{INSTALL} ({err})") from None
    return deployment


def check_port(host, port):
    """ConfigError when something listens at host:port already (another server), or the
    address cannot be bound here, before Ray starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {port} on {host} is in use (another server listens there): "
                    f"choose another --port, or stop that server.") from None
            raise ConfigError(f"Cannot listen on {host}:{port} ({err.strerror or err}): "
                              "give --host an address of this machine (127.0.0.1, "
                              "0.0.0.0 for every interface).") from None


def _check_range(key, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high):
        raise ConfigError(f"{key} must be a number from {low:g} to {high:g}, got {value!r}.")


def _check_counts(**values):
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
