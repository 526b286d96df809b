"""Typed errors for bad input. The CLI turns each into one red line and exit code 2.

assert stays for internal invariants; anything a user can cause raises one of these,
with a message that names the file, column or value at fault.
"""


class MufasaError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class DataSchemaError(MufasaError):
    """A source file is missing, malformed, or has wrong/missing columns or values."""


class ArtifactError(MufasaError):
    """A run-directory artifact is missing, corrupt, stale, or would be overwritten."""


class RecipeError(MufasaError):
    """A recipe or flag combination is invalid."""


class DependencyError(MufasaError):
    """An optional dependency needed for the requested feature is not installed."""
