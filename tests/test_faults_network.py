"""Fault injection, no network and a shared cache: 5 of the 24 faults (see
tests/fault_support.py): no network and HTTP 500 with a warm cache, a warm kagglehub
cache, a cold cache, and a read-only shared cache.

"No network" is the Kaggle proxy port of `Env`, where nothing listens; `Env.serve` starts
the fake Kaggle there.
"""

import re
import shutil

import pytest

import vit_hub
from tests.conftest import TINY_HANDLE
from tests.fault_support import (
    NAME,
    assert_complete,
    cli,
    files,
    read_only,
    snapshot,
)
from vit_hub.errors import DownloadError

# === No network ===


def test_no_network_with_warm_cache_still_loads(env, monkeypatch, warm_cache,  # noqa: F811
                                                tiny_saved_model):
    shutil.copytree(warm_cache, env.cache)
    vit_hub.load_pretrained(NAME)  # nothing listens on the Kaggle port
    with env.serve(monkeypatch, {TINY_HANDLE: tiny_saved_model}, fault="http500") as server:
        vit_hub.load_pretrained(NAME)
        assert server.requests == []  # a hit never asks the network
    assert_complete(env.entry())


def test_no_network_with_warm_kagglehub_cache_converts(env, tiny_saved_model):  # noqa: F811
    env.lay_out(tiny_saved_model)
    vit_hub.load_pretrained(NAME)  # pinned version: kagglehub resolves it locally
    assert_complete(env.entry(), tiny_saved_model)


def test_no_network_with_cold_cache_is_one_clear_error(env, capsys):  # noqa: F811
    with pytest.raises(DownloadError) as err:
        vit_hub.load_pretrained(NAME)
    message = str(err.value)
    assert message.startswith(f"Downloading {TINY_HANDLE} from Kaggle failed: Kaggle could "
                              "not be reached (ProxyError: [Errno 111] Connection refused;")
    assert "\n" not in message and message.count("Kaggle could not be reached") == 1
    assert "convert-weights NAME --source DIR" in message
    assert files(env.cache) == ["v1/.locks/vit_tiny8_fe.lock"]
    assert files(env.kagglehub) == []
    code, out, stderr = cli(capsys, NAME)
    assert code == 1 and "FAILED" in out
    errors = [line for line in stderr.splitlines() if line.startswith("convert-weights")]
    assert errors == [f"convert-weights: {NAME}: {message}"]  # (the rest: progress bars)


# === A shared cache that this user cannot write ===


def test_read_only_shared_cache_still_loads(env, warm_cache, capsys):  # noqa: F811
    shutil.copytree(warm_cache, env.cache)
    with read_only(env.cache):
        before = snapshot(env.cache)
        vit_hub.load_pretrained(NAME)
        code, out, _ = cli(capsys, NAME)
        assert code == 0 and f"{NAME}  cached" in out
        code, out, err = cli(capsys, NAME, "--force")
        assert code == 1
        assert re.search(rf"Cannot write the vit_hub cache at {re.escape(str(env.cache))}: "
                         r"\[Errno (30|13)\] (Read-only file system|Permission denied)", err)
        assert snapshot(env.cache) == before
