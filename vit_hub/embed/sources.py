"""vit-embed's SOURCE -> the sorted image paths (or fsspec URLs) to embed.

A SOURCE is a folder (searched recursively; image files by extension), a glob (every file
it matches), a single image file, or a text file listing one path or URL per line
(relative paths are taken from the list's folder; blank lines and `#` comments skipped).
Anything fsspec can open works: local paths, `file://`, `s3://`, `gs://`, `memory://`...
"""

import os

from vit_hub.errors import ImageError, MissingDependencyError, MissingFileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def list_images(source):
    """Sorted, de-duplicated image locations of `source`; an ImageError if there are none."""
    fs, root = _filesystem(os.fspath(source))
    if fs.isdir(root):
        found = [p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS)]
        what = f"the folder {source} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
    elif any(ch in root for ch in "*?["):
        found = [p for p in fs.glob(root) if fs.isfile(p)]
        what = f"the pattern {source}"
    elif fs.isfile(root) and root.lower().endswith(IMAGE_EXTENSIONS):
        found, what = [root], source
    elif fs.isfile(root):
        return _listed(fs, root, source)
    else:
        raise MissingFileError(f"SOURCE {source} does not exist: give a folder of images, "
                               "a glob such as 'photos/**/*.jpg', or a text file of paths.")
    if not found:
        raise ImageError(f"No image files in {what}.")
    return sorted({_location(fs, p) for p in found})


def _listed(fs, root, source):
    """The paths listed in a text file, relative ones taken from the file's folder."""
    with fs.open(root, "rt") as file:
        lines = [line.strip() for line in file]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise ImageError(f"The list {source} names no images (one path or URL per line).")
    folder = os.path.dirname(root)
    located = []
    for entry in entries:
        if "://" in entry or os.path.isabs(entry):
            located.append(entry)
        else:
            located.append(_location(fs, f"{folder}/{entry}" if folder else entry))
    return sorted(set(located))


def _location(fs, path):
    """A path every worker can open: plain for local files, a full URL otherwise."""
    return os.path.abspath(path) if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs):
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _filesystem(source):
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError("vit-embed reads its SOURCE with fsspec: "
                                     "pip install 'vit_hub[embed]'.") from None
    return fsspec.core.url_to_fs(source)


def read_bytes(location):
    """The bytes of one listed image (a local path or an fsspec URL). Local files are read
    directly: fsspec's local files seek, which named pipes and some mounts refuse."""
    if "://" not in location:
        with open(location, "rb") as file:
            return file.read()
    import fsspec

    with fsspec.open(location, "rb") as file:
        return file.read()
