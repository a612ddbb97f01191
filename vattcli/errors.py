"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class VattError(Exception):
    """A user-facing error: bad input, a missing file, a config that does not fit.

    The message is one line that names the file or field and what was expected.
    """

    exit_code = 2


class ConfigError(VattError):
    """A recipe or override that does not match the typed config."""


class MediaError(VattError):
    """A media file that cannot be probed or decoded.

    ``reason`` is a short machine-readable tag (``empty``, ``corrupt``, ``no_video``,
    ``no_audio``, ``too_short``, ...) used to count skipped files per reason.
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


class DataError(VattError):
    """An annotation file or dataset folder that cannot be used as a whole."""


class CheckpointError(VattError):
    """A checkpoint that is missing, incomplete, or does not fit the model."""


class ConvertError(VattError):
    """A TensorFlow checkpoint that cannot be read or mapped onto a vatt model (``vatt convert``)."""
