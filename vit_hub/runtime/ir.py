"""OpenVINO IR files: `model.xml` (the graph), `model.bin` (the weights) and vit_hub's
`model.json` beside them (precision, measured accuracy, OpenVINO version, sha256 of both).

Written as the weights cache is (`files.atomic_files`): staged beside the target, fsynced,
moved in, the record last, so a reader never takes a half-written IR. `record_problem`
and `checksum_problem` say why one may not be read (`openvino_model.read_verified` reads
it only when both checksums match the record and it was written by this OpenVINO
version).

The weights are stored at full precision: `openvino.save_model` halves them to fp16 by
default, which put ViT-B/32 4.5e-3 off the Keras model even when computed in f32.
"""

import json
import os

from vit_hub.errors import WeightsError
from vit_hub.files import atomic_files, read_json, sha256, verify_checksums
from vit_hub.runtime.engine import import_openvino, openvino_version

FORMAT = "vit_hub.openvino"
FORMAT_VERSION = 1


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


def write_ir(ov_model, xml_path, record):
    """Writes the IR and its record at `xml_path` atomically (see the module doc)."""
    xml, weights, record_path = paths(check_xml_path(xml_path))
    with atomic_files([weights, xml, record_path]) as staged:
        # save_model names the .bin after the .xml: staged[weights] is beside it.
        import_openvino().save_model(ov_model, staged[xml], compress_to_fp16=False)
        checksums = {"xml": sha256(staged[xml]), "bin": sha256(staged[weights])}
        full = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "openvino": openvino_version(), "sha256": checksums, **record}
        with open(staged[record_path], "w", encoding="utf-8") as f:
            f.write(json.dumps(full, indent=1))


def record_problem(xml_path):
    """What its record says against it (cheap: the files are not read)."""
    record_path = paths(xml_path)[2]
    record = read_json(record_path)
    if record is None:
        return f"it has no record {record_path} (not written by vit_hub, or not complete)"
    if record.get("format") != FORMAT or not isinstance(record.get("sha256"), dict):
        return f"its record {record_path} is unreadable or not vit_hub's"
    if record.get("format_version") != FORMAT_VERSION:
        return (f"it has vit_hub IR format {record.get('format_version')}; this vit_hub "
                f"reads format {FORMAT_VERSION}")
    if record.get("openvino") != openvino_version():
        return (f"it was written by OpenVINO {record.get('openvino')} and this is OpenVINO "
                f"{openvino_version()}")
    return None


def checksum_problem(xml_path):
    xml, weights, record_path = paths(xml_path)
    expected = read_json(record_path)["sha256"]
    return verify_checksums({xml: expected.get("xml"), weights: expected.get("bin")},
                            record_path)
