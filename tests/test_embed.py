"""vit-embed on Ray Data, on this machine: the rows equal `model.predict`, unreadable
images go to the errors file, a rerun resumes, a killed worker is retried with every image
written exactly once, and bad input is refused before any work. Runs in the TensorFlow
leg; its Ray workers use the backend of the process that starts them."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from tests.conftest import TINY_CLASSIFICATION, TINY_IMAGE, TINY_NAME
from vit_hub.errors import (
    AccuracyError,
    CacheError,
    EmbedError,
    ImageError,
    MissingFileError,
    OutputExistsError,
)
from vit_hub.files import TEMPORARY_PREFIX

pq = pytest.importorskip("pyarrow.parquet")
ray = pytest.importorskip("ray")
# The workers run the same model on the same images in other batches: float32 results
# differ by a few ulps at most (measured 0 to 5e-7); 1e-5 is the bound.
TOLERANCE = 1e-5
# A gate that no int8 or bf16 model meets (int8 keeps ~8 bits a weight: cosines near
# 0.999x), to test a refusal on every CPU class without hoping that int8 is poor there.
STRICT_GATE = 0.9999999
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from tests import checkpoints

    root = tmp_path_factory.mktemp("embed")
    checkpoints.cache_copy(root / "cache", TINY_NAME, TINY_CLASSIFICATION)
    # One Ray instance for the module, as a user's session would have (embed_images joins
    # it); the CLI test starts its own, as a user's command does.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={
        "env_vars": {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield str(root / "cache")
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """17 images of several sizes and formats in nested folders, two broken files and a
    text file that is not an image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(17):
        folder = root / ("trips" if i % 3 else "") / ("2026" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.{('png', 'jpg', 'webp')[i % 3]}")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (root / "trips" / "cut.png").write_bytes(next(root.rglob("img00.png")).read_bytes()[:60])
    (root / "notes.txt").write_text("not an image")
    return root


def readable(photos):
    return sorted(str(p) for p in photos.rglob("img*"))


def expected_outputs(cache, name, paths):
    import vit_hub

    model = vit_hub.load_pretrained(name, cache_dir=cache, offline=True)
    return model.predict(vit_hub.preprocess(paths, image_size=TINY_IMAGE), verbose=0)


def rows(folder):
    table = pq.read_table(folder)
    return {path: i for i, path in enumerate(table.column("path").to_pylist())}, table


def test_rows_equal_predict_and_unreadable_images_are_listed(cache, photos, tmp_path):
    import vit_hub

    out = tmp_path / "out"
    summary = vit_hub.embed_images(TINY_NAME, photos, out, workers=2, batch_size=4,
                                   shard_size=5, cache_dir=cache, offline=True,
                                   progress=False)
    paths = readable(photos)
    assert (summary.images, summary.errors, summary.skipped, summary.shards) == (17, 2, 0, 4)
    index, table = rows(out)
    assert sorted(index) == paths and table.num_rows == 17  # each image once
    features = np.stack(table.column("features").to_numpy(zero_copy_only=False))
    expected = expected_outputs(cache, TINY_NAME, paths)
    difference = np.abs(features[[index[p] for p in paths]] - expected).max()
    assert difference <= TOLERANCE, difference
    with open(out / "_errors.csv") as file:
        errors = list(csv.DictReader(file))
    assert [e["path"] for e in errors] == sorted([str(photos / "broken.jpg"),
                                                  str(photos / "trips" / "cut.png")])
    assert all("not a readable JPEG, PNG" in e["reason"] for e in errors)


def test_a_run_raises_no_deprecation_warning(cache, photos, tmp_path):
    """Ray Data is driven through its current API: no `**ray_remote_args` (deprecated in
    Ray 2.60, whose warning every run printed), the retry bound kept by the workers."""
    from ray.util.annotations import RayDeprecationWarning

    import vit_hub

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = vit_hub.embed_images(TINY_NAME, readable(photos)[0], tmp_path / "out",
                                       cache_dir=cache, offline=True, progress=False)
    assert summary.images == 1
    ours = f"{os.sep}vit_hub{os.sep}"
    found = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
             if issubclass(w.category, RayDeprecationWarning)
             or (issubclass(w.category, DeprecationWarning) and ours in w.filename)]
    assert not found, found


def test_classification_rows_hold_logits_and_the_top5(cache, photos, tmp_path):
    import vit_hub

    listing = tmp_path / "list.txt"  # a text file of paths, relative to its folder
    paths = readable(photos)[:6]
    listing.write_text("# six photos\n" + "\n".join(os.path.relpath(p, tmp_path)
                                                    for p in paths) + "\n\n")
    vit_hub.embed_images(TINY_CLASSIFICATION, listing, tmp_path / "out", batch_size=4,
                         cache_dir=cache, offline=True, progress=False)
    index, table = rows(tmp_path / "out")
    assert sorted(index) == paths
    assert table.column_names == ["path", "logits", "top5_labels", "top5_scores"]
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False))
    expected = expected_outputs(cache, TINY_CLASSIFICATION, paths)
    order = [index[p] for p in paths]
    assert np.abs(logits[order] - expected).max() <= TOLERANCE
    top = vit_hub.decode_predictions(expected, top=5)
    labels = table.column("top5_labels").to_pylist()
    scores = table.column("top5_scores").to_pylist()
    for row, best in zip(order, top):
        assert labels[row] == [name for _, name, _ in best]
        np.testing.assert_allclose(scores[row], [p for _, _, p in best], atol=1e-5)


def test_a_rerun_resumes_keeping_finished_shards(cache, photos, tmp_path):
    import vit_hub

    out = tmp_path / "out"
    first = vit_hub.embed_images(TINY_NAME, str(photos / "trips" / "*.png"), out,
                                 shard_size=3, cache_dir=cache, offline=True, progress=False)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    (out / f"{TEMPORARY_PREFIX}0123part-00099.parquet").write_bytes(b"half a killed shard")
    second = vit_hub.embed_images(TINY_NAME, photos, out, shard_size=3, cache_dir=cache,
                                  offline=True, progress=False)
    assert first.images + first.errors == second.skipped  # the glob's images, cut.png too
    assert second.images + second.errors == 19 - second.skipped
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")
            if p.name in kept} == kept  # finished shards untouched
    assert not list(out.glob(f"{TEMPORARY_PREFIX}*"))
    index, table = rows(out)
    assert sorted(index) == readable(photos) and table.num_rows == 17
    third = vit_hub.embed_images(TINY_NAME, photos, out, cache_dir=cache, offline=True,
                                 progress=False)
    assert (third.images, third.errors, third.shards, third.skipped) == (0, 0, 0, 19)
    assert len(list(csv.DictReader(open(out / "_errors.csv")))) == 2


def readers_of(path):
    """Pids of processes that have `path` open (the worker blocked reading the pipe)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds):
                pids.append(int(pid))
        except OSError:  # gone, or not ours
            continue
    return pids


def wait_for_reader(path, other_than=(), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in readers_of(path) if p not in other_than and p != os.getpid()]
        if pids:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"no worker opened {path} within {timeout} s")


def start_embedding(source, out, cache, **kwargs):
    """embed_images on a thread: (thread, outcome), outcome gets "summary" or "error"."""
    import vit_hub

    outcome = {}

    def job():
        try:
            outcome["summary"] = vit_hub.embed_images(
                TINY_NAME, source, out, shard_size=4, batch_size=2, cache_dir=cache,
                offline=True, progress=False, **kwargs)
        except BaseException as err:  # reported by the main thread
            outcome["error"] = err

    thread = threading.Thread(target=job)
    thread.start()
    return thread, outcome


def pipe_writer(pipe, thread, outcome, timeout=120):
    """The write end of `pipe`, opened once a worker opens it to read: holding it open,
    the worker's read then waits for the bytes (or for its close: an empty file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads it yet
            time.sleep(0.2)
    raise AssertionError(f"no worker opened {pipe}: {outcome}")


def listing_with_a_pipe(photos, tmp_path):
    """A list of the readable images and, last, a named pipe: its shard runs last."""
    paths = readable(photos)
    pipe = tmp_path / "zz-slow.png"
    os.mkfifo(pipe)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*paths, str(pipe)]))
    return paths, pipe, listing


def test_a_killed_worker_is_retried_and_each_image_written_once(cache, photos, tmp_path):
    """One listed 'image' is a named pipe: the worker blocks reading it, mid-run, until
    this test writes to it. The test kills that worker (SIGKILL), waits for Ray to run the
    shard again in a new worker, then feeds the pipe."""
    paths, pipe, listing = listing_with_a_pipe(photos, tmp_path)
    out = tmp_path / "out"
    thread, outcome = start_embedding(listing, out, cache)
    writer = None
    try:
        writer = pipe_writer(pipe, thread, outcome)
        killed = wait_for_reader(pipe)
        done_before = sorted(p.name for p in out.glob("part-*.parquet"))
        os.kill(killed, signal.SIGKILL)
        retried = wait_for_reader(pipe, other_than=(killed,))
        os.set_blocking(writer, True)
        os.write(writer, open(paths[0], "rb").read())  # the retried worker gets the image
    finally:  # whatever happened, the pipe ends and the job finishes before teardown
        if writer is not None:
            os.close(writer)
        thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert retried != killed and done_before  # a new worker, mid-run
    assert outcome["summary"].images == 18 and outcome["summary"].errors == 0
    index, table = rows(out)
    assert table.num_rows == 18 and sorted(index) == sorted([*paths, str(pipe)])
    features = np.stack(table.column("features").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(features[index[str(pipe)]], features[index[paths[0]]],
                               atol=TOLERANCE)  # the pipe carried that image


def test_a_shard_whose_worker_keeps_dying_stops_the_job_and_a_rerun_resumes(
        cache, photos, tmp_path):
    """The worker reading the pipe is killed each time (as an image that crashes the
    decoder would kill it): with retries=1 the second death stops the job with an
    EmbedError; the finished shards stay, and a rerun embeds the rest."""
    import vit_hub

    paths, pipe, listing = listing_with_a_pipe(photos, tmp_path)
    out = tmp_path / "out"
    thread, outcome = start_embedding(listing, out, cache, retries=1)
    writer, killed = None, []
    try:
        writer = pipe_writer(pipe, thread, outcome)
        for _ in range(2):
            killed.append(wait_for_reader(pipe, other_than=killed))
            os.kill(killed[-1], signal.SIGKILL)
    finally:  # a third reader (none is expected) would read an empty file and finish
        if writer is not None:
            os.close(writer)
        thread.join(timeout=300)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, EmbedError), outcome
    assert "died 2 times (retries=1)" in str(error) and "a rerun resumes" in str(error)
    kept, table = rows(out)
    assert str(pipe) not in kept and 0 < table.num_rows < 18  # whole shards, not the last
    assert not list(out.glob(f"{TEMPORARY_PREFIX}*"))  # no half-written file
    os.remove(pipe)
    os.link(paths[0], pipe)  # the crashing image replaced: the rerun does the rest
    summary = vit_hub.embed_images(TINY_NAME, listing, out, shard_size=4, batch_size=2,
                                   cache_dir=cache, offline=True, progress=False)
    assert summary.skipped == len(kept) and summary.images == 18 - len(kept)
    index, table = rows(out)
    assert table.num_rows == 18 and sorted(index) == sorted([*paths, str(pipe)])


def vectors(folder):
    """{path: row} of a dataset's features (or logits)."""
    index, table = rows(folder)
    column = table.column("features" if "features" in table.column_names else "logits")
    values = np.stack(column.to_numpy(zero_copy_only=False))
    return {path: values[i] for path, i in index.items()}


def computed_by(folder):
    """(runtime, precision, accuracy record) of each Parquet file of `folder`."""
    found = set()
    for part in sorted(folder.glob("part-*.parquet")):
        metadata = pq.read_schema(part).metadata
        found.add((metadata[b"vit_hub.runtime"].decode(),
                   metadata[b"vit_hub.precision"].decode(),
                   json.dumps(json.loads(metadata[b"vit_hub.accuracy"]), sort_keys=True)))
    return found


def test_openvino_rows_equal_the_keras_rows_and_record_the_runtime(cache, photos, tmp_path):
    """offline=False: the IR is built in the driver from the cached weights (nothing to
    download); the workers load it from the cache."""
    import vit_hub

    kwargs = dict(workers=2, batch_size=4, shard_size=5, cache_dir=cache, progress=False)
    vit_hub.embed_images(TINY_NAME, photos, tmp_path / "keras", offline=True, **kwargs)
    summary = vit_hub.embed_images(TINY_NAME, photos, tmp_path / "ov", runtime="openvino",
                                   offline=False, **kwargs)
    assert (summary.images, summary.errors) == (17, 2)
    keras_rows, ov_rows = vectors(tmp_path / "keras"), vectors(tmp_path / "ov")
    assert sorted(ov_rows) == sorted(keras_rows) == readable(photos)
    difference = max(np.abs(ov_rows[p] - keras_rows[p]).max() for p in keras_rows)
    assert difference <= TOLERANCE, difference
    assert computed_by(tmp_path / "keras") == {("keras", "fp32", "null")}
    [(runtime, precision, accuracy)] = computed_by(tmp_path / "ov")  # one record, each file
    fast = vit_hub.load_pretrained(TINY_NAME, cache_dir=cache, runtime="openvino",
                                   offline=True)
    assert (runtime, precision) == ("openvino", "fp32")
    assert json.loads(accuracy) == json.loads(json.dumps(fast.accuracy))
    assert json.loads(accuracy)["max_abs"] <= TOLERANCE
    # A resume with another runtime would mix rows of two models: refused, naming both.
    before = sorted(p.name for p in (tmp_path / "ov").iterdir())
    with pytest.raises(OutputExistsError, match="computed by openvino fp32 .*not by keras "
                       "fp32: resume it with --runtime openvino --precision fp32"):
        vit_hub.embed_images(TINY_NAME, photos, tmp_path / "ov", offline=True, **kwargs)
    with pytest.raises(OutputExistsError, match="computed by keras fp32 .*not by openvino "
                       "fp32: resume it with --runtime keras, or"):
        vit_hub.embed_images(TINY_NAME, photos, tmp_path / "keras", runtime="openvino",
                             offline=True, **kwargs)
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == before


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_is_refused_before_any_work_or_recorded(cache, photos, tmp_path,
                                                                  precision):
    """bf16 needs a CPU with bf16 instructions; int8 is refused below a gate that no
    quantized model meets (how close int8 comes depends on the CPU class: VNNI or not),
    and passes a looser one."""
    import vit_hub
    from vit_hub.runtime.engine import cpu_capabilities

    kwargs = dict(runtime="openvino", precision=precision, shard_size=5, cache_dir=cache,
                  offline=False, progress=False)
    out = tmp_path / "out"
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        with pytest.raises(vit_hub.ConfigError, match="needs a CPU with bf16 instructions"):
            vit_hub.embed_images(TINY_NAME, photos, out, **kwargs)
        assert not out.exists()
        return
    if precision == "int8":
        with pytest.raises(AccuracyError, match=f"gate {STRICT_GATE}"):
            vit_hub.embed_images(TINY_NAME, photos, out, **kwargs, min_cosine=STRICT_GATE)
        assert not out.exists()
        kwargs["min_cosine"] = 0.5
    summary = vit_hub.embed_images(TINY_NAME, photos, out, **kwargs)
    assert summary.engine.startswith(f"OpenVINO {precision}")
    [(runtime, found, accuracy)] = computed_by(out)
    assert (runtime, found) == ("openvino", precision)
    reduced, exact = vectors(out), expected_outputs(cache, TINY_NAME, readable(photos))
    cosines = [np.dot(reduced[p], e) / np.linalg.norm(reduced[p]) / np.linalg.norm(e)
               for p, e in zip(readable(photos), exact)]
    # On these photos as on the held-out ones the gate was measured on (some slack).
    assert min(cosines) >= json.loads(accuracy)["gate_cosine_min"] - 1e-3
    with pytest.raises(OutputExistsError, match=f"computed by openvino {precision} .*not by "
                       "openvino fp32"):
        vit_hub.embed_images(TINY_NAME, photos, out, runtime="openvino", cache_dir=cache,
                             offline=False, progress=False)


@pytest.mark.parametrize("case", ["offline_not_cached", "empty_source", "missing_source",
                                  "other_models_rows", "output_is_a_file", "bad_batch",
                                  "output_in_use", "bad_retries", "address_elsewhere",
                                  "precision_without_openvino", "unknown_precision",
                                  "unknown_runtime", "offline_ir_not_cached"])
def test_bad_input_is_refused_before_any_work(cache, photos, tmp_path, case):
    import vit_hub

    out, source, kwargs = tmp_path / "out", photos, dict(cache_dir=cache, offline=True)
    model = TINY_NAME
    error, words = {
        "offline_not_cached": (CacheError, "is not in the vit_hub cache"),
        "empty_source": (ImageError, "No image files in the folder"),
        "missing_source": (MissingFileError, "does not exist"),
        "other_models_rows": (OutputExistsError, f"rows of {TINY_CLASSIFICATION}"),
        "output_is_a_file": (OutputExistsError, "is a file"),
        "bad_batch": (vit_hub.ConfigError, "batch_size must be a positive integer"),
        "output_in_use": (OutputExistsError, "being written by another vit-embed run"),
        "bad_retries": (vit_hub.ConfigError, "retries must be a whole number >= 0"),
        "address_elsewhere": (vit_hub.ConfigError, "already connected to the Ray cluster"),
        "precision_without_openvino": (vit_hub.ConfigError, "add runtime='openvino'"),
        "unknown_precision": (vit_hub.ConfigError, "precision 'fp16' is not one of"),
        "unknown_runtime": (vit_hub.ConfigError, "runtime 'onnx' is not one of"),
        "offline_ir_not_cached": (CacheError, "convert-weights vit_tiny8_classification "
                                              "--runtime openvino --precision fp32"),
    }[case]
    if case == "offline_not_cached":
        kwargs["cache_dir"] = tmp_path / "empty-cache"
    elif case == "empty_source":
        source = tmp_path / "nothing"
        source.mkdir()
        (source / "readme.txt").write_text("no images here")
    elif case == "missing_source":
        source = tmp_path / "no-such-folder"
    elif case == "other_models_rows":
        vit_hub.embed_images(TINY_CLASSIFICATION, readable(photos)[0], out,
                             progress=False, **kwargs)
    elif case == "output_is_a_file":
        out.write_text("")
    elif case == "bad_batch":
        kwargs["batch_size"] = 0
    elif case == "bad_retries":
        kwargs["retries"] = -1
    elif case == "precision_without_openvino":
        kwargs["precision"] = "int8"
    elif case == "unknown_precision":
        kwargs.update(runtime="openvino", precision="fp16")
    elif case == "unknown_runtime":
        kwargs["runtime"] = "onnx"
    elif case == "offline_ir_not_cached":  # no test builds the classification model's IR
        model, kwargs["runtime"] = TINY_CLASSIFICATION, "openvino"
    elif case == "address_elsewhere":  # the module's Ray runs: another cluster can't join
        kwargs["address"] = "10.0.0.1:6379"
    elif case == "output_in_use":  # another run holds OUT
        from filelock import FileLock

        out.mkdir()
        held = FileLock(out / ".vit-embed.lock")
        held.acquire()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(error, match=words):
        vit_hub.embed_images(model, source, out, progress=False, **kwargs)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_the_cli_embeds_and_says_what_it_did(cache, photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    register = "import tests.conftest; "  # the tiny catalogue, as a user registers one
    command = [sys.executable, "-c", register + "import sys; from vit_hub.cli.vit_embed import "
               "main; sys.exit(main())"]
    done = subprocess.run([*command, TINY_NAME, str(photos), "--output", str(tmp_path / "o"),
                           "--cache-dir", cache, "--offline", "--workers", "2"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "17 images embedded" in done.stdout and "2 unreadable" in done.stdout
    assert "_errors.csv" in done.stdout
    from vit_hub.runtime.engine import describe_cpu_class

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    assert f"Computed by Keras ({backend}) fp32 on {describe_cpu_class()}." in done.stdout
    assert pq.read_table(tmp_path / "o").num_rows == 17
    refused = subprocess.run([*command, "vit_b32_fe", str(photos), "--output",
                              str(tmp_path / "o2"), "--cache-dir", str(tmp_path / "none"),
                              "--offline"], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "vit-embed: " in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "o2").exists()
    usage = subprocess.run([*command, TINY_NAME, str(photos), "--output", str(tmp_path / "o3"),
                            "--precision", "int8"], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert usage.returncode == 2 and not (tmp_path / "o3").exists()
    assert "--precision int8 is the OpenVINO runtime's: add --runtime openvino" in usage.stderr
