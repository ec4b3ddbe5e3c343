"""What the commands that run models on Ray share (vit-embed on Ray Data, vit-serve on
Ray Serve): the Ray they run on, started on this machine or joined at an address that is
checked to answer first, with Ray's own log lines kept off the terminal; the model their
worker processes load from the cache, prepared once by the caller; and what each worker
does first (the caller's model registrations, its share of the CPU threads).

Light: Ray is imported by `connect` only.
"""

import logging
import os
import socket
import sys

from vit_hub.errors import CacheError, ConfigError, MissingDependencyError

CONNECT_TIMEOUT = 3.0  # seconds for a cluster's address to answer before ray.init


def connect(address, install):
    """Ray, started on this machine or joined to `address` (checked by `check_address`
    first); `install`: what the MissingDependencyError says when Ray is not installed.
    Ray's log lines stay off the driver's terminal; its workers get this process's
    Keras backend and TensorFlow's quiet log level."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(install) from None
    if not ray.is_initialized():
        env = {"TF_CPP_MIN_LOG_LEVEL": "2",
               "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, runtime_env={"env_vars": env})
        except ConnectionError as err:  # (what check_address could not tell)
            _, given, undo = _joined(address)
            raise ConfigError(
                f"Cannot join a Ray cluster at {given} ({str(err).rstrip('.')}): start it "
                f"first (`ray start --head` on that machine), or {undo} to run on a Ray "
                "started on this machine for the job.") from None
    return ray


def check_address(address):
    """`address` on a process already connected to Ray would be ignored: refused. Not yet
    connected, the cluster that ray.init would join must answer (a TCP connection within
    CONNECT_TIMEOUT), or ray.init would retry for minutes, printing Ray's log lines."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        _check_reachable(address)
        return
    current = ray.get_runtime_context().gcs_address
    if address not in (None, "auto", current):
        raise ConfigError(
            f"This process is already connected to the Ray cluster at {current}, so "
            f"address={address!r} cannot be joined: leave address out to run there, or "
            "call ray.shutdown() first.")


def _check_reachable(address):
    """ConfigError, naming the fix, when nothing answers at the address ray.init would
    join: `address`, or $RAY_ADDRESS when it is None or 'auto' (as Ray does)."""
    address, given, undo = _joined(address)
    if address in (None, "local"):
        return
    if address == "auto":
        address = _auto_address()
    target = address and _host_port(address)
    if not target:  # a form Ray reads itself
        return
    host, port = target
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        return
    except TimeoutError:
        problem = f"no answer within {CONNECT_TIMEOUT:g} s"
    except OSError as err:
        problem = err.strerror or type(err).__name__
    where = "" if f"{host}:{port}" in given else f"{host}:{port}: "
    raise ConfigError(
        f"No Ray cluster answers at {given} ({where}{problem}). Start it first "
        "(`ray start --head` on that machine; then give HOST:6379, or ray://HOST:10001 for "
        f"Ray Client), check the host and port, or {undo} to run on a Ray started on this "
        "machine for the job.")


def _joined(address):
    """(the address ray.init joins, how the user gave it, how to run locally instead)."""
    if address in (None, "auto") and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        return address, f"RAY_ADDRESS={address}", "unset RAY_ADDRESS"
    return address, f"--address {address}", "drop --address"


def _auto_address():
    """The address Ray's 'auto' means (a cluster started on this machine by `ray start`),
    None where Ray's lookup is not available; ConfigError when there is none."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray: ray.init says what it finds
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError:
        raise ConfigError(
            "--address auto found no running Ray cluster on this machine: start one first "
            "(`ray start --head`), give the address of another, or drop --address to run on "
            "a Ray started for the job.") from None
    except Exception:  # Ray's own error, at ray.init
        return None


def _host_port(address):
    """(host, port) of a GCS address 'HOST:PORT' or a Ray Client one 'ray://HOST[:PORT]'
    (port 10001 by default); None for any other form."""
    scheme, found, rest = address.partition("://")
    if found and scheme != "ray":
        return None
    rest = (rest if found else address).split("/")[0]
    default = 10001 if found else None
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else default
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    elif ":" not in rest:
        host, port = rest, default
    else:
        return None
    port = str(port or "")
    return (host, int(port)) if host and port.isdigit() else None


# === The model the workers load ===


def prepare_model(name, cache_dir, offline, computed, command):
    """Caches `name`'s weights (converted on a miss unless offline) and, for
    computed["runtime"] == "openvino", builds (or finds and checks) the IR the workers
    load offline, returning that OpenVINOModel (its `accuracy` is the measured agreement);
    None for Keras. `computed`: runtime, precision, min_cosine. Offline with no IR
    cached: a CacheError whose fix is the command that builds it in this cache, or
    `command` (vit-embed, vit-serve) run once without --offline."""
    from vit_hub.cache import is_offline
    from vit_hub.pretrained import cached_weights, load_pretrained
    from vit_hub.runtime.ir_cache import build_command

    cached_weights(name, cache_dir, offline)  # offline and not cached: refused here
    if computed["runtime"] != "openvino":
        return None
    try:
        return load_pretrained(name, cache_dir=cache_dir, offline=offline, **computed)
    except CacheError as err:
        head, found, _ = str(err).partition(", and offline nothing is built")
        if not (found and is_offline(offline)):
            raise
        raise CacheError(
            f"{head}, and with --offline (offline=True, VIT_HUB_OFFLINE) none is built. "
            f"Build it once: {build_command(name, computed['precision'], cache_dir)}; or "
            f"run {command} once without --offline (the weights are cached: it builds the IR "
            "from them, downloading nothing)."
        ) from None


def engine(fast):
    """What computes the rows or answers of a model `prepare_model` prepared: the
    OpenVINO model's engine, or Keras on this process's backend (its workers' too)."""
    if fast is not None:
        return fast.engine
    return f"Keras ({os.environ.get('KERAS_BACKEND', 'tensorflow')}) fp32"


def registration(entry):
    """What a worker process needs to know `entry`'s model by name (`register_in_worker`):
    a model or variant registered in the caller's process only is not in a fresh one."""
    from vit_hub.architecture import variant_config

    return {"model": entry.name, "entry": entry.to_dict(),
            "variant": variant_config(entry.variant)}


def register_in_worker(model, entry, variant):
    """Registers, in a worker process, what `registration` recorded: the caller's
    registrations are the truth (a variant the caller registered again with
    overwrite=True replaces the worker's shipped one)."""
    from vit_hub.architecture import list_variants, register_variant, variant_config
    from vit_hub.catalogue import get_entry, list_models, register_model

    name = entry["variant"]
    if name not in list_variants() or variant_config(name) != variant:
        register_variant(name, overwrite=True, **variant)
    if model not in list_models() or get_entry(model).to_dict() != entry:
        register_model(model, entry, overwrite=True)


def load_in_worker(name, cache_dir, runtime, precision, min_cosine, threads):
    """(predict, output_shape, accuracy) of the model a worker runs, loaded from the
    cache offline (the caller prepared it: `prepare_model`), on `threads` CPU threads:
    `predict` takes a float32 batch and returns numpy, one call per batch; `accuracy` is
    the OpenVINO model's measured agreement with fp32, None for Keras."""
    from vit_hub.pretrained import load_pretrained

    limit_threads(threads, keras=runtime == "keras")
    if runtime == "openvino":  # numpy in, numpy out; no TensorFlow or Keras loaded
        fast = load_pretrained(name, cache_dir=cache_dir, offline=True, runtime="openvino",
                               precision=precision, min_cosine=min_cosine, threads=threads)
        return fast, fast.output_shape, fast.accuracy
    keras_model = load_pretrained(name, cache_dir=cache_dir, offline=True)
    # predict_on_batch: one call per batch (model.predict sets up a data pipeline each time)
    return keras_model.predict_on_batch, keras_model.output_shape, None


def limit_threads(threads, keras=True):
    """Keeps a worker's math on the CPUs Ray gave it (its frameworks would take all the
    machine's cores, and workers sharing a machine would fight over them). OpenVINO
    takes its threads= itself, and its workers import no Keras backend."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if not keras:
        return
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
