"""OpenVINO IR files: `model.xml` (the graph), `model.bin` (the weights) and vit_hub's
`model.json` beside them (precision, measured accuracy, OpenVINO version, sha256 of both).

Written as the weights cache is (`files.atomic_files`): staged beside the target, fsynced,
moved in, the record last, so a reader never takes a half-written IR. `record_problem`
and `checksum_problem` say why one may not be read (`openvino_model.read_verified` reads
it only when both checksums match the record and it was written by this OpenVINO
version).

The record vouches for itself too: `record_sha256` is the sha256 of its own canonical
JSON (`record_digest`: every other key, sorted, compact), so a record edited by hand (a
precision, a forged accuracy figure) is refused as a corrupt file is, never believed. It
is a checksum, not a signature: it tells an edited or damaged record from vit_hub's, not
who wrote it. Records of format 1 (before that checksum) are refused as another format:
the IR cache rebuilds such an IR online and, offline, says which command builds it;
`load_openvino` says to save it again.

The weights are stored at full precision: `openvino.save_model` halves them to fp16 by
default, which put ViT-B/32 4.5e-3 off the Keras model even when computed in f32.
"""

import hashlib
import json
import os

from vit_hub.architecture import is_number
from vit_hub.errors import OutputExistsError, WeightsError
from vit_hub.files import atomic_files, read_json, sha256, verify_checksums
from vit_hub.runtime.engine import import_openvino, openvino_version
from vit_hub.runtime.options import INT8_RESTS, PRECISIONS

FORMAT = "vit_hub.openvino"
FORMAT_VERSION = 2  # 2: the record's own checksum
RECORD_DIGEST = "record_sha256"
# The figures of a record's accuracy that every precision has, and those that only
# classifiers have (None otherwise): what `describe_accuracy` and the gate read.
FIGURES = ("max_abs", "cosine_min")
CLASSIFIER_FIGURES = ("top1_agreement", "top5_agreement")


def paths(xml_path):
    """(xml, bin, json) of an IR."""
    stem = os.path.splitext(os.fspath(xml_path))[0]
    return stem + ".xml", stem + ".bin", stem + ".json"


def check_xml_path(path):
    path = os.fspath(path)
    if not path.endswith(".xml"):
        raise WeightsError(f"An OpenVINO IR path ends in .xml (its weights go to the .bin "
                           f"beside it), got {path!r}.")
    return path


def check_save_target(xml_path):
    """The IR's (xml, bin, json) paths if `OpenVINOModel.save` may write them: an
    OutputExistsError (a FileExistsError) when a file stands where a folder of the path
    should be, when one of the three is a folder, or when files are there that are not a
    vit_hub OpenVINO model (the record beside them does not say it is): an unrelated
    .xml, .bin or .json is never overwritten. A vit_hub model saved there earlier is
    replaced."""
    targets = paths(check_xml_path(xml_path))
    xml, _, record_path = targets
    folder = os.path.dirname(os.path.abspath(xml))
    while not os.path.lexists(folder):  # the nearest part of the path that exists
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise OutputExistsError(
            f"Cannot save the OpenVINO IR at {xml}: {folder} is a file, not a folder. Save "
            "it to another path, in a folder (or move that file away).")
    for path in targets:
        if os.path.isdir(path):
            raise OutputExistsError(f"Cannot save the OpenVINO IR at {xml}: {path} is a folder. "
                                    "Save it to another path (or remove that folder).")
    there = [path for path in targets if os.path.lexists(path)]
    if there and (read_json(record_path) or {}).get("format") != FORMAT:
        raise OutputExistsError(
            f"Not saving the OpenVINO IR at {xml}: {', '.join(there)} "
            f"{'is' if len(there) == 1 else 'are'} there and not a vit_hub OpenVINO model "
            f"(no vit_hub record {record_path} says so), and would be overwritten. Save it "
            "to another path, or delete those files first.")
    return targets


def write_ir(ov_model, xml_path, record):
    """Writes the IR and its record at `xml_path` atomically (see the module doc)."""
    xml, weights, record_path = paths(check_xml_path(xml_path))
    with atomic_files([weights, xml, record_path]) as staged:
        # save_model names the .bin after the .xml: staged[weights] is beside it.
        import_openvino().save_model(ov_model, staged[xml], compress_to_fp16=False)
        checksums = {"xml": sha256(staged[xml]), "bin": sha256(staged[weights])}
        full = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "openvino": openvino_version(), "sha256": checksums, **record}
        full = json.loads(json.dumps(full))  # as a reader parses it: the digest is of that
        full[RECORD_DIGEST] = record_digest(full)
        with open(staged[record_path], "w", encoding="utf-8") as f:
            f.write(json.dumps(full, indent=1))


def record_digest(record):
    """The sha256 of a record's canonical JSON: its keys but `record_sha256`, sorted, with
    no spaces. The one digest of a record, for writing it and for checking it."""
    body = {key: value for key, value in record.items() if key != RECORD_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def record_problem(xml_path):
    """What its record says against it (cheap: the files are not read): missing, not
    vit_hub's, another format, edited (its own checksum fails), lacking what a model is
    made of, or from another OpenVINO version."""
    record_path = paths(xml_path)[2]
    record = read_json(record_path)
    if record is None:
        return f"it has no record {record_path} (not written by vit_hub, or not complete)"
    if record.get("format") != FORMAT:
        return f"its record {record_path} is unreadable or not vit_hub's"
    if record.get("format_version") != FORMAT_VERSION:
        return (f"it has vit_hub IR format {record.get('format_version')}; this vit_hub "
                f"reads format {FORMAT_VERSION}")
    if not isinstance(record.get(RECORD_DIGEST), str):
        return f"its record {record_path} has no checksum of its own (edited or corrupt)"
    if record[RECORD_DIGEST] != record_digest(record):
        return (f"its record {record_path} fails its own sha256 check (edited or corrupt): "
                "what it says (precision, accuracy) cannot be believed")
    problem = _content_problem(record)
    if problem:
        return f"its record {record_path} {problem}"
    if record.get("openvino") != openvino_version():
        return (f"it was written by OpenVINO {record.get('openvino')} and this is OpenVINO "
                f"{openvino_version()}")
    return None


def _content_problem(record):
    """What a record (whose own checksum holds) lacks of what a model is made of."""
    checksums = record.get("sha256")
    if not (isinstance(checksums, dict)
            and all(isinstance(checksums.get(key), str) for key in ("xml", "bin"))):
        return "has no sha256 of its .xml and .bin"
    if not isinstance(record.get("name"), str):
        return "has no name"
    if record.get("precision") not in PRECISIONS:
        return (f"says precision {record.get('precision')!r}, not one of "
                f"{', '.join(PRECISIONS)}")
    rests = INT8_RESTS if record["precision"] == "int8" else (None,)
    if record.get("rest") not in rests:
        return (f"says its {record['precision']} model computes the rest in "
                f"{record.get('rest')!r}, not one of {', '.join(map(str, rests))}")
    speed = record.get("speed")
    if speed is not None and not (isinstance(speed, dict) and is_number(
            speed.get("images_per_s")) and is_number(speed.get("batch"))):
        return "has a speed that lacks images_per_s and batch (as numbers)"
    accuracy = record.get("accuracy")
    if not isinstance(accuracy, dict):
        return "has no accuracy (the measured agreement with fp32)"
    lacking = [key for key in FIGURES if not is_number(accuracy.get(key))]
    if accuracy.get(CLASSIFIER_FIGURES[0]) is not None:
        lacking += [key for key in CLASSIFIER_FIGURES if not is_number(accuracy.get(key))]
    calibration = accuracy.get("calibration")
    if calibration and not (isinstance(calibration, dict)
                            and {"images", "source"} <= set(calibration)):
        lacking.append("calibration (images and source)")
    if lacking:
        return f"has an accuracy that lacks {', '.join(lacking)} (as numbers)"
    return None


def checksum_problem(xml_path):
    xml, weights, record_path = paths(xml_path)
    expected = read_json(record_path)["sha256"]
    return verify_checksums({xml: expected.get("xml"), weights: expected.get("bin")},
                            record_path)
