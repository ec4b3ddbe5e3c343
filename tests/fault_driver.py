"""A child process for the fault tests (tests/test_faults_*.py; helpers in
tests/fault_support.py): `convert-weights` or `load_pretrained` with the test catalogue
registered, optionally stopping at a named point so that the parent can kill it there
(SIGKILL) at a known moment.

    python -m tests.fault_driver cli ARG...     # vit_hub.cli.convert_weights.main([ARG...])
    python -m tests.fault_driver load NAME      # vit_hub.load_pretrained(NAME)

Nothing here is a hook in the production code: the points are made by wrapping library
functions in this process only.

Environment:
    FAULT_CATALOGUE  JSON {"variants": {name: {shape kwargs}}, "models": {name: fields}}
                     (the format of tests.conftest.CATALOGUE), registered through the
                     public API: vit_hub.register_variant, then vit_hub.register_model.
    FAULT_PAUSE      one of POINTS; FAULT_SIGNAL: a file created when it is reached, after
                     which the process sleeps until it is killed, or until the file
                     FAULT_RESUME exists (then it goes on).
    FAULT_BARRIER    "DIR:N": after the imports, add a file to DIR and wait until DIR holds
                     N, so that N children start their work together.
    FAULT_LOG        a file; one line "convert <pid>" is appended per conversion started.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

POINTS = {
    "download": "kagglehub has written part of a downloaded file",
    "convert": "the checkpoint is read, nothing is written yet",
    "write": "the weights file is half written (temporary file)",
    "rename": "the weights are complete in their temporary file, not renamed",
    "metadata": "the weights file is complete, its metadata not yet written",
    "metadata-rename": "the metadata is complete in its temporary file, not renamed",
    "publish": "the new weights are moved into the entry, the new metadata not yet",
}


def pause(point):
    """Announces `point` to the parent through FAULT_SIGNAL, then waits to be killed."""
    if os.environ.get("FAULT_PAUSE") != point:
        return
    signal = os.environ["FAULT_SIGNAL"]
    with open(signal + ".part", "w") as f:
        f.write(f"{os.getpid()} {point}\n")
    os.replace(signal + ".part", signal)
    resume = os.environ.get("FAULT_RESUME")
    while not (resume and os.path.exists(resume)):
        time.sleep(0.05)


def register_catalogue():
    """Registers FAULT_CATALOGUE as a user would add private models (no module state is
    patched): each variant, then each model, validated like the shipped catalogue."""
    spec = json.loads(os.environ.get("FAULT_CATALOGUE") or "{}")
    import vit_hub

    for name, shape in spec.get("variants", {}).items():
        vit_hub.register_variant(name, **shape)
    for name, fields in spec.get("models", {}).items():
        vit_hub.register_model(name, fields)


def install_points():
    point = os.environ.get("FAULT_PAUSE")
    if point and point not in POINTS:
        raise SystemExit(f"fault_driver: unknown FAULT_PAUSE {point!r}; one of {list(POINTS)}")

    import h5py
    import kagglehub.clients

    import vit_hub.conversion.convert
    import vit_hub.conversion.pipeline
    import vit_hub.files

    # Counts conversions (the concurrency test wants exactly one).
    original_convert = vit_hub.conversion.pipeline._conversion

    def logged_convert(*args, **kwargs):
        if os.environ.get("FAULT_LOG"):
            with open(os.environ["FAULT_LOG"], "a") as f:
                f.write(f"convert {os.getpid()}\n")
        return original_convert(*args, **kwargs)

    vit_hub.conversion.pipeline._conversion = logged_convert
    if not point:
        return

    # download: kagglehub writes half of each file it fetches, then stops.
    def half_download(response, out_file, size_read, total_size, hash_object):
        data = b"".join(response.iter_content(1 << 16))
        with open(out_file, "ab" if size_read else "wb") as f:
            f.write(data[: max(1, len(data) // 2)])
            f.flush()
            os.fsync(f.fileno())
        pause("download")

    kagglehub.clients._download_file = half_download

    # convert: after the checkpoint is read.
    original_read = vit_hub.conversion.convert.read_hub_saved_model

    def read_then_pause(*args, **kwargs):
        tensors = original_read(*args, **kwargs)
        pause("convert")
        return tensors

    vit_hub.conversion.convert.read_hub_saved_model = read_then_pause

    # write: the HDF5 file has some datasets, flushed to disk.
    original_create = h5py.Group.create_dataset
    created = []

    def create_then_pause(self, *args, **kwargs):
        dataset = original_create(self, *args, **kwargs)
        created.append(1)
        if len(created) == 5:
            self.file.flush()
            pause("write")
        return dataset

    h5py.Group.create_dataset = create_then_pause

    # rename / metadata-rename: os.replace of a temporary file onto its target;
    # publish: the metadata about to be moved from a staging folder into the entry.
    original_replace = os.replace

    def replace_after_pause(src, dst, *args, **kwargs):
        src, dst = os.fspath(src), os.fspath(dst)
        if os.path.basename(src).startswith(".tmp-"):
            pause("rename" if dst.endswith(".h5") else "metadata-rename")
        elif os.path.basename(os.path.dirname(src)).startswith(".tmp-") and dst.endswith(".json"):
            pause("publish")
        return original_replace(src, dst, *args, **kwargs)

    os.replace = replace_after_pause

    # metadata: the weights are in place, the metadata is about to be written.
    original_write_text = vit_hub.files.write_text

    def write_text_after_pause(path, text):
        if os.fspath(path).endswith(".json"):
            pause("metadata")
        return original_write_text(path, text)

    vit_hub.files.write_text = write_text_after_pause


def barrier():
    spec = os.environ.get("FAULT_BARRIER")
    if not spec:
        return
    folder, count = spec.rsplit(":", 1)
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 300
    while len(os.listdir(folder)) < int(count):
        if time.monotonic() > deadline:
            raise SystemExit("fault_driver: barrier timed out")
        time.sleep(0.02)


def main(argv):
    mode, args = argv[0], argv[1:]
    import vit_hub
    import vit_hub.cli.convert_weights

    register_catalogue()
    install_points()
    barrier()
    if mode == "cli":
        return vit_hub.cli.convert_weights.main(args)
    if mode == "load":
        model = vit_hub.load_pretrained(args[0])
        print(json.dumps({"name": args[0], "output_shape": list(model.output_shape)}))
        return 0
    raise SystemExit(f"fault_driver: unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
