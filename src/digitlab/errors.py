"""Exceptions that mean "the user gave us something wrong".

The CLI catches :class:`DigitlabError` and prints its message on one line with
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DigitlabError(Exception):
    """Base class for errors caused by input, files or arguments, not by bugs."""


class DataError(DigitlabError):
    """A dataset file is missing, malformed, or fails its checksum."""


class ConfigError(DigitlabError):
    """A configuration value is invalid."""


class CheckpointError(DigitlabError):
    """A checkpoint or run directory is missing, malformed or incompatible."""


class RunExistsError(DigitlabError):
    """Refusing to overwrite an existing run or report directory."""


class ImageError(DigitlabError):
    """An image file or upload cannot be decoded or is unusable."""


class MissingExtraError(DigitlabError):
    """An optional dependency (a pip extra such as ``digitlab[onnx]``) is not installed."""
