"""vit-embed where a user found holes by hand: Ctrl-C (SIGINT) stops the job, keeps the
finished shards and says so, and a rerun resumes; an --address where no Ray cluster answers
is refused in seconds; an --output folder holding the user's files (the SOURCE's images) is
refused; offline, a missing OpenVINO IR's fix carries the user's --cache-dir.

The commands run in fresh processes, as a user's do. This module starts no Ray of its own
in the test process: what is refused is refused before Ray starts."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import test_embed
from tests.conftest import TINY_CLASSIFICATION, TINY_NAME, kill_session, wait_until
from tests.test_embed import ROOT, listing_with_a_pipe, readers_of
from vit_hub.errors import CacheError, OutputExistsError
from vit_hub.files import TEMPORARY_PREFIX

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("ray")

photos = test_embed.photos  # the fixture: 17 images in nested folders, two broken, a text
# `vit-embed`, with the tiny test catalogue registered (as a user registers a model).
CLI = "import tests.conftest, sys; from vit_hub.cli.vit_embed import main; sys.exit(main())"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from tests import checkpoints

    root = tmp_path_factory.mktemp("embed-holes")
    return str(checkpoints.cache_copy(root / "cache", TINY_NAME, TINY_CLASSIFICATION))


def environment(**changes):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RAY_ADDRESS", None)
    env.update(changes)
    return env


def closed_port():
    """A local TCP port where nothing listens (bound, then freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("to, sigint", [
    ("driver", "SIG_IGN"),  # `kill -INT PID` of a job a script started in the background
    ("process group", "default_int_handler"),  # Ctrl-C in a terminal
])
def test_sigint_stops_the_job_keeps_the_finished_shards_and_a_rerun_resumes(
        cache, photos, tmp_path, to, sigint):
    """The last listed 'image' is a named pipe that nobody writes: the job is mid-run,
    its worker blocked reading it, when the first shards are written and SIGINT comes."""
    paths, pipe, listing = listing_with_a_pipe(photos, tmp_path)
    out = tmp_path / "out"
    command = [TINY_NAME, str(listing), "--output", str(out), "--cache-dir", cache,
               "--offline", "--batch-size", "2"]
    started_with = f"import signal; signal.signal(signal.SIGINT, signal.{sigint}); "
    with open(tmp_path / "stderr", "w") as stderr:
        job = subprocess.Popen([sys.executable, "-c", started_with + CLI, *command],
                               env=environment(), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=stderr, start_new_session=True)
    try:
        wait_until(lambda: list(out.glob("part-*.parquet")) or job.poll() is not None, 120,
                   "no shard was written")
        assert job.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
        signalled = time.monotonic()
        if to == "driver":
            os.kill(job.pid, signal.SIGINT)
        else:
            os.killpg(job.pid, signal.SIGINT)
        code = job.wait(timeout=60)
        took = time.monotonic() - signalled
        wait_until(lambda: not readers_of(pipe), 30, "a worker still reads the pipe")
    finally:  # whatever happened, no process of the job outlives the test
        kill_session(job.pid)
        job.wait()
    said = (tmp_path / "stderr").read_text()
    assert code == 130 and took < 30, (code, took, said[-3000:])
    kept = sorted(p.name for p in out.glob("part-*.parquet"))
    assert said.strip().splitlines()[-1] == (
        f"vit-embed: stopped (interrupted): {len(kept)} finished "
        f"shard{'s' if len(kept) != 1 else ''} kept in {out}; run the same command "
        "again to resume."), said[-3000:]
    assert "Traceback" not in said
    # Nothing half-written, hidden or not: the folder reads as a dataset of whole shards.
    assert not list(out.glob(f"{TEMPORARY_PREFIX}*"))
    assert all(re.fullmatch(r"part-\d{5}\.parquet", p.name) for p in out.iterdir()
               if not p.name.startswith("."))
    table = pq.read_table(out)
    done = table.column("path").to_pylist()
    assert str(pipe) not in done and table.num_rows == 5 * len(kept) > 0  # shards of 5
    os.remove(pipe)
    os.link(paths[0], pipe)  # the stuck image replaced: the rerun does the rest
    rerun = subprocess.run([sys.executable, "-c", CLI, *command], env=environment(),
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{18 - len(done)} images embedded" in rerun.stdout
    assert f"{len(done)} already done" in rerun.stdout
    assert pq.read_table(out).num_rows == 18


@pytest.mark.parametrize("given", ["host:port", "ray://host:port", "RAY_ADDRESS"])
def test_an_address_where_no_cluster_answers_is_refused_in_seconds(cache, photos, tmp_path,
                                                                   given):
    """Ray would retry for minutes, printing a line a second, then raise a traceback."""
    address = f"127.0.0.1:{closed_port()}"
    command = [TINY_NAME, str(photos), "--output", str(tmp_path / "out"), "--cache-dir",
               cache, "--offline"]
    env = environment()
    if given == "RAY_ADDRESS":  # what ray.init joins when --address is not given
        env["RAY_ADDRESS"] = address
        fix = "unset RAY_ADDRESS"
    else:
        command += ["--address", address if given == "host:port" else f"ray://{address}"]
        fix = "drop --address"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CLI, *command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert done.returncode == 2 and took < 60, (done.returncode, took, done.stderr[-3000:])
    [line] = done.stderr.strip().splitlines()  # one line, no Ray log lines, no traceback
    assert line.startswith("vit-embed: No Ray cluster answers at "), line
    assert "Connection refused" in line and "`ray start --head`" in line and fix in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["the SOURCE folder", "a folder of the user's files",
                                  "a folder holding the SOURCE"])
def test_an_output_folder_holding_the_users_files_is_refused(cache, photos, tmp_path, case):
    import vit_hub

    source = photos
    if case == "the SOURCE folder":
        out, words = photos, (r"holds images vit-embed did not write \(broken\.jpg, "
                              r"img\d\d\.\w+, img\d\d\.\w+, \.\.\.; 8 entries in all\)")
    elif case == "a folder of the user's files":
        out, words = tmp_path / "out", (r"holds files or folders vit-embed did not write "
                                        r"\(notes\.txt; 1 entry in all\)")
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out, words = tmp_path / "out", r"did not write \(album; 1 entry in all\)"
        source = out / "album"
        source.mkdir(parents=True)
        os.link(next(photos.rglob("img00.png")), source / "img00.png")
    before = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match=words) as refused:
        vit_hub.embed_images(TINY_NAME, source, out, cache_dir=cache, offline=True,
                             progress=False)
    assert f"Give --output a new or empty folder, e.g. {out}-embeddings" in str(
        refused.value)
    assert sorted(str(p) for p in out.rglob("*")) == before  # nothing written there


def test_offline_without_a_cached_ir_names_the_command_for_the_users_cache(cache, photos,
                                                                          tmp_path):
    import vit_hub

    with pytest.raises(CacheError) as refused:  # no test builds this model's IR
        vit_hub.embed_images(TINY_CLASSIFICATION, photos, tmp_path / "out", cache_dir=cache,
                             offline=True, runtime="openvino", progress=False)
    message = str(refused.value)
    assert (f"convert-weights {TINY_CLASSIFICATION} --runtime openvino --precision fp32 "
            f"--cache-dir {cache};") in message, message
    assert "without --offline" in message and not (tmp_path / "out").exists()
