"""Errors raised by the state package."""


class StateError(Exception):
    """Base class for state failures."""


class SnapshotError(StateError):
    """A state snapshot cannot be read or does not fit the current configuration."""
