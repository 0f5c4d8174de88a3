"""Errors raised by the model package."""


class ModelError(Exception):
    """Base class for model-side failures."""


class HistoryFormatError(ModelError, ValueError):
    """A history file is malformed; the message names the file and line."""


class ArtifactError(ModelError):
    """A model artefact is missing, unreadable or does not match what the caller expects."""
