"""Every error vit_hub raises derives from `VitHubError`.

Each also keeps the built-in base it had before there was a common one (ValueError,
RuntimeError, TypeError, NotImplementedError), so `except ValueError:` written against
older versions still catches what it caught.
"""


class VitHubError(Exception):
    """Base of every error raised by vit_hub: `except vit_hub.VitHubError` catches them
    all (what the `convert-weights` command does)."""


class ConfigError(VitHubError, ValueError):
    """An argument that makes no valid model or call: an unknown variant, an image size
    the patch grid does not tile, a pooling mode that does not exist."""


class ImageError(VitHubError, ValueError):
    """Images that cannot be turned into model inputs (shape, channels, range, file)."""


class ImageTypeError(ImageError, TypeError):
    """Images of a dtype that has no defined meaning as pixels."""


class ImageTooLargeError(ImageError):
    """An image over a size limit: Pillow's decompression-bomb limit, or the `max_pixels`
    a caller set (vit-serve's, which answers HTTP 413)."""


class CatalogueError(VitHubError, ValueError):
    """An unknown model name, or a catalogue entry that is missing or malformed."""


class UnsupportedModelError(VitHubError, NotImplementedError):
    """A catalogue entry whose architecture has no native converter."""


class WeightsError(VitHubError, ValueError):
    """Weights do not fit the model they are loaded into, or cannot be read."""


class ConversionError(WeightsError):
    """A checkpoint cannot be read, or does not fit the model it is converted into."""


class ParityError(ConversionError):
    """The converted model does not reproduce the hub model's outputs."""


class CacheError(VitHubError, RuntimeError):
    """The cache cannot give a usable entry (missing, corrupt, or not writable)."""


class DownloadError(VitHubError, RuntimeError):
    """A model could not be downloaded; nothing partial is left in kagglehub's cache."""


class AccuracyError(VitHubError, RuntimeError):
    """A reduced-precision model (OpenVINO bf16 or int8) is further from fp32 than its
    gate allows, measured on held-out images: it is neither returned nor cached."""


class ExportError(VitHubError, RuntimeError):
    """A model cannot be exported in the asked-for format."""


class MissingFileError(VitHubError, FileNotFoundError):
    """An input file (an image, a weights file) is not there."""


class OutputExistsError(VitHubError, FileExistsError):
    """An output would overwrite existing files that were not meant to be replaced."""


class EmbedError(VitHubError, RuntimeError):
    """A vit-embed job stopped: a shard's worker died more often than it may be retried.
    The finished shards are kept; a rerun resumes."""


class RequestError(VitHubError, ValueError):
    """A request to vit-serve that is not answered: `status` is the HTTP status it gets
    (400 unreadable image, 413 too large, 415 not an image, 422 a bad parameter), the
    message says what was wrong and how to send it right."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # (raised in a Ray replica, re-raised in the caller)
        return type(self), (self.status, str(self))


class ServeError(VitHubError, RuntimeError):
    """vit-serve's service did not start (a model replica that cannot load its model)."""


class MissingDependencyError(VitHubError, ImportError):
    """An optional package that this feature needs is not installed."""


class ArgumentError(VitHubError, TypeError):
    """An unknown or misspelt keyword argument, or an argument of the wrong type (a flag
    that is not a bool)."""


def warn(message, category=UserWarning):
    """Warns at the first line outside vit_hub: the user's call, however deep inside
    vit_hub the warning was decided (a fixed stacklevel points into vit_hub from any
    path but the one it was counted on)."""
    import os
    import sys
    import warnings

    # (Python 3.12's skip_file_prefixes= does this; vit_hub supports 3.10.) stacklevel 1
    # is this function's line, 2 its caller's, and so on up to the first frame outside.
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
