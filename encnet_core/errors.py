"""User-facing errors. The CLI prints any EncNetError as one red line and exits 1."""

from __future__ import annotations


class EncNetError(Exception):
    """Base class of every error a user can fix; the message says what to do."""


class ConfigError(EncNetError):
    """Bad option, recipe or configuration value."""


class ModelError(EncNetError):
    """Unknown model name, bad override, or weights that do not fit the model."""


class DataError(EncNetError):
    """A dataset file, image or mask that cannot be used."""


class DownloadError(EncNetError):
    """A download that failed after its retries."""


class ChecksumError(DownloadError):
    """A file whose checksum differs from the expected one."""


class ArchiveError(DataError):
    """An archive that is unreadable or has an unsafe member."""


class CheckpointError(EncNetError):
    """A checkpoint or export that cannot be read safely."""
