"""Fault injection, a full disk: 5 of the 24 faults (see tests/fault_support.py):
patched ENOSPC in the weights and in the metadata, a real 48 kB tmpfs for the cache and
for --output, a disk that fills up mid-write. Also: written files follow the umask.

The real small file systems need root and mount(8); elsewhere those tests skip.
"""

import errno
import os
import re
import signal

import pytest

import vit_hub.files
from tests.fault_support import (
    NAME,
    assert_complete,
    cli,
    entry_files,
    files,
    tiny_tmpfs,
    wait_for,
)
from vit_hub.cache import CacheEntry
from vit_hub.conversion.pipeline import convert_into_cache
from vit_hub.errors import CacheError

# === A full disk ===


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_weights(env, monkeypatch, tiny_saved_model):  # noqa: F811
    import h5py

    env.lay_out(tiny_saved_model)
    original = h5py.Group.create_dataset
    calls = []

    def create_dataset(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # some tensors are written, then the disk fills up
            _enospc()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    with pytest.raises(CacheError) as err:
        convert_into_cache(NAME, verify=False)  # from kagglehub's cache
    entry = env.entry()
    assert str(err.value).startswith(f"Cannot write the vit_hub cache at {entry.folder}: "
                                     "the disk is full (No space left on device).")
    assert "Nothing partial was left there" in str(err.value)
    assert "--cache-dir or VIT_HUB_CACHE" in str(err.value)
    assert files(env.cache) == ["v1/.locks/vit_tiny8_fe.lock"] and entry.state() == "missing"
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    convert_into_cache(NAME, verify=False)  # space again: it completes
    assert_complete(entry)


def test_disk_full_while_writing_metadata(env, monkeypatch, tiny_saved_model, capsys):  # noqa: F811
    def write_text(path, text):  # half the JSON reaches the disk, then ENOSPC
        with vit_hub.files.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write(text[: len(text) // 2])
            _enospc()

    monkeypatch.setattr(vit_hub.files, "write_text", write_text)
    code, out, err = cli(capsys, NAME, "--source", tiny_saved_model, "--no-verify")
    entry = env.entry()
    assert code == 1 and "FAILED" in out
    assert (f"convert-weights: {NAME}: Cannot write the vit_hub cache at {entry.folder}: the "
            "disk is full") in err
    assert files(env.cache) == ["v1/.locks/vit_tiny8_fe.lock"]  # the weights written too: gone


def test_disk_full_on_a_real_small_file_system(env, monkeypatch, tiny_saved_model, capsys):  # noqa: F811
    with tiny_tmpfs(env.tmp / "small") as small:
        with pytest.raises(CacheError) as err:
            convert_into_cache(NAME, cache_dir=small, source=tiny_saved_model, verify=False)
        entry = CacheEntry(NAME, small)
        assert re.match(rf"Cannot write the vit_hub cache at {re.escape(entry.folder)}: the "
                        r"disk is full \(No space left on device; the weights need \d+ kB, "
                        r"\d+ kB is free\)\. Nothing partial was left there\.", str(err.value))
        assert files(small) == ["v1/.locks/vit_tiny8_fe.lock"]  # the empty lock file only
        # --output on the full disk: the cache entry is complete, the copy is not made.
        code, out, stderr = cli(capsys, NAME, "--source", tiny_saved_model, "--no-verify",
                                "--output", small / "out" / "w.h5")
        assert code == 1
        assert f"Cannot write the --output copy at {small / 'out' / 'w.h5'}: the disk is full" in stderr
        assert files(small / "out") == []
        assert_complete(env.entry())


def test_disk_filling_up_mid_write_leaves_no_half_entry(env, tiny_saved_model, capsys):  # noqa: F811
    """The free-space check passes, then the disk fills up (another process) while the
    weights are being written. HDF5 then raises, or crashes the process (SIGSEGV: seen
    with h5py 3.14 / HDF5 1.14.6); either way no half entry, and the next run, with
    space again, completes and removes what the crashed one left."""
    with tiny_tmpfs(env.tmp / "small", size="1m") as small:
        resume = env.tmp / "resume"
        args = [NAME, "--no-verify", "--source", tiny_saved_model, "--cache-dir", small]
        child = env.child("cli", *args, pause="write", FAULT_RESUME=str(resume))
        wait_for(env.tmp / "reached", child)
        filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError) as full:
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
        assert full.value.errno == errno.ENOSPC
        resume.touch()
        out, err = child.communicate(timeout=180)
        assert child.returncode in (1, -signal.SIGSEGV), err[-3000:]
        if child.returncode == 1:
            assert "the disk is full (No space left on device)" in err
        entry = CacheEntry(NAME, small)
        assert entry.state() == "missing" and entry_files(entry) == []
        (small / "filler").unlink()
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        assert files(small) == ["v1/.locks/vit_tiny8_fe.lock", "v1/vit_tiny8_fe/vit_tiny8_fe.h5",
                                "v1/vit_tiny8_fe/vit_tiny8_fe.json"]


# === Permissions of what is written ===


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    """A cache shared by a group must be readable by the group: atomic writes get the
    mode a plain open() would give (0666 & ~umask), not mkstemp's private 0600."""
    import stat

    from vit_hub.files import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "shared.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "shared.json").st_mode) == 0o644


def test_a_set_of_files_is_published_whole_or_not_at_all(tmp_path, monkeypatch):
    """`files.atomic_files`, the writer of cache entries and OpenVINO IRs: a failure while
    staging leaves the old set; a failing move leaves no record and no half set."""
    weights, record = str(tmp_path / "w.bin"), str(tmp_path / "w.json")

    def write(staged, text):
        for path in staged.values():
            with open(path, "w") as f:
                f.write(text)

    write({weights: weights, record: record}, "old")
    with pytest.raises(OSError), vit_hub.files.atomic_files([weights, record]) as staged:
        write(staged, "new")
        _enospc()
    assert files(tmp_path) == ["w.bin", "w.json"] and open(weights).read() == "old"

    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: _enospc() if dst == record
                        else replace(src, dst))
    with pytest.raises(OSError), vit_hub.files.atomic_files([weights, record]) as staged:
        write(staged, "new")
    assert files(tmp_path) == []


def test_a_published_folder_follows_the_umask_and_replaces_the_old_one(tmp_path):
    """`files.atomic_folder` (exports): mkdtemp's private 0700 is not what is published."""
    import stat

    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    old = os.umask(0o022)
    try:
        with vit_hub.files.atomic_folder(target) as tmp:
            with open(os.path.join(tmp, "new.txt"), "w") as f:
                f.write("new")
    finally:
        os.umask(old)
    assert files(tmp_path) == ["export/new.txt"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
