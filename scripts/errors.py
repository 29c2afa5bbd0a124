"""Errors that reach the user as one line and a non-zero exit (no traceback)."""

__all__ = ["CnnforgeError", "DataError", "ModelError", "ToolError", "UnsupportedModel"]


class CnnforgeError(Exception):
    """Base of every error the command line reports as a single line."""


class DataError(CnnforgeError):
    """Missing, truncated or corrupt data (MNIST files, downloads)."""


class ModelError(CnnforgeError):
    """Missing or malformed model file (wrong version, shapes or dtypes)."""


class ToolError(CnnforgeError):
    """A required external tool is missing or failed."""


class UnsupportedModel(CnnforgeError):
    """A model file to import uses an op, attribute or layout cnnforge cannot map, or is not a
    readable model file."""
