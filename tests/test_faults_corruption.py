"""Fault injection, corrupt files: 8 of the 24 faults (see tests/fault_support.py): bit
flip, truncation, empty file, deleted weights, garbage / non-object / wrong-sha metadata
in a cache entry, and a truncated weights file given by path. Each is detected by the
sha256 check before a byte of the weights is parsed, and never loaded.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

import vit_hub
import vit_hub.pretrained
from tests.fault_support import (
    NAME,
    assert_complete,
    snapshot,
)
from vit_hub.cache import CacheEntry
from vit_hub.errors import CacheError, WeightsError

# === Corruption: detected by checksum, never loaded ===


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "bit-flip": (lambda w, m: _flip(w), "fails its sha256 check"),
    "truncated": (lambda w, m: os.truncate(w, w.stat().st_size // 2), "fails its sha256 check"),
    "empty": (lambda w, m: os.truncate(w, 0), "fails its sha256 check"),
    "weights-deleted": (lambda w, m: w.unlink(), "is missing"),
    "metadata-garbage": (lambda w, m: m.write_text('{"sha256": "ab'), "is unreadable"),
    "metadata-not-an-object": (lambda w, m: m.write_text("[1, 2]"), "is unreadable"),
    "metadata-other-sha": (lambda w, m: m.write_text(json.dumps({"sha256": "0" * 64})),
                           "fails its sha256 check"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_entry_is_detected_by_checksum_and_not_loaded(
        env, monkeypatch, warm_cache, tiny_saved_model, corruption):  # noqa: F811
    shutil.copytree(warm_cache, env.cache)
    entry = env.entry()
    damage, problem = CORRUPTIONS[corruption]
    damage(Path(entry.weights_path), Path(entry.metadata_path))
    assert entry.state() == "corrupt"
    before = snapshot(env.cache)
    reads = []
    monkeypatch.setattr(vit_hub.pretrained, "open_weights_file",
                        lambda path: reads.append(path))
    with pytest.raises(CacheError) as err:
        vit_hub.load_pretrained(NAME, offline=True)
    message = str(err.value)
    assert problem in message and entry.folder in message and "is not loaded" in message
    assert f"convert-weights {NAME} --force" in message
    assert reads == []  # never parsed
    assert snapshot(env.cache) == before
    if corruption in ("bit-flip", "metadata-garbage"):
        monkeypatch.undo()
        env.activate(monkeypatch)
        # Online, it is converted again (here from kagglehub's cache) and replaced.
        env.lay_out(tiny_saved_model)
        with pytest.warns(UserWarning, match="Converting again"):
            vit_hub.load_pretrained(NAME)
        assert_complete(entry)


def test_corrupt_weights_given_by_path_are_not_loaded(tmp_path, warm_cache, monkeypatch):  # noqa: F811
    copy = tmp_path / "copy"
    shutil.copytree(CacheEntry(NAME, warm_cache).folder, copy)
    weights = copy / f"{NAME}.h5"
    os.truncate(weights, weights.stat().st_size - 100)
    reads = []
    monkeypatch.setattr(vit_hub.pretrained, "open_weights_file", lambda p: reads.append(p))
    with pytest.raises(WeightsError, match=r"cannot be verified: .*\.h5 fails its sha256 "
                       r"check against .*\.json \(corrupt, truncated or changed\); "
                       r"it is not loaded"):
        vit_hub.load_pretrained(NAME, weights=weights)
    assert reads == []
